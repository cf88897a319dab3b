//! Misbehaviour scores across transfers: a peer that sent a bad chunk or
//! manifest `ban_after` times is banned for `ban_for`. Only peers that
//! misbehaved have an entry, and the table is bounded (an attacker with
//! many identities cannot grow it): when full, only running bans are kept.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Peers scored at once.
pub const MAX_SCORES: usize = 10_000;

#[derive(Debug)]
struct Score {
    bad: u32,
    banned_until: Option<Instant>,
    /// The last offence.
    last: Instant,
}

/// The score table.
#[derive(Debug)]
pub struct Scores {
    ban_after: u32,
    ban_for: Duration,
    /// Offences older than this are forgotten (`None`: never).
    decay: Option<Duration>,
    map: HashMap<PeerId, Score>,
}

impl Scores {
    pub fn new(ban_after: u32, ban_for: Duration) -> Self {
        Self {
            ban_after: ban_after.max(1),
            ban_for,
            decay: None,
            map: HashMap::new(),
        }
    }

    /// Offences older than `decay` no longer count.
    pub fn with_decay(mut self, decay: Duration) -> Self {
        self.decay = Some(decay);
        self
    }

    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.map.get(peer).and_then(|s| s.banned_until).is_some_and(|t| t > now)
    }

    /// Counts one offence; returns its count, and whether it banned the peer.
    pub fn penalise(&mut self, peer: PeerId, now: Instant) -> (u32, bool) {
        if !self.map.contains_key(&peer) && self.map.len() >= MAX_SCORES {
            self.map.retain(|_, s| s.banned_until.is_some_and(|t| t > now));
            if self.map.len() >= MAX_SCORES {
                self.map.clear();
            }
        }
        let s = self.map.entry(peer).or_insert(Score {
            bad: 0,
            banned_until: None,
            last: now,
        });
        if self.decay.is_some_and(|d| now.saturating_duration_since(s.last) >= d) {
            s.bad = 0;
        }
        s.last = now;
        s.bad += 1;
        let banned = s.bad >= self.ban_after;
        if banned {
            s.banned_until = Some(now + self.ban_for);
        }
        (s.bad, banned)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_offenders_are_banned_for_a_while() {
        let mut s = Scores::new(2, Duration::from_secs(600));
        let (p, t0) = (PeerId::random(), Instant::now());
        assert_eq!(s.penalise(p, t0), (1, false));
        assert!(!s.is_banned(&p, t0));
        assert_eq!(s.penalise(p, t0), (2, true));
        assert!(s.is_banned(&p, t0 + Duration::from_secs(599)));
        assert!(!s.is_banned(&p, t0 + Duration::from_secs(600)));
    }

    #[test]
    fn with_decay_old_offences_are_forgotten() {
        let mut s = Scores::new(3, Duration::from_secs(600)).with_decay(Duration::from_secs(600));
        let (p, t0) = (PeerId::random(), Instant::now());
        // One offence every 10 minutes never adds up to a ban.
        for i in 0..10u64 {
            assert_eq!(s.penalise(p, t0 + Duration::from_secs(600 * i)), (1, false));
        }
        // Then two more within the window of the last: banned.
        let t = t0 + Duration::from_secs(5400);
        assert_eq!(s.penalise(p, t + Duration::from_secs(1)), (2, false));
        assert_eq!(s.penalise(p, t + Duration::from_secs(2)), (3, true));
        assert!(s.is_banned(&p, t + Duration::from_secs(3)));
    }

    #[test]
    fn many_identities_cannot_grow_the_table_or_lift_a_ban() {
        let mut s = Scores::new(1, Duration::from_secs(600));
        let (liar, t0) = (PeerId::random(), Instant::now());
        s.penalise(liar, t0);
        for _ in 0..(MAX_SCORES * 2) {
            s.penalise(PeerId::random(), t0 + Duration::from_secs(700));
            assert!(s.len() <= MAX_SCORES);
        }
        let mut s = Scores::new(2, Duration::from_secs(600));
        s.penalise(liar, t0);
        s.penalise(liar, t0);
        for _ in 0..MAX_SCORES {
            s.penalise(PeerId::random(), t0);
        }
        assert!(s.is_banned(&liar, t0), "a running ban survives the clean-up");
    }
}
