//! Finding providers early, in the background: [`Discovery::discover`]
//! starts, for each path not already being searched, a DHT walk and a place
//! in the next batched `Have` request to the connected peers (one round
//! trip for up to 256 paths, the idea of Bitswap's WANT-HAVE). What they
//! find goes into the [`Book`]; callers wait on it with a deadline.
//!
//! Everything is bounded: paths remembered, DHT walks at once (and queued),
//! `Have` batches in flight, peers asked per batch, hashes per request, and
//! a deadline on every answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use nixswarm_protocol::StorePathHash;
use nixswarm_protocol::wire::{MAX_HAVE, Request, Response};
use tokio::sync::mpsc;

use super::NodeHandle;
use super::book::{Book, Found, Half};

/// Discovery settings.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// How long found providers are kept.
    pub ttl: Duration,
    /// How long a search that found nobody is kept.
    pub miss_ttl: Duration,
    /// Paths remembered.
    pub capacity: usize,
    /// Connected peers asked per `Have` batch.
    pub have_peers: usize,
    /// How long a batch waits for more paths before it is sent.
    pub have_linger: Duration,
    /// Deadline for a `Have` answer.
    pub have_timeout: Duration,
    /// `Have` batches in flight.
    pub have_batches: usize,
    /// DHT walks at once.
    pub dht_walks: usize,
    /// Deadline for one DHT walk.
    pub dht_timeout: Duration,
    /// Searches queued (each queue) before new ones are skipped.
    pub queue: usize,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            miss_ttl: Duration::from_secs(30),
            capacity: 20_000,
            have_peers: 16,
            have_linger: Duration::from_millis(2),
            have_timeout: Duration::from_secs(2),
            have_batches: 8,
            dht_walks: 32,
            dht_timeout: Duration::from_secs(10),
            queue: 4096,
        }
    }
}

/// A `Have` claim is checked against the lookup that follows within this.
pub const CLAIM_FRESH: Duration = Duration::from_secs(60);
/// Claims remembered at once.
const MAX_CLAIMS: usize = 65_536;

#[derive(Debug)]
struct Inner {
    book: Mutex<Book>,
    have_tx: mpsc::Sender<StorePathHash>,
    dht_tx: mpsc::Sender<StorePathHash>,
    /// Recent `Have` claims: a lookup answered "not found" by a peer that
    /// claimed the path is a false claim.
    claims: Mutex<HashMap<(StorePathHash, PeerId), Instant>>,
}

