//! The transfer scheduler: which chunks to ask which provider for, when to
//! duplicate a slow batch (endgame), when to give up. A plain state machine
//! (time is an argument) that the fetch task feeds with responses and asks
//! for requests to send, so every decision is unit-tested without a
//! network (iroh-blobs' downloader has the same split).
//!
//! - Missing chunks are cut into batches; batches go to the least loaded
//!   provider with a free slot, within a window of bytes fetched ahead of
//!   what has been handed out.
//! - Endgame: once nothing is left to ask for, a batch in flight for more
//!   than twice the transfer's usual round trip (at least `endgame_min`) is
//!   asked of a second provider. A batch has at most two copies in flight,
//!   so a chunk arrives at most twice.
//! - A provider that lied is dropped for the transfer (the caller scores
//!   it); one that failed or lacks the chunks is dropped too; one that is
//!   busy cools down for a moment.
//! - The transfer fails when every provider is gone, or when no new chunk
//!   arrived for `stall` (the progress deadline).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;
use nixswarm_protocol::wire::{MAX_BATCH, WireChunk};
use nixswarm_protocol::{ChunkId, ChunkManifest};

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// Most providers used.
    pub max_peers: usize,
    /// Chunks per request.
    pub batch: usize,
    /// Requests in flight per provider.
    pub per_peer: usize,
    /// Bytes fetched ahead of what has been handed out.
    pub window: u64,
    /// Shortest wait before a batch is duplicated in the endgame.
    pub endgame_min: Duration,
    /// The transfer fails if no new chunk arrives for this long.
    pub stall: Duration,
    /// How long a busy provider is left alone.
    pub busy_cool: Duration,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            max_peers: 4,
            batch: 16,
            per_peer: 4,
            window: 64 << 20,
            endgame_min: Duration::from_millis(200),
            stall: Duration::from_secs(30),
            busy_cool: Duration::from_millis(50),
        }
    }
}

/// Identifies one batch (both copies of it in the endgame).
pub type BatchId = u64;

/// A request the caller should send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub peer: PeerId,
    pub batch: BatchId,
    pub ids: Vec<ChunkId>,
}

/// What came of a request, as the caller saw it.
#[derive(Debug)]
pub enum Outcome {
    /// Chunks, each checked against its id and size ([`check_chunks`]).
    Chunks(Vec<(ChunkId, Bytes)>),
    /// The provider is overloaded: ask again later.
    Busy,
    /// The provider sent something wrong (the caller penalises it).
    Lied,
    /// The request failed, or the provider does not have the path.
    Failed,
}

/// The next piece of the NAR, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    Data(Bytes),
    /// A chunk the local store holds: the caller reads it.
    Local(ChunkId),
}

#[derive(Debug)]
struct InFlight {
    ids: Vec<ChunkId>,
    copies: usize,
    first_sent: Instant,
    /// Who was asked for it (a duplicate goes to someone else).
    asked: Vec<PeerId>,
}

#[derive(Debug, Default)]
struct Peer {
    load: usize,
    /// Requests in flight allowed (the settings' `per_peer`, or more on a
    /// long round trip: [`depth_for`]).
    depth: usize,
    cool_until: Option<Instant>,
}

/// What one request stream carries per round trip until its window grows:
/// yamux's initial window.
const STREAM_WINDOW: u64 = 256 << 10;
/// The rate the requests in flight to one peer should allow, at most.
const DEPTH_RATE: f64 = 100e6;

/// Requests in flight to a peer `rtt` away: enough windows to carry
/// [`DEPTH_RATE`] (each request stream carries about [`STREAM_WINDOW`] a
/// round trip), never fewer than `base` nor more than `max`. With 4
/// requests a 40 ms link carried 27 MB/s, bounded by their windows.
pub fn depth_for(rtt: Option<Duration>, base: usize, max: usize) -> usize {
    let Some(rtt) = rtt else {
        return base;
    };
    let need = (DEPTH_RATE * rtt.as_secs_f64() / STREAM_WINDOW as f64).ceil() as usize;
    need.clamp(base, max.max(base))
}

/// The state of one transfer.
#[derive(Debug)]
pub struct Schedule {
    s: ScheduleSettings,
    order: Vec<ChunkId>,
    sizes: HashMap<ChunkId, u32>,
    last_use: HashMap<ChunkId, usize>,
    local: HashSet<ChunkId>,
    pending: VecDeque<Vec<ChunkId>>,
    in_flight: HashMap<BatchId, InFlight>,
    next_batch: BatchId,
    verified: HashSet<ChunkId>,
    held: HashMap<ChunkId, Bytes>,
    peers: HashMap<PeerId, Peer>,
    next: usize,
    ahead: u64,
    last_progress: Instant,
    /// Smoothed round trip of a batch.
    rtt: Option<Duration>,
    /// Bytes that arrived twice.
    pub duplicate_bytes: u64,
    /// Bytes that arrived once and verified.
    pub fetched_bytes: u64,
}

