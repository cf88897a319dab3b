//! Fetching a path from peers: providers come from [`Discovery`] (a `Have`
//! round trip to connected peers and a DHT walk, started early and kept for
//! a while); a narinfo must verify and a manifest add up; then the
//! [`Schedule`] stripes the missing chunks across providers. Every chunk is
//! checked against its BLAKE3 id; a peer that sends a bad one is dropped
//! from the transfer and scored down, repeat offenders are banned for a
//! while. Bytes come out in NAR order; the caller verifies NarHash.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::{BoxStream, FuturesUnordered};
use libp2p::PeerId;
use nixswarm_protocol::wire::{MAX_INLINE, Request, Response, WireChunk};
use nixswarm_protocol::{ChunkId, ChunkManifest, NarInfo, PublicKey, Sha256Hash, StorePathHash};
use tokio::sync::mpsc;

use super::NodeHandle;
use super::discover::{Discovery, DiscoverySettings};
use super::in_flight::{InFlight, MAX_PER_PEER, PeerLoad};
use super::inline::{INLINE_KEEP, Inline, InlineBudget};
use super::schedule::{Outcome, Ready, Schedule, ScheduleSettings, check_chunks, depth_for};
use super::scores::Scores;
use crate::store::{AsyncStore, ChunkStore};

/// Fetcher settings.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// How transfers are scheduled (providers, batches, endgame, deadlines).
    pub schedule: ScheduleSettings,
    /// How providers are found.
    pub discovery: DiscoverySettings,
    /// Time a lookup may take: for the first provider, and for a verified
    /// narinfo and manifest from the providers found.
    pub lookup_timeout: Duration,
    /// Bad chunks before a peer is banned.
    pub ban_after: u32,
    pub ban_for: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            schedule: ScheduleSettings::default(),
            discovery: DiscoverySettings::default(),
            lookup_timeout: Duration::from_secs(5),
            ban_after: 2,
            ban_for: Duration::from_secs(600),
        }
    }
}

/// A path some peers hold: its verified narinfo, a manifest that matches
/// it, and the providers found.
#[derive(Debug, Clone)]
pub struct PeerPath {
    pub info: NarInfo,
    pub manifest: Arc<ChunkManifest>,
    pub providers: Vec<PeerId>,
    /// The NAR's chunks, if they came with the lookup (a small NAR): the
    /// first transfer takes them.
    pub inline: Option<Arc<Inline>>,
}

impl PeerPath {
    /// NAR bytes here already, come with the lookup, for its first transfer.
    pub fn inline_bytes(&self) -> u64 {
        self.inline.as_ref().map_or(0, |i| i.bytes())
    }
}

/// Fetches paths from peers.
#[derive(Debug, Clone)]
pub struct Fetcher {
    handle: NodeHandle,
    store: AsyncStore,
    keys: Arc<Vec<PublicKey>>,
    settings: FetchSettings,
    scores: Arc<Mutex<Scores>>,
    /// False claims (`Have` yes, then "not found"), forgotten after a while.
    false_claims: Arc<Mutex<Scores>>,
    /// Per peer: chunk requests in flight, and whether its chunks come
    /// faster compressed or as stored.
    load: Arc<PeerLoad>,
    discovery: Discovery,
    /// Manifests whose chunks verified but whose NAR did not, by path:
    /// never used for that path again.
    bad_manifests: Arc<Mutex<BadManifests>>,
    /// Chunks that came with lookups, held at once.
    inline: InlineBudget,
}

/// Providers that sent one manifest, in a lookup.
struct Group {
    info: NarInfo,
    manifest: Arc<ChunkManifest>,
    providers: Vec<PeerId>,
    inline: Option<Arc<Inline>>,
}

/// (path, [`manifest_id`]) pairs.
type BadManifests = HashSet<(StorePathHash, [u8; 32])>;

/// Rejected manifests remembered before the memory is cleared.
const MAX_BAD_MANIFESTS: usize = 10_000;
/// False claims (`Have` yes, then "not found") before a peer is banned.
pub const FALSE_CLAIMS: u32 = 3;
/// A false claim older than this no longer counts.
pub const FALSE_CLAIM_DECAY: Duration = Duration::from_secs(600);
/// What came back for one batch: the answer's bytes on the wire and its
/// chunks checked off the runtime (zstd and BLAKE3 over up to 32 chunks),
/// or the request's failure.
enum Answer {
    Chunks {
        wire: u64,
        checked: Result<Vec<(ChunkId, Bytes)>, &'static str>,
    },
    Other(Response),
    Failed(super::NodeError),
}

