//! Resolution: local store first, then the sources. Every narinfo from a
//! source must verify against the trusted keys (or be a valid content
//! address, Nix's own rule) and name the path asked for; a source whose NAR
//! failed verification is skipped for that NAR for a while.
//!
//! The narinfo and the NAR are two decisions. A narinfo comes from the
//! first verified source (its latency is what the user feels); a NAR's
//! bytes come from peers whenever they hold the path (that is what saves
//! the upstream's egress), with the upstreams as hedge and fallback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nixswarm_protocol::{NarInfo, PublicKey, Sha256Hash, StorePath, StorePathHash};

use crate::legs::{self, Fallback, TaggedStream};
use crate::metrics::Metrics;
use crate::source::{Source, SourceKind};

/// How long a source stays skipped for a NAR after it served a bad one.
const BAD_SOURCE_TTL: Duration = Duration::from_secs(600);
/// How long a verified narinfo from a source is remembered.
const FOUND_TTL: Duration = Duration::from_secs(300);
/// Entries kept per cache before expired ones are purged.
const CACHE_CAP: usize = 50_000;

/// A small map whose entries expire.
#[derive(Debug)]
struct TtlMap<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> TtlMap<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::default(),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(k)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CACHE_CAP {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= CACHE_CAP {
                map.clear();
            }
        }
        map.insert(k, (Instant::now(), v));
    }
}

/// The sources in priority order and what is known about them.
#[derive(Debug)]
pub struct Resolver {
    pub sources: Vec<Arc<dyn Source>>,
    keys: Vec<PublicKey>,
    metrics: Arc<Metrics>,
    /// How long peers get before the upstreams are asked as well.
    lookup_budget: Duration,
    /// Verified narinfo per (source, path).
    found: TtlMap<(usize, StorePathHash), NarInfo>,
    /// An upstream's "no such path", kept for the negative TTL.
    absent: TtlMap<(usize, StorePathHash), ()>,
    /// Paths no source had.
    missing: TtlMap<StorePathHash, ()>,
    /// (source, path, NarHash) that failed verification.
    bad: TtlMap<(usize, StorePathHash, Sha256Hash), ()>,
}