impl Schedule {
    /// A transfer of `manifest`'s chunks; `is_local` tells which the local
    /// store already holds.
    pub fn new(
        manifest: &ChunkManifest,
        is_local: impl Fn(&ChunkId) -> bool,
        providers: impl IntoIterator<Item = PeerId>,
        s: ScheduleSettings,
        now: Instant,
    ) -> Self {
        let order: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
        let sizes: HashMap<ChunkId, u32> = manifest.chunks.iter().map(|c| (c.id, c.size)).collect();
        let last_use = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut local = HashSet::new();
        let mut wanted = Vec::new();
        let mut listed = HashSet::new();
        for id in &order {
            if listed.insert(*id) {
                if is_local(id) {
                    local.insert(*id);
                } else {
                    wanted.push(*id);
                }
            }
        }
        let pending = wanted
            .chunks(s.batch.clamp(1, MAX_BATCH))
            .map(<[ChunkId]>::to_vec)
            .collect();
        let peers = providers
            .into_iter()
            .take(s.max_peers)
            .map(|p| {
                let peer = Peer {
                    depth: s.per_peer,
                    ..Peer::default()
                };
                (p, peer)
            })
            .collect();
        Self {
            s,
            order,
            sizes,
            last_use,
            local,
            pending,
            in_flight: HashMap::new(),
            next_batch: 0,
            verified: HashSet::new(),
            held: HashMap::new(),
            peers,
            next: 0,
            ahead: 0,
            last_progress: now,
            rtt: None,
            duplicate_bytes: 0,
            fetched_bytes: 0,
        }
    }

    /// The size the manifest gives `id` (for checking responses).
    pub fn size(&self, id: &ChunkId) -> Option<u32> {
        self.sizes.get(id).copied()
    }

    /// True once every piece has been handed out.
    pub fn is_done(&self) -> bool {
        self.next == self.order.len()
    }

    /// How far the hand-out has come (chunks).
    pub fn progress(&self) -> (usize, usize) {
        (self.next, self.order.len())
    }

    /// The next piece in NAR order, if it is ready.
    pub fn next_ready(&mut self) -> Option<Ready> {
        let id = *self.order.get(self.next)?;
        let ready = if self.local.contains(&id) {
            Ready::Local(id)
        } else {
            let data = self.held.get(&id)?.clone();
            if self.last_use.get(&id) == Some(&self.next) {
                self.held.remove(&id);
                self.ahead = self.ahead.saturating_sub(data.len() as u64);
            }
            Ready::Data(data)
        };
        self.next += 1;
        Some(ready)
    }

    /// A chunk handed out as [`Ready::Local`] was gone from the store
    /// (evicted meanwhile): step back and fetch it like the others.
    pub fn local_missing(&mut self, id: ChunkId) {
        if self.local.remove(&id) {
            self.next = self.next.saturating_sub(1);
            self.pending.push_front(vec![id]);
        }
    }

