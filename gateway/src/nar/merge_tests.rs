//! The merge with in-memory legs; time is paused, so deadlines and rates
//! are exact.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use nixswarm_protocol::{Sha256Hash, StorePath, StorePathHash};

use super::*;
use crate::source::{SourceError, SourceKind};

/// An upstream holding one NAR, sent 7000 bytes at a time, one piece per
/// `pace`; counts how often its NAR was opened and how much it sent.
#[derive(Debug)]
struct Whole {
    info: NarInfo,
    nar: Vec<u8>,
    opened: AtomicUsize,
    pace: Duration,
    sent: Arc<AtomicUsize>,
}

impl Source for Whole {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }
    fn name(&self) -> &str {
        "whole"
    }
    fn narinfo<'a>(&'a self, _: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        Box::pin(async move { Ok(Some(self.info.clone())) })
    }
    fn nar<'a>(&'a self, _: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let pieces: Vec<Bytes> = self.nar.chunks(7000).map(Bytes::copy_from_slice).collect();
        let (pace, sent) = (self.pace, self.sent.clone());
        let s = futures::stream::iter(pieces).then(move |p| {
            let sent = sent.clone();
            async move {
                tokio::time::sleep(pace).await;
                sent.fetch_add(p.len(), Ordering::Relaxed);
                Ok(p)
            }
        });
        Box::pin(async move { Ok(Some(s.boxed())) })
    }
}

fn info(nar: &[u8]) -> NarInfo {
    NarInfo {
        store_path: StorePath::new(StorePathHash::from_bytes(&[3; 20]), "x").unwrap(),
        url: "nar/x.nar".into(),
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256Hash::digest(nar),
        nar_size: nar.len() as u64,
        references: vec![],
        deriver: None,
        sigs: vec![],
        ca: None,
    }
}

fn nar() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7) as u8).collect()
}

fn upstream(nar: &[u8]) -> Arc<Whole> {
    paced(nar, Duration::ZERO)
}

fn paced(nar: &[u8], pace: Duration) -> Arc<Whole> {
    Arc::new(Whole {
        info: info(nar),
        nar: nar.to_vec(),
        opened: AtomicUsize::new(0),
        pace,
        sent: Arc::default(),
    })
}

const PEER: SourceId = SourceId(0);
const UP: SourceId = SourceId(1);
const UP2: SourceId = SourceId(2);

fn fallback(w: &Arc<Whole>) -> Fallback {
    Fallback {
        id: UP,
        source: w.clone(),
        info: None,
    }
}

/// Records what was blamed.
#[derive(Debug, Default)]
struct Blamed(Mutex<Vec<(SourceId, String)>>);

impl Blame for Blamed {
    fn leg_failed(&self, id: SourceId, _: &NarInfo, why: &str) {
        self.0.lock().unwrap().push((id, why.to_owned()));
    }
}

fn spec(nar: &[u8], forward: Vec<Forward>, fallbacks: Vec<Fallback>) -> (Spec, Arc<Blamed>) {
    let blamed = Arc::new(Blamed::default());
    let spec = Spec {
        info: info(nar),
        forward,
        tail: None,
        tail_later: None,
        hedge: None,
        fallbacks,
        tail_budget: 64 << 20,
        estimates: Arc::default(),
        blame: blamed.clone(),
    };
    (spec, blamed)
}

/// Opens `w` as a forward leg now.
async fn open(w: &Arc<Whole>, id: SourceId) -> Forward {
    let s = w.nar(&w.info).await.unwrap().unwrap();
    Forward::new(id, SourceKind::Upstream, s)
}

fn peer_leg(s: ByteStream) -> Forward {
    Forward::new(PEER, SourceKind::Peer, s)
}

/// A peers' tail: the NAR's 4096-byte chunks from the end, one per `pace`.
fn tail(nar: &[u8], pace: Duration, fail_after: Option<usize>) -> TailStream {
    let mut chunks: Vec<(u64, Bytes)> = nar
        .chunks(4096)
        .enumerate()
        .map(|(i, c)| ((i * 4096) as u64, Bytes::copy_from_slice(c)))
        .collect();
    chunks.reverse();
    let n = fail_after.unwrap_or(chunks.len());
    let items: Vec<std::io::Result<(u64, Bytes)>> = chunks
        .into_iter()
        .take(n)
        .map(Ok)
        .chain(fail_after.map(|_| Err(std::io::Error::other("peer gone"))))
        .collect();
    futures::stream::iter(items)
        .then(move |c| async move {
            tokio::time::sleep(pace).await;
            c
        })
        .boxed()
}

