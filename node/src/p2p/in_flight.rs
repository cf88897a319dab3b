//! Chunk requests in flight, per peer, across every transfer of a fetcher.
//!
//! A provider answers at most [`MAX_PER_PEER`] chunk requests of one peer
//! at once and says `Busy` to more; a fetcher running several transfers
//! from one provider (a closure's NARs prefetched together) would otherwise
//! spend a round trip and a cool-down on each refusal. So a batch waits
//! here, in order, for one of that peer's slots before it is asked, and
//! holds it, with its ticket in the peer's [`WireModes`], until it is
//! answered or dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::wire_mode::{Ticket, WireModes};

/// Chunk requests a node answers at once for one peer (and a fetcher asks).
pub const MAX_PER_PEER: usize = 8;
/// Lookups (narinfo and manifest, no chunks) a node answers at once for
/// one peer (and a fetcher asks).
pub const MAX_LOOKUPS_PER_PEER: usize = 16;
/// `Have` batches a node answers at once for one peer (a fetcher's
/// discovery has at most 8 in flight in all).
pub const MAX_HAVE_PER_PEER: usize = 8;
/// Peers with slots remembered; idle ones are forgotten beyond this.
const MAX_PEERS: usize = 1024;

/// What the transfers of one fetcher share about each peer.
#[derive(Debug, Default)]
pub struct PeerLoad {
    modes: Mutex<WireModes>,
    slots: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    lookups: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `peer`'s semaphore of `n` permits in `map` (idle peers forgotten when
/// the map is full).
fn per_peer(map: &Mutex<HashMap<PeerId, Arc<Semaphore>>>, peer: PeerId, n: usize) -> Arc<Semaphore> {
    let mut map = lock(map);
    if map.len() >= MAX_PEERS && !map.contains_key(&peer) {
        map.retain(|_, s| s.available_permits() < n);
    }
    map.entry(peer).or_insert_with(|| Arc::new(Semaphore::new(n))).clone()
}

impl PeerLoad {
    fn slots(&self, peer: PeerId) -> Arc<Semaphore> {
        per_peer(&self.slots, peer, MAX_PER_PEER)
    }

    /// One of `peer`'s lookup slots, waited for: a provider answers
    /// [`MAX_LOOKUPS_PER_PEER`] at once and says `Busy` to more.
    pub async fn lookup_slot(&self, peer: PeerId) -> OwnedSemaphorePermit {
        per_peer(&self.lookups, peer, MAX_LOOKUPS_PER_PEER)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

/// A batch in flight: the peer's slot and its wire-mode ticket, given back
/// when it is answered, or when it is dropped unanswered (a transfer
/// nobody waits for any more), so the peer's counts stay true.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<PeerLoad>,
    peer: PeerId,
    ticket: Option<Ticket>,
    _slot: OwnedSemaphorePermit,
}

impl InFlight {
    /// Waits for one of `peer`'s slots, then asks the next batch of
    /// `bytes` NAR bytes of it.
    pub async fn ask(load: &Arc<PeerLoad>, peer: PeerId, bytes: u64) -> Self {
        let slot = load
            .slots(peer)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let ticket = lock(&load.modes).ask(peer, bytes, Instant::now());
        Self {
            load: load.clone(),
            peer,
            ticket: Some(ticket),
            _slot: slot,
        }
    }

    /// One of `peer`'s slots if one is free now, for a request that may
    /// carry a few chunks (a small NAR with its path info): too small to
    /// measure the wire mode by, it takes the way in use.
    pub fn try_small(load: &Arc<PeerLoad>, peer: PeerId) -> Option<Self> {
        let slot = load.slots(peer).try_acquire_owned().ok()?;
        let ticket = lock(&load.modes).ask(peer, 0, Instant::now());
        Some(Self {
            load: load.clone(),
            peer,
            ticket: Some(ticket),
            _slot: slot,
        })
    }

    pub fn compressed(&self) -> bool {
        self.ticket.is_some_and(|t| t.compressed)
    }

    /// The batch brought `verified` NAR bytes (`None`: it failed).
    pub fn answered(mut self, verified: Option<u64>) {
        self.give_back(verified);
    }

    fn give_back(&mut self, verified: Option<u64>) {
        if let Some(t) = self.ticket.take() {
            lock(&self.load.modes).answered(self.peer, t, verified, Instant::now());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.give_back(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_gets_at_most_its_slots_and_a_dropped_batch_frees_one() {
        let load = Arc::new(PeerLoad::default());
        let (peer, other) = (PeerId::random(), PeerId::random());
        let mut held = Vec::new();
        for _ in 0..MAX_PER_PEER {
            held.push(InFlight::ask(&load, peer, 1 << 20).await);
        }
        let next = InFlight::ask(&load, peer, 1 << 20);
        tokio::pin!(next);
        assert!(futures::poll!(&mut next).is_pending(), "the ninth waits");
        // Another peer's slots are its own.
        drop(InFlight::ask(&load, other, 1 << 20).await);
        held.pop().expect("held").answered(None);
        assert!(futures::poll!(&mut next).is_ready(), "a slot came back");
        drop(held);
        assert_eq!(load.slots(peer).available_permits(), MAX_PER_PEER, "all given back");
    }
}
