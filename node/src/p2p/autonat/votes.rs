//! Which address candidates count as reachable: a state machine over the
//! answers of AutoNAT servers, without I/O (the behaviour in `mod.rs`
//! drives it).
//!
//! A server's latest answer is its only vote, and a network (an IPv4 /24,
//! an IPv6 /48) speaks through its servers' latest answer, so many servers
//! in one network are one voice. A candidate counts once [`AGREE`] networks
//! say it is reachable and more say so than not; votes last
//! [`VOTE_TTL`], and a decided candidate is asked again every [`RETEST`],
//! so a confirmed address that stops working, or whose servers are gone,
//! stops counting.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// Networks that must agree before a candidate counts.
pub const AGREE: usize = 2;
/// Networks asked before a candidate is left until its re-test.
pub const ENOUGH: usize = 3;
/// How often a decided candidate is asked again.
pub const RETEST: Duration = Duration::from_secs(20 * 60);
/// How long a vote counts.
pub const VOTE_TTL: Duration = Duration::from_secs(60 * 60);
/// How long a candidate nobody reports again is kept (unless confirmed).
pub const CANDIDATE_TTL: Duration = Duration::from_secs(60 * 60);
/// Candidates kept at most.
pub const MAX_CANDIDATES: usize = 8;
/// How long before a probe that gave no answer (an error, a timeout) is
/// tried again.
pub const NO_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// One server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    /// The server's network.
    pub net: IpAddr,
    pub server: PeerId,
    pub reachable: bool,
}

/// A change to what counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Confirmed(Multiaddr),
    Expired(Multiaddr),
}

#[derive(Debug)]
struct Candidate {
    seen: Instant,
    votes: HashMap<PeerId, (Vote, Instant)>,
    confirmed: bool,
    testing: bool,
    next: Instant,
}

impl Candidate {
    /// Networks saying reachable, and saying not: each by its latest vote.
    fn tally(&self) -> (usize, usize) {
        let mut latest: HashMap<IpAddr, (Instant, bool)> = HashMap::new();
        for (v, t) in self.votes.values() {
            let e = latest.entry(v.net).or_insert((*t, v.reachable));
            if *t > e.0 {
                *e = (*t, v.reachable);
            }
        }
        let ok = latest.values().filter(|(_, r)| *r).count();
        (ok, latest.len() - ok)
    }

    fn agreed(&self) -> bool {
        let (ok, failed) = self.tally();
        ok >= AGREE && ok > failed
    }

    fn decided(&self) -> bool {
        let (ok, failed) = self.tally();
        ok >= AGREE || failed >= AGREE || ok + failed >= ENOUGH
    }

    /// Networks that answered within [`RETEST`]: the next probe goes
    /// elsewhere.
    fn recent(&self, now: Instant) -> Vec<IpAddr> {
        let mut nets: Vec<IpAddr> = self
            .votes
            .values()
            .filter(|(_, t)| now.duration_since(*t) < RETEST)
            .map(|(v, _)| v.net)
            .collect();
        nets.sort();
        nets.dedup();
        nets
    }
}

/// The candidates and their votes.
#[derive(Debug, Default)]
pub struct Votes {
    candidates: BTreeMap<Multiaddr, Candidate>,
}

