//! Who enters the routing table: a node admits a DHT server only after
//! dialling it, and at most two peers of one network (IPv4 /24, IPv6 /48)
//! per bucket, so identities made on one host or network cannot fill the
//! table (and, through FIND_NODE answers, other nodes' lookups). Here 14
//! DHT servers on 127.0.0.1 (loopback counted as one host's network, as
//! a remote host's would be) are all dialled by one node.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::TestNode;
use libp2p::kad::KBucketKey;
use nixswarm_node::p2p::PER_BUCKET_NETWORK;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_takes_at_most_two_peers_of_one_network() {
    // The node's key first, so the servers can be made until one bucket
    // gets more than two (14 random ids almost always do).
    let dir = tempfile::tempdir().unwrap();
    let key = nixswarm_node::p2p::load_or_create_key(&dir.path().join("node.key")).unwrap();
    let me = KBucketKey::from(key.public().to_peer_id());
    let (mut servers, mut per_bucket) = (Vec::new(), HashMap::<u32, usize>::new());
    while servers.len() < 14 || per_bucket.values().all(|n| *n <= PER_BUCKET_NETWORK) {
        let s = TestNode::start(None, |_| {}).await;
        let d = KBucketKey::from(s.node.handle.peer_id()).distance(&me).ilog2().unwrap();
        *per_bucket.entry(d).or_default() += 1;
        servers.push(s);
    }
    let addrs: Vec<_> = servers.iter().map(TestNode::addr).collect();
    let node = TestNode::start_with_key(key, None, |c| {
        c.bootstrap = addrs;
        c.test_count_loopback = true;
    })
    .await;
    let expected: usize = per_bucket.values().map(|n| (*n).min(PER_BUCKET_NETWORK)).sum();
    let h = &node.node.handle;
    let end = Instant::now() + Duration::from_secs(15);
    while h.peers().await.unwrap().len() < servers.len() {
        assert!(Instant::now() < end, "the node never reached every server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Admission follows the dials; give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let table = h.routing_table().await.unwrap();
    let status = h.status().await.unwrap();
    eprintln!(
        "{} servers in buckets {per_bucket:?}: {} admitted, {} kept out",
        servers.len(),
        table.len(),
        status.not_admitted
    );
    assert_eq!(table.len(), expected, "buckets {per_bucket:?}");
    assert!(status.not_admitted > 0);
}
