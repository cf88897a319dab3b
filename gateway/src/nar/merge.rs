//! One NAR from several legs, in order. Forward legs stream from byte 0
//! (an upstream's compressed NAR can only be read from its start; peers
//! alone stream in order too); a tail leg (peers) brings verified chunks
//! from the end backwards. The client gets each byte from whichever leg
//! has it first:
//!
//! - a forward leg's bytes past what was sent go out; a peer's forward leg
//!   that another leg has overtaken is closed (it cannot catch up);
//! - once the tail reaches down to what was sent (they meet), the rest
//!   comes from the tail and the forward legs are closed: the upstream's
//!   connection ends there, having sent only the head;
//! - a hedge: after a deadline, an upstream starts beside the peers;
//! - failover: when every forward leg failed (or one ended before NarSize:
//!   a truncated file is a failure too, and is blamed), the next upstream
//!   continues, its bytes before what was sent dropped.
//!
//! Every piece is tagged with its source for accounting and blame; the
//! whole NAR is checked against NarHash downstream ([`super::verify`]).
//! The tail's memory is bounded by a budget: past it, the tail waits and
//! the forward legs carry the rest.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use nixswarm_node::p2p::TailStream;
use nixswarm_protocol::NarInfo;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::policy::Estimates;
use crate::source::{ByteStream, Source, SourceId, SourceKind};

/// NAR pieces in order, each with the source that sent it.
pub type TaggedStream = BoxStream<'static, std::io::Result<(SourceId, Bytes)>>;

/// How far a peer's forward leg may trail the bytes sent before it is
/// closed as overtaken.
const OVERTAKEN: u64 = 1 << 20;

/// An upstream that can start (hedge) or take over (failover), with its
/// narinfo if already known.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub id: SourceId,
    pub source: Arc<dyn Source>,
    pub info: Option<NarInfo>,
}

/// Who answers for bad NARs: the pipeline (tests record instead).
pub trait Blame: Send + Sync + std::fmt::Debug + 'static {
    /// A leg ended wrong (before NarSize, or past it).
    fn leg_failed(&self, id: SourceId, info: &NarInfo, why: &str);
    /// The NAR failed verification; `used` sent some of it.
    fn nar_rejected(&self, _info: &NarInfo, _why: &super::NarError, _used: &[SourceId]) {}
}

/// A leg streaming from byte 0.
pub struct Forward {
    pub id: SourceId,
    pub kind: SourceKind,
    pub stream: ByteStream,
    pos: u64,
    opened: Instant,
    first: Option<Instant>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("id", &self.id)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Forward {
    pub fn new(id: SourceId, kind: SourceKind, stream: ByteStream) -> Self {
        Self {
            id,
            kind,
            stream,
            pos: 0,
            opened: Instant::now(),
            first: None,
        }
    }
}

/// The peers' end: a contiguous verified tail `[start, NarSize)`.
struct Tail {
    id: SourceId,
    stream: Option<TailStream>,
    start: u64,
    held: VecDeque<(u64, Bytes)>,
    bytes: u64,
    opened: Instant,
    first: Option<Instant>,
}

/// Everything a merge starts with.
pub struct Spec {
    pub info: NarInfo,
    /// Legs started at once.
    pub forward: Vec<Forward>,
    /// The peers' tail, ready now.
    pub tail: Option<(SourceId, TailStream)>,
    /// The peers' tail once discovery finds a provider.
    pub tail_later: Option<BoxFuture<'static, Option<(SourceId, TailStream)>>>,
    /// Start the first fallback beside the legs after this long.
    pub hedge: Option<Duration>,
    pub fallbacks: Vec<Fallback>,
    /// Most tail bytes held before the tail waits.
    pub tail_budget: u64,
    pub estimates: Arc<Estimates>,
    pub blame: Arc<dyn Blame>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("path", &self.info.store_path)
            .field("forward", &self.forward)
            .field("hedge", &self.hedge)
            .finish_non_exhaustive()
    }
}

/// Starts the merge; its pieces come out of the returned stream.
pub fn merge(spec: Spec) -> TaggedStream {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run(spec, tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) }).boxed()
}

