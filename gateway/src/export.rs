//! `GET /export/<hash>`: a path from this node's store or its peers, never
//! from an upstream (`nixswarm export` rebuilds a binary cache from the
//! swarm with no egress). The body is framed as `PUT /import` takes it:
//! the narinfo's length and a newline, the narinfo (verified against the
//! trusted keys), then the NAR. The NAR's bytes from peers are checked
//! chunk by chunk on arrival; `nixswarm export` checks the whole against
//! NarHash before it writes anything.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use nixswarm_protocol::StorePathHash;

use crate::AppState;
use crate::error::GatewayError;
use crate::resolve::Answer;

pub async fn export(State(state): State<Arc<AppState>>, Path(hash): Path<String>) -> Result<Response, GatewayError> {
    let hash: StorePathHash = hash.parse().map_err(|_| GatewayError::NotFound)?;
    let head = |info: &nixswarm_protocol::NarInfo| crate::import::frame(&info.to_text());
    // Stored here: from the store.
    if let Some(handle) = state.store.open_nar(hash).await? {
        let info = handle.narinfo.clone();
        let size = info.nar_size;
        // Not counted as bytes served to Nix.
        let nar = crate::nar::verify::local(handle, 0, size, None, |_| {});
        let body = futures::stream::once(futures::future::ready(Ok(head(&info)))).chain(nar);
        return Ok(respond(Body::from_stream(body)));
    }
    let Some((id, peers)) = state.resolver.peers() else {
        return Ok((
            StatusCode::NOT_FOUND,
            "no peer-to-peer node: only stored paths can be exported\n",
        )
            .into_response());
    };
    let info = match state.resolver.narinfo_from(id, &hash).await {
        Answer::Found(info) => *info,
        Answer::Absent => return Ok((StatusCode::NOT_FOUND, "no peer has it\n").into_response()),
        Answer::Failed => return Ok((StatusCode::BAD_GATEWAY, "the peers could not be asked\n").into_response()),
    };
    let nar = match crate::source::Source::nar(peers, &info).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok((StatusCode::NOT_FOUND, "no peer has its NAR\n").into_response()),
        Err(e) => return Ok((StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response()),
    };
    let body = futures::stream::once(futures::future::ready(Ok(head(&info)))).chain(nar);
    Ok(respond(Body::from_stream(body)))
}

fn respond(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}
