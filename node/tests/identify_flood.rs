//! A hostile peer (a real libp2p swarm: `p2p::identify_flood`, test builds
//! only) that claims the DHT protocol and pushes identify messages of 150
//! fresh addresses 20 times a second. Before the node kept a bounded book
//! of addresses, each push went into Kademlia's per-peer list, which grew
//! without bound (and every insert scanned it and copied it into an
//! event). Now the victim's routing table holds a few addresses for it,
//! however long it pushes, and the victim keeps answering.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::TestNode;
use nixswarm_node::p2p::identify_flood::{self, PER_PUSH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identify_push_flood_keeps_a_few_addresses() {
    const PUSHES: u32 = 200;
    let victim = TestNode::start(None, |_| {}).await;
    let (stop, pushes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let (me, pusher) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn(identify_flood::run(
        true,
        victim.addr(),
        victim.node.handle.peer_id(),
        Some(PUSHES),
        stop,
        pushes.clone(),
        me,
    ));
    let pusher = pusher.await.expect("the pusher's id");
    // The victim keeps answering.
    let mut slowest = Duration::ZERO;
    while !flood.is_finished() {
        let t = Instant::now();
        victim.node.handle.status().await.expect("status");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flood.await.expect("the flood task").expect("the flood");
    let s = victim.node.handle.status().await.expect("status");
    eprintln!(
        "{} pushes of {PER_PUSH} addresses: the victim's routing table holds {} addresses; slowest status answer {slowest:?}",
        pushes.load(Ordering::Relaxed),
        s.routing_addresses
    );
    assert_eq!(pushes.load(Ordering::Relaxed), PUSHES);
    let table = victim.node.handle.routing_table().await.expect("routing table");
    assert!(
        table.contains(&pusher),
        "the pusher is in the table: its claims were heard"
    );
    assert!(
        s.routing_addresses <= 8,
        "{} addresses kept for one peer",
        s.routing_addresses
    );
}

/// A peer that claims the DHT protocol but cannot be dialled back (it
/// listens nowhere; every address it claims is elsewhere) never enters the
/// routing table: before, whatever a connected peer claimed went in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_be_dialled_back_stays_out_of_the_routing_table() {
    let victim = TestNode::start(None, |_| {}).await;
    let (stop, pushes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let (me, pusher) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn(identify_flood::run(
        false,
        victim.addr(),
        victim.node.handle.peer_id(),
        Some(40),
        stop,
        pushes.clone(),
        me,
    ));
    let pusher = pusher.await.expect("the pusher's id");
    flood.await.expect("the flood task").expect("the flood");
    // Every push went over a connection to the victim.
    assert_eq!(pushes.load(Ordering::Relaxed), 40);
    let table = victim.node.handle.routing_table().await.expect("routing table");
    assert!(
        !table.contains(&pusher),
        "a peer nobody dialled is in the routing table"
    );
}