/// Asks `peer` for a batch and checks what comes back. Runs as one of the
/// transfer's futures, so batches are checked in parallel while the
/// transfer goes on.
async fn ask(handle: NodeHandle, peer: PeerId, ids: Vec<ChunkId>, sizes: Vec<Option<u32>>, compress: bool) -> Answer {
    let request = Request::Chunks {
        ids: ids.clone(),
        compress,
    };
    match handle.request(peer, request).await {
        Ok(Response::Chunks { chunks }) => {
            let wire = chunks.iter().map(|c| c.data.len() as u64).sum();
            let checked = tokio::task::spawn_blocking(move || {
                let size_of = |id: &ChunkId| ids.iter().position(|i| i == id).and_then(|i| sizes[i]);
                check_chunks(&ids, size_of, chunks)
            })
            .await
            .unwrap_or(Err("chunk check failed"));
            Answer::Chunks { wire, checked }
        }
        Ok(other) => Answer::Other(other),
        Err(e) => Answer::Failed(e),
    }
}

/// The largest NAR whose chunks come with a look-ahead lookup: a few
/// KiB of a provider's upload, if the client never asks for the path.
pub const LOOK_AHEAD_INLINE: u32 = 16 << 10;

/// How long a lookup waits for an answer before it asks one more provider.
const HEDGE: Duration = Duration::from_millis(500);
/// Providers asked at once by a lookup, at most.
const MAX_ASKING: usize = 16;

