//! Which peers the node reaches directly, which only through a relay, and
//! the transfer requests waiting for a direct connection.
//!
//! A peer behind NAT is first reached through a relay; DCUtR then punches
//! a direct connection. Requests to it wait here until that connection is
//! up (then they go out on it), the punch or the dial fails, or their
//! deadline passes (then they fail, and the fetcher moves on). The waiting
//! is bounded per peer and in all.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// Requests waiting for one peer.
pub const MAX_PARKED_PER_PEER: usize = 64;
/// Requests waiting in all.
pub const MAX_PARKED: usize = 1024;
/// Peers remembered as out of direct reach.
pub const MAX_OUT_OF_REACH: usize = 4096;

#[derive(Debug, Default)]
struct Peer {
    direct: HashSet<ConnectionId>,
    relayed: HashSet<ConnectionId>,
}

/// The state: connections by kind, and parked items of type `T`.
#[derive(Debug)]
pub struct Links<T> {
    peers: HashMap<PeerId, Peer>,
    parked: HashMap<PeerId, VecDeque<(Instant, T)>>,
    parked_total: usize,
    /// Peers whose dial or hole punch just failed, until when: requests to
    /// them fail at once instead of waiting again.
    out_of_reach: HashMap<PeerId, Instant>,
}

impl<T> Default for Links<T> {
    fn default() -> Self {
        Self {
            peers: HashMap::new(),
            parked: HashMap::new(),
            parked_total: 0,
            out_of_reach: HashMap::new(),
        }
    }
}

impl<T> Links<T> {
    /// A connection is up. A direct one releases what waited for the peer.
    pub fn up(&mut self, peer: PeerId, id: ConnectionId, relayed: bool) -> Vec<T> {
        let p = self.peers.entry(peer).or_default();
        if relayed {
            p.relayed.insert(id);
            return Vec::new();
        }
        p.direct.insert(id);
        self.out_of_reach.remove(&peer);
        self.take(&peer)
    }

    /// No direct connection to `peer` could be made; until `until`,
    /// [`Links::out_of_reach`] says so.
    pub fn give_up(&mut self, peer: PeerId, until: Instant) {
        if self.out_of_reach.len() >= MAX_OUT_OF_REACH {
            let now = Instant::now();
            self.out_of_reach.retain(|_, t| *t > now);
            if self.out_of_reach.len() >= MAX_OUT_OF_REACH {
                return;
            }
        }
        self.out_of_reach.insert(peer, until);
    }

    /// A direct connection to `peer` failed recently (and none came since).
    pub fn out_of_reach(&self, peer: &PeerId, now: Instant) -> bool {
        !self.direct(peer) && self.out_of_reach.get(peer).is_some_and(|t| *t > now)
    }

