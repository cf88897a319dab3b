//! `/dht` and `/dht/{hash}`: what this node's DHT holds, for operators and
//! for tests that look at a swarm from one node (the gateway listens on
//! loopback only).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use nixswarm_protocol::StorePathHash;

use crate::AppState;
use crate::error::GatewayError;

fn node(state: &AppState) -> Result<&nixswarm_node::NodeHandle, GatewayError> {
    state.node.as_ref().ok_or(GatewayError::NotFound)
}

fn stopped(e: nixswarm_node::p2p::NodeError) -> GatewayError {
    GatewayError::Internal(e.to_string())
}

fn json(body: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The peers in the routing table (DHT servers).
pub async fn table(State(state): State<Arc<AppState>>) -> Result<Response, GatewayError> {
    let peers = node(&state)?.routing_table().await.map_err(stopped)?;
    let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
    Ok(json(serde_json::json!({ "routing_table": peers })))
}

/// The provider records held for a path, with their addresses.
pub async fn providers(State(state): State<Arc<AppState>>, Path(hash): Path<String>) -> Result<Response, GatewayError> {
    let hash: StorePathHash = hash
        .parse()
        .map_err(|e| GatewayError::BadRequest(format!("not a store path hash: {e}")))?;
    let records = node(&state)?.provider_records(&hash).await.map_err(stopped)?;
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "peer": r.peer.to_string(),
                "addrs": r.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json(serde_json::json!({ "providers": records })))
}