/// What identifies a manifest: its chunk list (NarHash and NarSize are the
/// narinfo's, the same for every provider that is asked).
fn manifest_id(m: &ChunkManifest) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for c in &m.chunks {
        h.update(&c.id.0);
        h.update(&c.size.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Verified chunks of a NAR with their offsets, from the end backwards
/// ([`Fetcher::stream_tail`]).
pub type TailStream = BoxStream<'static, std::io::Result<(u64, Bytes)>>;

/// Which end of the NAR a transfer starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Head,
    Tail,
}

impl Fetcher {
    /// A fetcher; starts its discovery tasks on the current runtime.
    pub fn new(handle: NodeHandle, store: ChunkStore, keys: Vec<PublicKey>, settings: FetchSettings) -> Self {
        Self {
            discovery: Discovery::new(handle.clone(), settings.discovery.clone()),
            handle,
            store: store.into(),
            keys: Arc::new(keys),
            scores: Arc::new(Mutex::new(Scores::new(settings.ban_after, settings.ban_for))),
            false_claims: Arc::new(Mutex::new(
                Scores::new(FALSE_CLAIMS, settings.ban_for).with_decay(FALSE_CLAIM_DECAY),
            )),
            load: Arc::default(),
            settings,
            bad_manifests: Arc::default(),
            inline: InlineBudget::default(),
        }
    }

    fn bad_manifests(&self) -> std::sync::MutexGuard<'_, BadManifests> {
        self.bad_manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The NAR of `path` did not match its NarHash although every chunk
    /// matched the manifest: the providers that sent that manifest (and only
    /// they: `path.providers` holds no one else) lied. They are penalised,
    /// and the manifest is never used for the path again, so the next
    /// lookup takes another provider's.
    pub fn reject(&self, path: &PeerPath) {
        let hash = path.info.store_path.hash();
        {
            let mut bad = self.bad_manifests();
            if bad.len() >= MAX_BAD_MANIFESTS {
                bad.clear();
            }
            bad.insert((hash, manifest_id(&path.manifest)));
        }
        for peer in &path.providers {
            self.discovery.forget(&hash, peer);
            self.handle.stats.proven.forget(peer);
            self.penalise(*peer, "served a manifest that does not add up to the NarHash");
        }
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    fn scores(&self) -> std::sync::MutexGuard<'_, Scores> {
        self.scores.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True if `peer` is banned now (for bad data, or for false claims).
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let now = Instant::now();
        self.scores().is_banned(peer, now) || self.claims().is_banned(peer, now)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Scores> {
        self.false_claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `peer` said it held a path, then answered the lookup "not found".
    /// An honest peer does that only when it evicted the path in between,
    /// so [`FALSE_CLAIMS`] within [`FALSE_CLAIM_DECAY`] of each other ban
    /// it for `ban_for`: its claims cost every fetcher a round trip each.
    fn false_claim(&self, peer: PeerId) {
        let (n, banned) = self.claims().penalise(peer, Instant::now());
        tracing::debug!(%peer, n, "peer claimed a path it did not have");
        if banned {
            tracing::warn!(%peer, "peer banned for {:?}: it claims paths it does not have", self.settings.ban_for);
        }
    }

    /// Records a bad chunk or manifest from `peer`.
    pub fn penalise(&self, peer: PeerId, why: &str) {
        let (bad, banned) = self.scores().penalise(peer, Instant::now());
        tracing::warn!(%peer, why, bad, "peer misbehaved");
        if banned {
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
        if manifest.check_against(&info).is_err() {
            return Err("manifest does not match the narinfo");
        }
        Ok(info)
    }

    /// Starts finding providers of these paths in the background.
    pub fn prefetch(&self, hashes: &[StorePathHash]) {
        self.discovery.discover(hashes);
    }

    /// The provider discovery this fetcher uses.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Finds providers of `hash` and a verified narinfo and manifest, and
    /// a small NAR's chunks with them (from the first provider asked).
    /// `None` if no peer has it (or none told the truth).
    pub async fn lookup(&self, hash: &StorePathHash) -> Option<PeerPath> {
        self.find(hash, None, self.settings.lookup_timeout, MAX_INLINE).await
    }

    /// Like [`Self::lookup`], for a path that may be asked for soon (a
    /// reference of one that was): chunks only of a NAR of at most
    /// [`LOOK_AHEAD_INLINE`], so a path the client never asks for (it has
    /// it) costs its provider little.
    pub async fn look_ahead(&self, hash: &StorePathHash) -> Option<PeerPath> {
        self.find(hash, None, self.settings.lookup_timeout, LOOK_AHEAD_INLINE)
            .await
    }

    /// Like [`Self::lookup`], for a NAR: only providers of `nar_hash`
    /// count, and the first must turn up in time: the connected peers get
    /// up to `have_wait` to answer, the DHT walk up to `dht_wait`. What the
    /// search has found already counts at once, and a search that has
    /// ended with nobody ends the wait.
    pub async fn lookup_nar(
        &self,
        hash: &StorePathHash,
        nar_hash: &Sha256Hash,
        have_wait: Duration,
        dht_wait: Duration,
    ) -> Option<PeerPath> {
        let now = tokio::time::Instant::now();
        let found = self.discovery.wait(hash, now + have_wait, now + dht_wait).await;
        if found.providers.iter().all(|p| self.is_banned(p)) {
            return None;
        }
        self.find(hash, Some(*nar_hash), self.settings.lookup_timeout, MAX_INLINE)
            .await
    }

    /// The lookup; the chunks of a NAR of at most `inline` bytes may come
    /// with it.
    async fn find(
        &self,
        hash: &StorePathHash,
        nar_hash: Option<Sha256Hash>,
        wait: Duration,
        inline: u32,
    ) -> Option<PeerPath> {
        let mut rx = self.discovery.watch(hash)?;
        let start = tokio::time::Instant::now();
        let deadline = start + wait.max(self.settings.lookup_timeout);
        let first_by = start + wait;
        type Asked = futures::future::BoxFuture<'static, (PeerId, Result<Response, super::NodeError>)>;
        // The first provider asked is asked for the chunks too, in case the
        // NAR is small: one of its slots, if free, and room in the budget.
        let mut first = true;
        let mut ask = |peer: PeerId, delay: Duration| -> Asked {
            let (h, hash) = (self.handle.clone(), *hash);
            let room = if std::mem::take(&mut first) {
                self.inline.room().min(inline)
            } else {
                0
            };
            let slot = (room > 0).then(|| InFlight::try_small(&self.load, peer)).flatten();
            // A lookup without chunks takes one of the peer's lookup slots.
            let load = slot.is_none().then(|| self.load.clone());
            let request = match &slot {
                Some(slot) => Request::PathInline {
                    hash,
                    max: room,
                    compress: slot.compressed(),
                },
                None => Request::PathInfo { hash },
            };
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                let lookup = match &load {
                    Some(l) => Some(l.lookup_slot(peer).await),
                    None => None,
                };
                let answer = h.request(peer, request).await;
                drop((slot, lookup));
                (peer, answer)
            })
        };
        let mut seen = HashSet::new();
        let mut queue: VecDeque<PeerId> = VecDeque::new();
        let mut asking: FuturesUnordered<Asked> = FuturesUnordered::new();
        let mut busy_retries = 8u32;
        // Four asked at once, one more each `HEDGE` nobody answers (peers
        // that claim the path and never answer hold their places until
        // the request timeout).
        let mut width = 4usize;
        let mut hedge_at = start + HEDGE;
        let mut unanswered = HashSet::new();
        // Providers grouped by the manifest they sent: a provider is only
        // ever blamed for its own manifest, and honest providers (whose
        // manifests are all the same: chunking is deterministic) are never
        // mixed with a liar's.
        let mut groups: Vec<Group> = Vec::new();
        let max_peers = self.settings.schedule.max_peers;
        loop {
            let done = {
                let f = rx.borrow_and_update();
                let proven = &self.handle.stats.proven;
                for p in f.providers.iter().filter(|p| seen.insert(**p)) {
                    // Peers that served verified chunks before are asked first.
                    if proven.contains(p) {
                        queue.push_front(*p);
                    } else {
                        queue.push_back(*p);
                    }
                }
                f.done
            };
            while asking.len() < width
                && let Some(peer) = queue.pop_front()
            {
                if !self.is_banned(&peer) {
                    unanswered.insert(peer);
                    asking.push(ask(peer, Duration::ZERO));
                }
            }
            let idle = asking.is_empty() && queue.is_empty();
            let most = groups.iter().map(|g| g.providers.len()).max();
            if most.is_some_and(|n| idle || n >= max_peers) || (done && idle) {
                break;
            }
            if seen.is_empty() && tokio::time::Instant::now() >= first_by {
                break; // nobody turned up in time
            }
            tokio::select! {
                r = rx.changed(), if !done => if r.is_err() { break },
                // Someone answered and nobody has since: providers that
                // stay silent are not waited for.
                () = tokio::time::sleep_until(hedge_at), if !groups.is_empty() => break,
                () = tokio::time::sleep_until(hedge_at), if !queue.is_empty() && width < MAX_ASKING => {
                    width += 1;
                    hedge_at = tokio::time::Instant::now() + HEDGE;
                }
                Some((peer, r)) = asking.next(), if !asking.is_empty() => {
                    hedge_at = tokio::time::Instant::now() + HEDGE;
                    unanswered.remove(&peer);
                    let r = r.map(|r| match r {
                        Response::PathInfo { narinfo, manifest } => Response::PathInline { narinfo, manifest, chunks: vec![] },
                        other => other,
                    });
                    match r {
                    Ok(Response::PathInline { narinfo, manifest, chunks }) => match self.check(hash, &narinfo, &manifest) {
                        Ok(info) if nar_hash.is_some_and(|n| n != info.nar_hash) => {
                            // Another build of the path: not what is asked for.
                            tracing::debug!(%peer, %hash, "provider has another NAR of the path");
                        }
                        Ok(_) if self.bad_manifests().contains(&(*hash, manifest_id(&manifest))) => {
                            tracing::debug!(%peer, %hash, "provider sent a manifest already rejected");
                        }
                        Ok(info) => {
                            let first = groups.first().map(|g| g.info.nar_hash);
                            if first.is_none_or(|n| n == info.nar_hash) {
                                let manifest = Arc::new(manifest);
                                match self.accept_inline(peer, &manifest, chunks).await {
                                    Err(()) => {}
                                    Ok(inline) => match groups.iter_mut().find(|g| g.manifest == manifest) {
                                        Some(g) => {
                                            g.providers.push(peer);
                                            g.inline = g.inline.take().or(inline);
                                        }
                                        None => groups.push(Group { info, manifest, providers: vec![peer], inline }),
                                    },
                                }
                            }
                        }
                        Err(why) => self.penalise(peer, why),
                    },
                    Ok(Response::Busy) if busy_retries > 0 => {
                        // Ask again shortly rather than take "busy" for "absent".
                        busy_retries -= 1;
                        unanswered.insert(peer);
                        asking.push(ask(peer, Duration::from_millis(50)));
                    }
                    Ok(Response::NotFound) if self.discovery.claimed(hash, &peer) => {
                        self.discovery.forget(hash, &peer);
                        self.false_claim(peer);
                    }
                    Ok(_) | Err(_) => self.discovery.forget(hash, &peer),
                    }
                }
                () = tokio::time::sleep_until(if seen.is_empty() { first_by } else { deadline }) => {
                    if !seen.is_empty() { break }
                }
            }
        }
        // If nobody answered, those that let the lookup end unanswered are
        // not asked first next time (the discovery may find them again).
        // Once someone has, the rest may only be slow: they stay.
        if groups.is_empty() {
            for peer in &unanswered {
                self.discovery.forget(hash, peer);
            }
        }
        // The manifest most providers sent (the first one on a tie); if it
        // is a lie, `reject` rules it out and the next lookup takes another.
        let mut best: Option<Group> = None;
        for g in groups {
            if best.as_ref().is_none_or(|b| g.providers.len() > b.providers.len()) {
                best = Some(g);
            }
        }
        let g = best?;
        Some(PeerPath {
            info: g.info,
            manifest: g.manifest,
            providers: g.providers,
            inline: g.inline,
        })
    }

    /// Checks the chunks `peer` sent with its manifest (off the runtime)
    /// and holds them for the transfer. `Err` if one was a lie (the peer
    /// is penalised and its answer not counted).
    async fn accept_inline(
        &self,
        peer: PeerId,
        manifest: &Arc<ChunkManifest>,
        chunks: Vec<WireChunk>,
    ) -> Result<Option<Arc<Inline>>, ()> {
        if chunks.is_empty() {
            return Ok(None);
        }
        let wire: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
        let (budget, m) = (self.inline.clone(), manifest.clone());
        let checked = tokio::task::spawn_blocking(move || budget.accept(&m, chunks))
            .await
            .unwrap_or(Err("chunk check failed"));
        match checked {
            Ok(inline) => {
                let inline = inline.map(Arc::new);
                if let Some(i) = &inline {
                    i.expire_after(INLINE_KEEP);
                    let stats = &self.handle.stats;
                    stats.proven.mark(peer);
                    stats.bytes_fetched.fetch_add(i.bytes(), Ordering::Relaxed);
                    stats.bytes_fetched_inline.fetch_add(i.bytes(), Ordering::Relaxed);
                    stats.bytes_fetched_wire.fetch_add(wire, Ordering::Relaxed);
                }
                Ok(inline)
            }
            Err(why) => {
                self.penalise(peer, why);
                Err(())
            }
        }
    }

    /// Streams the NAR of `path` in order. The stream fails if every
    /// provider failed before the end, or the transfer stalled (the caller
    /// then falls back).
    pub fn stream(&self, path: PeerPath) -> ByteStream {
        self.spawn_transfer(path, Order::Head)
            .map(|r| r.map(|(_, b)| b))
            .boxed()
    }

    /// Streams the NAR of `path` from its end backwards: each item is a
    /// verified chunk and its offset in the NAR, and the items so far always
    /// cover a contiguous tail `[offset, NarSize)`. This is the peers' end of
    /// a two-ended fetch (an upstream streams the head). Dropping the stream
    /// stops the transfer.
    pub fn stream_tail(&self, path: PeerPath) -> TailStream {
        self.spawn_transfer(path, Order::Tail)
    }

    /// Runs [`Self::transfer`] in a task of its own; its chunks, with their
    /// offsets, come out of the stream, and its failure as the last item.
    fn spawn_transfer(&self, path: PeerPath, order: Order) -> TailStream {
        let (tx, rx) = mpsc::channel::<std::io::Result<(u64, Bytes)>>(16);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.transfer(path, order, &tx).await {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) }).boxed()
    }

    /// Runs one transfer: the [`Schedule`] decides, this task sends its
    /// requests, checks the answers and feeds them back.
    async fn transfer(
        &self,
        path: PeerPath,
        order: Order,
        tx: &mpsc::Sender<std::io::Result<(u64, Bytes)>>,
    ) -> Result<(), String> {
        let hash = path.info.store_path.hash();
        // The schedule hands chunks out in its manifest's order: for the
        // tail, a reversed manifest, with each chunk's offset in the NAR.
        let mut offsets: Vec<u64> = path
            .manifest
            .chunks
            .iter()
            .scan(0u64, |at, c| {
                let o = *at;
                *at += u64::from(c.size);
                Some(o)
            })
            .collect();
        let manifest = match order {
            Order::Head => path.manifest.clone(),
            Order::Tail => {
                offsets.reverse();
                let mut m = (*path.manifest).clone();
                m.chunks.reverse();
                Arc::new(m)
            }
        };
        let providers = path.providers.iter().copied().filter(|p| !self.is_banned(p));
        // Chunks already here (shared with other stored paths), in one trip.
        let ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
        let here = self.store.has_chunks(ids.clone()).await.unwrap_or_default();
        let local: HashSet<ChunkId> = ids
            .into_iter()
            .zip(here)
            .filter_map(|(id, h)| h.then_some(id))
            .collect();
        // A small NAR's chunks may have come with its lookup.
        let inline = path.inline.as_ref().and_then(|i| i.take());
        let is_local = |id: &ChunkId| local.contains(id) || inline.as_ref().is_some_and(|i| i.has(id));
        let providers: Vec<PeerId> = providers.collect();
        let mut sched = Schedule::new(
            &manifest,
            is_local,
            providers.iter().copied(),
            self.settings.schedule.clone(),
            Instant::now(),
        );
        for p in &providers {
            let rtt = self.handle.stats.rtts.get(p);
            sched.set_depth(p, depth_for(rtt, self.settings.schedule.per_peer, MAX_PER_PEER));
        }
        let stats = &self.handle.stats;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while let Some(ready) = sched.next_ready() {
                let at = offsets[sched.progress().0 - 1];
                let data = match ready {
                    Ready::Data(d) => d,
                    Ready::Local(id) => match inline.as_ref().and_then(|i| i.get(&id)) {
                        Some(d) => d,
                        None => match self.store.read_chunk(id).await {
                            Ok(Some(d)) => d,
                            _ => {
                                sched.local_missing(id);
                                break;
                            }
                        },
                    },
                };
                if tx.send(Ok((at, data))).await.is_err() {
                    return Ok(()); // nobody is listening any more
                }
            }
            if sched.is_done() {
                return Ok(());
            }
            let now = Instant::now();
            if let Some(why) = sched.failure(now) {
                return Err(why);
            }
            for send in sched.sends(now) {
                let sizes: Vec<Option<u32>> = send.ids.iter().map(|id| sched.size(id)).collect();
                let bytes = sizes.iter().flatten().map(|s| u64::from(*s)).sum();
                let (load, handle) = (self.load.clone(), self.handle.clone());
                in_flight.push(async move {
                    let batch = InFlight::ask(&load, send.peer, bytes).await;
                    let answer = ask(handle, send.peer, send.ids.clone(), sizes, batch.compressed()).await;
                    (send, batch, answer)
                });
            }
            let wake = tokio::time::Instant::from_std(sched.next_deadline());
            tokio::select! {
                // Nobody is listening any more: stop asking peers at once.
                () = tx.closed() => return Ok(()),
                Some((send, batch, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                    let peer = send.peer;
                    let current = sched.peers().any(|p| *p == peer);
                    let outcome = match answer {
                        Answer::Chunks { wire, checked: Ok(c) } => {
                            if !c.is_empty() {
                                stats.proven.mark(peer);
                                stats.bytes_fetched_wire.fetch_add(wire, Ordering::Relaxed);
                            }
                            batch.answered(Some(c.iter().map(|(_, d)| d.len() as u64).sum()));
                            Outcome::Chunks(c)
                        }
                        Answer::Chunks { checked: Err(why), .. } => {
                            // Not penalised twice for one transfer.
                            if current {
                                self.penalise(peer, why);
                            }
                            Outcome::Lied
                        }
                        Answer::Other(Response::Busy) => Outcome::Busy,
                        Answer::Other(_) => Outcome::Failed,
                        Answer::Failed(e) => {
                            tracing::debug!(%peer, error = %e, "chunk request failed");
                            Outcome::Failed
                        }
                    };
                    if matches!(outcome, Outcome::Failed | Outcome::Lied) {
                        self.discovery.forget(&hash, &peer);
                    }
                    let dup = sched.duplicate_bytes;
                    let new = sched.on_outcome(peer, send.batch, outcome, Instant::now());
                    stats.bytes_fetched.fetch_add(new, Ordering::Relaxed);
                    stats.bytes_fetched_duplicate.fetch_add(sched.duplicate_bytes - dup, Ordering::Relaxed);
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
