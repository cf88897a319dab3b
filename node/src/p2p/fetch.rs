//! Fetching a path from peers: find providers (DHT plus connected peers),
//! get a narinfo that verifies and a manifest that adds up, then stripe the
//! missing chunks across providers, several batches in flight per peer,
//! duplicating the last outstanding batches on idle peers (endgame). Every
//! chunk is checked against its BLAKE3 id; a peer that sends a bad one is
//! dropped from the transfer and scored down, repeat offenders are banned
//! for a while. Bytes come out in NAR order; the caller verifies NarHash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::{BoxStream, FuturesUnordered};
use libp2p::PeerId;
use nixswarm_protocol::wire::{MAX_BATCH, Request, Response};
use nixswarm_protocol::{ChunkId, ChunkManifest, NarInfo, PublicKey, StorePathHash};
use tokio::sync::mpsc;

use super::NodeHandle;
use crate::store::ChunkStore;

/// Fetcher settings.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Most providers one transfer stripes across.
    pub max_peers: usize,
    /// Chunks per request.
    pub batch: usize,
    /// Requests in flight per peer.
    pub per_peer: usize,
    /// Bytes fetched ahead of what has been handed out.
    pub window: u64,
    /// Time to wait for the first providers.
    pub lookup_timeout: Duration,
    /// Bad chunks before a peer is banned.
    pub ban_after: u32,
    pub ban_for: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            max_peers: 4,
            batch: 16,
            per_peer: 4,
            window: 64 << 20,
            lookup_timeout: Duration::from_secs(5),
            ban_after: 2,
            ban_for: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default)]
struct Score {
    bad: u32,
    banned_until: Option<Instant>,
}

/// A path some peers hold: its verified narinfo, a manifest that matches
/// it, and the providers found.
#[derive(Debug, Clone)]
pub struct PeerPath {
    pub info: NarInfo,
    pub manifest: Arc<ChunkManifest>,
    pub providers: Vec<PeerId>,
}

/// Fetches paths from peers.
#[derive(Debug, Clone)]
pub struct Fetcher {
    handle: NodeHandle,
    store: ChunkStore,
    keys: Arc<Vec<PublicKey>>,
    settings: FetchSettings,
    scores: Arc<Mutex<HashMap<PeerId, Score>>>,
}

type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

impl Fetcher {
    pub fn new(handle: NodeHandle, store: ChunkStore, keys: Vec<PublicKey>, settings: FetchSettings) -> Self {
        Self {
            handle,
            store,
            keys: Arc::new(keys),
            settings,
            scores: Arc::default(),
        }
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// True if `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let scores = self.scores.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        scores
            .get(peer)
            .and_then(|s| s.banned_until)
            .is_some_and(|t| t > Instant::now())
    }

    /// Records a bad chunk or manifest from `peer`.
    pub fn penalise(&self, peer: PeerId, why: &str) {
        let mut scores = self.scores.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = scores.entry(peer).or_default();
        s.bad += 1;
        tracing::warn!(%peer, why, bad = s.bad, "peer misbehaved");
        if s.bad >= self.settings.ban_after {
            s.banned_until = Some(Instant::now() + self.settings.ban_for);
            tracing::warn!(%peer, "peer banned for {:?}", self.settings.ban_for);
        }
    }