impl Votes {
    /// `addr` was reported (again): a new candidate is tested at once.
    /// Refused (false) when [`MAX_CANDIDATES`] are kept and none of the
    /// unconfirmed ones can make room.
    pub fn add(&mut self, addr: Multiaddr, now: Instant) -> bool {
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.seen = now;
            return true;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            let oldest = self
                .candidates
                .iter()
                .filter(|(_, c)| !c.confirmed && !c.testing)
                .min_by_key(|(_, c)| c.seen)
                .map(|(a, _)| a.clone());
            match oldest {
                Some(a) => {
                    self.candidates.remove(&a);
                }
                None => return false,
            }
        }
        self.candidates.insert(
            addr,
            Candidate {
                seen: now,
                votes: HashMap::new(),
                confirmed: false,
                testing: false,
                next: now,
            },
        );
        true
    }

    /// `addr` is no candidate any more (its source withdrew it).
    pub fn remove(&mut self, addr: &Multiaddr) -> Option<Change> {
        let c = self.candidates.remove(addr)?;
        c.confirmed.then(|| Change::Expired(addr.clone()))
    }

    /// Candidates due for a probe, each with the networks not to ask;
    /// each is marked as being tested until [`Votes::vote`] or
    /// [`Votes::no_answer`].
    pub fn due(&mut self, now: Instant) -> Vec<(Multiaddr, Vec<IpAddr>)> {
        self.candidates
            .iter_mut()
            .filter(|(_, c)| !c.testing && now >= c.next)
            .map(|(a, c)| {
                c.testing = true;
                (a.clone(), c.recent(now))
            })
            .collect()
    }

    /// The probe of `addr` gave no vote (no server to ask, an error, a
    /// timeout): it is tried again after `wait`.
    pub fn no_answer(&mut self, addr: &Multiaddr, now: Instant, wait: Duration) {
        if let Some(c) = self.candidates.get_mut(addr) {
            c.testing = false;
            c.next = now + wait;
        }
    }

    /// A server's answer for `addr` (replacing its earlier one).
    pub fn vote(&mut self, addr: &Multiaddr, vote: Vote, now: Instant) -> Option<Change> {
        let c = self.candidates.get_mut(addr)?;
        c.testing = false;
        c.votes.insert(vote.server, (vote, now));
        c.next = if c.decided() { now + RETEST } else { now };
        Self::settle(addr, c)
    }

    /// Votes older than [`VOTE_TTL`] go, and candidates unreported for
    /// [`CANDIDATE_TTL`] that count for nothing; what stops counting is
    /// given back.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for (a, c) in &mut self.candidates {
            c.votes.retain(|_, (_, t)| now.duration_since(*t) < VOTE_TTL);
            changes.extend(Self::settle(a, c));
        }
        self.candidates
            .retain(|_, c| c.confirmed || c.testing || now.duration_since(c.seen) < CANDIDATE_TTL);
        changes
    }

    /// Whether `addr` counts.
    pub fn confirmed(&self, addr: &Multiaddr) -> bool {
        self.candidates.get(addr).is_some_and(|c| c.confirmed)
    }

    fn settle(addr: &Multiaddr, c: &mut Candidate) -> Option<Change> {
        let agreed = c.agreed();
        if agreed == c.confirmed {
            return None;
        }
        c.confirmed = agreed;
        Some(if agreed {
            Change::Confirmed(addr.clone())
        } else {
            Change::Expired(addr.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Multiaddr {
        format!("/ip4/203.0.113.{n}/tcp/4001").parse().unwrap()
    }

    fn net(n: u8) -> IpAddr {
        IpAddr::from([198, 51, n, 0])
    }

    /// Server `s` in network `n`.
    fn server(s: u8) -> PeerId {
        static IDS: std::sync::OnceLock<Vec<PeerId>> = std::sync::OnceLock::new();
        IDS.get_or_init(|| (0..16).map(|_| PeerId::random()).collect())[usize::from(s)]
    }

    fn yes(n: u8) -> Vote {
        Vote {
            net: net(n),
            server: server(n),
            reachable: true,
        }
    }

    fn no(n: u8) -> Vote {
        Vote {
            reachable: false,
            ..yes(n)
        }
    }

    #[test]
    fn one_network_never_confirms_however_many_of_its_servers_say_yes() {
        let mut v = Votes::default();
        let t = Instant::now();
        v.add(addr(1), t);
        for i in 0..10 {
            let now = t + Duration::from_secs(u64::from(i));
            assert_eq!(v.due(now).len(), 1);
            let vote = Vote {
                server: server(i),
                ..yes(1)
            };
            assert_eq!(v.vote(&addr(1), vote, now), None);
        }
        assert!(!v.confirmed(&addr(1)));
    }

    #[test]
    fn a_server_seen_in_two_networks_is_one_vote() {
        let mut v = Votes::default();
        let t = Instant::now();
        v.add(addr(1), t);
        v.vote(&addr(1), yes(1), t);
        let elsewhere = Vote { net: net(2), ..yes(1) };
        assert_eq!(v.vote(&addr(1), elsewhere, t), None);
        assert!(!v.confirmed(&addr(1)));
    }

    #[test]
    fn two_networks_confirm_and_the_next_probe_avoids_networks_that_answered() {
        let mut v = Votes::default();
        let t = Instant::now();
        v.add(addr(1), t);
        assert_eq!(v.due(t), vec![(addr(1), vec![])]);
        assert_eq!(v.vote(&addr(1), yes(1), t), None);
        assert_eq!(v.due(t), vec![(addr(1), vec![net(1)])]);
        assert_eq!(v.vote(&addr(1), yes(2), t), Some(Change::Confirmed(addr(1))));
        assert!(v.confirmed(&addr(1)));
        // Decided: asked again only at the re-test.
        assert!(v.due(t + RETEST - Duration::from_secs(1)).is_empty());
        let (a, avoid) = v.due(t + RETEST).pop().unwrap();
        assert_eq!((a, avoid), (addr(1), vec![]));
    }

    #[test]
    fn a_tie_or_more_failures_does_not_confirm_and_unconfirms() {
        let mut v = Votes::default();
        let t = Instant::now();
        v.add(addr(1), t);
        v.vote(&addr(1), yes(1), t);
        v.vote(&addr(1), no(2), t);
        v.vote(&addr(1), yes(3), t);
        assert!(v.confirmed(&addr(1)));
        v.vote(&addr(1), no(4), t);
        assert!(!v.confirmed(&addr(1)), "2 against 2");
        // A network changing its answer replaces its vote.
        assert_eq!(v.vote(&addr(1), yes(2), t), Some(Change::Confirmed(addr(1))));
    }

    #[test]
    fn a_confirmed_address_whose_votes_are_not_renewed_expires() {
        let mut v = Votes::default();
        let t = Instant::now();
        v.add(addr(1), t);
        v.vote(&addr(1), yes(1), t);
        v.vote(&addr(1), yes(2), t + Duration::from_secs(600));
        assert!(v.expire(t + VOTE_TTL - Duration::from_secs(1)).is_empty());
        assert_eq!(v.expire(t + VOTE_TTL), vec![Change::Expired(addr(1))]);
        // The candidate stays (reported recently enough to be re-tested)
        // until nobody reports it for CANDIDATE_TTL.
        assert!(!v.confirmed(&addr(1)));
        v.expire(t + VOTE_TTL + CANDIDATE_TTL);
        assert!(v.due(t + VOTE_TTL + CANDIDATE_TTL).is_empty());
    }

    #[test]
    fn a_probe_in_flight_is_not_handed_out_twice_and_no_answer_waits() {
        let mut v = Votes::default();
        let t = Instant::now();
        v.add(addr(1), t);
        assert_eq!(v.due(t).len(), 1);
        assert!(v.due(t).is_empty());
        v.no_answer(&addr(1), t, NO_ANSWER_WAIT);
        assert!(v.due(t + NO_ANSWER_WAIT - Duration::from_secs(1)).is_empty());
        assert_eq!(v.due(t + NO_ANSWER_WAIT).len(), 1);
    }

    #[test]
    fn candidates_are_bounded_and_the_stalest_unconfirmed_one_makes_room() {
        let mut v = Votes::default();
        let t = Instant::now();
        v.add(addr(0), t);
        v.vote(&addr(0), yes(1), t);
        v.vote(&addr(0), yes(2), t);
        for i in 1..MAX_CANDIDATES as u8 {
            assert!(v.add(addr(i), t + Duration::from_secs(u64::from(i))));
        }
        assert!(v.add(addr(100), t + Duration::from_secs(100)));
        assert!(v.confirmed(&addr(0)), "the confirmed one stays");
        assert_eq!(v.candidates.len(), MAX_CANDIDATES);
        assert!(!v.candidates.contains_key(&addr(1)), "the stalest went");
        assert_eq!(v.remove(&addr(0)), Some(Change::Expired(addr(0))));
    }
}