/// Collects the bytes and which source sent how many.
async fn collect(mut s: TaggedStream) -> Result<(Vec<u8>, [u64; 3]), String> {
    let mut out = Vec::new();
    let mut by = [0u64; 3];
    while let Some(p) = s.next().await {
        let (id, b) = p.map_err(|e| e.to_string())?;
        by[id.0] += b.len() as u64;
        out.extend_from_slice(&b);
    }
    Ok((out, by))
}

fn failing_after(nar: &[u8], n: usize) -> ByteStream {
    let mut pieces: Vec<std::io::Result<Bytes>> =
        nar[..n].chunks(5000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    pieces.push(Err(std::io::Error::other("every peer failed")));
    futures::stream::iter(pieces).boxed()
}

/// A leg that sends nothing for `delay`, then the whole NAR.
fn slow(nar: &[u8], delay: Duration) -> ByteStream {
    let nar = Bytes::copy_from_slice(nar);
    futures::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok(nar)
    })
    .boxed()
}

#[tokio::test]
async fn when_a_leg_fails_midway_the_rest_comes_from_a_fallback() {
    let nar = nar();
    for cut in [0, 1, 4999, 5000, 63_001, 99_999] {
        let up = upstream(&nar);
        let (s, _) = spec(&nar, vec![peer_leg(failing_after(&nar, cut))], vec![fallback(&up)]);
        let (got, by) = collect(merge(s)).await.unwrap();
        assert_eq!(got, nar, "the peers failed after {cut} bytes");
        assert_eq!(
            by,
            [cut as u64, (nar.len() - cut) as u64, 0],
            "each byte credited to who sent it"
        );
    }
    // A fallback with another NAR for the path is not used; with none left it fails.
    let mut other = nar.clone();
    other[0] ^= 1;
    let (s, _) = spec(
        &nar,
        vec![peer_leg(failing_after(&nar, 10))],
        vec![fallback(&upstream(&other))],
    );
    assert!(
        collect(merge(s))
            .await
            .unwrap_err()
            .contains("every source failed after 10")
    );
}

#[tokio::test]
async fn an_upstream_that_ends_early_is_blamed_and_the_next_one_finishes() {
    let nar = nar();
    let mut short = upstream(&nar);
    Arc::get_mut(&mut short).unwrap().nar.truncate(nar.len() / 2);
    let good = upstream(&nar);
    let (s, blamed) = spec(
        &nar,
        vec![open(&short, UP).await],
        vec![Fallback {
            id: UP2,
            source: good.clone(),
            info: None,
        }],
    );
    let (got, by) = collect(merge(s)).await.unwrap();
    assert_eq!(got, nar);
    assert_eq!(by, [0, (nar.len() / 2) as u64, (nar.len() - nar.len() / 2) as u64]);
    let blamed = blamed.0.lock().unwrap().clone();
    assert_eq!(blamed.len(), 1);
    assert_eq!(blamed[0].0, UP);
    assert!(blamed[0].1.contains("ended after 50000 of 100000"), "{blamed:?}");
}

#[tokio::test(start_paused = true)]
async fn peers_that_finish_in_time_are_not_hedged() {
    let nar = nar();
    let up = upstream(&nar);
    let (mut s, _) = spec(
        &nar,
        vec![peer_leg(slow(&nar, Duration::from_millis(900)))],
        vec![fallback(&up)],
    );
    s.hedge = Some(Duration::from_secs(1));
    let (got, by) = collect(merge(s)).await.unwrap();
    assert_eq!((got, by), (nar.clone(), [nar.len() as u64, 0, 0]));
    assert_eq!(
        up.opened.load(Ordering::Relaxed),
        0,
        "the upstream was never asked for the NAR"
    );
}

