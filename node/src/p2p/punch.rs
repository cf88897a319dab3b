//! Hole punching that does not give up after one try. DCUtR runs once per
//! relayed connection (three dial attempts); before, a punch that failed
//! was not tried again until something else opened a new relayed
//! connection, and requests to the peer were skipped for a minute, so a
//! donor behind NAT whose first punch failed served nobody.
//!
//! Now the side that dialled the relayed connection (it holds the circuit
//! address) opens a fresh one after a backoff ([`FIRST_BACKOFF`],
//! doubling, [`RETRIES`] times), and the remote starts a new DCUtR attempt
//! on it. That side learns of a failure from DCUtR when it reports one,
//! and otherwise from the clock: the punch is started by the remote (the
//! relayed connection's listener), which alone reports its end, so a
//! relayed connection with no direct one [`PUNCH_DEADLINE`] after it came
//! up counts as a failed punch. The fetch path keeps its one-minute skip; the retries go on
//! beside it, and a direct connection ends the skip.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// Retries after a failed punch.
pub const RETRIES: u32 = 5;
/// The first retry's wait; each next one waits twice as long.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// A relayed connection this node dialled with no direct connection this
/// long after counts as a failed punch (DCUtR's three attempts take about
/// 15 s when every packet is dropped).
pub const PUNCH_DEADLINE: Duration = Duration::from_secs(20);
/// Peers tracked at once.
const PEERS: usize = 1024;

#[derive(Debug)]
struct State {
    /// The circuit address this node dialled the peer at.
    circuit: Multiaddr,
    failures: u32,
    /// When the next retry is due, if one is.
    next: Option<Instant>,
    /// When the punch under way counts as failed, if one is.
    check: Option<Instant>,
}

/// Punch retries by peer.
#[derive(Debug, Default)]
pub struct Punches {
    peers: HashMap<PeerId, State>,
}

impl Punches {
    /// This node dialled `peer` through a relay at `circuit` (at `now`).
    pub fn relayed(&mut self, peer: PeerId, circuit: Multiaddr, now: Instant) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.circuit = circuit;
            if s.next.is_none() {
                s.check = Some(now + PUNCH_DEADLINE);
            }
            return;
        }
        if self.peers.len() >= PEERS {
            self.peers.retain(|_, s| s.next.is_some());
            if self.peers.len() >= PEERS {
                return;
            }
        }
        self.peers.insert(
            peer,
            State {
                circuit,
                failures: 0,
                next: None,
                check: Some(now + PUNCH_DEADLINE),
            },
        );
    }

    /// A punch to `peer` failed: the wait before the next try, if one is
    /// made (this node dialled the relayed connection, and retries are
    /// left).
    pub fn failed(&mut self, peer: &PeerId, now: Instant) -> Option<Duration> {
        let s = self.peers.get_mut(peer)?;
        if s.next.is_some() {
            return None;
        }
        Self::schedule(s, now)
    }

    fn schedule(s: &mut State, now: Instant) -> Option<Duration> {
        s.check = None;
        if s.failures >= RETRIES {
            return None;
        }
        let wait = FIRST_BACKOFF * 2u32.pow(s.failures);
        s.failures += 1;
        s.next = Some(now + wait);
        Some(wait)
    }

    /// A direct connection to `peer` is up: nothing more to punch.
    pub fn direct(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// `peer` has no connection left: forgotten unless a retry is due.
    pub fn gone(&mut self, peer: &PeerId) {
        if self.peers.get(peer).is_some_and(|s| s.next.is_none()) {
            self.peers.remove(peer);
        }
    }

    /// The retries due at `now`: a fresh relayed connection to each. A
    /// punch past its deadline counts as failed first.
    pub fn due(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        for s in self.peers.values_mut() {
            if s.check.is_some_and(|t| t <= now) {
                Self::schedule(s, now);
            }
        }
        self.peers
            .iter_mut()
            .filter(|(_, s)| s.next.is_some_and(|t| t <= now))
            .map(|(p, s)| {
                s.next = None;
                s.check = Some(now + PUNCH_DEADLINE);
                (*p, s.circuit.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit() -> Multiaddr {
        format!("/ip4/198.51.100.1/tcp/4001/p2p/{}/p2p-circuit", PeerId::random())
            .parse()
            .unwrap()
    }

    #[test]
    fn failed_punches_are_retried_with_backoff_then_given_up() {
        let mut p = Punches::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        p.relayed(peer, circuit(), t0);
        let mut t = t0;
        let mut waits = Vec::new();
        while let Some(w) = p.failed(&peer, t) {
            // Not due before its time, due after.
            assert!(p.due(t + w - Duration::from_millis(1)).is_empty());
            assert_eq!(p.due(t + w).len(), 1);
            // A second failure report of the same try schedules nothing new.
            t += w;
            waits.push(w.as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32]);
        assert!(p.failed(&peer, t).is_none());
    }

    #[test]
    fn only_the_side_that_dialled_the_relay_retries_and_a_direct_connection_ends_it() {
        let mut p = Punches::default();
        let (dialled, other) = (PeerId::random(), PeerId::random());
        assert!(p.failed(&other, Instant::now()).is_none(), "no circuit to dial again");
        p.relayed(dialled, circuit(), Instant::now());
        assert!(p.failed(&dialled, Instant::now()).is_some());
        assert!(
            p.failed(&dialled, Instant::now()).is_none(),
            "one retry pending at a time"
        );
        p.direct(&dialled);
        assert!(p.due(Instant::now() + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_pending_retry_survives_the_peer_going_and_tracking_is_bounded() {
        let mut p = Punches::default();
        let peer = PeerId::random();
        p.relayed(peer, circuit(), Instant::now());
        p.failed(&peer, Instant::now());
        p.gone(&peer);
        assert_eq!(p.due(Instant::now() + FIRST_BACKOFF).len(), 1);
        p.gone(&peer);
        assert!(p.peers.is_empty());
        for _ in 0..PEERS + 10 {
            p.relayed(PeerId::random(), circuit(), Instant::now());
        }
        assert!(p.peers.len() <= PEERS);
    }

    #[test]
    fn a_punch_nobody_reported_counts_as_failed_at_its_deadline() {
        let mut p = Punches::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        p.relayed(peer, circuit(), t0);
        assert!(p.due(t0 + PUNCH_DEADLINE - Duration::from_millis(1)).is_empty());
        // At the deadline the retry is scheduled, and due after its wait.
        assert!(p.due(t0 + PUNCH_DEADLINE).is_empty());
        assert_eq!(p.due(t0 + PUNCH_DEADLINE + FIRST_BACKOFF).len(), 1);
        // The retry's own deadline follows.
        let t1 = t0 + PUNCH_DEADLINE + FIRST_BACKOFF;
        assert!(p.due(t1 + PUNCH_DEADLINE).is_empty());
        assert_eq!(p.due(t1 + PUNCH_DEADLINE + 2 * FIRST_BACKOFF).len(), 1);
        p.direct(&peer);
        assert!(p.due(t1 + Duration::from_secs(600)).is_empty());
    }
}
