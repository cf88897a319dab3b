//! `POST /pin/<hash>` and `DELETE /pin/<hash>`: pin a stored path and its
//! stored closure so eviction never takes them (`nixswarm pin`), or unpin.
//! Only in cache mode: other modes keep nothing fetched.
//!
//! A web page the user visits can send simple requests to 127.0.0.1 (a
//! bodiless `POST` needs no CORS preflight). Every route refuses what a
//! page on another site or a rebound name sends ([`crate::guard`]); these
//! also require the [`WRITE_HEADER`] header, which a browser sends
//! cross-site only after a CORS preflight that the gateway never grants.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nixswarm_protocol::StorePathHash;

use crate::AppState;
use crate::error::GatewayError;

/// The header `nixswarm pin` and `unpin` send; a browser cannot send it
/// cross-site without a CORS preflight, which is never granted.
pub const WRITE_HEADER: &str = "x-nixswarm-request";

/// Refuses a state-changing request that a web page could have made.
fn same_origin_write(headers: &HeaderMap) -> Result<(), GatewayError> {
    if !headers.contains_key(WRITE_HEADER) {
        return Err(GatewayError::Forbidden(
            "pinning needs the x-nixswarm-request header (use `nixswarm pin`)",
        ));
    }
    Ok(())
}

fn parse(hash: &str) -> Result<StorePathHash, GatewayError> {
    hash.parse()
        .map_err(|_| GatewayError::BadRequest(format!("{hash:?} is not a store path hash")))
}

fn refuse_unless_caching(state: &AppState) -> Option<Response> {
    (!state.options.keep_fetched).then(|| {
        (
            StatusCode::CONFLICT,
            "pinning needs donor.contribute = cache: this node keeps nothing it fetches\n",
        )
            .into_response()
    })
}

fn json(v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub async fn pin(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    same_origin_write(&headers)?;
    if let Some(r) = refuse_unless_caching(&state) {
        return Ok(r);
    }
    let hash = parse(&hash)?;
    let (held, missing) = state.store.pin_closure(hash).await?;
    let s = |v: Vec<StorePathHash>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(json(&serde_json::json!({ "pinned": s(held), "missing": s(missing) })))
}

pub async fn unpin(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    same_origin_write(&headers)?;
    if let Some(r) = refuse_unless_caching(&state) {
        return Ok(r);
    }
    let hash = parse(&hash)?;
    // The pins are a small in-memory set.
    if state.store.blocking().pinned().binary_search(&hash).is_err() {
        return Ok((
            StatusCode::NOT_FOUND,
            format!("{hash} was not pinned (nothing to unpin)\n"),
        )
            .into_response());
    }
    let unpinned = state.store.unpin_closure(hash).await?;
    let s: Vec<_> = unpinned.iter().map(ToString::to_string).collect();
    Ok(json(&serde_json::json!({ "unpinned": s })))
}