#[tokio::test(start_paused = true)]
async fn late_peers_get_an_upstream_beside_them_and_the_one_ahead_serves() {
    let nar = nar();
    let up = upstream(&nar);
    let (mut s, _) = spec(
        &nar,
        vec![peer_leg(slow(&nar, Duration::from_secs(5)))],
        vec![fallback(&up)],
    );
    s.hedge = Some(Duration::from_secs(1));
    let (got, by) = collect(merge(s)).await.unwrap();
    assert_eq!((got, by), (nar.clone(), [0, nar.len() as u64, 0]));
    assert_eq!(up.opened.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn hedged_peers_that_fail_leave_the_upstream_to_finish() {
    let nar = nar();
    let up = upstream(&nar);
    let dead = futures::stream::once(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Err(std::io::Error::other("peers gone"))
    })
    .boxed();
    let (mut s, _) = spec(&nar, vec![peer_leg(dead)], vec![fallback(&up)]);
    s.hedge = Some(Duration::from_secs(1));
    assert_eq!(collect(merge(s)).await.unwrap().0, nar);
}

#[tokio::test(start_paused = true)]
async fn two_ended_the_upstream_sends_only_the_head_and_peers_the_tail() {
    let nar = nar();
    // 15 upstream pieces of 7000 bytes at 10 ms; 25 peer chunks of 4096 at 10 ms:
    // together about twice as fast as either alone.
    let up = paced(&nar, Duration::from_millis(10));
    let (mut s, _) = spec(&nar, vec![open(&up, UP).await], vec![]);
    s.tail = Some((PEER, tail(&nar, Duration::from_millis(10), None)));
    let start = tokio::time::Instant::now();
    let (got, by) = collect(merge(s)).await.unwrap();
    assert_eq!(got, nar);
    assert!(by[0] > 0 && by[1] > 0, "both ends carried bytes: {by:?}");
    assert_eq!(by[0] + by[1], nar.len() as u64);
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(110),
        "faster than the upstream alone (150 ms): {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = up.sent.load(Ordering::Relaxed) as u64;
    assert!(
        sent < nar.len() as u64,
        "the upstream was closed where they met: it sent {sent}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_tail_keeps_what_it_verified_and_the_upstream_finishes() {
    let nar = nar();
    let up = paced(&nar, Duration::from_millis(10));
    let (mut s, _) = spec(&nar, vec![open(&up, UP).await], vec![]);
    s.tail = Some((PEER, tail(&nar, Duration::from_millis(1), Some(5))));
    let (got, by) = collect(merge(s)).await.unwrap();
    assert_eq!(got, nar);
    assert_eq!(
        by[0],
        4 * 4096 + (nar.len() % 4096) as u64,
        "the five last chunks (the last one short) from peers"
    );
}

#[tokio::test(start_paused = true)]
async fn peers_found_later_join_from_the_tail() {
    let nar = nar();
    let up = paced(&nar, Duration::from_millis(10));
    let (mut s, _) = spec(&nar, vec![open(&up, UP).await], vec![]);
    let t = tail(&nar, Duration::from_millis(1), None);
    s.tail_later = Some(Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((PEER, t))
    }));
    let (got, by) = collect(merge(s)).await.unwrap();
    assert_eq!(got, nar);
    assert!(by[0] > 0 && by[1] > 0, "{by:?}");
}

#[tokio::test(start_paused = true)]
async fn the_tail_waits_at_its_budget_and_the_head_carries_the_rest() {
    let nar = nar();
    let up = paced(&nar, Duration::from_millis(10));
    let (mut s, _) = spec(&nar, vec![open(&up, UP).await], vec![]);
    s.tail = Some((PEER, tail(&nar, Duration::ZERO, None)));
    s.tail_budget = 3 * 4096;
    let (got, by) = collect(merge(s)).await.unwrap();
    assert_eq!(got, nar);
    assert!(
        by[0] > 0 && by[0] <= 4 * 4096,
        "the tail held its budget and the chunk that crossed it: {by:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tiny_nar_comes_from_whichever_answers_first() {
    let nar: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let up = paced(&nar, Duration::from_millis(20));
    let (mut s, _) = spec(&nar, vec![open(&up, UP).await], vec![]);
    s.tail = Some((PEER, tail(&nar, Duration::from_millis(5), None)));
    assert_eq!(collect(merge(s)).await.unwrap(), (nar.clone(), [3000, 0, 0]));
}
