//! Five real nodes on 127.0.0.1 in one process, bootstrapped off node 0:
//! announce, find providers, fetch and verify; a provider stopped
//! mid-transfer; a peer that serves corrupted chunks; withdrawal after
//! eviction.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use nixswarm_node::p2p::{FetchSettings, Fetcher, Lie};
use nixswarm_protocol::Sha256Hash;
use nixswarm_protocol::wire::{Request, Response};
use sha2::Digest as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_announce_find_and_fetch_verified() {
    let nodes = swarm(5, |_, _| {}).await;
    let bytes = nar(1, 3_000_000);
    nodes[1].put(1, &bytes);
    nodes[2].put(1, &bytes);
    let (p1, p2) = (nodes[1].node.handle.peer_id(), nodes[2].node.handle.peer_id());
    let fetcher = &nodes[4].fetcher;
    wait_providers(&nodes[4], hash(1), 2).await;
    let path = lookup_until(fetcher, hash(1), |p| {
        p.providers.contains(&p1) && p.providers.contains(&p2)
    })
    .await;
    assert_eq!(path.info, info(1, &bytes));
    let (got, err) = collect(fetcher.stream(path)).await;
    assert_eq!(err, None);
    assert_eq!(Sha256Hash(sha2::Sha256::digest(&got).into()), info(1, &bytes).nar_hash);
    let status = nodes[4].node.handle.status().await.unwrap();
    // Each chunk is counted once however many copies arrived; on a slow
    // machine the endgame asks a second peer for the last batches, and a
    // batch goes to at most two peers, so a chunk arrives at most twice.
    assert_eq!(status.bytes_fetched, 3_000_000, "every chunk counted once");
    assert!(
        status.bytes_fetched_duplicate <= 3_000_000,
        "at most one second copy of each chunk: {}",
        status.bytes_fetched_duplicate
    );
    let served: u64 = [&nodes[1], &nodes[2]]
        .iter()
        .map(|n| {
            n.node
                .handle
                .stats
                .bytes_served
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(served > 0);
    // A path nobody has: no answer, quickly.
    assert!(fetcher.lookup(&hash(99)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_stopped_mid_transfer_is_replaced_by_another() {
    // Slow uploads so the transfer is still running when node 1 stops.
    let nodes = swarm(4, |i, c| {
        if i > 0 {
            c.upload_limit = Some(6 << 20);
        }
    })
    .await;
    let bytes = nar(2, 12 << 20);
    nodes[1].put(2, &bytes);
    nodes[2].put(2, &bytes);
    let p1 = nodes[1].node.handle.peer_id();
    let fetcher = nodes[3].fetcher.clone();
    wait_providers(&nodes[3], hash(2), 2).await;
    let path = lookup_until(&fetcher, hash(2), |p| p.providers.len() >= 2).await;
    assert!(path.providers.contains(&p1));
    let mut stream = fetcher.stream(path);
    let mut got = Vec::new();
    while got.len() < 2 << 20 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    nodes[1].cancel.cancel();
    let (rest, err) = collect(stream).await;
    assert_eq!(err, None, "the other provider finishes the transfer");
    got.extend_from_slice(&rest);
    assert_eq!(got, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_chunks_is_caught_dropped_and_banned() {
    let nodes = swarm(4, |i, c| {
        if i == 3 {
            c.lie = Lie::Chunks;
        }
    })
    .await;
    let liar = nodes[3].node.handle.peer_id();
    for n in [3u8, 4] {
        let bytes = nar(n, 4_000_000);
        nodes[2].put(n, &bytes);
        nodes[3].put(n, &bytes);
    }
    let fetcher = nodes[1].fetcher.clone();
    for n in [3u8, 4] {
        wait_providers(&nodes[1], hash(n), 2).await;
        let found = lookup_until(&fetcher, hash(n), |p| p.providers.len() >= 2).await;
        let (got, err) = collect(fetcher.stream(found)).await;
        assert_eq!(err, None);
        assert_eq!(got, nar(n, 4_000_000), "every byte verified, the honest peer filled in");
    }
    assert!(fetcher.is_banned(&liar), "two bad transfers: banned");
    let again = fetcher.lookup(&hash(3)).await.unwrap();
    assert!(!again.providers.contains(&liar), "a banned peer is not asked");

    // With only the liar holding a path, the transfer fails, and whatever
    // came out before the failure is a correct prefix.
    let bytes = nar(5, 2_000_000);
    nodes[3].put(5, &bytes);
    let fresh = Fetcher::new(
        nodes[1].node.handle.clone(),
        nodes[1].store.clone(),
        vec![key().public_key()],
        FetchSettings::default(),
    );
    let found = lookup_until(&fresh, hash(5), |_| true).await;
    let (got, err) = collect(fresh.stream(found)).await;
    assert!(err.is_some_and(|e| e.contains("every peer failed")));
    assert_eq!(got, bytes[..got.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_path_is_withdrawn_and_refused() {
    let nodes = swarm(3, |_, _| {}).await;
    let bytes = nar(6, 500_000);
    nodes[1].put(6, &bytes);
    let fetcher = nodes[2].fetcher.clone();
    wait(|| {
        let f = fetcher.clone();
        async move { f.lookup(&hash(6)).await.is_some() }
    })
    .await;
    let h1 = nodes[1].node.handle.clone();
    wait(|| {
        let h = h1.clone();
        async move { h.status().await.unwrap().provided_keys == 1 }
    })
    .await;
    assert!(nodes[1].store.remove(&hash(6)).unwrap());
    wait(|| {
        let h = h1.clone();
        async move { h.status().await.unwrap().provided_keys == 0 }
    })
    .await;
    let answer = nodes[2]
        .node
        .handle
        .request(h1.peer_id(), Request::PathInfo { hash: hash(6) })
        .await
        .unwrap();
    assert_eq!(answer, Response::NotFound);
    assert!(
        fetcher.lookup(&hash(6)).await.is_none(),
        "no verified provider any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_requests_than_a_connection_carries_wait_their_turn() {
    // A burst of lookups (a closure's prefetches and NAR requests) can ask
    // one peer more at once than a connection's streams allow; those wait
    // their turn, never failing with an error that makes the asker forget
    // a provider that has the path.
    let nodes = swarm(2, |_, _| {}).await;
    let bytes = nar(7, 100_000);
    nodes[1].put(7, &bytes);
    let peer = nodes[1].node.handle.peer_id();
    let h = nodes[0].node.handle.clone();
    wait(|| {
        let h = h.clone();
        async move { h.request(peer, Request::PathInfo { hash: hash(7) }).await.is_ok() }
    })
    .await;
    let answers =
        futures::future::join_all((0..300).map(|_| h.request(peer, Request::PathInfo { hash: hash(7) }))).await;
    let errors: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of 300 failed, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert!(
        answers.iter().any(|a| matches!(a, Ok(Response::PathInfo { .. }))),
        "the path was found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_manifest_gets_only_its_senders_blamed_and_the_fetch_completes() {
    // Nodes 3 and 4 send a manifest of their own for the path (same
    // NarHash and sizes, chunks changed by a byte, which they serve): every
    // chunk verifies against it, only the whole NAR is wrong. Node 2 is
    // honest. Two liars outnumber it, so their manifest is tried first.
    let nodes = swarm(5, |i, c| {
        if i >= 3 {
            c.lie = Lie::Manifest;
        }
    })
    .await;
    let bytes = nar(7, 1_500_000);
    for n in &nodes[2..] {
        n.put(7, &bytes);
    }
    let honest = nodes[2].node.handle.peer_id();
    let liars = [nodes[3].node.handle.peer_id(), nodes[4].node.handle.peer_id()];
    let settings = FetchSettings {
        ban_after: 1,
        lookup_timeout: Duration::from_secs(3),
        ..FetchSettings::default()
    };
    let fetcher = Fetcher::new(
        nodes[1].node.handle.clone(),
        nodes[1].store.clone(),
        vec![key().public_key()],
        settings,
    );
    // All three records first: the fetcher keeps what its first search
    // found for minutes, and one that found only the liars would leave
    // nobody to ask once they are banned.
    wait_providers(&nodes[1], hash(7), 3).await;
    let fake = lookup_until(&fetcher, hash(7), |p| p.providers.len() >= 2).await;
    assert!(
        !fake.providers.contains(&honest),
        "the honest provider is not grouped with the liars"
    );
    assert!(liars.iter().all(|l| fake.providers.contains(l)));
    let (got, err) = collect(fetcher.stream(fake.clone())).await;
    assert_eq!(err, None, "every chunk matched the fake manifest");
    assert_eq!(got.len(), bytes.len());
    assert_ne!(got, bytes, "but the NAR is not the one signed");
    // What the gateway does when the NarHash fails.
    fetcher.reject(&fake);
    assert!(liars.iter().all(|l| fetcher.is_banned(l)), "the senders are blamed");
    assert!(!fetcher.is_banned(&honest), "the honest provider is not");

    let real = lookup_until(&fetcher, hash(7), |_| true).await;
    assert_eq!(real.providers, vec![honest]);
    let (got, err) = collect(fetcher.stream(real)).await;
    assert_eq!(err, None);
    assert_eq!(got, bytes, "the fetch completes from the honest provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_open_more_connections_than_the_limit() {
    let nodes = swarm(2, |_, _| {}).await;
    let victim = nodes[0].addr();
    for _ in 0..6 {
        nodes[1].node.handle.dial(victim.clone()).await.unwrap();
    }
    // Each dial is a new connection attempt; the victim keeps at most
    // MAX_PER_PEER (a TCP, a QUIC and a relayed one).
    let mut most = 0;
    for _ in 0..40 {
        most = most.max(nodes[0].node.handle.status().await.unwrap().connections);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most >= 1);
    let limit = nixswarm_node::p2p::behaviour::MAX_PER_PEER;
    assert!(
        most <= limit,
        "the victim held {most} connections from one peer (limit {limit})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_above_its_memory_budget_takes_no_new_connection() {
    // A budget below what any process uses: every connection is refused,
    // and the one that dialled sees why.
    let full = TestNode::start(None, |c| c.test_memory_budget = Some(1 << 20)).await;
    let other = TestNode::start(None, |_| {}).await;
    let err = other.node.handle.dial(full.addr()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        full.node.handle.peers().await.unwrap().is_empty(),
        "connected above the budget ({err:?})"
    );
    // Under the budget, the same dial connects.
    let roomy = TestNode::start(None, |_| {}).await;
    other.node.handle.dial(roomy.addr()).await.unwrap();
    wait(|| async { !roomy.node.handle.peers().await.unwrap().is_empty() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_sends_its_chunks_compressed() {
    // A 4 MiB/s upload and a NAR of hex text (zstd halves it): compressed
    // batches deliver about twice the NAR bytes per second, so after one
    // batch asked each way the fetcher asks for compressed ones.
    let nodes = swarm(2, |i, c| {
        if i == 1 {
            c.upload_limit = Some(4 << 20);
        }
    })
    .await;
    let bytes: Vec<u8> = nar(5, 6 << 20)
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    nodes[1].put(5, &bytes);
    let fetcher = &nodes[0].fetcher;
    let path = lookup_until(fetcher, hash(5), |p| !p.providers.is_empty()).await;
    let (got, err) = collect(fetcher.stream(path)).await;
    assert_eq!(err, None);
    assert!(got == bytes, "the NAR arrives whole");
    let status = nodes[0].node.handle.status().await.unwrap();
    assert_eq!(status.bytes_fetched, bytes.len() as u64);
    assert!(
        status.bytes_fetched_wire < status.bytes_fetched * 3 / 4,
        "{} bytes on the wire for {} fetched",
        status.bytes_fetched_wire,
        status.bytes_fetched
    );
    // The sender's status says its limit held it back (12 MiB of text,
    // about half on the wire, at 4 MiB/s with 1 s of burst), the
    // receiver's that it has none.
    let sender = nodes[1].node.handle.status().await.unwrap().upload;
    assert_eq!(sender.limit, Some(4 << 20));
    assert!(sender.waited_ms > 0, "{sender:?}");
    assert_eq!(status.upload.limit, None);
    assert_eq!(status.upload.waited_ms, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_nar_comes_with_its_lookup_and_a_liars_is_caught() {
    let nodes = swarm(3, |i, c| {
        if i == 2 {
            c.lie = Lie::Chunks;
        }
    })
    .await;
    let small = nar(8, 150_000);
    let large = nar(9, 600_000);
    nodes[1].put(8, &small);
    nodes[1].put(9, &large);
    let fetcher = &nodes[0].fetcher;
    wait_providers(&nodes[0], hash(8), 1).await;
    let path = lookup_until(fetcher, hash(8), |_| true).await;
    assert_eq!(path.inline_bytes(), 150_000, "every chunk came with the lookup");
    let (got, err) = collect(fetcher.stream(path)).await;
    assert_eq!((got.len(), err), (small.len(), None));
    assert_eq!(got, small);
    let status = nodes[0].node.handle.status().await.unwrap();
    assert_eq!(
        (status.bytes_fetched, status.bytes_fetched_inline),
        (150_000, 150_000),
        "no chunk was asked for"
    );
    // Over the limit: the lookup brings the path info alone.
    wait_providers(&nodes[0], hash(9), 1).await;
    let path = lookup_until(fetcher, hash(9), |_| true).await;
    assert_eq!(path.inline_bytes(), 0);
    let (got, _) = collect(fetcher.stream(path)).await;
    assert_eq!(got, large);

    // A liar's inline chunks are checked before its answer counts.
    let liar = nodes[2].node.handle.peer_id();
    let bytes = nar(10, 100_000);
    nodes[2].put(10, &bytes);
    wait_providers(&nodes[0], hash(10), 1).await;
    for _ in 0..2 {
        assert!(fetcher.lookup(&hash(10)).await.is_none(), "its answer is a lie");
    }
    assert!(fetcher.is_banned(&liar), "two lies: banned");
}

/// A peer that says it holds every path (`Have`) and answers every lookup
/// "not found" costs each fetcher a round trip per path: three such false
/// claims within ten minutes ban it, and it is asked nothing more. Before,
/// it was only forgotten for that one path, and claimed the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_claims_paths_it_does_not_have_is_banned() {
    let nodes = swarm(4, |i, c| {
        if i == 3 {
            c.lie = Lie::FalseClaims;
        }
    })
    .await;
    let liar = nodes[3].node.handle.peer_id();
    let fetcher = nodes[1].fetcher.clone();
    wait(|| async { nodes[1].node.handle.peers().await.unwrap().contains(&liar) }).await;
    let mut lookups = 0;
    for n in 40u8..50 {
        let bytes = nar(n, 100_000);
        nodes[2].put(n, &bytes);
        wait_providers(&nodes[1], hash(n), 1).await;
        let found = lookup_until(&fetcher, hash(n), |_| true).await;
        assert!(!found.providers.contains(&liar), "a peer with nothing is no provider");
        lookups += 1;
        if fetcher.is_banned(&liar) {
            break;
        }
    }
    assert!(
        fetcher.is_banned(&liar),
        "{lookups} lookups, and the false claimer is not banned"
    );
    assert!(lookups >= nixswarm_node::p2p::FALSE_CLAIMS as usize);
}
