//! The provider records other nodes announced to this one: in memory, and
//! bounded so that no peer, and no crowd of identities, can fill it for good.
//!
//! - Each peer holds at most `max_per_peer` records and adds them at a
//!   bounded rate (a burst the size of its quota, then `rate` a second).
//! - Each key holds at most `max_per_key` providers, many more than an
//!   answer lists ([`ANSWER`]): an answer lists the proven ones (those that
//!   served this node well) first, then takes turns among the rest, so
//!   identities that claimed a key first cannot lock out the one that
//!   serves it. A full key takes a newcomer only if it is proven, in place
//!   of one that is not.
//! - In all at most `max_records`. When full, a record from a peer holding
//!   fewer than the largest holder replaces one of the largest holder's
//!   (so many identities share the space instead of locking it); a record
//!   from the largest holder itself is refused.
//! - Records expire by time: [`Index::sweep`] walks the keys a slice at a
//!   time and drops expired rows, so an expired record costs nothing
//!   after at most one sweep round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use libp2p::{Multiaddr, PeerId};

/// A DHT key: nixswarm announces only sha256 path keys.
pub type Key = [u8; 32];

/// Addresses kept per provider.
const MAX_ADDRS: usize = 8;
/// Providers listed per answer (Kademlia's replication factor).
pub const ANSWER: usize = 20;

/// Limits of the index.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Records held in all.
    pub max_records: usize,
    /// Records held per providing peer.
    pub max_per_peer: usize,
    /// Providers held per key.
    pub max_per_key: usize,
    /// Records (new or refreshed) a peer may send per second once its
    /// burst (`max_per_peer`) is spent.
    pub rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_records: 500_000,
            max_per_peer: 100_000,
            max_per_key: 200,
            rate: 1_000,
        }
    }
}

/// What became of an offered record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// New row.
    New,
    /// The peer's row for the key was there: expiry and addresses renewed.
    Refreshed,
    /// Not kept (quota, rate, full key or full index).
    Refused,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    peer: u32,
    /// Position of the key in the peer's `keys`.
    pos: u32,
    expires: Instant,
}

#[derive(Debug)]
struct Peer {
    id: PeerId,
    addrs: Vec<Multiaddr>,
    keys: Vec<Key>,
    tokens: f64,
    filled: Instant,
}

/// The index. Every method takes `now`, so tests drive time.
#[derive(Debug)]
pub struct Index {
    limits: Limits,
    keys: BTreeMap<Key, Vec<Slot>>,
    peers: Vec<Option<Peer>>,
    free: Vec<u32>,
    ids: HashMap<PeerId, u32>,
    /// (records held, peer): the largest holder is the last.
    by_count: BTreeSet<(usize, u32)>,
    records: usize,
    cursor: Option<Key>,
    /// Where the next answer starts among the unproven providers.
    turn: std::cell::Cell<usize>,
}

/// One provider of a key, as [`Index::providers`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub peer: PeerId,
    pub expires: Instant,
    pub addrs: Vec<Multiaddr>,
}

