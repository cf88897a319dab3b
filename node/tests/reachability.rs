//! Which nodes are DHT servers: a node whose addresses nobody confirmed
//! (here: loopback addresses, not announced) runs Kademlia in client mode,
//! never enters another node's routing table, advertises nothing, and still
//! finds and fetches what the servers announce. `DhtMode::Server` forces
//! server mode.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use nixswarm_node::p2p::DhtMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_node_is_a_dht_client_and_not_in_routing_tables() {
    let public = TestNode::start(None, |_| {}).await;
    let boot = public.addr();
    let other = TestNode::start(Some(boot.clone()), |_| {}).await;
    // Loopback addresses are not global: without `announce_private`
    // nothing is confirmed (no AutoNAT server here dials loopback back).
    let hidden = TestNode::start(Some(boot.clone()), |c| c.announce_private = false).await;
    let forced = TestNode::start(Some(boot), |c| {
        c.announce_private = false;
        c.dht = DhtMode::Server;
    })
    .await;
    for n in [&other, &hidden, &forced] {
        wait(|| async { !n.node.handle.peers().await.unwrap().is_empty() }).await;
    }
    let status = hidden.node.handle.status().await.unwrap();
    assert!(!status.dht_server, "{status:?}");
    assert!(status.external_addrs.is_empty(), "nothing advertised: {status:?}");
    assert_ne!(status.reachability, "public");
    let status = public.node.handle.status().await.unwrap();
    assert!(status.dht_server && status.reachability == "public", "{status:?}");
    assert!(forced.node.handle.status().await.unwrap().dht_server);

    let (hidden_id, forced_id, other_id) = (
        hidden.node.handle.peer_id(),
        forced.node.handle.peer_id(),
        other.node.handle.peer_id(),
    );
    wait(|| async {
        let table = public.node.handle.routing_table().await.unwrap();
        table.contains(&other_id) && table.contains(&forced_id)
    })
    .await;
    // The client knows the servers; no server lists the client.
    wait(|| async {
        hidden
            .node
            .handle
            .routing_table()
            .await
            .unwrap()
            .contains(&public.node.handle.peer_id())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in [&public, &other, &forced] {
        let table = n.node.handle.routing_table().await.unwrap();
        assert!(!table.contains(&hidden_id), "a DHT client in a routing table");
    }

    // As a client it still finds and fetches what a server announced.
    let bytes = nar(21, 300_000);
    other.put(21, &bytes);
    let path = lookup_until(&hidden.fetcher, hash(21), |p| p.providers.contains(&other_id)).await;
    let (got, err) = collect(hidden.fetcher.stream(path)).await;
    assert_eq!(err, None);
    assert_eq!(got, bytes);
}
