//! Where NARs come from besides the local store: a [`Source`] answers
//! narinfo lookups and streams uncompressed NARs. Upstream binary caches
//! implement it today ([`crate::upstream::Upstream`]); the peer-to-peer
//! fetcher slots in as another implementation, ahead of the upstreams.
//!
//! A source is untrusted: the resolver verifies every narinfo against the
//! trusted keys and every NAR against the verified NarHash and NarSize.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use nixswarm_protocol::{NarInfo, StorePathHash};
use thiserror::Error;

/// An uncompressed NAR as a stream of bytes.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Which source, by its place in the gateway's priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub usize);

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "source {}", self.0)
    }
}

/// What kind of source answered (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Peer,
    Upstream,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Upstream => "upstream",
        }
    }
}

/// A source failed (as opposed to not having the path).
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{source_name}: {message}")]
    Failed { source_name: String, message: String },
}

/// A place to get narinfos and NARs from.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Peer or upstream.
    fn kind(&self) -> SourceKind;
    /// A human-readable name (the URL of an upstream).
    fn name(&self) -> &str;
    /// The narinfo for a path hash, unverified; `None` if absent.
    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>>;
    /// The uncompressed NAR described by `info` (a narinfo this source
    /// returned); `None` if absent.
    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>>;

    /// The NAR's file as this source stores it (compressed as `info`, a
    /// narinfo this source returned, says), for a client that decompresses
    /// it itself; `None` if this source cannot serve files.
    fn file<'a>(&'a self, _info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async { Ok(None) })
    }

    /// Told when a NAR from this source failed verification; `wrong_nar`
    /// is true if the bytes arrived but did not match NarHash/NarSize.
    /// Returns true if the source dealt with it itself (peers score the
    /// providers involved); false to have the gateway skip this source for
    /// this NAR for a while.
    fn rejected(&self, _info: &NarInfo, _wrong_nar: bool) -> bool {
        false
    }

    /// Told which paths are likely to be asked for soon (a narinfo just
    /// asked for, its references), so it can start looking in the
    /// background. Returns at once; peers start provider discovery.
    fn prefetch(&self, _hashes: &[StorePathHash]) {}

    /// The swarm, if this source is it: the NAR pipeline asks it for the
    /// tail of a two-ended fetch and for prefetches.
    fn as_peers(&self) -> Option<&crate::peers::PeerSource> {
        None
    }
}
