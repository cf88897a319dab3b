//! What is known about who provides which path: the provider book. A plain
//! state machine (time is an argument), driven by the discovery tasks in
//! [`super::discover`] and unit-tested here without a network.
//!
//! Each path has an entry once a search started: the providers found so
//! far, and whether each half of the search (the `Have` round trip to
//! connected peers, the DHT walk) has finished. Entries expire: one with
//! providers after `ttl`, one whose search found nobody after `miss_ttl`
//! (a peer may fetch the path soon). The book holds at most `capacity`
//! entries; when full it drops expired entries, then the oldest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use nixswarm_protocol::StorePathHash;
use tokio::sync::watch;

/// Most providers kept per path.
pub const MAX_PROVIDERS: usize = 20;

/// What a search has found so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub providers: Vec<PeerId>,
    /// The connected peers have all answered (or timed out).
    pub have_done: bool,
    /// Both halves of the search have finished: nobody else will be found.
    pub done: bool,
}

/// The two halves of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Have,
    Dht,
}

#[derive(Debug)]
struct Entry {
    started: Instant,
    /// When the last half finished (for the miss TTL).
    finished: Option<Instant>,
    have_done: bool,
    dht_done: bool,
    tx: watch::Sender<Found>,
}

impl Entry {
    fn found(&self) -> Found {
        self.tx.borrow().clone()
    }
}

/// The provider book.
#[derive(Debug)]
pub struct Book {
    ttl: Duration,
    miss_ttl: Duration,
    capacity: usize,
    entries: HashMap<StorePathHash, Entry>,
}

impl Book {
    pub fn new(ttl: Duration, miss_ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            miss_ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        let has = !e.tx.borrow().providers.is_empty();
        match e.finished {
            _ if has => now.duration_since(e.started) >= self.ttl,
            Some(at) => now.duration_since(at) >= self.miss_ttl,
            // A search still running is kept (its halves have deadlines).
            None => now.duration_since(e.started) >= self.ttl,
        }
    }

    /// Starts a search for `hash` unless a live entry exists (with
    /// `retry_miss`, a finished search that found nobody is not live). True
    /// if the caller must now run both halves of the search.
    pub fn start(&mut self, hash: StorePathHash, now: Instant, retry_miss: bool) -> bool {
        if let Some(e) = self.entries.get(&hash)
            && !self.expired(e, now)
        {
            let f = e.tx.borrow();
            if !(retry_miss && f.done && f.providers.is_empty()) {
                return false;
            }
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.make_room(now);
        }
        let (tx, _) = watch::channel(Found::default());
        let old = self.entries.insert(
            hash,
            Entry {
                started: now,
                finished: None,
                have_done: false,
                dht_done: false,
                tx,
            },
        );
        if let Some(old) = old {
            // Whoever waited on the expired entry sees it end.
            old.tx.send_modify(|f| {
                f.have_done = true;
                f.done = true;
            });
        }
        true
    }

    fn make_room(&mut self, now: Instant) {
        let before = self.entries.len();
        let expired: Vec<StorePathHash> = self
            .entries
            .iter()
            .filter(|(_, e)| self.expired(e, now))
            .map(|(h, _)| *h)
            .collect();
        for h in expired {
            self.entries.remove(&h);
        }
        if self.entries.len() < before && self.entries.len() < self.capacity {
            return;
        }
        // Still full: drop the oldest tenth.
        let mut ages: Vec<(Instant, StorePathHash)> = self.entries.iter().map(|(h, e)| (e.started, *h)).collect();
        ages.sort_unstable();
        let n = (self.capacity / 10).max(1);
        for (_, h) in ages.into_iter().take(n) {
            if let Some(e) = self.entries.remove(&h) {
                e.tx.send_modify(|f| {
                    f.have_done = true;
                    f.done = true;
                });
            }
        }
    }

    /// A provider of `hash` was found.
    pub fn found(&mut self, hash: &StorePathHash, peer: PeerId) {
        if let Some(e) = self.entries.get(hash) {
            e.tx.send_if_modified(|f| {
                if f.providers.contains(&peer) || f.providers.len() >= MAX_PROVIDERS {
                    return false;
                }
                f.providers.push(peer);
                true
            });
        }
    }

    /// One half of the search for `hash` has ended.
    pub fn finished(&mut self, hash: &StorePathHash, half: Half, now: Instant) {
        if let Some(e) = self.entries.get_mut(hash) {
            match half {
                Half::Have => {
                    e.have_done = true;
                    e.tx.send_modify(|f| f.have_done = true);
                }
                Half::Dht => e.dht_done = true,
            }
            if e.have_done && e.dht_done && e.finished.is_none() {
                e.finished = Some(now);
                e.tx.send_modify(|f| f.done = true);
            }
        }
    }

