//! Which of its addresses a node believes reachable. An AutoNAT server
//! that lies (`p2p::autonat::liar`, test builds only: it answers
//! "reachable" for any address, and proves it by sending the nonce over a
//! connection it already has) used to be enough for a node to advertise
//! an address it does not have, for good; now servers in two networks
//! must agree. Networks here are loopback /24s (127.0.N.0), each standing
//! for a host's network (`test_count_loopback`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use libp2p::Multiaddr;
use nixswarm_node::p2p::autonat::{PROBE_EVERY, liar};

/// Waits up to `within` for `cond`; gives back whether it held.
async fn holds_within<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn at(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_servers_in_one_network_confirm_nothing_and_two_networks_of_them_do() {
    // An address the node does not have, reported to it (as a lying
    // observer or UPnP router would).
    let fake = at("/ip4/127.0.9.9/tcp/9");
    let v = TestNode::start(None, |c| {
        c.announce_private = false;
        c.test_count_loopback = true;
        c.test_candidates = vec![fake.clone()];
    })
    .await;
    let h = &v.node.handle;
    let claims = |s: &nixswarm_node::p2p::NodeStatus| s.external_addrs.contains(&fake.to_string());

    // Two liars in one network: the node dials each, and each dials it.
    let mut liars = Vec::new();
    for ip in ["127.0.3.1", "127.0.3.2"] {
        let l = liar::start(at(&format!("/ip4/{ip}/tcp/0")), v.addr()).await.unwrap();
        h.dial(l.addr.clone()).await.unwrap();
        liars.push(l);
    }
    let confirmed = holds_within(PROBE_EVERY * 4, || async { claims(&h.status().await.unwrap()) }).await;
    let status = h.status().await.unwrap();
    assert!(!confirmed, "one network's word made it public: {status:?}");
    assert_ne!(status.reachability, "public", "{status:?}");

    // A third in another network: two networks agree, and the lie holds
    // (agreement bounds a liar to its network; it is no proof against
    // liars in several).
    let l = liar::start(at("/ip4/127.0.4.1/tcp/0"), v.addr()).await.unwrap();
    h.dial(l.addr.clone()).await.unwrap();
    liars.push(l);
    let confirmed = holds_within(PROBE_EVERY * 6, || async { claims(&h.status().await.unwrap()) }).await;
    assert!(
        confirmed,
        "the liars never got through: {:?}",
        h.status().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_address_counts_once_servers_in_two_networks_dial_it_back() {
    let server = |ip: &'static str| {
        move |c: &mut nixswarm_node::NodeConfig| {
            c.listen = vec![at(&format!("/ip4/{ip}/tcp/0"))];
            c.test_count_loopback = true;
        }
    };
    let s1 = TestNode::start(None, server("127.0.1.1")).await;
    let s2 = TestNode::start(None, server("127.0.2.1")).await;
    let v = TestNode::start(Some(s1.addr()), |c| {
        c.announce_private = false;
        c.test_count_loopback = true;
    })
    .await;
    let h = &v.node.handle;
    let own = v.node.listen_addrs[0].to_string();
    let public = || async {
        let s = h.status().await.unwrap();
        s.reachability == "public" && s.external_addrs.contains(&own)
    };
    // One server (one network) dials back, and that is not enough.
    assert!(
        !holds_within(PROBE_EVERY * 3, public).await,
        "{:?}",
        h.status().await.unwrap()
    );
    h.dial(s2.addr()).await.unwrap();
    assert!(
        holds_within(PROBE_EVERY * 6, public).await,
        "two networks never agreed: {:?}",
        h.status().await.unwrap()
    );
}
