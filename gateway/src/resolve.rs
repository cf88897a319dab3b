//! Resolution: local store first, then each source in order. Every narinfo
//! from a source must verify against the trusted keys (or be a valid
//! content address, Nix's own rule) and name the path asked for; a source
//! whose NAR failed verification is skipped for that NAR for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nixswarm_protocol::{NarInfo, PublicKey, Sha256Hash, StorePathHash};

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
    /// Verified narinfo (or a verified absence) per (source, path).
    found: TtlMap<(usize, StorePathHash), Option<NarInfo>>,
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
            missing: TtlMap::new(negative_ttl),
            bad: TtlMap::new(BAD_SOURCE_TTL),
        }
    }

    /// True if the trusted keys (or Nix's content-address rule) accept `info`
    /// as the narinfo of `hash`.
    pub fn acceptable(&self, hash: &StorePathHash, info: &NarInfo) -> Result<(), &'static str> {
        if info.store_path.hash() != *hash {
            return Err("wrong_path");
        }
        if info.trust(&self.keys).is_none() {
            return Err("untrusted");
        }
        Ok(())
    }

    /// The verified narinfo of `hash` from source `idx`, if it has one.
    async fn narinfo_from(&self, idx: usize, hash: &StorePathHash) -> Option<NarInfo> {
        if let Some(cached) = self.found.get(&(idx, *hash)) {
            return cached;
        }
        let source = &self.sources[idx];
        let kind = source.kind().as_str();
        let result = match source.narinfo(hash).await {
            Ok(Some(info)) => match self.acceptable(hash, &info) {
                Ok(()) => Some(info),
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
                return None;
            }
        };
        // A peer that lacks a path now may have it soon: remember only hits.
        if result.is_some() || source.kind() == SourceKind::Upstream {
            self.found.insert((idx, *hash), result.clone());
        }
        result
    }

    /// The first verified answer among `idxs`, asked in order.
    async fn first(&self, idxs: &[usize], hash: &StorePathHash) -> Option<(usize, NarInfo)> {
        for &idx in idxs {
            if let Some(info) = self.narinfo_from(idx, hash).await {
                return Some((idx, info));
            }
        }
        None
    }

    /// The first verified narinfo for `hash`, and which source gave it.
    /// Peers are asked first; if they have not answered within the lookup
    /// budget, the upstreams are asked too, and whichever verified answer
    /// comes first wins.
    pub async fn narinfo(&self, hash: &StorePathHash) -> Option<(usize, NarInfo)> {
        if self.missing.get(hash).is_some() {
            return None;
        }
        let (peers, ups): (Vec<usize>, Vec<usize>) =
            (0..self.sources.len()).partition(|&i| self.sources[i].kind() == SourceKind::Peer);
        let result = if peers.is_empty() {
            self.first(&ups, hash).await
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
                Some(Some(found)) => Some(found),
                Some(None) => up_answer.await,
                None => tokio::select! {
                    r = &mut peer_answer => match r { Some(found) => Some(found), None => up_answer.await },
                    r = &mut up_answer => match r { Some(found) => Some(found), None => peer_answer.await },
                },
            }
        };
        if result.is_none() {
            self.missing.insert(*hash, ());
        }
        result
    }

    /// Sources, in order, whose verified narinfo for `hash` has `nar_hash`
    /// and that have not served a bad copy of it lately. Answers already
    /// known are used first; only if there are none are sources asked.
    pub async fn nar_candidates(&self, hash: &StorePathHash, nar_hash: &Sha256Hash) -> Vec<(usize, NarInfo)> {
        let usable =
            |idx: usize, info: &NarInfo| info.nar_hash == *nar_hash && self.bad.get(&(idx, *hash, *nar_hash)).is_none();
        let known: Vec<(usize, NarInfo)> = (0..self.sources.len())
            .filter_map(|idx| self.found.get(&(idx, *hash)).flatten().map(|i| (idx, i)))
            .filter(|(idx, i)| usable(*idx, i))
            .collect();
        if !known.is_empty() {
            return known;
        }
        let mut out = Vec::new();
        for idx in 0..self.sources.len() {
            if self.bad.get(&(idx, *hash, *nar_hash)).is_some() {
                continue;
            }
            if let Some(info) = self.narinfo_from(idx, hash).await
                && usable(idx, &info)
            {
                out.push((idx, info));
            }
        }
        out
    }

    /// Remembers that source `idx` served a bad NAR for this path.
    pub fn mark_bad(&self, idx: usize, hash: &StorePathHash, nar_hash: &Sha256Hash) {
        self.bad.insert((idx, *hash, *nar_hash), ());
    }
}
