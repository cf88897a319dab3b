//! Hedging and failover with in-memory sources; time is paused, so the
//! hedge deadline is exact.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use nixswarm_protocol::{Sha256Hash, StorePath, StorePathHash};

use super::*;
use crate::source::{SourceError, SourceKind};

/// An upstream holding one NAR; counts how often its NAR was opened.
#[derive(Debug)]
struct Whole {
    info: NarInfo,
    nar: Vec<u8>,
    opened: AtomicUsize,
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
        let pieces: Vec<std::io::Result<Bytes>> =
            self.nar.chunks(7000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Box::pin(async move { Ok(Some(futures::stream::iter(pieces).boxed())) })
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
    Arc::new(Whole {
        info: info(nar),
        nar: nar.to_vec(),
        opened: AtomicUsize::new(0),
    })
}

fn fallback(w: &Arc<Whole>) -> Fallback {
    Fallback {
        idx: 1,
        source: w.clone(),
        info: None,
    }
}

/// Collects the bytes and which source sent how many.
async fn collect(mut s: TaggedStream) -> Result<(Vec<u8>, [u64; 2]), String> {
    let mut out = Vec::new();
    let mut by = [0u64; 2];
    while let Some(p) = s.next().await {
        let (idx, b) = p.map_err(|e| e.to_string())?;
        by[idx] += b.len() as u64;
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

/// A primary that sends nothing for `delay`, then the whole NAR.
fn slow(nar: &[u8], delay: Duration) -> ByteStream {
    let nar = Bytes::copy_from_slice(nar);
    futures::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok(nar)
    })
    .boxed()
}

#[tokio::test]
async fn when_the_primary_fails_midway_the_rest_comes_from_a_fallback() {
    let nar = nar();
    for cut in [0, 1, 4999, 5000, 63_001, 99_999] {
        let up = upstream(&nar);
        let s = serve(0, failing_after(&nar, cut), info(&nar), vec![fallback(&up)], None);
        let (got, by) = collect(s).await.unwrap();
        assert_eq!(got, nar, "primary failed after {cut} bytes");
        assert_eq!(
            by,
            [cut as u64, (nar.len() - cut) as u64],
            "each byte credited to who sent it"
        );
    }
    // A fallback with another NAR for the path is not used; with none left the error stands.
    let mut other = nar.clone();
    other[0] ^= 1;
    let s = serve(
        0,
        failing_after(&nar, 10),
        info(&nar),
        vec![fallback(&upstream(&other))],
        None,
    );
    assert!(collect(s).await.unwrap_err().contains("every peer failed"));
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_answers_in_time_is_not_hedged() {
    let nar = nar();
    let up = upstream(&nar);
    let s = serve(
        0,
        slow(&nar, Duration::from_millis(900)),
        info(&nar),
        vec![fallback(&up)],
        Some(Duration::from_secs(1)),
    );
    let (got, by) = collect(s).await.unwrap();
    assert_eq!((got, by), (nar.clone(), [nar.len() as u64, 0]));
    assert_eq!(
        up.opened.load(Ordering::Relaxed),
        0,
        "the upstream was never asked for the NAR"
    );
}

#[tokio::test(start_paused = true)]
async fn a_primary_with_no_first_byte_by_the_deadline_is_hedged_and_the_first_to_send_wins() {
    let nar = nar();
    let up = upstream(&nar);
    let s = serve(
        0,
        slow(&nar, Duration::from_secs(5)),
        info(&nar),
        vec![fallback(&up)],
        Some(Duration::from_secs(1)),
    );
    let (got, by) = collect(s).await.unwrap();
    assert_eq!((got, by), (nar.clone(), [0, nar.len() as u64]));
    assert_eq!(up.opened.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedged_primary_that_fails_leaves_the_fallback_to_finish() {
    let nar = nar();
    let up = upstream(&nar);
    let dead = futures::stream::once(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Err(std::io::Error::other("peers gone"))
    })
    .boxed();
    let s = serve(0, dead, info(&nar), vec![fallback(&up)], Some(Duration::from_secs(1)));
    assert_eq!(collect(s).await.unwrap().0, nar);
}