/// Opens the next fallback that has this exact NAR.
pub(super) async fn open_next(info: &NarInfo, fallbacks: &mut std::vec::IntoIter<Fallback>) -> Option<Forward> {
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
            Ok(Some(stream)) => return Some(Forward::new(f.id, f.source.kind(), stream)),
            Ok(None) => {}
            Err(e) => tracing::warn!(source = f.source.name(), error = %e, "fallback failed to open the NAR"),
        }
    }
    None
}

/// The next piece of any forward leg (pending forever when there are none).
async fn next_forward(legs: &mut [Forward]) -> (usize, Option<std::io::Result<Bytes>>) {
    futures::future::poll_fn(|cx| {
        for (i, leg) in legs.iter_mut().enumerate() {
            if let Poll::Ready(p) = leg.stream.poll_next_unpin(cx) {
                return Poll::Ready((i, p));
            }
        }
        Poll::Pending
    })
    .await
}

type Tx = mpsc::Sender<std::io::Result<(SourceId, Bytes)>>;

struct Run {
    info: NarInfo,
    size: u64,
    pos: u64,
    legs: Vec<Forward>,
    tail: Option<Tail>,
    estimates: Arc<Estimates>,
    blame: Arc<dyn Blame>,
    /// Upstream bytes on the wire per NAR byte (FileSize / NarSize).
    wire: f64,
}

impl Run {
    fn record_forward(&self, leg: &Forward) {
        let Some(first) = leg.first else { return };
        let peer = leg.kind == SourceKind::Peer;
        let scale = if peer { 1.0 } else { self.wire };
        let bytes = (leg.pos as f64 * scale) as u64;
        self.estimates.record(peer, first - leg.opened, bytes, first.elapsed());
    }

    fn close_leg(&mut self, i: usize) -> Forward {
        let leg = self.legs.swap_remove(i);
        self.record_forward(&leg);
        leg
    }

    fn close_all(&mut self) {
        while !self.legs.is_empty() {
            self.close_leg(0);
        }
        if let Some(t) = &self.tail
            && let Some(first) = t.first
        {
            self.estimates.record(true, first - t.opened, t.bytes, first.elapsed());
        }
    }

    fn limit(&self) -> u64 {
        self.tail.as_ref().map_or(self.size, |t| t.start)
    }

    /// Sends `b` (bytes `at..` of the NAR) past what was sent, up to `limit`.
    async fn send(&mut self, tx: &Tx, id: SourceId, at: u64, b: &Bytes, limit: u64) -> bool {
        let end = (at + b.len() as u64).min(limit);
        if end <= self.pos {
            return true;
        }
        let piece = b.slice((self.pos - at) as usize..(end - at) as usize);
        self.pos = end;
        tx.send(Ok((id, piece))).await.is_ok()
    }

    /// The tail reaches what was sent: the rest comes from it.
    async fn meet(&mut self, tx: &Tx) -> bool {
        let Some(mut tail) = self.tail.take() else { return true };
        tracing::debug!(path = %self.info.store_path, at = self.pos, "the upstream and the peers met");
        let size = self.size;
        for (at, b) in std::mem::take(&mut tail.held) {
            if !self.send(tx, tail.id, at, &b, size).await {
                return false;
            }
        }
        self.tail = Some(tail);
        true
    }

    fn on_tail(&mut self, piece: Option<std::io::Result<(u64, Bytes)>>) {
        let Some(t) = self.tail.as_mut() else { return };
        match piece {
            Some(Ok((at, b))) if at + b.len() as u64 == t.start => {
                t.first.get_or_insert_with(Instant::now);
                t.start = at;
                t.bytes += b.len() as u64;
                t.held.push_front((at, b));
            }
            Some(Ok((at, _))) => {
                tracing::warn!(path = %self.info.store_path, at, start = t.start, "peers' tail out of order: stopped");
                t.stream = None;
            }
            Some(Err(e)) => {
                tracing::info!(path = %self.info.store_path, error = %e, "peers' tail failed: the head leg goes on");
                t.stream = None;
            }
            None => t.stream = None,
        }
    }
}

