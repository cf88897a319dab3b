//! Which relays a node behind NAT reserves a slot on.
//!
//! A candidate is a peer that offers the circuit-relay v2 service and that
//! this node dialled directly at an address others can dial too: a relay
//! that nobody outside the LAN reaches would give addresses nobody can use.
//! While the node is private it keeps [`WANT`] reservations; the relay
//! client renews each one before it runs out. A relay that refuses or
//! drops a reservation rests for [`REST`] before it is asked again.
//!
//! Which candidates: peers that served verified chunks first, then the
//! rest, in random order, and never two in one network (IPv4 /24, IPv6
//! /48) while another will do. Picking by peer id, as before, let anyone
//! who generated enough keys be everyone's relay. And the circuit address
//! advertised is the one built from the address this node dialled the
//! relay at, never the addresses the relay reports for itself (a hostile
//! relay would otherwise point every fetcher of the node at a victim).

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::diversity_network as network;

/// Reservations a private node keeps.
pub const WANT: usize = 2;
/// Candidates remembered.
pub const MAX_CANDIDATES: usize = 64;
/// How long a relay that refused or dropped a reservation is left alone.
pub const REST: Duration = Duration::from_secs(60);

/// A reservation asked for or held: the relay, and the circuit address
/// built from where it was dialled (the only one advertised).
#[derive(Debug, Clone)]
struct Active {
    relay: PeerId,
    circuit: Multiaddr,
}

