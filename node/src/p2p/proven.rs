//! Peers that have served this node verified chunks. The record store
//! prefers them when a key is full; the fetcher marks them, and forgets
//! one whose manifest turned out not to add up to the NarHash.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use libp2p::PeerId;

/// Peers remembered; the oldest marked go first.
pub const MAX_PROVEN: usize = 4096;

#[derive(Debug, Default)]
struct Inner {
    set: HashSet<PeerId>,
    order: VecDeque<PeerId>,
}

/// The set, shared between the fetcher and the swarm task.
#[derive(Debug, Default)]
pub struct Proven(Mutex<Inner>);

impl Proven {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `peer` served verified bytes.
    pub fn mark(&self, peer: PeerId) {
        let mut g = self.lock();
        if !g.set.insert(peer) {
            return;
        }
        g.order.push_back(peer);
        while g.order.len() > MAX_PROVEN {
            if let Some(old) = g.order.pop_front() {
                g.set.remove(&old);
            }
        }
    }

    /// `peer` lied after all.
    pub fn forget(&self, peer: &PeerId) {
        let mut g = self.lock();
        if g.set.remove(peer) {
            g.order.retain(|p| p != peer);
        }
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.lock().set.contains(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first_and_forgettable() {
        let p = Proven::default();
        let first = PeerId::random();
        p.mark(first);
        p.mark(first);
        let mut last = first;
        for _ in 0..MAX_PROVEN {
            last = PeerId::random();
            p.mark(last);
        }
        assert!(!p.contains(&first), "the oldest went when the set was full");
        assert!(p.contains(&last));
        assert_eq!(p.lock().order.len(), MAX_PROVEN);
        p.forget(&last);
        assert!(!p.contains(&last));
        assert_eq!(p.lock().order.len(), MAX_PROVEN - 1);
    }
}