async fn run(spec: Spec, tx: Tx) {
    let Spec {
        info,
        forward,
        tail,
        mut tail_later,
        hedge,
        fallbacks,
        tail_budget,
        estimates,
        blame,
    } = spec;
    let size = info.nar_size;
    let wire = match info.file_size {
        Some(f) if size > 0 && info.compression != "none" => f as f64 / size as f64,
        _ => 1.0,
    };
    let new_tail = |(id, stream): (SourceId, TailStream)| Tail {
        id,
        stream: Some(stream),
        start: size,
        held: VecDeque::new(),
        bytes: 0,
        opened: Instant::now(),
        first: None,
    };
    let mut r = Run {
        size,
        pos: 0,
        legs: forward,
        tail: tail.map(new_tail),
        estimates,
        blame,
        wire,
        info,
    };
    let mut fallbacks = fallbacks.into_iter();
    let mut hedge_at = hedge.map(|h| Instant::now() + h);
    loop {
        if r.tail.as_ref().is_some_and(|t| t.start <= r.pos) && r.pos < r.size && !r.meet(&tx).await {
            return;
        }
        if r.pos >= r.size {
            r.close_all();
            return;
        }
        if r.legs.is_empty() {
            hedge_at = None;
            match open_next(&r.info, &mut fallbacks).await {
                Some(leg) => {
                    tracing::info!(path = %r.info.store_path, at = r.pos, source = %leg.id, "continuing from an upstream");
                    r.legs.push(leg);
                }
                None if r.tail.as_ref().is_some_and(|t| t.stream.is_some()) => {}
                None => {
                    r.close_all();
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "every source failed after {} of {} bytes",
                            r.pos, r.size
                        ))))
                        .await;
                    return;
                }
            }
        }
        let tail_open = r
            .tail
            .as_ref()
            .is_some_and(|t| t.stream.is_some() && (t.bytes < tail_budget || r.legs.is_empty()));
        tokio::select! {
            (i, piece) = next_forward(&mut r.legs) => match piece {
                Some(Ok(b)) => {
                    let leg = &mut r.legs[i];
                    leg.first.get_or_insert_with(Instant::now);
                    let (id, at) = (leg.id, leg.pos);
                    leg.pos += b.len() as u64;
                    if leg.pos > r.size {
                        let leg = r.close_leg(i);
                        r.blame.leg_failed(leg.id, &r.info, "sent more than NarSize");
                        continue;
                    }
                    let limit = r.limit();
                    if !r.send(&tx, id, at, &b, limit).await {
                        return;
                    }
                    let pos = r.pos;
                    while let Some(i) = r.legs.iter().position(|l| l.kind == SourceKind::Peer && l.pos + OVERTAKEN < pos) {
                        tracing::debug!(path = %r.info.store_path, "peers overtaken by the upstream: closed");
                        r.close_leg(i);
                    }
                }
                Some(Err(e)) => {
                    let leg = r.close_leg(i);
                    tracing::warn!(path = %r.info.store_path, source = %leg.id, error = %e, at = leg.pos, "a leg failed midway");
                }
                None => {
                    let leg = r.close_leg(i);
                    if leg.pos < r.size {
                        let why = format!("ended after {} of {} bytes", leg.pos, r.size);
                        tracing::warn!(path = %r.info.store_path, source = %leg.id, %why, "a leg ended early");
                        r.blame.leg_failed(leg.id, &r.info, &why);
                    }
                }
            },
            piece = async { r.tail.as_mut().and_then(|t| t.stream.as_mut()).expect("open").next().await }, if tail_open => r.on_tail(piece),
            found = async { tail_later.as_mut().expect("pending").await }, if tail_later.is_some() => {
                tail_later = None;
                if let Some(t) = found && r.tail.is_none() {
                    tracing::debug!(path = %r.info.store_path, at = r.pos, "peers join from the tail");
                    r.tail = Some(new_tail(t));
                }
            }
            () = tokio::time::sleep_until(hedge_at.unwrap_or_else(Instant::now)), if hedge_at.is_some() => {
                hedge_at = None;
                if let Some(leg) = open_next(&r.info, &mut fallbacks).await {
                    tracing::info!(path = %r.info.store_path, at = r.pos, source = %leg.id, "peers not done in time: an upstream starts beside them");
                    r.legs.push(leg);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