    /// `peer` failed to serve `hash`: it is no longer offered for it.
    pub fn forget(&mut self, hash: &StorePathHash, peer: &PeerId) {
        if let Some(e) = self.entries.get(hash) {
            e.tx.send_if_modified(|f| {
                let before = f.providers.len();
                f.providers.retain(|p| p != peer);
                f.providers.len() != before
            });
        }
    }

    /// What is known of `hash` now (`None`: no live search).
    pub fn get(&self, hash: &StorePathHash, now: Instant) -> Option<Found> {
        self.entries
            .get(hash)
            .filter(|e| !self.expired(e, now))
            .map(Entry::found)
    }

    /// Follows the search for `hash` (`None`: no live search).
    pub fn watch(&self, hash: &StorePathHash, now: Instant) -> Option<watch::Receiver<Found>> {
        self.entries
            .get(hash)
            .filter(|e| !self.expired(e, now))
            .map(|e| e.tx.subscribe())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> StorePathHash {
        StorePathHash::from_bytes(&[n; 20])
    }

    fn book() -> Book {
        Book::new(Duration::from_secs(300), Duration::from_secs(30), 100)
    }

    #[test]
    fn a_search_starts_once_and_is_done_when_both_halves_end() {
        let (mut b, t0) = (book(), Instant::now());
        assert!(b.start(h(1), t0, false));
        assert!(!b.start(h(1), t0, false), "a live search is not started twice");
        let mut rx = b.watch(&h(1), t0).unwrap();
        let p = PeerId::random();
        b.found(&h(1), p);
        b.found(&h(1), p);
        assert_eq!(b.get(&h(1), t0).unwrap().providers, vec![p], "each provider once");
        assert!(rx.has_changed().unwrap());
        b.finished(&h(1), Half::Have, t0);
        let f = b.get(&h(1), t0).unwrap();
        assert!(f.have_done && !f.done, "the DHT walk still runs");
        b.finished(&h(1), Half::Dht, t0);
        assert!(rx.borrow_and_update().done);
    }

    #[test]
    fn entries_expire_hits_slowly_and_misses_quickly() {
        let (mut b, t0) = (book(), Instant::now());
        b.start(h(1), t0, false);
        b.found(&h(1), PeerId::random());
        b.start(h(2), t0, false);
        for half in [Half::Have, Half::Dht] {
            b.finished(&h(1), half, t0);
            b.finished(&h(2), half, t0);
        }
        let later = t0 + Duration::from_secs(31);
        assert!(b.get(&h(1), later).is_some(), "providers are kept for the TTL");
        assert!(b.get(&h(2), later).is_none(), "a miss is forgotten sooner");
        assert!(b.start(h(2), later, false), "and searched again");
        assert!(b.start(h(1), t0 + Duration::from_secs(301), false));
    }

    #[test]
    fn a_finished_miss_is_searched_again_only_when_asked_to() {
        let (mut b, t0) = (book(), Instant::now());
        b.start(h(1), t0, false);
        b.finished(&h(1), Half::Have, t0);
        assert!(!b.start(h(1), t0, true), "still running: not restarted");
        b.finished(&h(1), Half::Dht, t0);
        assert!(!b.start(h(1), t0, false), "a cached miss stays cheap");
        assert!(b.start(h(1), t0, true), "an explicit lookup searches again");
    }

    #[test]
    fn a_failed_provider_is_forgotten() {
        let (mut b, t0) = (book(), Instant::now());
        b.start(h(1), t0, false);
        let (p, q) = (PeerId::random(), PeerId::random());
        b.found(&h(1), p);
        b.found(&h(1), q);
        b.forget(&h(1), &p);
        assert_eq!(b.get(&h(1), t0).unwrap().providers, vec![q]);
    }

    #[test]
    fn the_book_is_bounded() {
        let mut b = Book::new(Duration::from_secs(300), Duration::from_secs(30), 10);
        let t0 = Instant::now();
        let first = b.watch(&h(0), t0);
        assert!(first.is_none());
        b.start(h(0), t0, false);
        let mut rx = b.watch(&h(0), t0).unwrap();
        for n in 1..50u8 {
            b.start(h(n), t0 + Duration::from_millis(u64::from(n)), false);
            assert!(b.len() <= 10);
        }
        assert!(b.get(&h(0), t0).is_none(), "the oldest went first");
        assert!(rx.borrow_and_update().done, "its watchers are told it ended");
        assert!(b.get(&h(49), t0 + Duration::from_millis(49)).is_some());
    }

    #[test]
    fn providers_per_path_are_capped() {
        let (mut b, t0) = (book(), Instant::now());
        b.start(h(1), t0, false);
        for _ in 0..100 {
            b.found(&h(1), PeerId::random());
        }
        assert_eq!(b.get(&h(1), t0).unwrap().providers.len(), MAX_PROVIDERS);
    }
}