    /// Checks a narinfo and manifest a peer sent for `hash`.
    fn check(&self, hash: &StorePathHash, narinfo: &str, manifest: &ChunkManifest) -> Result<NarInfo, &'static str> {
        let info = NarInfo::parse(narinfo).map_err(|_| "unparsable narinfo")?;
        if info.store_path.hash() != *hash {
            return Err("narinfo for another path");
        }
        if info.trust(&self.keys).is_none() {
            return Err("untrusted narinfo");
        }
        if manifest.nar_hash != info.nar_hash || manifest.nar_size != info.nar_size {
            return Err("manifest does not match the narinfo");
        }
        Ok(info)
    }

    /// Finds providers of `hash` and a verified narinfo and manifest.
    /// `None` if no peer has it (or none told the truth).
    pub async fn lookup(&self, hash: &StorePathHash) -> Option<PeerPath> {
        let mut found = self.handle.find_providers(hash).await.ok()?;
        let mut candidates: VecDeque<PeerId> = VecDeque::new();
        let mut seen = HashSet::new();
        if let Ok(peers) = self.handle.peers().await {
            candidates.extend(peers.into_iter().filter(|p| seen.insert(*p)));
        }
        let deadline = tokio::time::Instant::now() + self.settings.lookup_timeout;
        type Asked = futures::future::BoxFuture<'static, (PeerId, Result<Response, super::NodeError>)>;
        let ask = |peer: PeerId, delay: Duration| -> Asked {
            let (h, hash) = (self.handle.clone(), *hash);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                (peer, h.request(peer, Request::PathInfo { hash }).await)
            })
        };
        let mut asking: FuturesUnordered<Asked> = FuturesUnordered::new();
        let mut busy_retries = 8u32;
        let mut providers: Vec<PeerId> = Vec::new();
        let mut best: Option<(NarInfo, Arc<ChunkManifest>)> = None;
        let mut dht_done = false;
        loop {
            while asking.len() < 4
                && let Some(peer) = candidates.pop_front()
            {
                if self.is_banned(&peer) {
                    continue;
                }
                asking.push(ask(peer, Duration::ZERO));
            }
            if dht_done && asking.is_empty() && candidates.is_empty() {
                break;
            }
            if best.is_some() && (providers.len() >= self.settings.max_peers || dht_done) && asking.is_empty() {
                break;
            }
            tokio::select! {
                p = found.recv(), if !dht_done => match p {
                    Some(p) if seen.insert(p) => candidates.push_back(p),
                    Some(_) => {}
                    None => dht_done = true,
                },
                Some((peer, r)) = asking.next(), if !asking.is_empty() => match r {
                    Ok(Response::PathInfo { narinfo, manifest }) => match self.check(hash, &narinfo, &manifest) {
                        Ok(info) => {
                            match &best {
                                None => {
                                    best = Some((info, Arc::new(manifest)));
                                    providers.push(peer);
                                }
                                Some((b, _)) if b.nar_hash == info.nar_hash => providers.push(peer),
                                Some(_) => {}
                            }
                        }
                        Err(why) => self.penalise(peer, why),
                    },
                    Ok(Response::Busy) if busy_retries > 0 => {
                        // Ask again shortly rather than take "busy" for "absent".
                        busy_retries -= 1;
                        asking.push(ask(peer, Duration::from_millis(50)));
                    }
                    Ok(_) | Err(_) => {}
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
            if best.is_some() && providers.len() >= self.settings.max_peers {
                break;
            }
        }
        let (info, manifest) = best?;
        Some(PeerPath {
            info,
            manifest,
            providers,
        })
    }

    /// Streams the NAR of `path` in order. The stream fails if every
    /// provider failed before the end (the caller then falls back).
    pub fn stream(&self, path: PeerPath) -> ByteStream {
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.transfer(path, &tx).await {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) }).boxed()
    }

    async fn transfer(&self, path: PeerPath, tx: &mpsc::Sender<std::io::Result<Bytes>>) -> Result<(), String> {
        let chunks = &path.manifest.chunks;
        // Where each distinct chunk is last needed (to free memory after).
        let mut last_use: HashMap<ChunkId, usize> = HashMap::new();
        for (i, c) in chunks.iter().enumerate() {
            last_use.insert(c.id, i);
        }
        let mut local: HashSet<ChunkId> = HashSet::new();
        let mut wanted: Vec<(ChunkId, u32)> = Vec::new();
        let mut listed = HashSet::new();
        for c in chunks {
            if listed.insert(c.id) {
                if self.store.has_chunk(&c.id).unwrap_or(false) {
                    local.insert(c.id);
                } else {
                    wanted.push((c.id, c.size));
                }
            }
        }
        let sizes: HashMap<ChunkId, u32> = chunks.iter().map(|c| (c.id, c.size)).collect();
        let mut pending: VecDeque<Vec<ChunkId>> = wanted
            .chunks(self.settings.batch.clamp(1, MAX_BATCH))
            .map(|b| b.iter().map(|(id, _)| *id).collect())
            .collect();
        let mut peers: Vec<PeerId> = path.providers.iter().copied().filter(|p| !self.is_banned(p)).collect();
        peers.truncate(self.settings.max_peers);
        let mut load: HashMap<PeerId, usize> = peers.iter().map(|p| (*p, 0)).collect();
        // Chunks verified so far (handed out or waiting in `have`): what is
        // in here is never asked for again, and a second copy of it (the
        // endgame's) counts as duplicate bytes.
        let mut verified: HashSet<ChunkId> = HashSet::new();
        let mut have: HashMap<ChunkId, Bytes> = HashMap::new();
        let mut outstanding: Vec<(Vec<ChunkId>, usize)> = Vec::new(); // batch, copies in flight
        let mut in_flight = FuturesUnordered::new();
        let mut cool: HashMap<PeerId, Instant> = HashMap::new();
        let mut next = 0usize;
        let mut ahead: u64 = 0;

        loop {
            // Hand out everything that is ready, in order.
            while let Some(c) = chunks.get(next) {
                let data = if local.contains(&c.id) {
                    match self.store.read_chunk(&c.id) {
                        Ok(Some(d)) => d,
                        _ => {
                            // Evicted meanwhile: fetch it like the others.
                            local.remove(&c.id);
                            pending.push_front(vec![c.id]);
                            break;
                        }
                    }
                } else if let Some(d) = have.get(&c.id) {
                    let d = d.clone();
                    if last_use.get(&c.id) == Some(&next) {
                        have.remove(&c.id);
                        ahead = ahead.saturating_sub(u64::from(c.size));
                    }
                    d
                } else {
                    break;
                };
                if tx.send(Ok(data)).await.is_err() {
                    return Ok(()); // nobody is listening any more
                }
                next += 1;
            }
            if next == chunks.len() {
                return Ok(());
            }
            // Schedule batches within the window on the least loaded peers.
            loop {
                // The window bounds memory, but never blocks the only way
                // forward: with nothing in flight, the next batch always goes.
                if ahead > self.settings.window && !in_flight.is_empty() {
                    break;
                }
                let Some(peer) = peers
                    .iter()
                    .copied()
                    .filter(|p| load[p] < self.settings.per_peer)
                    .min_by_key(|p| load[p])
                else {
                    break;
                };
                let batch = if let Some(b) = pending.pop_front() {
                    ahead += b.iter().map(|id| u64::from(sizes[id])).sum::<u64>();
                    outstanding.push((b.clone(), 1));
                    b
                } else if let Some(entry) = outstanding
                    .iter_mut()
                    .filter(|(b, _)| b.iter().any(|id| !verified.contains(id)))
                    .min_by_key(|(_, n)| *n)
                    .filter(|(_, n)| *n < 2)
                {
                    // Endgame: the same batch from a second peer.
                    entry.1 += 1;
                    entry.0.clone()
                } else {
                    break;
                };
                *load.entry(peer).or_insert(0) += 1;
                let h = self.handle.clone();
                let wait = cool
                    .get(&peer)
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                in_flight.push(async move {
                    // A peer that just said Busy gets a moment before the next request.
                    tokio::time::sleep(wait).await;
                    let r = h.request(peer, Request::Chunks { ids: batch.clone() }).await;
                    (peer, batch, r)
                });
            }
            if in_flight.is_empty() {
                if peers.is_empty() {
                    return Err(format!("every peer failed after {next} of {} chunks", chunks.len()));
                }
                // Nothing in flight and nothing schedulable: wait for the
                // window (only happens if everything left is in `have`).
                continue;
            }
            let Some((peer, batch, result)) = in_flight.next().await else {
                continue;
            };
            if let Some(l) = load.get_mut(&peer) {
                *l = l.saturating_sub(1);
            }
            let mut drop_peer = false;
            // A peer already dropped from this transfer is not heard again
            // (and not penalised twice for one transfer).
            let result = if peers.contains(&peer) {
                result
            } else {
                Ok(Response::Busy)
            };
            match result {
                Ok(Response::Chunks { chunks: got }) => {
                    let asked: HashSet<ChunkId> = batch.iter().copied().collect();
                    let mut delivered = 0;
                    for wc in got {
                        let Some(&size) = sizes.get(&wc.id).filter(|_| asked.contains(&wc.id)) else {
                            self.penalise(peer, "sent a chunk it was not asked for");
                            drop_peer = true;
                            break;
                        };
                        let data = if wc.compressed {
                            zstd::bulk::decompress(&wc.data, size as usize).map_err(|e| e.to_string())
                        } else {
                            Ok(wc.data)
                        };
                        match data {
                            Ok(d) if d.len() == size as usize && blake3::hash(&d).as_bytes() == &wc.id.0 => {
                                let stats = &self.handle.stats;
                                let n = d.len() as u64;
                                if verified.insert(wc.id) {
                                    stats.bytes_fetched.fetch_add(n, Ordering::Relaxed);
                                    have.insert(wc.id, Bytes::from(d));
                                } else {
                                    stats.bytes_fetched_duplicate.fetch_add(n, Ordering::Relaxed);
                                }
                                delivered += 1;
                            }
                            _ => {
                                self.penalise(peer, "sent a chunk that does not match its BLAKE3 id");
                                drop_peer = true;
                                break;
                            }
                        }
                    }
                    if delivered == 0 && !drop_peer {
                        drop_peer = true; // it does not have the path (any more)
                    }
                }
                Ok(Response::Busy) => {
                    cool.insert(peer, Instant::now() + Duration::from_millis(50));
                }
                Ok(_) => drop_peer = true,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "chunk request failed");
                    drop_peer = true;
                }
            }
            if drop_peer {
                peers.retain(|p| *p != peer);
            }
            // Whatever of the batch is still missing goes back to the queue,
            // unless another copy of it is still in flight.
            if let Some(pos) = outstanding.iter().position(|(b, _)| *b == batch) {
                outstanding[pos].1 -= 1;
                let missing: Vec<ChunkId> = batch.iter().copied().filter(|id| !verified.contains(id)).collect();
                if outstanding[pos].1 == 0 {
                    outstanding.remove(pos);
                    if !missing.is_empty() {
                        ahead = ahead.saturating_sub(missing.iter().map(|id| u64::from(sizes[id])).sum());
                        pending.push_front(missing);
                    }
                }
            }
        }
    }
}