impl Index {
    pub fn new(mut limits: Limits) -> Self {
        limits.max_per_key = limits.max_per_key.max(1);
        limits.max_per_peer = limits.max_per_peer.max(1);
        Self {
            limits,
            keys: BTreeMap::new(),
            peers: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            by_count: BTreeSet::new(),
            records: 0,
            cursor: None,
            turn: std::cell::Cell::new(0),
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records held for `peer`.
    pub fn count_of(&self, peer: &PeerId) -> usize {
        self.ids.get(peer).map_or(0, |&i| self.peer(i).keys.len())
    }

    fn peer(&self, i: u32) -> &Peer {
        self.peers[i as usize].as_ref().expect("live peer index")
    }

    fn peer_mut(&mut self, i: u32) -> &mut Peer {
        self.peers[i as usize].as_mut().expect("live peer index")
    }

    /// Offers a record of `peer` for `key`, valid until `expires`.
    /// `proven` says whether a peer has served this node well.
    pub fn add(
        &mut self,
        key: Key,
        peer: PeerId,
        expires: Instant,
        addrs: &[Multiaddr],
        proven: &dyn Fn(&PeerId) -> bool,
        now: Instant,
    ) -> Added {
        let existing = self.ids.get(&peer).copied();
        if let Some(i) = existing {
            if !self.take_token(i, now) {
                return Added::Refused;
            }
            if let Some(slot) = self.keys.get_mut(&key).and_then(|s| s.iter_mut().find(|s| s.peer == i)) {
                slot.expires = expires;
                self.set_addrs(i, addrs);
                return Added::Refreshed;
            }
            if self.peer(i).keys.len() >= self.limits.max_per_peer {
                return Added::Refused;
            }
        }
        // A full key: a proven newcomer replaces an unproven provider.
        let slots = self.keys.get(&key).map_or(0, Vec::len);
        if slots >= self.limits.max_per_key {
            if !proven(&peer) {
                return Added::Refused;
            }
            let unproven = self.keys[&key]
                .iter()
                .rev()
                .map(|s| s.peer)
                .find(|&p| !proven(&self.peer(p).id));
            let Some(victim) = unproven else {
                return Added::Refused;
            };
            self.remove_row(&key, victim);
        }
        // A full index: the largest holder gives way to a smaller one.
        if self.records >= self.limits.max_records {
            let mine = existing.map_or(0, |i| self.peer(i).keys.len());
            let Some(&(most, largest)) = self.by_count.last() else {
                return Added::Refused;
            };
            if Some(largest) == existing || most <= mine + 1 {
                return Added::Refused;
            }
            let key = *self.peer(largest).keys.last().expect("largest holder holds records");
            self.remove_row(&key, largest);
        }
        let i = match self.ids.get(&peer) {
            Some(&i) => i,
            None => self.new_peer(peer, now),
        };
        self.set_addrs(i, addrs);
        let p = self.peer_mut(i);
        let pos = p.keys.len() as u32;
        p.keys.push(key);
        self.by_count.remove(&(pos as usize, i));
        self.by_count.insert((pos as usize + 1, i));
        self.keys.entry(key).or_default().push(Slot { peer: i, pos, expires });
        self.records += 1;
        Added::New
    }

    fn new_peer(&mut self, id: PeerId, now: Instant) -> u32 {
        let p = Peer {
            id,
            addrs: Vec::new(),
            keys: Vec::new(),
            tokens: self.limits.max_per_peer as f64,
            filled: now,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.peers[i as usize] = Some(p);
                i
            }
            None => {
                self.peers.push(Some(p));
                (self.peers.len() - 1) as u32
            }
        };
        self.ids.insert(id, i);
        self.by_count.insert((0, i));
        i
    }

    fn take_token(&mut self, i: u32, now: Instant) -> bool {
        let (rate, cap) = (f64::from(self.limits.rate), self.limits.max_per_peer as f64);
        let p = self.peer_mut(i);
        p.tokens = (p.tokens + now.saturating_duration_since(p.filled).as_secs_f64() * rate).min(cap);
        p.filled = now;
        if p.tokens < 1.0 {
            return false;
        }
        p.tokens -= 1.0;
        true
    }

    fn set_addrs(&mut self, i: u32, addrs: &[Multiaddr]) {
        if !addrs.is_empty() {
            let p = self.peer_mut(i);
            p.addrs.clear();
            p.addrs.extend(addrs.iter().take(MAX_ADDRS).cloned());
        }
    }

    /// Removes `peer`'s row for `key`, if any.
    pub fn remove(&mut self, key: &Key, peer: &PeerId) {
        if let Some(&i) = self.ids.get(peer) {
            self.remove_row(key, i);
        }
    }

    fn remove_row(&mut self, key: &Key, i: u32) {
        let Some(slots) = self.keys.get_mut(key) else { return };
        let Some(at) = slots.iter().position(|s| s.peer == i) else {
            return;
        };
        let pos = slots.swap_remove(at).pos as usize;
        if slots.is_empty() {
            self.keys.remove(key);
        }
        self.records -= 1;
        let p = self.peer_mut(i);
        let count = p.keys.len();
        p.keys.swap_remove(pos);
        let moved = p.keys.get(pos).copied();
        if let Some(moved) = moved
            && let Some(s) = self
                .keys
                .get_mut(&moved)
                .and_then(|s| s.iter_mut().find(|s| s.peer == i))
        {
            s.pos = pos as u32;
        }
        self.by_count.remove(&(count, i));
        if count == 1 {
            let id = self.peers[i as usize].take().expect("live peer index").id;
            self.ids.remove(&id);
            self.free.push(i);
        } else {
            self.by_count.insert((count - 1, i));
        }
    }

    /// Up to [`ANSWER`] live providers of `key`: the proven ones first,
    /// then the others, starting at a place that moves on with each answer.
    pub fn providers(&self, key: &Key, proven: &dyn Fn(&PeerId) -> bool, now: Instant) -> Vec<Provider> {
        let live = self.keys.get(key).into_iter().flatten().filter(|s| s.expires > now);
        let (mut first, rest): (Vec<&Slot>, Vec<&Slot>) = live.partition(|s| proven(&self.peer(s.peer).id));
        first.truncate(ANSWER);
        if !rest.is_empty() {
            let start = self.turn.get() % rest.len();
            let take = (ANSWER - first.len()).min(rest.len());
            first.extend(rest.iter().cycle().skip(start).take(take));
            self.turn.set(start + take);
        }
        first
            .into_iter()
            .map(|s| {
                let p = self.peer(s.peer);
                Provider {
                    peer: p.id,
                    expires: s.expires,
                    addrs: p.addrs.clone(),
                }
            })
            .collect()
    }

    /// Drops the expired rows of up to `budget` keys, going on from where
    /// the last call stopped; returns the rows dropped.
    pub fn sweep(&mut self, budget: usize, now: Instant) -> usize {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = self.cursor.map_or(Unbounded, Excluded);
        let batch: Vec<Key> = self
            .keys
            .range((from, Unbounded))
            .take(budget)
            .map(|(k, _)| *k)
            .collect();
        self.cursor = if batch.len() < budget {
            None
        } else {
            batch.last().copied()
        };
        let mut dropped = 0;
        for key in batch {
            let expired: Vec<u32> = self.keys[&key]
                .iter()
                .filter(|s| s.expires <= now)
                .map(|s| s.peer)
                .collect();
            for i in expired {
                self.remove_row(&key, i);
                dropped += 1;
            }
        }
        dropped
    }

    /// Checks the internal invariants (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let rows: usize = self.keys.values().map(Vec::len).sum();
        assert_eq!(rows, self.records);
        let held: usize = self.peers.iter().flatten().map(|p| p.keys.len()).sum();
        assert_eq!(held, self.records);
        assert_eq!(self.by_count.len(), self.ids.len());
        for (key, slots) in &self.keys {
            for s in slots {
                assert_eq!(&self.peer(s.peer).keys[s.pos as usize], key);
            }
        }
    }
}
