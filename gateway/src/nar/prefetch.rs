//! NARs started at the narinfo. Nix asks for every narinfo of a closure
//! before it asks for any NAR, so when a narinfo is served and peers hold
//! the path, its NAR is fetched from them at once: the NAR request that
//! follows joins the transfer in progress or finds it done (a local hit).
//! The NAR is fetched from its end backwards and kept in memory until it
//! is whole, then stored. A NAR request that will not wait for it takes
//! what has come as the peers' tail of its two-ended fetch
//! ([`Prefetcher::take_tail`]): the upstream sends only the head, and no
//! byte the peers sent is lost. Bounded: transfers at once, NAR bytes in
//! flight (and so in memory), and the store's own quota. The bytes
//! fetched, and the part Nix then asked for, are counted
//! (`gateway_prefetched_bytes`, `..._asked_bytes`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use nixswarm_node::p2p::{PeerPath, TailStream};
use nixswarm_node::{AsyncStore, Committed, IngestWriter};
use nixswarm_protocol::{NarInfo, StorePathHash};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::policy::Estimates;
use super::slots::NewestFirst;
use crate::metrics::Metrics;
use crate::peers::PeerSource;
use crate::ttl::TtlMap;

/// How long a prefetch is remembered (for joining and for counting).
const REMEMBER: Duration = Duration::from_secs(3600);
const REMEMBER_CAP: usize = 20_000;
/// How long a NAR request waits for the store commit of a prefetch whose
/// bytes have all arrived.
const COMMIT_WAIT: Duration = Duration::from_secs(2);
/// A NAR request waiting for a prefetch from the only source there is
/// stops waiting when no new bytes came for this long.
const STALL: Duration = Duration::from_secs(10);

/// What a NAR request would do instead of waiting for a prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instead {
    /// An upstream would take about this long: wait only for a prefetch
    /// predicted done sooner.
    Upstream(Duration),
    /// Only peers have it: a transfer of its own would ask the same peers
    /// from byte 0, so the prefetch is waited for (and, if queued, started
    /// at once) while new bytes keep coming ([`STALL`]), at most this long.
    PeersOnly(Duration),
}

/// Bounds of NAR prefetching.
#[derive(Debug, Clone, Copy)]
pub struct PrefetchSettings {
    /// Prefetches running at once (0: none); more wait their turn.
    pub running: usize,
    /// NarSize bytes of prefetches running or waiting, at most.
    pub bytes: u64,
}

impl Default for PrefetchSettings {
    fn default() -> Self {
        Self {
            running: 8,
            bytes: 256 << 20,
        }
    }
}

/// A prefetch, as the NAR request sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// NAR bytes verified so far.
    Running(u64),
    /// The NAR verified and is in the store.
    Stored,
    Failed,
}

/// A prefetch in progress: started when, its NarSize, its progress, and
/// how to stop it (a NAR request that will not wait for it frees the
/// peers' upload for its own transfer).
#[derive(Debug, Clone)]
struct Running {
    started: tokio::time::Instant,
    size: u64,
    state: watch::Receiver<State>,
    stop: CancellationToken,
    /// A NAR request waits for it: start without a slot.
    urgent: CancellationToken,
    /// Asks the prefetch for what it has and its live tail.
    handover: mpsc::Sender<oneshot::Sender<TailStream>>,
}

/// What was prefetched: its size, and whether Nix asked for it.
#[derive(Debug, Clone, Copy)]
struct Done {
    bytes: u64,
    asked: bool,
}

/// Starts and tracks NAR prefetches.
#[derive(Debug)]
pub struct Prefetcher {
    settings: PrefetchSettings,
    slots: NewestFirst,
    in_flight: Arc<AtomicU64>,
    /// Started when, its NarSize, its progress.
    running: Arc<TtlMap<StorePathHash, Running>>,
    done: Arc<TtlMap<StorePathHash, Done>>,
    metrics: Arc<Metrics>,
    estimates: Arc<Estimates>,
}

impl Prefetcher {
    pub fn new(settings: PrefetchSettings, metrics: Arc<Metrics>, estimates: Arc<Estimates>) -> Self {
        Self {
            settings,
            slots: NewestFirst::new(settings.running),
            in_flight: Arc::default(),
            running: Arc::new(TtlMap::new(REMEMBER, REMEMBER_CAP)),
            done: Arc::new(TtlMap::new(REMEMBER, REMEMBER_CAP)),
            metrics,
            estimates,
        }
    }

