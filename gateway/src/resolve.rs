//! Resolution: local store first, then each source in order. Every narinfo
//! from a source must verify against the trusted keys (or be a valid
//! content address, Nix's own rule) and name the path asked for; a source
//! whose NAR failed verification is skipped for that NAR for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nixswarm_protocol::{NarInfo, PublicKey, Sha256Hash, StorePathHash};

use crate::metrics::Metrics;
use crate::source::Source;

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
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sources,
            keys,
            metrics,
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
        self.found.insert((idx, *hash), result.clone());
        result
    }

    /// The first verified narinfo for `hash`, and which source gave it.
    pub async fn narinfo(&self, hash: &StorePathHash) -> Option<(usize, NarInfo)> {
        if self.missing.get(hash).is_some() {
            return None;
        }
        for idx in 0..self.sources.len() {
            if let Some(info) = self.narinfo_from(idx, hash).await {
                return Some((idx, info));
            }
        }
        self.missing.insert(*hash, ());
        None
    }

    /// Sources, in order, whose verified narinfo for `hash` has `nar_hash`
    /// and that have not served a bad copy of it lately.
    pub async fn nar_candidates(&self, hash: &StorePathHash, nar_hash: &Sha256Hash) -> Vec<(usize, NarInfo)> {
        let mut out = Vec::new();
        for idx in 0..self.sources.len() {
            if self.bad.get(&(idx, *hash, *nar_hash)).is_some() {
                continue;
            }
            if let Some(info) = self.narinfo_from(idx, hash).await
                && info.nar_hash == *nar_hash
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
