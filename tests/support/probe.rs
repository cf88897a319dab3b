//! An in-process node that shares nothing and asks peers directly, as any
//! program speaking the protocol could.

use anyhow::{Result, bail};
use nixswarm_node::p2p::load_or_create_key;
use nixswarm_node::{Node, NodeConfig, NodeHandle, Shelves};
use nixswarm_protocol::StorePathHash;
use nixswarm_protocol::wire::{Request, Response};

/// The hash part of a store path.
pub fn hash_of(path: &str) -> StorePathHash {
    path.trim_start_matches("/nix/store/")[..32]
        .parse()
        .expect("a store path")
}

/// A node that shares nothing, with its key `dir/<name>.key`.
async fn start(dir: &std::path::Path, name: &str, config: NodeConfig) -> Result<Node> {
    let key = load_or_create_key(&dir.join(format!("{name}.key")))?;
    let node = Node::start(
        dir,
        key,
        Shelves::default(),
        config,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    Ok(node)
}

/// Starts the probe in `dir` and connects it to `addr` (with /p2p/<id>).
pub async fn probe(dir: &std::path::Path, addr: &str) -> Result<(NodeHandle, libp2p::PeerId)> {
    let config = NodeConfig {
        server: false,
        ..NodeConfig::default()
    };
    let node = start(dir, "probe", config).await?;
    let addr: libp2p::Multiaddr = addr.parse()?;
    let peer = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => bail!("no peer id in {addr}"),
    };
    node.handle.dial(addr).await?;
    Ok((node.handle, peer))
}

/// A node that shares nothing and waits on 127.0.0.1 for others to dial
/// it; returns it and its address (with /p2p/<id>).
pub async fn listener(dir: &std::path::Path) -> Result<(NodeHandle, String)> {
    let config = NodeConfig {
        server: false,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        announce_private: true,
        ..NodeConfig::default()
    };
    let node = start(dir, "listener", config).await?;
    let addr = format!("{}/p2p/{}", node.listen_addrs[0], node.handle.peer_id());
    Ok((node.handle, addr))
}

/// Asks `peer` for the narinfo and manifest of `path`.
pub async fn path_info(h: &NodeHandle, peer: libp2p::PeerId, path: &str) -> Result<Response> {
    Ok(h.request(peer, Request::PathInfo { hash: hash_of(path) }).await?)
}
