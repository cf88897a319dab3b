//! Which nodes are DHT servers: a node whose addresses nobody confirmed
//! (here: loopback addresses, not announced) runs Kademlia in client mode,
//! never enters another node's routing table, advertises nothing, and still
//! finds and fetches what the servers announce. `DhtMode::Server` forces
//! server mode (but a node tells peers only the addresses it advertises,
//! so one with none enters no routing table either).
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
        table.contains(&other_id)
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
    // The forced server answers queries, but identify tells peers only
    // advertised addresses, and it has none (loopback, not announced):
    // nobody can add it to a routing table, and nobody learns its
    // listen addresses.
    for n in [&public, &other] {
        let table = n.node.handle.routing_table().await.unwrap();
        assert!(!table.contains(&forced_id), "listen addresses leaked through identify");
    }

    // As a client it still finds and fetches what a server announced
    // (dialling it where told to: outside LAN mode, a loopback address
    // found in the DHT is not dialled).
    let bytes = nar(21, 300_000);
    other.put(21, &bytes);
    hidden.node.handle.dial(other.addr()).await.unwrap();
    let path = lookup_until(&hidden.fetcher, hash(21), |p| p.providers.contains(&other_id)).await;
    let (got, err) = collect(hidden.fetcher.stream(path)).await;
    assert_eq!(err, None);
    assert_eq!(got, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_ipv6_and_an_unbindable_ipv6_address_is_skipped() {
    let v6: libp2p::Multiaddr = "/ip6/::1/tcp/0".parse().unwrap();
    let a = TestNode::start(None, |c| c.listen.push(v6.clone())).await;
    let a6 = a
        .node
        .listen_addrs
        .iter()
        .find(|m| matches!(m.iter().next(), Some(libp2p::multiaddr::Protocol::Ip6(_))))
        .expect("listening on IPv6")
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(a.node.handle.peer_id()));
    // B has IPv6 only, and knows A by its IPv6 address.
    let b = TestNode::start(Some(a6), |c| c.listen = vec![v6.clone()]).await;
    wait(|| async { !b.node.handle.peers().await.unwrap().is_empty() }).await;
    let bytes = nar(22, 200_000);
    a.put(22, &bytes);
    let a_id = a.node.handle.peer_id();
    let path = lookup_until(&b.fetcher, hash(22), |p| p.providers.contains(&a_id)).await;
    let (got, err) = collect(b.fetcher.stream(path)).await;
    assert_eq!(err, None);
    assert_eq!(got, bytes);

    // An IPv6 address this host does not have (2001:db8::/32 is for
    // documentation): skipped beside IPv4, an error alone.
    let absent: libp2p::Multiaddr = "/ip6/2001:db8::1/tcp/0".parse().unwrap();
    let c = TestNode::start(None, |c| c.listen.push(absent.clone())).await;
    assert!(
        c.node.listen_addrs.iter().all(|m| !m.to_string().contains("2001:db8")),
        "{:?}",
        c.node.listen_addrs
    );
    let dir = tempfile::tempdir().unwrap();
    let only = nixswarm_node::NodeConfig {
        listen: vec![absent],
        ..nixswarm_node::NodeConfig::default()
    };
    let key = nixswarm_node::p2p::load_or_create_key(&dir.path().join("k")).unwrap();
    let err = nixswarm_node::Node::start(
        dir.path(),
        key,
        nixswarm_node::Shelves::default(),
        only,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("2001:db8::1"), "{err}");
}