impl Resolver {
    pub fn new(
        sources: Vec<Arc<dyn Source>>,
        keys: Vec<PublicKey>,
        negative_ttl: Duration,
        lookup_budget: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sources,
            keys,
            metrics,
            lookup_budget,
            found: TtlMap::new(FOUND_TTL),
            absent: TtlMap::new(negative_ttl),
            missing: TtlMap::new(negative_ttl),
            bad: TtlMap::new(BAD_SOURCE_TTL),
        }
    }

    /// True if the trusted keys (or Nix's content-address rule) accept `info`
    /// as the narinfo of `hash`. `Ok(true)` when only its NAR can show it is
    /// right (see [`NarInfo::unbound`]).
    pub fn acceptable(&self, hash: &StorePathHash, info: &NarInfo) -> Result<bool, &'static str> {
        if info.store_path.hash() != *hash {
            return Err("wrong_path");
        }
        let trust = info.trust(&self.keys).ok_or("untrusted")?;
        Ok(info.unbound(&trust))
    }

    /// Fetches and checks the NAR of an unbound narinfo from the source
    /// that sent it, before the narinfo is handed to Nix: Nix keeps a
    /// narinfo it was given (for a month by default), so a forged one would
    /// stay wrong there even after the NAR failed. The NAR is fetched again
    /// to be served; this costs a second download, but only for unsigned
    /// flat and text paths (signed ones are bound by their signature).
    async fn check_unbound(&self, idx: usize, info: &NarInfo) -> Result<(), String> {
        let hash = info.store_path.hash();
        if !self.usable(idx, &hash, &info.nar_hash) {
            return Err("its NAR failed verification lately".into());
        }
        let mut stream = match self.sources[idx].nar(info).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("no NAR".into()),
            Err(e) => return Err(e.to_string()),
        };
        let mut check = nixswarm_protocol::NarCheck::new(info);
        let outcome = async {
            while let Some(piece) = futures::StreamExt::next(&mut stream).await {
                check
                    .update(&piece.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            check.finish().map(drop).map_err(|e| e.to_string())
        }
        .await;
        if outcome.is_err() {
            self.mark_bad(idx, &hash, &info.nar_hash);
            self.sources[idx].rejected(info, true);
        }
        outcome
    }

    /// The verified narinfo of `hash` from source `idx`.
    async fn narinfo_from(&self, idx: usize, hash: &StorePathHash) -> Answer {
        if let Some(info) = self.found.get(&(idx, *hash)) {
            return Answer::Found(Box::new(info));
        }
        if self.absent.get(&(idx, *hash)).is_some() {
            return Answer::Absent;
        }
        let source = &self.sources[idx];
        let kind = source.kind().as_str();
        let result = match source.narinfo(hash).await {
            Ok(Some(info)) => match self.acceptable(hash, &info) {
                Ok(false) => Some(info),
                Ok(true) => match self.check_unbound(idx, &info).await {
                    Ok(()) => Some(info),
                    Err(why) => {
                        tracing::warn!(source = source.name(), %hash, %why, "rejected content-addressed narinfo: its NAR does not match");
                        self.metrics.reject(kind, "ca_mismatch");
                        None
                    }
                },
                Err(reason) => {
                    tracing::warn!(source = source.name(), %hash, reason, "rejected narinfo");
                    self.metrics.reject(kind, reason);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                // Down or broken: skip it for this request, do not remember.
                tracing::warn!(error = %e, %hash, "source failed");
                self.metrics.reject(kind, "narinfo_error");
                return Answer::Failed;
            }
        };
        // A peer that lacks a path now may have it soon: remember only its
        // hits. An upstream's miss is kept only for the negative TTL.
        match &result {
            Some(info) => self.found.insert((idx, *hash), info.clone()),
            None if source.kind() == SourceKind::Upstream => self.absent.insert((idx, *hash), ()),
            None => {}
        }
        result.map_or(Answer::Absent, |i| Answer::Found(Box::new(i)))
    }

    /// The first verified answer among `idxs`, asked in order; otherwise
    /// whether every one of them answered that it has no such path.
    async fn first(&self, idxs: &[usize], hash: &StorePathHash) -> Result<(usize, NarInfo), Miss> {
        let mut all_absent = true;
        for &idx in idxs {
            match self.narinfo_from(idx, hash).await {
                Answer::Found(info) => return Ok((idx, *info)),
                Answer::Absent => {}
                Answer::Failed => all_absent = false,
            }
        }
        Err(if all_absent { Miss::Absent } else { Miss::Unknown })
    }

    fn peer_sources(&self) -> impl Iterator<Item = &Arc<dyn Source>> {
        self.sources.iter().filter(|s| s.kind() == SourceKind::Peer)
    }

    /// Tells the peer sources that these paths will likely be asked for.
    fn prefetch(&self, hashes: &[StorePathHash]) {
        if hashes.is_empty() {
            return;
        }
        for s in self.peer_sources() {
            s.prefetch(hashes);
        }
    }

    /// The first verified narinfo for `hash`, and which source gave it.
    ///
    /// Provider discovery starts at once, in the background. Peers are
    /// asked first; if they have not answered within the lookup budget,
    /// the upstreams are asked too, and the first verified answer wins.
    /// When every upstream has answered that it has no such path, the
    /// answer is a miss at once: no waiting for the DHT walk. Once found,
    /// the path's references are prefetched too (Nix asks for a closure's
    /// narinfos before any NAR).
    pub async fn narinfo(&self, hash: &StorePathHash) -> Option<(usize, NarInfo)> {
        if self.missing.get(hash).is_some() {
            return None;
        }
        self.prefetch(std::slice::from_ref(hash));
        let (peers, ups): (Vec<usize>, Vec<usize>) =
            (0..self.sources.len()).partition(|&i| self.sources[i].kind() == SourceKind::Peer);
        let result = if peers.is_empty() {
            self.first(&ups, hash).await.ok()
        } else if ups.is_empty() {
            self.first(&peers, hash).await.ok()
        } else {
            let peer_answer = self.first(&peers, hash);
            let up_answer = self.first(&ups, hash);
            tokio::pin!(peer_answer, up_answer);
            let budget = tokio::time::sleep(self.lookup_budget);
            tokio::pin!(budget);
            let early = tokio::select! {
                biased;
                r = &mut peer_answer => Some(r),
                () = &mut budget => None,
            };
            match early {
                Some(Ok(found)) => Some(found),
                Some(Err(_)) => up_answer.await.ok(),
                None => tokio::select! {
                    r = &mut peer_answer => match r { Ok(found) => Some(found), Err(_) => up_answer.await.ok() },
                    r = &mut up_answer => match r {
                        Ok(found) => Some(found),
                        // Every upstream says there is no such path: a miss
                        // now, unless the peers have answered already.
                        Err(Miss::Absent) => futures::FutureExt::now_or_never(&mut peer_answer).and_then(Result::ok),
                        Err(Miss::Unknown) => peer_answer.await.ok(),
                    },
                },
            }
        };
        match &result {
            Some((_, info)) => {
                let refs: Vec<StorePathHash> = info
                    .references
                    .iter()
                    .map(StorePath::hash)
                    .filter(|h| h != hash)
                    .collect();
                self.prefetch(&refs);
            }
            None => self.missing.insert(*hash, ()),
        }
        result
    }

    /// A verified narinfo of `hash` with `nar_hash`: one already known, or
    /// the first source's that has it.
    async fn info_for(&self, hash: &StorePathHash, nar_hash: &Sha256Hash) -> Option<NarInfo> {
        let known = (0..self.sources.len())
            .filter_map(|idx| self.found.get(&(idx, *hash)))
            .find(|i| i.nar_hash == *nar_hash);
        if known.is_some() {
            return known;
        }
        for idx in 0..self.sources.len() {
            if let Answer::Found(info) = self.narinfo_from(idx, hash).await
                && info.nar_hash == *nar_hash
            {
                return Some(*info);
            }
        }
        None
    }

    fn usable(&self, idx: usize, hash: &StorePathHash, nar_hash: &Sha256Hash) -> bool {
        self.bad.get(&(idx, *hash, *nar_hash)).is_none()
    }

    /// Opens the NAR of `hash` with `nar_hash`, choosing for offload: from
    /// peers when they hold it (within their [`crate::PeerWait`]), hedged
    /// after `hedge_after` and failing over to the upstreams; otherwise
    /// from the first upstream that has it, failing over to the next.
    /// Sources that served a bad copy lately are skipped. Returns the
    /// narinfo, the stream and the index of the source tried first.
    pub async fn open_nar(
        &self,
        hash: &StorePathHash,
        nar_hash: &Sha256Hash,
        hedge_after: Duration,
    ) -> Option<(NarInfo, TaggedStream, usize)> {
        let info = self.info_for(hash, nar_hash).await?;
        let fallbacks = |after: Option<usize>| -> Vec<Fallback> {
            (0..self.sources.len())
                .filter(|&i| self.sources[i].kind() == SourceKind::Upstream && Some(i) != after)
                .filter(|&i| self.usable(i, hash, nar_hash))
                .map(|idx| Fallback {
                    idx,
                    source: self.sources[idx].clone(),
                    info: self.found.get(&(idx, *hash)),
                })
                .collect()
        };
        for (idx, source) in self.sources.iter().enumerate() {
            if !self.usable(idx, hash, nar_hash) {
                continue;
            }
            let theirs = match source.kind() {
                // Peers need only the path and NarHash: any verified narinfo will do.
                SourceKind::Peer => info.clone(),
                SourceKind::Upstream => match self.narinfo_from(idx, hash).await {
                    Answer::Found(i) if i.nar_hash == *nar_hash => *i,
                    _ => continue,
                },
            };
            let stream = match source.nar(&theirs).await {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(source = source.name(), error = %e, %hash, "source failed to open NAR");
                    continue;
                }
            };
            let hedge = (source.kind() == SourceKind::Peer).then_some(hedge_after);
            let rest = fallbacks(Some(idx));
            return Some((info, legs::serve(idx, stream, theirs, rest, hedge), idx));
        }
        None
    }

    /// Remembers that source `idx` served a bad NAR for this path.
    pub fn mark_bad(&self, idx: usize, hash: &StorePathHash, nar_hash: &Sha256Hash) {
        self.bad.insert((idx, *hash, *nar_hash), ());
    }
}

/// One source's answer for a narinfo.
enum Answer {
    Found(Box<NarInfo>),
    /// It answered that it has no such path (or its answer did not verify).
    Absent,
    /// It could not answer (down, broken).
    Failed,
}

/// Why no source among some gave a narinfo.
enum Miss {
    /// Every one answered that it has none.
    Absent,
    /// At least one could not answer.
    Unknown,
}