/// The relay client's state.
#[derive(Debug, Default)]
pub struct Relays {
    candidates: HashMap<PeerId, Multiaddr>,
    /// Reservations asked for or held, by their listener.
    active: HashMap<ListenerId, Active>,
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
    /// Call `asked` with the listener of each that was started. `proven`
    /// says which peers served verified chunks (asked first).
    pub fn wanted(
        &mut self,
        private: bool,
        now: Instant,
        proven: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Multiaddr)> {
        if !private {
            return Vec::new();
        }
        self.resting.retain(|_, until| *until > now);
        let missing = WANT.saturating_sub(self.active.len());
        let used: Vec<PeerId> = self.active.values().map(|a| a.relay).collect();
        let mut nets: Vec<IpAddr> = self
            .active
            .values()
            .filter_map(|a| self.candidates.get(&a.relay).and_then(network))
            .collect();
        let mut pool: Vec<(PeerId, Multiaddr)> = self
            .candidates
            .iter()
            .filter(|(p, _)| !used.contains(p) && !self.resting.contains_key(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        // Proven peers first, each group in an order nobody can choose:
        // by a hash with keys this process drew at random.
        let order = std::collections::hash_map::RandomState::new();
        pool.sort_by_key(|(p, _)| (!proven(p), order.hash_one(p)));
        let mut picks: Vec<(PeerId, Multiaddr)> = Vec::new();
        // First pass: new networks only; second: whatever is left.
        for diverse in [true, false] {
            for (p, a) in &pool {
                if picks.len() == missing {
                    break;
                }
                let net = network(a);
                if picks.iter().any(|(q, _)| q == p) || (diverse && net.is_some_and(|n| nets.contains(&n))) {
                    continue;
                }
                nets.extend(net);
                picks.push((*p, circuit(a, p)));
            }
        }
        picks
    }

    /// A reservation on `relay` was asked for through `listener`, at the
    /// circuit address `circuit`.
    pub fn asked(&mut self, listener: ListenerId, relay: PeerId, circuit: Multiaddr) {
        self.active.insert(listener, Active { relay, circuit });
    }

    /// The address to advertise for a reservation's `listener`: the circuit
    /// built from where its relay was dialled, whatever addresses the relay
    /// reported. `None` if the listener is no reservation of ours.
    pub fn circuit_of(&self, listener: ListenerId) -> Option<&Multiaddr> {
        self.active.get(&listener).map(|a| &a.circuit)
    }

    /// A listener closed; if it was a reservation, its relay rests. Gives
    /// back the relay and the circuit address it had.
    pub fn closed(&mut self, listener: ListenerId, now: Instant) -> Option<(PeerId, Multiaddr)> {
        let a = self.active.remove(&listener)?;
        self.resting.insert(a.relay, now + REST);
        Some((a.relay, a.circuit))
    }

    /// The node became reachable directly: the reservations can go.
    pub fn release(&mut self) -> Vec<ListenerId> {
        self.active.drain().map(|(l, _)| l).collect()
    }

    /// The relays reserved on (or being asked).
    pub fn reserved(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.active.values().map(|a| a.relay).collect();
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
        format!("/ip4/198.18.{i}.1/tcp/4001").parse().unwrap()
    }

    fn none(_: &PeerId) -> bool {
        false
    }

    #[test]
    fn a_low_peer_id_does_not_win_and_networks_are_mixed() {
        // The lowest of many peer ids (what generating keys buys) is picked
        // about as often as chance says, not always.
        let now = Instant::now();
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let low = *peers.iter().min().unwrap();
        let mut low_picked = 0;
        for _ in 0..200 {
            let mut r = Relays::default();
            for (i, p) in peers.iter().enumerate() {
                r.candidate(*p, addr(i as u8));
            }
            if r.wanted(true, now, none).iter().any(|(p, _)| *p == low) {
                low_picked += 1;
            }
        }
        assert!(
            (20..90).contains(&low_picked),
            "picked {low_picked} of 200 (chance: 50)"
        );
        // Three relays in one /24 and one elsewhere: one of each.
        let mut r = Relays::default();
        let same: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, p) in same.iter().enumerate() {
            r.candidate(*p, format!("/ip4/1.2.3.{i}/tcp/4001").parse().unwrap());
        }
        let other = PeerId::random();
        r.candidate(other, addr(9));
        let picks: Vec<PeerId> = r.wanted(true, now, none).into_iter().map(|(p, _)| p).collect();
        assert!(picks.contains(&other), "{picks:?}");
        assert_eq!(picks.iter().filter(|p| same.contains(p)).count(), 1);
        // With only one network, it is used twice rather than not at all.
        let mut r = Relays::default();
        for (i, p) in same.iter().enumerate() {
            r.candidate(*p, format!("/ip4/1.2.3.{i}/tcp/4001").parse().unwrap());
        }
        assert_eq!(r.wanted(true, now, none).len(), WANT);
    }

    #[test]
    fn peers_that_served_well_are_asked_first_and_the_dialled_circuit_is_advertised() {
        let now = Instant::now();
        let mut r = Relays::default();
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            r.candidate(*p, addr(i as u8));
        }
        let good = [peers[4], peers[5]];
        let picks = r.wanted(true, now, |p| good.contains(p));
        let picked: Vec<PeerId> = picks.iter().map(|(p, _)| *p).collect();
        assert!(good.iter().all(|g| picked.contains(g)), "{picked:?}");
        let (relay, circuit) = picks[0].clone();
        let l = ListenerId::next();
        r.asked(l, relay, circuit.clone());
        assert_eq!(r.circuit_of(l), Some(&circuit));
        assert!(
            circuit
                .to_string()
                .starts_with(&addr(if relay == peers[4] { 4 } else { 5 }).to_string())
        );
        assert_eq!(r.circuit_of(ListenerId::next()), None, "not a reservation");
        assert_eq!(r.closed(l, now), Some((relay, circuit)));
    }

    #[test]
    fn a_private_node_keeps_two_reservations_and_a_public_one_none() {
        let mut r = Relays::default();
        let now = Instant::now();
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            r.candidate(*p, addr(i as u8 + 1));
        }
        assert!(r.wanted(false, now, none).is_empty());
        let picks = r.wanted(true, now, none);
        assert_eq!(picks.len(), WANT);
        for (p, a) in &picks {
            assert!(a.to_string().ends_with(&format!("/p2p/{p}/p2p-circuit")), "{a}");
            r.asked(ListenerId::next(), *p, a.clone());
        }
        assert!(r.wanted(true, now, none).is_empty(), "two are held");
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
        for (p, circuit) in r.wanted(true, now, none) {
            r.asked(if p == a { la } else { lb }, p, circuit);
        }
        assert_eq!(r.closed(la, now).map(|(p, _)| p), Some(a));
        assert!(r.wanted(true, now, none).is_empty(), "a rests, b is held, nobody else");
        r.candidate(c, addr(3));
        let picks = r.wanted(true, now, none);
        assert_eq!(picks.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![c]);
        r.gone(&c);
        assert_eq!(
            r.wanted(true, now + REST + Duration::from_secs(1), none)
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