    /// Fetches `info`'s NAR from `peers` into `store` in the background, if
    /// peers hold it and the bounds allow; returns at once.
    pub fn start(&self, info: &NarInfo, peers: &PeerSource, store: &AsyncStore, wait: Duration) {
        let hash = info.store_path.hash();
        if self.running.get(&hash).is_some() || self.done.get(&hash).is_some() {
            return;
        }
        let size = info.nar_size;
        // Queued and running prefetches together hold at most `bytes`.
        if self.in_flight.fetch_add(size, Ordering::Relaxed) + size > self.settings.bytes {
            self.in_flight.fetch_sub(size, Ordering::Relaxed);
            return;
        }
        let (tx, rx) = watch::channel(State::Running(0));
        let stop = CancellationToken::new();
        let urgent = CancellationToken::new();
        let (handover, mut handovers) = mpsc::channel(1);
        self.running.insert(
            hash,
            Running {
                started: tokio::time::Instant::now(),
                size,
                state: rx,
                stop: stop.clone(),
                urgent: urgent.clone(),
                handover,
            },
        );
        let (info, peers, store) = (info.clone(), peers.clone(), store.clone());
        let (in_flight, done, metrics) = (self.in_flight.clone(), self.done.clone(), self.metrics.clone());
        let estimates = self.estimates.clone();
        let slots = self.slots.clone();
        tracing::debug!(%hash, size, "prefetch: queued");
        tokio::spawn(async move {
            let work = async {
                // Its providers first, without a slot: most paths of a
                // closure no peer holds yet, and their discovery (up to
                // `wait`) must not keep the slots from those peers hold.
                let path = tokio::select! {
                    p = peers.path_for(&info, wait) => p,
                    _ = handovers.recv() => return false,
                };
                let Some(path) = path else {
                    tracing::debug!(%hash, "prefetch: no provider");
                    return false;
                };
                tracing::debug!(%hash, providers = path.providers.len(), "prefetch: providers found");
                // A slot, unless a NAR request waits for this one.
                let _slot = tokio::select! {
                    s = slots.acquire() => Some(s),
                    () = urgent.cancelled() => None,
                    // Taken before it began: nothing to hand over.
                    _ = handovers.recv() => return false,
                };
                // Counted as prefetched before the store shows the path,
                // so a NAR request that finds it there counts it as the
                // peers'.
                let counted = || {
                    done.insert(
                        hash,
                        Done {
                            bytes: size,
                            asked: false,
                        },
                    )
                };
                fetch(&info, path, &peers, &store, &tx, &estimates, &mut handovers, counted).await
            };
            let stored = tokio::select! {
                stored = work => stored,
                () = stop.cancelled() => false,
            };
            in_flight.fetch_sub(size, Ordering::Relaxed);
            if stored {
                metrics.prefetched_bytes.inc_by(size);
            } else {
                done.remove(&hash);
            }
            let _ = tx.send(if stored { State::Stored } else { State::Failed });
        });
    }

    /// Nix asked for this NAR: counts a prefetch of it as used; returns
    /// its bytes the first time.
    pub fn asked(&self, hash: &StorePathHash) -> u64 {
        let mut asked = 0;
        self.done.update(hash, |d| {
            if !d.asked {
                d.asked = true;
                asked = d.bytes;
            }
        });
        self.metrics.prefetched_asked_bytes.inc_by(asked);
        asked
    }

    /// Waits for a prefetch of this NAR still running only while its
    /// progress predicts it done within what the request would take
    /// `instead`. With an upstream, one with no bytes yet, or none
    /// predicted to make it, is not waited for: it goes on, for the NAR's
    /// two-ended fetch to take as its tail ([`Self::take_tail`]); with
    /// peers only, one with no bytes yet is waited for too (started at once
    /// if it was queued), and one not waited for is stopped. One whose
    /// bytes have all arrived is waited for (its store commit). True if
    /// the NAR is in the store now.
    pub async fn join(&self, hash: &StorePathHash, instead: Instead) -> bool {
        let mut stored = false;
        if let Some(Running {
            started,
            size,
            state: mut rx,
            stop,
            urgent,
            ..
        }) = self.running.get(hash)
        {
            let (budget, peers_only) = match instead {
                Instead::Upstream(t) => (t, false),
                Instead::PeersOnly(t) => (t, true),
            };
            if peers_only {
                urgent.cancel();
            }
            let deadline = tokio::time::Instant::now() + budget;
            let mut idle_until = tokio::time::Instant::now() + STALL;
            loop {
                let state = *rx.borrow_and_update();
                let now = tokio::time::Instant::now();
                let wait_until = match state {
                    State::Stored => {
                        stored = true;
                        break;
                    }
                    State::Failed => break,
                    State::Running(done) if done >= size => now + COMMIT_WAIT,
                    // Peers only: nothing is quicker while it moves (its
                    // rate so far includes its wait for a slot).
                    State::Running(_) if peers_only => deadline.min(idle_until),
                    State::Running(done) if done > 0 => {
                        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-6);
                        let eta = Duration::from_secs_f64(size.saturating_sub(done) as f64 / rate);
                        if now + eta > deadline {
                            break; // it will not make it: the NAR goes its own way
                        }
                        deadline
                    }
                    // No bytes yet: nothing says it will be first.
                    State::Running(_) => break,
                };
                tokio::select! {
                    r = rx.changed() => {
                        if r.is_err() {
                            break;
                        }
                        idle_until = tokio::time::Instant::now() + STALL;
                    }
                    () = tokio::time::sleep_until(wait_until) => break,
                }
            }
            if !stored && !matches!(instead, Instead::Upstream(_)) {
                stop.cancel();
            }
        }
        stored
    }

    /// Stops a prefetch of this NAR, if one runs (its NAR goes another way).
    pub fn stop(&self, hash: &StorePathHash) {
        if let Some(r) = self.running.get(hash) {
            r.stop.cancel();
        }
    }

    /// The prefetch of this NAR, if one is running, handed over as the
    /// peers' tail of a two-ended fetch: the chunks it has (from the end
    /// backwards) and then its transfer going on. Any prefetch of the NAR
    /// ends here: one not yet begun, or that cannot hand over, is stopped.
    pub async fn take_tail(&self, hash: &StorePathHash) -> Option<TailStream> {
        let running = self.running.get(hash)?;
        let (tx, rx) = oneshot::channel();
        let tail = match running.handover.try_send(tx) {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        match &tail {
            Some(_) => {
                let brought = match *running.state.borrow() {
                    State::Running(done) => done,
                    _ => 0,
                };
                self.metrics.prefetch_tails.inc();
                self.metrics.prefetch_tail_bytes.inc_by(brought);
            }
            None => running.stop.cancel(),
        }
        tail
    }

    /// True if a prefetch of this path is running now.
    pub fn is_running(&self, hash: &StorePathHash) -> bool {
        self.running
            .get(hash)
            .is_some_and(|r| matches!(*r.state.borrow(), State::Running(_)))
    }
}