    /// Lets `peer` have `depth` requests in flight (see [`depth_for`]).
    pub fn set_depth(&mut self, peer: &PeerId, depth: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.depth = depth.max(1);
        }
    }

    fn free_peer(&self, now: Instant) -> Option<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.load < p.depth && p.cool_until.is_none_or(|t| t <= now))
            .min_by_key(|(_, p)| p.load)
            .map(|(id, _)| *id)
    }

    fn endgame_after(&self) -> Duration {
        self.rtt.map_or(self.s.endgame_min, |r| (r * 2).max(self.s.endgame_min))
    }

    /// A batch to duplicate now: in flight once, not all verified, oldest
    /// first, and older than the endgame wait.
    fn endgame_candidate(&self, now: Instant, peer: &PeerId) -> Option<BatchId> {
        let wait = self.endgame_after();
        self.in_flight
            .iter()
            .filter(|(_, b)| b.copies < 2 && now.duration_since(b.first_sent) >= wait)
            .filter(|(_, b)| !b.asked.contains(peer))
            .filter(|(_, b)| b.ids.iter().any(|id| !self.verified.contains(id)))
            .min_by_key(|(_, b)| b.first_sent)
            .map(|(id, _)| *id)
    }

    /// Requests to send now.
    pub fn sends(&mut self, now: Instant) -> Vec<Send> {
        let mut out = Vec::new();
        loop {
            let any_in_flight = !self.in_flight.is_empty();
            // The window bounds memory, but never blocks the only way forward.
            if self.ahead > self.s.window && any_in_flight {
                break;
            }
            let Some(peer) = self.free_peer(now) else { break };
            let (batch, ids) = if let Some(ids) = self.pending.pop_front() {
                let ids: Vec<ChunkId> = ids.into_iter().filter(|id| !self.verified.contains(id)).collect();
                if ids.is_empty() {
                    continue;
                }
                self.ahead += ids.iter().map(|id| u64::from(self.sizes[id])).sum::<u64>();
                let batch = self.next_batch;
                self.next_batch += 1;
                self.in_flight.insert(
                    batch,
                    InFlight {
                        ids: ids.clone(),
                        copies: 1,
                        first_sent: now,
                        asked: vec![peer],
                    },
                );
                (batch, ids)
            } else if let Some(batch) = self.endgame_candidate(now, &peer) {
                let b = self.in_flight.get_mut(&batch).expect("candidate is in flight");
                b.copies += 1;
                b.asked.push(peer);
                (batch, b.ids.clone())
            } else {
                break;
            };
            if let Some(p) = self.peers.get_mut(&peer) {
                p.load += 1;
            }
            out.push(Send { peer, batch, ids });
        }
        out
    }

    /// Feeds the outcome of a request. Returns the new bytes it verified.
    pub fn on_outcome(&mut self, peer: PeerId, batch: BatchId, outcome: Outcome, now: Instant) -> u64 {
        let known = self.peers.contains_key(&peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.load = p.load.saturating_sub(1);
        }
        let mut new_bytes = 0;
        match outcome {
            // A provider already dropped is not heard again.
            _ if !known => {}
            Outcome::Chunks(chunks) if chunks.is_empty() => {
                self.peers.remove(&peer); // it does not have the path (any more)
            }
            Outcome::Chunks(chunks) => {
                if let Some(b) = self.in_flight.get(&batch) {
                    let rtt = now.duration_since(b.first_sent);
                    self.rtt = Some(self.rtt.map_or(rtt, |r| (r * 7 + rtt) / 8));
                }
                for (id, data) in chunks {
                    let n = data.len() as u64;
                    if self.verified.insert(id) {
                        self.held.insert(id, data);
                        new_bytes += n;
                    } else {
                        self.duplicate_bytes += n;
                    }
                }
                if new_bytes > 0 {
                    self.last_progress = now;
                }
                self.fetched_bytes += new_bytes;
            }
            Outcome::Busy => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.cool_until = Some(now + self.s.busy_cool);
                }
            }
            Outcome::Lied | Outcome::Failed => {
                self.peers.remove(&peer);
            }
        }
        // Whatever of the batch is still missing goes back to the queue,
        // unless another copy of it is still in flight.
        if let Some(b) = self.in_flight.get_mut(&batch) {
            b.copies -= 1;
            if b.copies == 0 {
                let b = self.in_flight.remove(&batch).expect("present");
                let missing: Vec<ChunkId> = b.ids.into_iter().filter(|id| !self.verified.contains(id)).collect();
                if !missing.is_empty() {
                    self.ahead = self
                        .ahead
                        .saturating_sub(missing.iter().map(|id| u64::from(self.sizes[id])).sum());
                    self.pending.push_front(missing);
                }
            }
        }
        new_bytes
    }

    /// Why the transfer cannot go on, if it cannot.
    pub fn failure(&self, now: Instant) -> Option<String> {
        if self.is_done() {
            return None;
        }
        if self.peers.is_empty() && self.in_flight.is_empty() {
            let (done, all) = self.progress();
            return Some(format!("every peer failed after {done} of {all} chunks"));
        }
        let idle = now.duration_since(self.last_progress);
        (idle >= self.s.stall).then(|| format!("no new chunk for {idle:?}: peers too slow"))
    }

    /// The next time something may change without a response arriving: a
    /// cooled-down peer, an endgame duplicate, the progress deadline.
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.last_progress + self.s.stall;
        for p in self.peers.values() {
            if let Some(c) = p.cool_until {
                t = t.min(c);
            }
        }
        if self.pending.is_empty() {
            let wait = self.endgame_after();
            let someone_else = |b: &InFlight| self.peers.keys().any(|p| !b.asked.contains(p));
            for b in self.in_flight.values().filter(|b| b.copies < 2 && someone_else(b)) {
                t = t.min(b.first_sent + wait);
            }
        }
        t
    }

    /// Providers still in the transfer.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }
}

/// Checks a chunk response against the batch asked for: every chunk must
/// have been asked for, decompress to its manifest size and hash to its
/// id. `Err` names what was wrong (the provider lied).
pub fn check_chunks(
    asked: &[ChunkId],
    size_of: impl Fn(&ChunkId) -> Option<u32>,
    got: Vec<WireChunk>,
) -> Result<Vec<(ChunkId, Bytes)>, &'static str> {
    let asked: HashSet<&ChunkId> = asked.iter().collect();
    let mut out = Vec::with_capacity(got.len());
    for wc in got {
        let Some(size) = size_of(&wc.id).filter(|_| asked.contains(&wc.id)) else {
            return Err("sent a chunk it was not asked for");
        };
        let data = if wc.compressed {
            Bytes::from(decompress(&wc.data, size as usize).map_err(|_| "sent a chunk that does not decompress")?)
        } else {
            wc.data
        };
        if data.len() != size as usize || blake3::hash(&data).as_bytes() != &wc.id.0 {
            return Err("sent a chunk that does not match its BLAKE3 id");
        }
        out.push((wc.id, data));
    }
    Ok(out)
}

thread_local! {
    /// One zstd context per blocking thread: creating one per chunk cost
    /// ~2% of a single-peer transfer's CPU.
    static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Decompresses one chunk of at most `size` bytes.
fn decompress(data: &[u8], size: usize) -> std::io::Result<Vec<u8>> {
    UNZSTD.with(|z| match z.borrow_mut().as_mut() {
        Some(d) => d.decompress(data, size),
        None => zstd::bulk::decompress(data, size),
    })
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
