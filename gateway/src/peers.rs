//! Peers as a [`Source`]: narinfo lookups through the node's provider
//! discovery, NARs striped across providers by its fetcher. Before a NAR
//! goes to an upstream, peers get a wait that grows with its size
//! ([`PeerWait`]): the connected peers' `Have` answers are always worth
//! waiting for, the DHT walk only in proportion to what the NAR costs the
//! upstream. Hedging and failover to the upstreams happen in
//! [`crate::legs`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use nixswarm_node::p2p::{Fetcher, PeerPath};
use nixswarm_protocol::{NarInfo, StorePathHash};

use crate::source::{ByteStream, Source, SourceError, SourceKind};

/// How long a lookup result is reused for the NAR request that follows.
const REMEMBER: Duration = Duration::from_secs(300);
/// Lookup results kept.
const REMEMBER_CAP: usize = 10_000;

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
#[derive(Debug)]
pub struct PeerSource {
    fetcher: Fetcher,
    wait: PeerWait,
    found: Mutex<HashMap<StorePathHash, (Instant, PeerPath)>>,
}

impl PeerSource {
    pub fn new(fetcher: Fetcher, wait: PeerWait) -> Self {
        Self {
            fetcher,
            wait,
            found: Mutex::default(),
        }
    }

    fn remembered(&self, hash: &StorePathHash) -> Option<PeerPath> {
        let found = self.found.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        found
            .get(hash)
            .filter(|(at, _)| at.elapsed() < REMEMBER)
            .map(|(_, p)| p.clone())
    }

    fn remember(&self, hash: StorePathHash, path: PeerPath) {
        let mut found = self.found.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if found.len() >= REMEMBER_CAP {
            found.retain(|_, (at, _)| at.elapsed() < REMEMBER);
            if found.len() >= REMEMBER_CAP {
                found.clear();
            }
        }
        found.insert(hash, (Instant::now(), path));
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
            let Some(path) = self.fetcher.lookup(hash).await else {
                return Ok(None);
            };
            let info = path.info.clone();
            self.remember(*hash, path);
            Ok(Some(info))
        })
    }

    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async move {
            let hash = info.store_path.hash();
            let path = match self.remembered(&hash) {
                Some(p) if p.info.nar_hash == info.nar_hash => p,
                _ => {
                    let dht = self.wait.dht_wait(info.nar_size);
                    match self
                        .fetcher
                        .lookup_nar(&hash, &info.nar_hash, self.wait.have, dht)
                        .await
                    {
                        Some(p) => p,
                        None => return Ok(None),
                    }
                }
            };
            Ok(Some(self.fetcher.stream(path)))
        })
    }

    fn rejected(&self, info: &NarInfo, wrong_nar: bool) -> bool {
        let hash = info.store_path.hash();
        let path = self
            .found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&hash);
        if wrong_nar && let Some((_, path)) = path {
            // Their chunks matched their manifest, but the NAR did not match
            // the signed NarHash: every provider of that manifest lied.
            for peer in path.providers {
                self.fetcher
                    .penalise(peer, "served a manifest that does not add up to the NarHash");
            }
        }
        // The next request looks the path up afresh, without the banned peers.
        true
    }

    fn prefetch(&self, hashes: &[StorePathHash]) {
        self.fetcher.prefetch(hashes);
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
