//! Peers as a [`Source`]: narinfo lookups through the node's provider
//! discovery, NARs striped across providers by its fetcher, in order or
//! from the tail ([`PeerSource::stream_tail`], [`PeerSource::tail_later`]).
//! A prefetched path's narinfo and manifest are fetched as soon as it has
//! a provider, so its NAR request starts the transfer at once, and so are
//! its references' a few levels down: Nix asks for a closure's narinfos a
//! level at a time, each level after the one above has answered, and finds
//! the next level's answers here or on their way. When peers
//! are the only source, a NAR waits for them ([`PeerWait`]); otherwise
//! nothing waits for discovery (see [`crate::nar`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use nixswarm_node::p2p::{Fetcher, PeerPath, TailStream};
use nixswarm_protocol::{NarInfo, StorePathHash};

use crate::source::{ByteStream, Source, SourceError, SourceKind};
use crate::ttl::TtlMap;

/// How long a lookup result is reused for the NAR request that follows.
const REMEMBER: Duration = Duration::from_secs(300);
/// Lookup results kept.
const REMEMBER_CAP: usize = 10_000;
/// Prefetched paths waiting for providers at once (beyond: only discovery).
const PREFETCH_WAITING: usize = 4096;
/// Prefetched narinfo-and-manifest lookups at once.
const PREFETCH_LOOKUPS: usize = 32;
/// Levels of references below a path Nix asked for whose lookups start
/// with it (each level Nix asks for starts the next ones).
const PREFETCH_DEPTH: u32 = 2;

type Lookup = futures::future::Shared<BoxFuture<'static, Option<PeerPath>>>;

/// How long a NAR request waits for peers before the upstreams serve it.
///
/// The wait ends as soon as a provider is found, or the search has ended
/// with nobody. Otherwise it lasts until the connected peers have answered
/// (at most `have`) and, for the DHT walk, `nar_size / rate` (at most
/// `max`): a 2 KiB NAR waits only for the one round trip to connected
/// peers, a 100 MiB one up to a second for the DHT (at 100 MiB/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerWait {
    pub have: Duration,
    /// NarSize bytes that buy one second of waiting for the DHT walk.
    pub rate: u64,
    pub max: Duration,
}

impl Default for PeerWait {
    fn default() -> Self {
        Self {
            have: Duration::from_millis(500),
            rate: 100 << 20,
            max: Duration::from_secs(2),
        }
    }
}

impl PeerWait {
    /// The longest a NAR of `nar_size` bytes waits for the DHT walk.
    /// A zero rate means every NAR may wait the whole `max`.
    pub fn dht_wait(&self, nar_size: u64) -> Duration {
        if self.rate == 0 {
            return self.max;
        }
        let secs = nar_size as f64 / self.rate as f64;
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }
}

/// The swarm, seen as a source.
#[derive(Debug, Clone)]
pub struct PeerSource {
    fetcher: Fetcher,
    wait: PeerWait,
    /// Lookup results (verified narinfo, manifest, providers) by path.
    found: Arc<TtlMap<StorePathHash, PeerPath>>,
    /// Prefetches waiting for providers.
    waiting: Arc<AtomicUsize>,
    lookups: Arc<tokio::sync::Semaphore>,
    /// Prefetched lookups under way: a narinfo request for the same path
    /// joins one rather than asking again.
    running: Arc<TtlMap<StorePathHash, Lookup>>,
}

impl PeerSource {
    pub fn new(fetcher: Fetcher, wait: PeerWait) -> Self {
        Self {
            fetcher,
            wait,
            found: Arc::new(TtlMap::new(REMEMBER, REMEMBER_CAP)),
            waiting: Arc::default(),
            lookups: Arc::new(tokio::sync::Semaphore::new(PREFETCH_LOOKUPS)),
            running: Arc::new(TtlMap::new(REMEMBER, PREFETCH_WAITING)),
        }
    }

    fn remembered(&self, hash: &StorePathHash) -> Option<PeerPath> {
        self.found.get(hash)
    }

    /// The peers' lookup of `info`'s NAR if it is done and a provider is
    /// not banned: they can start at once.
    pub fn ready(&self, info: &NarInfo) -> Option<PeerPath> {
        self.remembered(&info.store_path.hash())
            .filter(|p| p.info.nar_hash == info.nar_hash)
            .filter(|p| p.providers.iter().any(|peer| !self.fetcher.is_banned(peer)))
    }

    /// The longest a lookup waits for the DHT walk: what a NAR that only
    /// peers can serve, or a prefetch, waits.
    pub fn patience(&self) -> Duration {
        self.wait.max
    }