    /// A connection closed.
    pub fn down(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.direct.remove(&id);
            p.relayed.remove(&id);
            if p.direct.is_empty() && p.relayed.is_empty() {
                self.peers.remove(peer);
            }
        }
    }

    /// The peer has a direct connection.
    pub fn direct(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.direct.is_empty())
    }

    /// This connection of the peer's is a direct one.
    pub fn is_direct(&self, peer: &PeerId, id: ConnectionId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.direct.contains(&id))
    }

    /// The peer has any connection.
    pub fn connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The peer's relayed connections, once it has a direct one too (they
    /// can close: the circuit costs the relay).
    pub fn redundant_relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        match self.peers.get(peer) {
            Some(p) if !p.direct.is_empty() => p.relayed.iter().copied().collect(),
            _ => Vec::new(),
        }
    }

    /// Waits `item` for a direct connection to `peer` until `deadline`;
    /// gives it back when too many wait already.
    pub fn park(&mut self, peer: PeerId, item: T, deadline: Instant) -> Result<(), T> {
        let q = self.parked.entry(peer).or_default();
        if q.len() >= MAX_PARKED_PER_PEER || self.parked_total >= MAX_PARKED {
            if q.is_empty() {
                self.parked.remove(&peer);
            }
            return Err(item);
        }
        q.push_back((deadline, item));
        self.parked_total += 1;
        Ok(())
    }

    /// Everything waiting for `peer` (its dial or hole punch failed).
    pub fn take(&mut self, peer: &PeerId) -> Vec<T> {
        let items: Vec<T> = self
            .parked
            .remove(peer)
            .map(|q| q.into_iter().map(|(_, t)| t).collect())
            .unwrap_or_default();
        self.parked_total -= items.len();
        items
    }

    /// Items past their deadline.
    pub fn expire(&mut self, now: Instant) -> Vec<(PeerId, T)> {
        let mut out = Vec::new();
        self.parked.retain(|peer, q| {
            while q.front().is_some_and(|(d, _)| *d <= now) {
                if let Some((_, t)) = q.pop_front() {
                    out.push((*peer, t));
                }
            }
            !q.is_empty()
        });
        self.parked_total -= out.len();
        out
    }

    /// `peer`'s relayed connections.
    pub fn relayed_of(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.peers
            .get(peer)
            .map(|p| p.relayed.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Something waits for `peer`.
    pub fn has_parked(&self, peer: &PeerId) -> bool {
        self.parked.contains_key(peer)
    }

    /// Items waiting, in all.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.parked_total
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ids() -> (ConnectionId, ConnectionId) {
        (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2))
    }

    #[test]
    fn a_relayed_connection_holds_requests_until_a_direct_one_comes() {
        let mut l = Links::default();
        let p = PeerId::random();
        let (relayed, direct) = ids();
        let later = Instant::now() + Duration::from_secs(5);
        assert!(l.up(p, relayed, true).is_empty());
        assert!(l.connected(&p) && !l.direct(&p));
        l.park(p, 1, later).unwrap();
        l.park(p, 2, later).unwrap();
        assert!(l.redundant_relayed(&p).is_empty());
        assert_eq!(l.up(p, direct, false), vec![1, 2]);
        assert_eq!(l.parked(), 0);
        assert!(l.direct(&p));
        assert_eq!(l.redundant_relayed(&p), vec![relayed]);
        l.down(&p, relayed);
        assert!(l.redundant_relayed(&p).is_empty());
        l.down(&p, direct);
        assert!(!l.connected(&p));
    }

    #[test]
    fn waiting_ends_at_the_deadline_or_on_failure() {
        let mut l = Links::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        l.park(a, 1, now + Duration::from_secs(1)).unwrap();
        l.park(a, 2, now + Duration::from_secs(3)).unwrap();
        l.park(b, 3, now + Duration::from_secs(3)).unwrap();
        assert!(l.expire(now).is_empty());
        assert_eq!(l.expire(now + Duration::from_secs(2)), vec![(a, 1)]);
        assert_eq!(l.take(&b), vec![3]);
        assert_eq!(l.parked(), 1);
        assert_eq!(l.expire(now + Duration::from_secs(3)), vec![(a, 2)]);
        assert_eq!(l.parked(), 0);
    }

    #[test]
    fn a_peer_given_up_on_is_out_of_reach_until_then_or_until_a_direct_connection() {
        let mut l: Links<u32> = Links::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        l.give_up(p, now + Duration::from_secs(30));
        l.give_up(q, now + Duration::from_secs(30));
        assert!(l.out_of_reach(&p, now));
        assert!(!l.out_of_reach(&p, now + Duration::from_secs(31)));
        l.up(q, ConnectionId::new_unchecked(7), false);
        assert!(!l.out_of_reach(&q, now));
    }

    #[test]
    fn waiting_is_bounded_per_peer_and_in_all() {
        let mut l = Links::default();
        let later = Instant::now() + Duration::from_secs(5);
        let p = PeerId::random();
        for i in 0..MAX_PARKED_PER_PEER {
            l.park(p, i, later).unwrap();
        }
        assert_eq!(l.park(p, 999, later), Err(999));
        let mut n = MAX_PARKED_PER_PEER;
        while n < MAX_PARKED {
            let q = PeerId::random();
            for _ in 0..MAX_PARKED_PER_PEER.min(MAX_PARKED - n) {
                l.park(q, n, later).unwrap();
                n += 1;
            }
        }
        assert_eq!(l.park(PeerId::random(), 7, later), Err(7));
        assert_eq!(l.parked(), MAX_PARKED);
        assert_eq!(l.parked.len(), MAX_PARKED / MAX_PARKED_PER_PEER);
    }
}
