//! `POST /pin/<hash>` and `DELETE /pin/<hash>`: pin a stored path and its
//! stored closure so eviction never takes them (`nixswarm pin`), or unpin.
//! Only in cache mode: other modes keep nothing fetched.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use nixswarm_protocol::StorePathHash;

use crate::AppState;
use crate::error::GatewayError;

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

pub async fn pin(State(state): State<Arc<AppState>>, Path(hash): Path<String>) -> Result<Response, GatewayError> {
    if let Some(r) = refuse_unless_caching(&state) {
        return Ok(r);
    }
    let hash = parse(&hash)?;
    let store = state.store.clone();
    let (held, missing) = tokio::task::spawn_blocking(move || -> Result<_, GatewayError> {
        let (held, missing) = store.closure(&hash)?;
        // Missing ones are pinned too: they are kept once they arrive.
        store.pin(&[held.as_slice(), missing.as_slice()].concat())?;
        Ok((held, missing))
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))??;
    let s = |v: Vec<StorePathHash>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(json(&serde_json::json!({ "pinned": s(held), "missing": s(missing) })))
}

pub async fn unpin(State(state): State<Arc<AppState>>, Path(hash): Path<String>) -> Result<Response, GatewayError> {
    if let Some(r) = refuse_unless_caching(&state) {
        return Ok(r);
    }
    let hash = parse(&hash)?;
    let store = state.store.clone();
    let unpinned = tokio::task::spawn_blocking(move || -> Result<_, GatewayError> {
        let (held, missing) = store.closure(&hash)?;
        let all: Vec<_> = held.into_iter().chain(missing).collect();
        store.unpin(&all)?;
        Ok(all)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))??;
    let s: Vec<_> = unpinned.iter().map(ToString::to_string).collect();
    Ok(json(&serde_json::json!({ "unpinned": s })))
}