/// One prefetch, its providers found: fetch the NAR from its end
/// backwards into memory, then store it whole (the store checks it). True
/// if it is stored. A request on `handovers` gets what has come and the transfer
/// going on, and ends the prefetch. Its rate feeds the peers' estimate.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    info: &NarInfo,
    path: PeerPath,
    peers: &PeerSource,
    store: &AsyncStore,
    progress: &watch::Sender<State>,
    estimates: &Estimates,
    handovers: &mut mpsc::Receiver<oneshot::Sender<TailStream>>,
    before_commit: impl FnOnce(),
) -> bool {
    let hash = info.store_path.hash();
    if store.contains(hash).await.unwrap_or(true) {
        return false;
    }
    let opened = tokio::time::Instant::now();
    let mut first = None;
    let mut done = 0u64;
    // (offset, chunk), from the end backwards: always a contiguous tail.
    let mut got: Vec<(u64, Bytes)> = Vec::new();
    let mut stream = peers.stream_tail(path.clone());
    loop {
        tokio::select! {
            piece = stream.next() => match piece {
                Some(Ok((at, chunk))) => {
                    first.get_or_insert_with(|| {
                        tracing::debug!(%hash, bytes = chunk.len(), "prefetch: first bytes");
                        tokio::time::Instant::now()
                    });
                    done += chunk.len() as u64;
                    progress.send_replace(State::Running(done));
                    got.push((at, chunk));
                    if at == 0 {
                        break;
                    }
                }
                Some(Err(_)) | None => {
                    tracing::debug!(%hash, "prefetch from peers failed");
                    return false;
                }
            },
            reply = handovers.recv() => {
                if let Some(reply) = reply {
                    let have = futures::stream::iter(got.into_iter().map(Ok));
                    let _ = reply.send(have.chain(stream).boxed());
                    tracing::debug!(%hash, bytes = done, "prefetch handed over as the peers' tail");
                }
                return false;
            }
        }
    }
    if let Some(first) = first {
        estimates.record(true, first - opened, done, first.elapsed());
    }
    // The chunks arrived checked against the manifest's ids: stored as they
    // are. The store checks the whole NAR against the narinfo (the one
    // check of its NarHash here).
    let ingest = match store.begin_ingest_known(info.clone(), path.manifest.clone()).await {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!(%hash, error = %e, "not prefetching: the store cannot take it");
            return false;
        }
    };
    let Some(writer) = IngestWriter::spawn(ingest, info.store_path.to_string()) else {
        return false;
    };
    let mut taken = true;
    for (_, chunk) in got.into_iter().rev() {
        if !writer.write(chunk).await {
            taken = false; // the commit says why
            break;
        }
    }
    if taken {
        before_commit();
    }
    match writer.commit().await {
        Committed::Stored if taken => {
            tracing::info!(path = %info.store_path, bytes = info.nar_size, "prefetched from peers");
            true
        }
        Committed::Mismatch => {
            tracing::warn!(%hash, "prefetched NAR failed verification");
            crate::source::Source::rejected(peers, info, true);
            false
        }
        _ => false,
    }
}
