//! A hostile DHT server (a real libp2p swarm: `p2p::reflector`, test
//! builds only) answers provider lookups with made-up providers, all at
//! one target address. Before the dial guard, the node looking the paths
//! up dialled every one of them (Kademlia walks the providers an answer
//! lists, and the node dialled each as it was found): any DHT server could
//! point every node that looks up a popular path at a victim, or at the
//! user's own machine and LAN.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestNode, hash};
use libp2p::Multiaddr;
use nixswarm_node::p2p::dial_guard::{TARGET_BURST, TARGET_EVERY};
use nixswarm_node::p2p::{dht_key, reflector};

/// Providers listed per key (a Kademlia answer carries up to 20).
const FAKES: usize = 20;
/// Paths looked up.
const KEYS: u8 = 5;

/// A TCP listener on 127.0.0.1 that counts the connections made to it.
fn target() -> (Multiaddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            count.fetch_add(1, Ordering::Relaxed);
            drop(conn);
        }
    });
    (format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap(), accepted)
}

/// Looks the paths up through the reflector; returns the providers found,
/// the connections the target got and how long it took.
async fn lookups(lan: bool) -> (usize, usize, Duration) {
    let (at, accepted) = target();
    let keys: Vec<_> = (0..KEYS).map(|k| dht_key(&hash(100 + k))).collect();
    let refl = reflector::start(&keys, FAKES, vec![at]).await.unwrap();
    let node = TestNode::start(Some(refl.addr.clone()), |c| {
        c.announce_private = lan;
        // Loopback counts as the remote host it stands for.
        c.test_count_loopback = true;
    })
    .await;
    let h = &node.node.handle;
    let end = Instant::now() + Duration::from_secs(10);
    while h.routing_table().await.unwrap().is_empty() {
        assert!(Instant::now() < end, "the reflector never entered the routing table");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    let mut found = 0;
    for k in 0..KEYS {
        let mut rx = h.find_providers(&hash(100 + k)).await.unwrap();
        while tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .ok()
            .flatten()
            .is_some()
        {
            found += 1;
        }
    }
    // Dials that were made have reached the target by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (found, accepted.load(Ordering::Relaxed), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_at_a_loopback_address_are_not_dialled_outside_lan_mode() {
    let (found, accepted, _) = lookups(false).await;
    assert!(found >= FAKES, "the reflector answered: {found} providers");
    assert_eq!(accepted, 0, "the node dialled a loopback target a DHT server gave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_target_gets_a_bounded_number_of_dials_whatever_the_answers_say() {
    let (found, accepted, took) = lookups(true).await;
    assert!(found >= 2 * FAKES, "the reflector answered: {found} providers");
    let bound = TARGET_BURST as usize + (took.as_secs_f64() / TARGET_EVERY.as_secs_f64()).ceil() as usize;
    assert!(
        accepted <= bound,
        "{accepted} connections to one target from {found} providers found in {took:?} (bound {bound})"
    );
}