    /// The NAR's tail once discovery finds a provider (within
    /// [`PeerWait`]'s longest wait); `None` if nobody turns up.
    pub fn tail_later(&self, info: &NarInfo) -> BoxFuture<'static, Option<TailStream>> {
        let this = self.clone();
        let info = info.clone();
        Box::pin(async move {
            let path = this.path_for(&info, this.wait.max).await?;
            Some(this.stream_tail(path))
        })
    }

    /// A verified lookup of `info`'s NAR: remembered, or found within
    /// the connected peers' answer and `dht` of the DHT walk.
    pub async fn path_for(&self, info: &NarInfo, dht: Duration) -> Option<PeerPath> {
        if let Some(p) = self.ready(info) {
            return Some(p);
        }
        let hash = info.store_path.hash();
        let p = self
            .fetcher
            .lookup_nar(&hash, &info.nar_hash, self.wait.have, dht)
            .await?;
        // Remembered, so a rejection blames its providers.
        self.found.insert(hash, p.clone());
        Some(p)
    }

    /// Streams the NAR of a path found by [`Self::path_for`], in order.
    pub fn stream(&self, path: PeerPath) -> ByteStream {
        self.fetcher.stream(path)
    }

    /// Streams the NAR of a path found by [`Self::path_for`] from its end
    /// backwards, each chunk with its offset (the tail of a two-ended fetch).
    pub fn stream_tail(&self, path: PeerPath) -> TailStream {
        self.fetcher.stream_tail(path)
    }

    /// In the background: once `hash` has a provider, fetch its narinfo
    /// and manifest, so the NAR request that follows starts the transfer
    /// at once (one round trip fewer per NAR); then the same for its
    /// references, `depth` levels down.
    fn prefetch_lookup(&self, hash: StorePathHash, depth: u32) {
        if self.remembered(&hash).is_some()
            || self.running.get(&hash).is_some()
            || self.waiting.load(Ordering::Relaxed) >= PREFETCH_WAITING
        {
            return;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        let have_by = tokio::time::Instant::now() + self.wait.have;
        let dht_by = tokio::time::Instant::now() + self.wait.max;
        let lookup: BoxFuture<'static, Option<PeerPath>> = Box::pin(async move {
            let providers = this.fetcher.discovery().wait(&hash, have_by, dht_by).await.providers;
            this.waiting.fetch_sub(1, Ordering::Relaxed);
            let found = if providers.is_empty() {
                None
            } else if let Some(p) = this.remembered(&hash) {
                Some(p)
            } else {
                let _permit = this.lookups.acquire().await.ok()?;
                // The path asked for may bring its chunks; one looked up
                // ahead, maybe never asked for, does not.
                if depth == PREFETCH_DEPTH {
                    this.fetcher.lookup(&hash).await
                } else {
                    this.fetcher.look_ahead(&hash).await
                }
            };
            this.running.remove(&hash);
            let path = found?;
            this.found.insert(hash, path.clone());
            if depth > 0 {
                let refs = path.info.reference_hashes();
                this.fetcher.prefetch(&refs);
                for r in refs {
                    this.prefetch_lookup(r, depth - 1);
                }
            }
            Some(path)
        });
        let lookup = futures::FutureExt::shared(lookup);
        self.running.insert(hash, lookup.clone());
        tokio::spawn(lookup);
    }
}

impl Source for PeerSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Peer
    }

    fn name(&self) -> &str {
        "peers"
    }

    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        Box::pin(async move {
            // Found already, or on its way, or looked up now.
            let mut found = self.remembered(hash);
            if found.is_none()
                && let Some(lookup) = self.running.get(hash)
            {
                found = lookup.await;
            }
            if found.is_none() {
                found = self.fetcher.lookup(hash).await;
            }
            let Some(path) = found else {
                return Ok(None);
            };
            let info = path.info.clone();
            self.found.insert(*hash, path);
            Ok(Some(info))
        })
    }

    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async move {
            let dht = self.wait.dht_wait(info.nar_size);
            Ok(self.path_for(info, dht).await.map(|p| self.fetcher.stream(p)))
        })
    }

    fn as_peers(&self) -> Option<&PeerSource> {
        Some(self)
    }

    fn rejected(&self, info: &NarInfo, wrong_nar: bool) -> bool {
        let hash = info.store_path.hash();
        let path = self.found.remove(&hash);
        if wrong_nar && let Some(path) = path {
            // Their chunks matched their manifest, but the NAR did not match
            // the signed NarHash: every provider of that manifest lied.
            self.fetcher.reject(&path);
        }
        // The next request looks the path up afresh, without the banned peers.
        true
    }

    fn prefetch(&self, hashes: &[StorePathHash]) {
        self.fetcher.prefetch(hashes);
        for hash in hashes {
            self.prefetch_lookup(*hash, PREFETCH_DEPTH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dht_wait_grows_with_the_nar_size_up_to_the_cap() {
        let w = PeerWait::default();
        assert!(
            w.dht_wait(2048) < Duration::from_micros(50),
            "a small NAR is not worth a wait"
        );
        assert_eq!(w.dht_wait(100 << 20), Duration::from_secs(1));
        assert_eq!(w.dht_wait(10 << 30), Duration::from_secs(2));
        let none = PeerWait { rate: 0, ..w };
        assert_eq!(
            none.dht_wait(1),
            Duration::from_secs(2),
            "a zero rate means the whole cap"
        );
    }
}
