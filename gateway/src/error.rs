//! The gateway's one error type and its HTTP status mapping. A miss is 404;
//! internals are logged, never sent in the body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use thiserror::Error;

/// Errors a request can end in.
#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("range not satisfiable for a {0}-byte NAR")]
    RangeNotSatisfiable(u64),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "not found\n").into_response(),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
            Self::RangeNotSatisfiable(size) => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            Self::Internal(why) => {
                tracing::error!(error = %why, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }
}

impl From<nixswarm_node::StoreError> for GatewayError {
    fn from(e: nixswarm_node::StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}
