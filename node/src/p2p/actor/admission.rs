//! Who enters the routing table. Kademlia runs with manual inserts: a
//! peer is admitted only once this node has dialled it and it confirmed
//! the DHT protocol on that connection (Kademlia's `RoutablePeer`), and
//! only while its bucket holds fewer than [`PER_BUCKET_NETWORK`] peers of
//! its network (IPv4 /24, IPv6 /48). A peer that connected to us and
//! claims the DHT protocol is dialled back at the addresses it claims in
//! the network it connected from, at most once in [`DIAL_BACK_EVERY`].
//!
//! Before, whatever a connected peer claimed in identify went into the
//! table (and from there into every FIND_NODE answer), dialled or not, and
//! any number of identities from one network could fill a bucket.

use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};

use super::super::known::{MAX_CLAIMED, dialable};
use super::super::{ip_of, network_of};
use super::Actor;

/// Peers of one network (IPv4 /24, IPv6 /48) in one bucket.
pub const PER_BUCKET_NETWORK: usize = 2;
/// A peer that connected to us is dialled back at most this often.
pub const DIAL_BACK_EVERY: Duration = Duration::from_secs(300);
/// Dial-backs remembered.
const DIAL_BACKS: usize = 4096;

impl Actor {
    /// `peer` is in the routing table.
    pub(super) fn in_table(&mut self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .kbucket(*peer)
            .is_some_and(|b| b.iter().any(|e| e.node.key.preimage() == peer))
    }

    /// The networks of `addrs` that count toward the per-bucket limit:
    /// public ones (in LAN mode the LAN is one network), and loopback in
    /// tests that count it as a host.
    fn counted_networks(&self, addrs: &[Multiaddr]) -> Vec<std::net::IpAddr> {
        addrs
            .iter()
            .filter_map(ip_of)
            .filter(|ip| nixswarm_protocol::ip::is_public(*ip) || (self.count_loopback && ip.is_loopback()))
            .map(|ip| network_of(ip, 24, 48))
            .collect()
    }

    /// Whether `peer`'s bucket has room for its network.
    fn diverse(&mut self, peer: &PeerId) -> bool {
        let nets = self.counted_networks(&self.known.get(peer));
        if nets.is_empty() {
            return true;
        }
        let Some(bucket) = self.swarm.behaviour_mut().kad.kbucket(*peer) else {
            return true;
        };
        let entries: Vec<Vec<Multiaddr>> = bucket.iter().map(|e| e.node.value.iter().cloned().collect()).collect();
        let same = entries
            .iter()
            .filter(|addrs| self.counted_networks(addrs).iter().any(|n| nets.contains(n)))
            .count();
        same < PER_BUCKET_NETWORK
    }

    /// Puts `peer` (dialled, a DHT server) in the routing table with the
    /// addresses the book keeps for it, if its bucket has room for its
    /// network.
    pub(super) fn admit(&mut self, peer: PeerId) {
        if self.in_table(&peer) {
            return;
        }
        if !self.diverse(&peer) {
            tracing::debug!(%peer, "not admitted: its bucket holds {PER_BUCKET_NETWORK} peers of its network");
            self.stats
                .not_admitted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        for a in self.known.get(&peer) {
            kad.add_address(&peer, a);
        }
    }

    /// A peer that connected to us (`connection`) claims the DHT protocol:
    /// dial it back at the addresses it `claimed` in that connection's
    /// network (a few).
    pub(super) fn dial_back(&mut self, peer: PeerId, connection: ConnectionId, claimed: &[Multiaddr]) {
        let Some(net) = self
            .direct_ips
            .get(&peer)
            .and_then(|v| v.iter().find(|(c, _)| *c == connection))
            .map(|(_, ip)| network_of(*ip, 32, 64))
        else {
            return;
        };
        let now = Instant::now();
        if self.dial_backs.get(&peer).is_some_and(|t| now < *t + DIAL_BACK_EVERY) {
            return;
        }
        if !self.dial_backs.contains_key(&peer) && self.dial_backs.len() >= DIAL_BACKS {
            self.dial_backs.retain(|_, t| now < *t + DIAL_BACK_EVERY);
            if self.dial_backs.len() >= DIAL_BACKS {
                return;
            }
        }
        let addrs: Vec<Multiaddr> = claimed
            .iter()
            .filter(|a| dialable(&peer, a) && ip_of(a).is_some_and(|ip| network_of(ip, 32, 64) == net))
            .take(MAX_CLAIMED)
            .cloned()
            .collect();
        if addrs.is_empty() {
            return;
        }
        self.dial_backs.insert(peer, now);
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::NotDialing)
            .addresses(addrs)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial a DHT peer back");
        }
    }

    /// The connected peers worth asking which paths they hold, proven ones
    /// first: a peer that only connected in, and that this node neither
    /// dialled nor admitted, is not told what the user looks for.
    pub(super) fn askable_peers(&mut self) -> Vec<PeerId> {
        let proven = self.stats.proven.clone();
        let dialled: std::collections::HashSet<PeerId> = self.dialed.values().map(|(p, _)| *p).collect();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut v: Vec<PeerId> = connected
            .into_iter()
            .filter(|p| proven.contains(p) || dialled.contains(p) || self.in_table(p))
            .collect();
        v.sort_by_key(|p| !proven.contains(p));
        v
    }

    /// A direct connection this node dialled to `peer` is up.
    pub(super) fn dialled(&self, peer: &PeerId) -> bool {
        self.dialed.values().any(|(p, _)| p == peer)
    }
}
