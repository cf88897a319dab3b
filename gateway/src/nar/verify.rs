//! Moving NAR bytes to the client: from the local store (each chunk verified
//! before it is sent) or from a source (verified as a whole by [`NarCheck`]:
//! NarSize, NarHash and content address; the last piece is held back until
//! the check passes, and the NAR is stored only when it does).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use nixswarm_node::{ChunkStore, IngestWriter, NarHandle};
use nixswarm_protocol::{NarCheck, NarInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::NarError;
use super::merge::TaggedStream;
use crate::metrics::Metrics;
use crate::source::{ByteStream, Source, SourceId, SourceKind};

/// Pieces in flight between the producer and the HTTP body.
pub(super) const BODY_QUEUE: usize = 16;
pub(super) fn body_stream(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> ByteStream {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// Ends a response body with an error, so the connection is aborted and
/// never ends cleanly (if the client is still there).
pub(super) async fn abort(
    client: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    path: &str,
    why: impl std::fmt::Display,
) {
    if let Some(tx) = client {
        let _ = tx.send(Err(std::io::Error::other(format!("{path}: {why}")))).await;
    }
}

/// Streams `start..end` of a stored NAR, its bytes counted, with
/// `counted`, as the origin's (`local`, or `peer` for a NAR prefetched
/// from peers) in those metrics. On a corrupt or
/// missing chunk the body fails (so the connection is aborted) and
/// `on_corrupt` runs.
pub fn local(
    handle: NarHandle,
    start: u64,
    end: u64,
    counted: Option<(&'static str, Arc<Metrics>)>,
    on_corrupt: impl FnOnce(String) + Send + 'static,
) -> ByteStream {
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    tokio::task::spawn_blocking(move || {
        for piece in handle.reader(start, end) {
            match piece {
                Ok(b) => {
                    let n = b.len() as u64;
                    if tx.blocking_send(Ok(b)).is_err() {
                        return;
                    }
                    if let Some((origin, metrics)) = &counted {
                        metrics.served(origin, n);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = tx.blocking_send(Err(std::io::Error::other(msg.clone())));
                    on_corrupt(msg);
                    return;
                }
            }
        }
    });
    body_stream(rx)
}

/// Everything [`verified`] needs besides the bytes.
#[derive(Debug)]
pub struct Verified {
    pub info: NarInfo,
    /// The part of the NAR the client asked for.
    pub start: u64,
    pub end: u64,
    /// The store to keep the NAR in if it verifies (none: not kept).
    pub keep: Option<ChunkStore>,
    /// The sources, by the id each piece is tagged with (for the
    /// served-bytes metrics).
    pub sources: Vec<Arc<dyn Source>>,
    /// Told who sent a NAR that failed verification.
    pub blame: Arc<dyn super::merge::Blame>,
    pub metrics: Arc<Metrics>,
    /// Stops the transfer early (shutdown).
    pub cancel: CancellationToken,
}

/// Streams a NAR from sources to the client while verifying it. If it
/// fails verification the body errors (the connection is aborted, never
/// ended cleanly), nothing is stored, and the sources that sent any of it
/// are blamed ([`super::merge::Blame::nar_rejected`]).
pub fn verified(mut src: TaggedStream, v: Verified) -> ByteStream {
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let path = v.info.store_path.to_string();
    tokio::spawn(async move {
        let Verified {
            info,
            start,
            end,
            keep,
            sources,
            blame,
            metrics,
            cancel,
        } = v;
        let began = tokio::time::Instant::now();
        let mut used: Vec<SourceId> = Vec::new();
        let mut ingest_tx = keep.and_then(|store| IngestWriter::start(store, info.clone(), None));
        let mut check = NarCheck::new(&info);
        let mut size = 0u64;
        let mut held: Option<(SourceId, u64, Bytes)> = None;
        let mut tail: Option<(SourceId, u64, Bytes)> = None;
        let mut client = Some(tx);

        let emit = |client: &mut Option<mpsc::Sender<std::io::Result<Bytes>>>, id: SourceId, at: u64, b: Bytes| {
            let client = client.clone();
            let metrics = metrics.clone();
            let source = sources.get(id.0).cloned();
            async move {
                let (s, e) = (at.max(start), (at + b.len() as u64).min(end));
                let Some(tx) = client else { return true };
                if s >= e {
                    return true;
                }
                let piece = b.slice((s - at) as usize..(e - at) as usize);
                let n = piece.len() as u64;
                let ok = tx.send(Ok(piece)).await.is_ok();
                if ok && let Some(source) = source {
                    metrics.served(source.kind().as_str(), n);
                    if source.kind() == SourceKind::Upstream {
                        metrics.served_upstream(source.name(), n);
                    }
                }
                ok
            }
        };

        let outcome = loop {
            let next = tokio::select! {
                n = src.next() => n,
                () = cancel.cancelled() => break Err(NarError::ShuttingDown),
            };
            match next {
                Some(Ok((_, b))) if b.is_empty() => {}
                Some(Ok((idx, b))) => {
                    if !used.contains(&idx) {
                        used.push(idx);
                    }
                    let at = size;
                    size += b.len() as u64;
                    if let Err(e) = check.update(&b) {
                        break Err(NarError::Check(e));
                    }
                    if let Some(itx) = &ingest_tx
                        && !itx.write(b.clone()).await
                    {
                        ingest_tx = None;
                    }
                    let prev = held.replace((idx, at, b));
                    // The piece holding the range's last byte waits for the
                    // whole NAR: a Range response never ends cleanly before
                    // the NAR has verified.
                    let prev = match prev {
                        Some(p) if tail.is_none() && p.1 + p.2.len() as u64 >= end => {
                            tail = Some(p);
                            None
                        }
                        p => p,
                    };
                    if let Some((pidx, pat, prev)) = prev
                        && !emit(&mut client, pidx, pat, prev).await
                    {
                        client = None;
                        if ingest_tx.is_none() {
                            return; // nobody wants the rest
                        }
                    }
                }
                Some(Err(e)) => break Err(NarError::Stream(e)),
                None => break check.finish().map(drop).map_err(NarError::Check),
            }
        };
        match outcome {
            Ok(()) => {
                for (pidx, pat, prev) in tail.take().into_iter().chain(held.take()) {
                    emit(&mut client, pidx, pat, prev).await;
                }
                let from: Vec<&str> = used
                    .iter()
                    .filter_map(|id| sources.get(id.0))
                    .map(|s| s.name())
                    .collect();
                tracing::info!(%path, bytes = size, from = from.join("+"), ms = began.elapsed().as_millis(), "NAR served");
                if let Some(itx) = ingest_tx {
                    itx.commit_detached().await;
                }
            }
            Err(why) => {
                // Dropping `ingest_tx` without a commit discards what was written.
                drop(ingest_tx);
                abort(client, &path, &why).await;
                blame.nar_rejected(&info, &why, &used);
            }
        }
    });
    body_stream(rx)
}
