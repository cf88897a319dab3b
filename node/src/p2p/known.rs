//! The addresses the node keeps for each peer, and so hands to Kademlia
//! (whose own per-peer list has no bound, de-duplicates by scanning, and
//! copies the whole list into an event on every insert). A peer's word is
//! worth little: what it claims in identify replaces what it claimed
//! before, only a few of its claims are kept, at most one claim in
//! [`CLAIM_EVERY`] is heard, and only addresses of a transport the node
//! speaks, public ones unless the node is in LAN mode, and never a relay
//! circuit. Addresses the node dialled itself come first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Peers whose addresses are kept (beyond it, disconnected ones are
/// forgotten to make room).
pub const MAX_PEERS: usize = 8192;
/// Addresses kept per peer that it claimed (identify) or that were found
/// on the LAN (mDNS).
pub const MAX_CLAIMED: usize = 4;
/// Addresses kept per peer that this node dialled successfully.
pub const MAX_DIALED: usize = 4;
/// A peer's identify claims are heard at most this often.
pub const CLAIM_EVERY: Duration = Duration::from_secs(10);

/// How an address came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This node dialled it and the connection came up.
    Dialed,
    /// The peer said so (identify).
    Claimed,
    /// mDNS found it on an attached network.
    Lan,
}

/// What changed in a peer's list: the caller tells Kademlia.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<Multiaddr>,
    pub removed: Vec<Multiaddr>,
}

#[derive(Debug, Default)]
struct Entry {
    dialed: Vec<Multiaddr>,
    claimed: Vec<Multiaddr>,
    claimed_at: Option<Instant>,
}

impl Entry {
    fn all(&self) -> Vec<Multiaddr> {
        let mut v = self.dialed.clone();
        v.extend(self.claimed.iter().filter(|a| !self.dialed.contains(a)).cloned());
        v
    }
}

/// Per-peer address lists, bounded.
#[derive(Debug)]
pub struct KnownAddrs {
    peers: HashMap<PeerId, Entry>,
    /// LAN mode: private addresses count.
    lan: bool,
}

/// Whether `addr` is one the node could dial for `peer`: an IP address,
/// then TCP or QUIC (v1) on a real port, then at most this peer's id.
pub fn dialable(peer: &PeerId, addr: &Multiaddr) -> bool {
    let mut it = addr.iter();
    if !matches!(it.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_))) {
        return false;
    }
    let transport = match it.next() {
        Some(Protocol::Tcp(p)) => p != 0,
        Some(Protocol::Udp(p)) => p != 0 && matches!(it.next(), Some(Protocol::QuicV1)),
        _ => false,
    };
    transport
        && match it.next() {
            None => true,
            Some(Protocol::P2p(id)) => id == *peer && it.next().is_none(),
            Some(_) => false,
        }
}

impl KnownAddrs {
    pub fn new(lan: bool) -> Self {
        Self {
            peers: HashMap::new(),
            lan,
        }
    }

