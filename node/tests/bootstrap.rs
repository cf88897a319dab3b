//! Joining by address: a bootstrap address with or without `/p2p/<id>`,
//! or by name; a bootstrap node that restarted is found again in seconds;
//! a TCP port another node holds is refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestNode, key};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use nixswarm_node::{ChunkStore, Node, NodeConfig, NodeError, SharePolicy, Shelves, StoreOptions};
use tokio_util::sync::CancellationToken;

async fn joined(n: &TestNode, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if !n.node.handle.peers().await.unwrap().is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn port_of(a: &Multiaddr) -> u16 {
    a.iter()
        .find_map(|p| match p {
            Protocol::Tcp(p) => Some(p),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_address_needs_no_peer_id_and_may_name_its_host() {
    let a = TestNode::start(None, |_| {}).await;
    let port = port_of(&a.node.listen_addrs[0]);
    let bare: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let named: Multiaddr = format!("/dns4/localhost/tcp/{port}").parse().unwrap();
    for addr in [bare, named] {
        let b = TestNode::start(Some(addr.clone()), |_| {}).await;
        assert!(joined(&b, Duration::from_secs(10)).await, "{addr} never joined");
        let peers = b.node.handle.peers().await.unwrap();
        assert!(peers.contains(&a.node.handle.peer_id()), "{addr}: {peers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_node_that_restarted_is_found_again_in_seconds() {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let a = TestNode::start_with_key(keypair.clone(), None, |_| {}).await;
    let listen = a.node.listen_addrs[0].clone();
    let b = TestNode::start(Some(a.addr()), |_| {}).await;
    assert!(joined(&b, Duration::from_secs(10)).await);

    a.cancel.cancel();
    drop(a);
    let end = Instant::now() + Duration::from_secs(20);
    while !b.node.handle.peers().await.unwrap().is_empty() {
        assert!(Instant::now() < end, "B never noticed A had gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Away for a while: B's Kademlia gives up on it meanwhile.
    let mut found = b.node.handle.find_providers(&common::hash(1)).await.unwrap();
    while found.recv().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(12)).await;
    // A again, same identity, same port (the bootstrap list has one
    // address: Kademlia's next walk is 5 minutes away).
    let again = TestNode::start_with_key(keypair, None, move |c| c.listen = vec![listen]).await;
    let start = Instant::now();
    assert!(
        joined(&b, Duration::from_secs(30)).await,
        "B did not find the restarted bootstrap node"
    );
    // Backoff doubles from 1 s: B was alone a few seconds at most.
    eprintln!("rejoined {:?} after A came back", start.elapsed());
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_port_another_node_holds_is_refused() {
    let a = TestNode::start(None, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&dir.path().join("store"), StoreOptions::with_quota(1 << 30)).unwrap();
    let config = NodeConfig {
        listen: vec![a.node.listen_addrs[0].clone()],
        ..NodeConfig::default()
    };
    let shelves = Shelves::store(store, SharePolicy::new(vec![key().public_key()], false));
    let started = Node::start(
        dir.path(),
        libp2p::identity::Keypair::generate_ed25519(),
        shelves,
        config,
        CancellationToken::new(),
    )
    .await;
    let Err(err) = started else {
        panic!("a second node listened on the same TCP port");
    };
    assert!(
        matches!(&err, NodeError::Listen { message, .. } if message.contains("in use")),
        "{err}"
    );
}