/// Provider discovery; cheap to clone.
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl Discovery {
    /// Starts the discovery tasks on the current runtime.
    pub fn new(handle: NodeHandle, settings: DiscoverySettings) -> Self {
        let (have_tx, have_rx) = mpsc::channel(settings.queue);
        let (dht_tx, dht_rx) = mpsc::channel(settings.queue);
        let inner = Arc::new(Inner {
            book: Mutex::new(Book::new(settings.ttl, settings.miss_ttl, settings.capacity)),
            have_tx,
            dht_tx,
            claims: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(have_task(weak.clone(), handle.clone(), have_rx, settings.clone()));
        tokio::spawn(dht_task(weak, handle, dht_rx, settings));
        Self { inner }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.inner.book)
    }

    /// Starts searching for providers of each path not already searched.
    /// Returns at once.
    pub fn discover(&self, hashes: &[StorePathHash]) {
        self.start(hashes, false);
    }

    fn start(&self, hashes: &[StorePathHash], retry_miss: bool) {
        let now = Instant::now();
        for hash in hashes {
            if !self.book().start(*hash, now, retry_miss) {
                continue;
            }
            // A full queue means a flood of new paths: skip that half
            // rather than wait (the other half may still find providers).
            if self.inner.have_tx.try_send(*hash).is_err() {
                self.book().finished(hash, Half::Have, now);
            }
            if self.inner.dht_tx.try_send(*hash).is_err() {
                self.book().finished(hash, Half::Dht, now);
            }
        }
    }

    /// What is known of `hash` now.
    pub fn found(&self, hash: &StorePathHash) -> Option<Found> {
        self.book().get(hash, Instant::now())
    }

    /// Waits for a provider of `hash`, at most until the connected peers
    /// have answered (`have_by` at the latest) and the DHT walk has ended
    /// (`dht_by` at the latest); returns what was found by then. Starts a
    /// search if none runs.
    pub async fn wait(
        &self,
        hash: &StorePathHash,
        have_by: tokio::time::Instant,
        dht_by: tokio::time::Instant,
    ) -> Found {
        self.discover(std::slice::from_ref(hash));
        let Some(mut rx) = self.book().watch(hash, Instant::now()) else {
            return Found::default();
        };
        loop {
            let now = tokio::time::Instant::now();
            let next = {
                let f = rx.borrow_and_update();
                let have_over = f.have_done || now >= have_by;
                let dht_over = f.done || now >= dht_by;
                if !f.providers.is_empty() || (have_over && dht_over) {
                    return f.clone();
                }
                match (have_over, dht_over) {
                    (false, false) => have_by.min(dht_by),
                    (false, true) => have_by,
                    _ => dht_by,
                }
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() { return rx.borrow().clone() },
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Follows the search for `hash` as it finds providers; a search that
    /// found nobody is run again (an explicit lookup, not a prefetch).
    pub fn watch(&self, hash: &StorePathHash) -> Option<tokio::sync::watch::Receiver<Found>> {
        self.start(std::slice::from_ref(hash), true);
        self.book().watch(hash, Instant::now())
    }

    /// `peer` failed to serve `hash`: it is not offered for it again.
    pub fn forget(&self, hash: &StorePathHash, peer: &PeerId) {
        self.book().forget(hash, peer);
    }

    /// Whether `peer` said it holds `hash` in a `Have` answer in the last
    /// [`CLAIM_FRESH`] (forgotten once asked).
    pub fn claimed(&self, hash: &StorePathHash, peer: &PeerId) -> bool {
        let mut c = self
            .inner
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.remove(&(*hash, *peer)).is_some_and(|t| t.elapsed() < CLAIM_FRESH)
    }
}

fn lock(m: &Mutex<Book>) -> MutexGuard<'_, Book> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Batches paths into `Have` requests to the connected peers this node has
/// reason to ask (see `NodeHandle::askable_peers`).
async fn have_task(
    inner: std::sync::Weak<Inner>,
    handle: NodeHandle,
    mut rx: mpsc::Receiver<StorePathHash>,
    s: DiscoverySettings,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        // At most `have_batches` batches in flight: the queue fills meanwhile.
        let first = if in_flight.len() >= s.have_batches {
            in_flight.next().await;
            continue;
        } else {
            tokio::select! {
                h = rx.recv() => match h { Some(h) => h, None => return },
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            }
        };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(s.have_linger);
        tokio::pin!(linger);
        while batch.len() < MAX_HAVE {
            tokio::select! {
                h = rx.recv() => match h { Some(h) => batch.push(h), None => break },
                () = &mut linger => break,
            }
        }
        let Some(strong) = inner.upgrade() else { return };
        let mut peers = handle.askable_peers().await.unwrap_or_default();
        peers.truncate(s.have_peers);
        in_flight.push(ask_batch(strong, handle.clone(), peers, batch, s.have_timeout));
    }
}

async fn ask_batch(
    inner: Arc<Inner>,
    handle: NodeHandle,
    peers: Vec<PeerId>,
    batch: Vec<StorePathHash>,
    timeout: Duration,
) {
    let mut asks: FuturesUnordered<_> = peers
        .into_iter()
        .map(|peer| {
            let (handle, hashes) = (handle.clone(), batch.clone());
            async move {
                let r = tokio::time::timeout(timeout, handle.request(peer, Request::Have { hashes })).await;
                (peer, r)
            }
        })
        .collect();
    while let Some((peer, r)) = asks.next().await {
        match r {
            Ok(Ok(Response::Have { have })) if have.len() == batch.len() => {
                let now = Instant::now();
                let mut book = lock(&inner.book);
                let mut claims = inner.claims.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if claims.len() >= MAX_CLAIMS {
                    claims.retain(|_, t| now.duration_since(*t) < CLAIM_FRESH);
                }
                for (hash, _) in batch.iter().zip(have).filter(|(_, h)| *h) {
                    book.found(hash, peer);
                    if claims.len() < MAX_CLAIMS {
                        claims.insert((*hash, peer), now);
                    }
                }
            }
            Ok(Ok(other)) => tracing::debug!(%peer, ?other, "peer answered Have with something else"),
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Have request failed"),
            Err(_) => tracing::debug!(%peer, "Have request timed out"),
        }
    }
    let now = Instant::now();
    let mut book = lock(&inner.book);
    for hash in &batch {
        book.finished(hash, Half::Have, now);
    }
}

/// Runs DHT walks, `dht_walks` at a time.
async fn dht_task(
    inner: std::sync::Weak<Inner>,
    handle: NodeHandle,
    mut rx: mpsc::Receiver<StorePathHash>,
    s: DiscoverySettings,
) {
    let mut walks = FuturesUnordered::new();
    loop {
        if walks.len() >= s.dht_walks {
            walks.next().await;
            continue;
        }
        let hash = tokio::select! {
            h = rx.recv() => match h { Some(h) => h, None => return },
            Some(()) = walks.next(), if !walks.is_empty() => continue,
        };
        let Some(strong) = inner.upgrade() else { return };
        walks.push(walk(strong, handle.clone(), hash, s.dht_timeout));
    }
}

async fn walk(inner: Arc<Inner>, handle: NodeHandle, hash: StorePathHash, timeout: Duration) {
    if let Ok(mut found) = handle.find_providers(&hash).await {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                p = found.recv() => match p {
                    Some(p) => lock(&inner.book).found(&hash, p),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
    }
    lock(&inner.book).finished(&hash, Half::Dht, Instant::now());
}