    /// The addresses kept for `peer`, dialled ones first.
    pub fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).map(Entry::all).unwrap_or_default()
    }

    /// Peers known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// `addrs` learnt about `peer` from `source` at `now`. `connected`
    /// says which peers are connected (kept when room is made).
    pub fn learn(
        &mut self,
        peer: PeerId,
        source: Source,
        addrs: impl IntoIterator<Item = Multiaddr>,
        now: Instant,
        connected: impl Fn(&PeerId) -> bool,
    ) -> Change {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            self.peers.retain(|p, _| connected(p));
            if self.peers.len() >= MAX_PEERS {
                return Change::default();
            }
        }
        let lan = self.lan;
        let usable = |a: &Multiaddr| dialable(&peer, a) && (lan || source != Source::Claimed || super::is_global(a));
        let entry = self.peers.entry(peer).or_default();
        let before = entry.all();
        match source {
            Source::Dialed => {
                for a in addrs.into_iter().filter(usable) {
                    entry.dialed.retain(|d| d != &a);
                    entry.dialed.insert(0, a);
                }
                entry.dialed.truncate(MAX_DIALED);
            }
            Source::Claimed => {
                if entry.claimed_at.is_some_and(|t| now.duration_since(t) < CLAIM_EVERY) {
                    return Change::default();
                }
                let mut claims: Vec<Multiaddr> = Vec::new();
                for a in addrs.into_iter().filter(usable) {
                    if !claims.contains(&a) {
                        claims.push(a);
                        if claims.len() == MAX_CLAIMED {
                            break;
                        }
                    }
                }
                // A claim of nothing usable neither erases what was known
                // nor counts against the next claim.
                if !claims.is_empty() {
                    entry.claimed = claims;
                    entry.claimed_at = Some(now);
                }
            }
            Source::Lan => {
                for a in addrs.into_iter().filter(usable) {
                    entry.claimed.retain(|c| c != &a);
                    entry.claimed.insert(0, a);
                }
                entry.claimed.truncate(MAX_CLAIMED);
            }
        }
        let after = entry.all();
        Change {
            added: after.iter().filter(|a| !before.contains(a)).cloned().collect(),
            removed: before.into_iter().filter(|a| !after.contains(a)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn fresh(i: u32) -> Multiaddr {
        let [a, b, c, d] = (0x0100_0000u32 + i).to_be_bytes();
        addr(&format!("/ip4/{}.{b}.{c}.{d}/tcp/{}", a.max(1), 1000 + (i % 60000)))
    }

    #[test]
    fn a_flood_of_claims_keeps_a_few_and_replaces_rather_than_grows() {
        let mut k = KnownAddrs::new(false);
        let peer = PeerId::random();
        let t0 = Instant::now();
        let mut kept_total = 0;
        // 20 pushes a second of 150 fresh addresses, for a minute.
        for round in 0..1200u32 {
            let now = t0 + Duration::from_millis(50 * u64::from(round));
            let claims = (0..150).map(|i| fresh(round * 150 + i));
            let c = k.learn(peer, Source::Claimed, claims, now, |_| true);
            kept_total += c.added.len();
            assert!(k.get(&peer).len() <= MAX_CLAIMED + MAX_DIALED);
        }
        // One claim heard per CLAIM_EVERY: 6 in the minute, 4 addresses each.
        assert_eq!(kept_total, 6 * MAX_CLAIMED);
        assert_eq!(k.get(&peer).len(), MAX_CLAIMED);
    }

    #[test]
    fn dialled_addresses_come_first_and_survive_claims() {
        let mut k = KnownAddrs::new(false);
        let peer = PeerId::random();
        let t0 = Instant::now();
        let home = addr("/ip4/1.2.3.4/udp/4001/quic-v1");
        k.learn(peer, Source::Dialed, [home.clone()], t0, |_| true);
        let c = k.learn(peer, Source::Claimed, (0..10).map(fresh), t0, |_| true);
        assert_eq!(c.added.len(), MAX_CLAIMED);
        assert_eq!(k.get(&peer)[0], home);
        let later = t0 + CLAIM_EVERY;
        let c = k.learn(peer, Source::Claimed, (10..20).map(fresh), later, |_| true);
        assert_eq!((c.added.len(), c.removed.len()), (MAX_CLAIMED, MAX_CLAIMED), "replaced");
        assert_eq!(k.get(&peer)[0], home);
        // A claim of nothing usable keeps the last one...
        let c = k.learn(
            peer,
            Source::Claimed,
            [addr("/ip4/127.0.0.1/tcp/1")],
            later + CLAIM_EVERY,
            |_| true,
        );
        assert_eq!(c, Change::default());
        assert_eq!(k.get(&peer).len(), 1 + MAX_CLAIMED);
        // ... and does not hold back the next.
        let c = k.learn(peer, Source::Claimed, (20..21).map(fresh), later + CLAIM_EVERY, |_| {
            true
        });
        assert_eq!(c.added.len(), 1);
    }

    #[test]
    fn only_dialable_public_addresses_are_believed() {
        let mut k = KnownAddrs::new(false);
        let peer = PeerId::random();
        let other = PeerId::random();
        let t0 = Instant::now();
        let claims = [
            addr("/ip4/127.0.0.1/tcp/4001"),
            addr("/ip4/192.168.1.2/tcp/4001"),
            addr("/ip6/::ffff:10.0.0.1/tcp/4001"),
            addr("/ip6/64:ff9b::7f00:1/tcp/4001"),
            addr("/ip4/1.2.3.4/tcp/0"),
            addr("/ip4/1.2.3.4/udp/4001"),
            addr("/ip4/1.2.3.4/tcp/4001/ws"),
            addr(&format!("/ip4/1.2.3.4/tcp/4001/p2p/{other}")),
            addr(&format!("/ip4/1.2.3.4/tcp/4001/p2p/{other}/p2p-circuit/p2p/{peer}")),
            addr("/dns4/victim.example/tcp/4001"),
        ];
        k.learn(peer, Source::Claimed, claims.clone(), t0, |_| true);
        assert!(k.get(&peer).is_empty(), "{:?}", k.get(&peer));
        let good = addr(&format!("/ip4/1.2.3.4/tcp/4001/p2p/{peer}"));
        k.learn(peer, Source::Claimed, [good.clone()], t0 + CLAIM_EVERY, |_| true);
        assert_eq!(k.get(&peer), vec![good]);
        // In LAN mode private addresses count; so do mDNS finds.
        let mut lan = KnownAddrs::new(true);
        lan.learn(peer, Source::Claimed, [addr("/ip4/192.168.1.2/tcp/4001")], t0, |_| true);
        assert_eq!(lan.get(&peer).len(), 1);
        let mut mdns = KnownAddrs::new(false);
        mdns.learn(peer, Source::Lan, [addr("/ip4/192.168.1.2/tcp/4001")], t0, |_| true);
        assert_eq!(mdns.get(&peer).len(), 1);
    }

    #[test]
    fn room_is_made_by_forgetting_disconnected_peers() {
        let mut k = KnownAddrs::new(false);
        let t0 = Instant::now();
        for i in 0..MAX_PEERS as u32 {
            k.learn(PeerId::random(), Source::Dialed, [fresh(i)], t0, |_| true);
        }
        let late = PeerId::random();
        k.learn(late, Source::Dialed, [fresh(0)], t0, |_| true);
        assert!(k.get(&late).is_empty(), "all connected: no room");
        k.learn(late, Source::Dialed, [fresh(0)], t0, |_| false);
        assert_eq!(k.get(&late).len(), 1);
        assert_eq!(k.len(), 1);
    }
}
