//! One NAR from several sources: a primary leg (peers, when they hold the
//! path), a hedge (if the primary sends no first byte within the hedge
//! deadline, the first fallback starts too and whichever sends a byte first
//! is kept), and failover (if the leg in use fails midway, the next
//! fallback continues, skipping the bytes already sent, so the client's
//! download does not fail). Every piece is tagged with the index of the
//! source that sent it, for accounting and for blame if the NAR does not
//! verify (the caller checks it against NarHash).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use nixswarm_protocol::NarInfo;
use tokio::sync::mpsc;

use crate::source::{ByteStream, Source};

/// NAR pieces, each with the index of the source that sent it.
pub type TaggedStream = BoxStream<'static, std::io::Result<(usize, Bytes)>>;

/// A source that can take over, with its narinfo if already known.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub idx: usize,
    pub source: Arc<dyn Source>,
    pub info: Option<NarInfo>,
}

struct Leg {
    idx: usize,
    stream: ByteStream,
    /// Bytes of this leg to drop (already sent by an earlier leg).
    skip: u64,
}

/// Streams the NAR of `info` from `primary` (source `idx`), hedged after
/// `hedge_after` (if given) and failing over to `fallbacks` in order.
pub fn serve(
    idx: usize,
    primary: ByteStream,
    info: NarInfo,
    fallbacks: Vec<Fallback>,
    hedge_after: Option<Duration>,
) -> TaggedStream {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run(
        Leg {
            idx,
            stream: primary,
            skip: 0,
        },
        info,
        fallbacks,
        hedge_after,
        tx,
    ));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) }).boxed()
}

/// Opens the next fallback that has this exact NAR.
async fn open_next(info: &NarInfo, fallbacks: &mut std::vec::IntoIter<Fallback>, skip: u64) -> Option<Leg> {
    let hash = info.store_path.hash();
    for f in fallbacks.by_ref() {
        let theirs = match f.info {
            Some(i) => i,
            None => match f.source.narinfo(&hash).await {
                Ok(Some(i)) => i,
                _ => continue,
            },
        };
        if theirs.nar_hash != info.nar_hash {
            continue;
        }
        match f.source.nar(&theirs).await {
            Ok(Some(stream)) => {
                return Some(Leg {
                    idx: f.idx,
                    stream,
                    skip,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(source = f.source.name(), error = %e, "fallback failed to open the NAR"),
        }
    }
    None
}

type Tx = mpsc::Sender<std::io::Result<(usize, Bytes)>>;

/// Waits for the first byte of `primary`; past `hedge_after`, races it
/// against the first fallback. Returns the leg to go on with and its first
/// piece, or the error that ended both.
async fn first_piece(
    mut primary: Leg,
    info: &NarInfo,
    fallbacks: &mut std::vec::IntoIter<Fallback>,
    hedge_after: Duration,
) -> Result<(Leg, Bytes), std::io::Error> {
    let early = tokio::time::timeout(hedge_after, primary.stream.next()).await;
    match early {
        Ok(Some(Ok(b))) => return Ok((primary, b)),
        Ok(Some(Err(e))) => return Err(e),
        Ok(None) => return Err(std::io::Error::other("the source sent nothing")),
        Err(_) => {}
    }
    tracing::info!(path = %info.store_path, ?hedge_after, "no first byte from peers yet: hedging with an upstream");
    let Some(mut hedge) = open_next(info, fallbacks, 0).await else {
        // Nobody to hedge with: keep waiting on the primary.
        return match primary.stream.next().await {
            Some(Ok(b)) => Ok((primary, b)),
            Some(Err(e)) => Err(e),
            None => Err(std::io::Error::other("the source sent nothing")),
        };
    };
    let (mut primary_open, mut hedge_open) = (true, true);
    let mut last_err = None;
    while primary_open || hedge_open {
        tokio::select! {
            p = primary.stream.next(), if primary_open => match p {
                Some(Ok(b)) => return Ok((primary, b)),
                Some(Err(e)) => { last_err = Some(e); primary_open = false; }
                None => primary_open = false,
            },
            h = hedge.stream.next(), if hedge_open => match h {
                Some(Ok(b)) => return Ok((hedge, b)),
                Some(Err(e)) => { last_err = Some(e); hedge_open = false; }
                None => hedge_open = false,
            },
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no source sent anything")))
}

async fn run(primary: Leg, info: NarInfo, fallbacks: Vec<Fallback>, hedge_after: Option<Duration>, tx: Tx) {
    let mut fallbacks = fallbacks.into_iter();
    let mut sent = 0u64;
    let mut cur = match hedge_after {
        Some(h) => match first_piece(primary, &info, &mut fallbacks, h).await {
            Ok((leg, b)) => {
                sent += b.len() as u64;
                if tx.send(Ok((leg.idx, b))).await.is_err() {
                    return;
                }
                leg
            }
            Err(e) => match open_next(&info, &mut fallbacks, 0).await {
                Some(leg) => {
                    tracing::warn!(path = %info.store_path, error = %e, "primary failed before its first byte; continuing from a fallback");
                    leg
                }
                None => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            },
        },
        None => primary,
    };
    loop {
        match cur.stream.next().await {
            Some(Ok(mut b)) => {
                if cur.skip > 0 {
                    let n = cur.skip.min(b.len() as u64);
                    cur.skip -= n;
                    b = b.slice(n as usize..);
                    if b.is_empty() {
                        continue;
                    }
                }
                sent += b.len() as u64;
                if tx.send(Ok((cur.idx, b))).await.is_err() {
                    return;
                }
            }
            None => return,
            Some(Err(e)) => {
                tracing::warn!(path = %info.store_path, error = %e, sent, "source failed midway; continuing from a fallback");
                match open_next(&info, &mut fallbacks, sent).await {
                    Some(leg) => cur = leg,
                    None => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "legs_tests.rs"]
mod tests;
