//! Why a NAR from the sources could not be served, and how each case
//! reaches the client. Before the headers: no source has it (404). After
//! them: the body fails, so the connection is aborted and Nix never sees a
//! clean end to a wrong NAR (it retries, and the retry skips the source
//! that was blamed).

use nixswarm_protocol::NarCheckError;
use thiserror::Error;

use crate::error::GatewayError;

/// A NAR from the sources failed.
#[derive(Debug, Error)]
pub enum NarError {
    /// No source has this NAR (every one lacked it, failed to open it, or
    /// served a bad copy lately).
    #[error("no source has this NAR")]
    Unavailable,
    /// The bytes do not match the narinfo: NarSize, NarHash, or (for a flat
    /// or text path) the content address.
    #[error(transparent)]
    Check(#[from] NarCheckError),
    /// Every source's stream failed before the end (connection, decoder).
    #[error("stream failed")]
    Stream(#[source] std::io::Error),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl NarError {
    /// A short label for the `rejected_total` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Check(e) => e.reason(),
            Self::Stream(_) | Self::ShuttingDown => "stream_error",
        }
    }

    /// True if bytes arrived and were wrong (rather than stopped coming).
    pub fn wrong_nar(&self) -> bool {
        matches!(self, Self::Check(_))
    }
}

impl From<NarError> for GatewayError {
    fn from(e: NarError) -> Self {
        match e {
            NarError::Unavailable => GatewayError::NotFound,
            // Only reachable before the headers were sent.
            other => GatewayError::Internal(other.to_string()),
        }
    }
}
