//! Which relays a node behind NAT reserves a slot on.
//!
//! A candidate is a peer that offers the circuit-relay v2 service and that
//! this node dialled directly at an address others can dial too: a relay
//! that nobody outside the LAN reaches would give addresses nobody can use.
//! While the node is private it keeps [`WANT`] reservations; the relay
//! client renews each one before it runs out. A relay that refuses or
//! drops a reservation rests for [`REST`] before it is asked again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Reservations a private node keeps.
pub const WANT: usize = 2;
/// Candidates remembered.
pub const MAX_CANDIDATES: usize = 64;
/// How long a relay that refused or dropped a reservation is left alone.
pub const REST: Duration = Duration::from_secs(60);

/// The relay client's state.
#[derive(Debug, Default)]
pub struct Relays {
    candidates: HashMap<PeerId, Multiaddr>,
    /// Reservations asked for or held, by their listener.
    active: HashMap<ListenerId, PeerId>,
    resting: HashMap<PeerId, Instant>,
}

impl Relays {
    /// `peer` offers the relay service and was dialled directly at `addr`.
    pub fn candidate(&mut self, peer: PeerId, addr: Multiaddr) {
        if self.candidates.len() < MAX_CANDIDATES || self.candidates.contains_key(&peer) {
            self.candidates.insert(peer, addr);
        }
    }

    /// `peer` disconnected: no longer a candidate (a reservation on it ends
    /// with its listener).
    pub fn gone(&mut self, peer: &PeerId) {
        self.candidates.remove(peer);
    }

    /// The circuit addresses to listen on now, with the relay each uses.
    /// Call `asked` with the listener of each that was started.
    pub fn wanted(&mut self, private: bool, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        if !private {
            return Vec::new();
        }
        self.resting.retain(|_, until| *until > now);
        let missing = WANT.saturating_sub(self.active.len());
        let used: Vec<PeerId> = self.active.values().copied().collect();
        let mut picks: Vec<(PeerId, Multiaddr)> = self
            .candidates
            .iter()
            .filter(|(p, _)| !used.contains(p) && !self.resting.contains_key(p))
            .map(|(p, a)| (*p, circuit(a, p)))
            .collect();
        picks.sort_by_key(|(p, _)| *p);
        picks.truncate(missing);
        picks
    }

    /// A reservation was asked for through `listener`.
    pub fn asked(&mut self, listener: ListenerId, relay: PeerId) {
        self.active.insert(listener, relay);
    }

    /// A listener closed; if it was a reservation, its relay rests.
    pub fn closed(&mut self, listener: ListenerId, now: Instant) -> Option<PeerId> {
        let relay = self.active.remove(&listener)?;
        self.resting.insert(relay, now + REST);
        Some(relay)
    }

    /// The node became reachable directly: the reservations can go.
    pub fn release(&mut self) -> Vec<ListenerId> {
        self.active.drain().map(|(l, _)| l).collect()
    }

    /// The relays reserved on (or being asked).
    pub fn reserved(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.active.values().copied().collect();
        v.sort();
        v
    }
}

/// `addr/p2p/<relay>/p2p-circuit`: where to listen through `relay`.
pub fn circuit(addr: &Multiaddr, relay: &PeerId) -> Multiaddr {
    let mut a: Multiaddr = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
    a.push(Protocol::P2p(*relay));
    a.push(Protocol::P2pCircuit);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> Multiaddr {
        format!("/ip4/198.18.0.{i}/tcp/4001").parse().unwrap()
    }

    #[test]
    fn a_private_node_keeps_two_reservations_and_a_public_one_none() {
        let mut r = Relays::default();
        let now = Instant::now();
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            r.candidate(*p, addr(i as u8 + 1));
        }
        assert!(r.wanted(false, now).is_empty());
        let picks = r.wanted(true, now);
        assert_eq!(picks.len(), WANT);
        for (p, a) in &picks {
            assert!(a.to_string().ends_with(&format!("/p2p/{p}/p2p-circuit")), "{a}");
            r.asked(ListenerId::next(), *p);
        }
        assert!(r.wanted(true, now).is_empty(), "two are held");
        assert_eq!(r.reserved().len(), 2);
        assert_eq!(r.release().len(), 2);
        assert!(r.reserved().is_empty());
    }

    #[test]
    fn a_relay_that_drops_a_reservation_rests_and_another_is_asked() {
        let mut r = Relays::default();
        let now = Instant::now();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        r.candidate(a, addr(1));
        r.candidate(b, addr(2));
        let (la, lb) = (ListenerId::next(), ListenerId::next());
        for (p, _) in r.wanted(true, now) {
            r.asked(if p == a { la } else { lb }, p);
        }
        assert_eq!(r.closed(la, now), Some(a));
        assert!(r.wanted(true, now).is_empty(), "a rests, b is held, nobody else");
        r.candidate(c, addr(3));
        let picks = r.wanted(true, now);
        assert_eq!(picks.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![c]);
        r.gone(&c);
        assert_eq!(
            r.wanted(true, now + REST + Duration::from_secs(1))
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>(),
            vec![a],
            "a is asked again after its rest"
        );
        assert_eq!(r.closed(ListenerId::next(), now), None);
    }

    #[test]
    fn candidates_are_bounded() {
        let mut r = Relays::default();
        for _ in 0..MAX_CANDIDATES * 2 {
            r.candidate(PeerId::random(), addr(1));
        }
        assert_eq!(r.candidates.len(), MAX_CANDIDATES);
    }
}
