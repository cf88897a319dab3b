//! Kademlia's record store, without MemoryStore's 1,024-key cap and
//! bounded against hostile peers.
//!
//! Provider records (the only kind nixswarm uses) live in memory: this
//! node's own keys in a set that nothing can crowd out, and other nodes'
//! announcements in an [`index::Index`] with per-peer quotas and rates,
//! per-key and total caps, and a sweep by time. Nothing is written to disk:
//! the swarm task never waits on a write, and a flood costs no I/O. Other
//! nodes re-announce within the record TTL, and every key is held by up to
//! 20 nodes, so a restart loses nothing the swarm cannot rebuild (ARCHITECTURE.md).
//! Value records are not used by nixswarm and are refused: a peer could
//! otherwise make every node keep (and Kademlia re-publish each hour) up
//! to a thousand records of 16 KiB that nothing reads.

pub mod index;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::{Multiaddr, PeerId};

use self::index::{Added, Index, Key};
use super::proven::Proven;

pub use self::index::Limits;

/// Keys the sweep looks at per call.
pub const SWEEP_BUDGET: usize = 2000;

/// Counters of what the store refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Keys that are not nixswarm path keys.
    pub malformed: u64,
    /// Over a quota, a rate or a cap.
    pub over_limit: u64,
    /// Value records (nixswarm uses none).
    pub values: u64,
}

/// Circuit addresses kept from one record (a node behind NAT holds
/// reservations on two relays).
pub const CIRCUIT_ADDRS: usize = 2;

/// Of the addresses a provider put in its record, the ones others may be
/// sent to dial: a direct address in the network (IPv4 address, IPv6 /64)
/// of a direct connection the provider announced over (`from`), and at
/// most [`CIRCUIT_ADDRS`] relayed ones (dialling those reaches a relay,
/// which the circuit protocol then asks). Anything else the sender chose
/// freely: kept, it would send every fetcher of the path to dial it.
pub fn addresses_seen_from(addrs: &[Multiaddr], from: &[std::net::IpAddr]) -> Vec<Multiaddr> {
    use super::{direct::is_relayed, ip_of, network_of};
    let nets: Vec<_> = from.iter().map(|ip| network_of(*ip, 32, 64)).collect();
    let direct = addrs
        .iter()
        .filter(|a| !is_relayed(a) && ip_of(a).is_some_and(|ip| nets.contains(&network_of(ip, 32, 64))));
    let relayed = addrs.iter().filter(|a| is_relayed(a)).take(CIRCUIT_ADDRS);
    direct.chain(relayed).cloned().collect()
}

/// The store.
#[derive(Debug)]
pub struct ProviderStore {
    local: PeerId,
    ttl: Duration,
    own: HashSet<Key>,
    remote: Index,
    proven: Arc<Proven>,
    refused: Refused,
    /// The addresses this node advertises (its own records carry them).
    advertised: Vec<Multiaddr>,
}

fn path_key(key: &RecordKey) -> Option<Key> {
    key.as_ref().try_into().ok()
}

impl ProviderStore {
    /// A store for `local`'s node; remote records without an expiry live
    /// `ttl`.
    pub fn new(local: PeerId, limits: Limits, ttl: Duration, proven: Arc<Proven>) -> Self {
        Self {
            local,
            ttl,
            own: HashSet::new(),
            remote: Index::new(limits),
            proven,
            refused: Refused::default(),
            advertised: Vec::new(),
        }
    }

    /// Provider records held (own and others').
    pub fn provider_records(&self) -> usize {
        self.own.len() + self.remote.len()
    }

    /// Keys this node provides itself.
    pub fn provided_count(&self) -> usize {
        self.own.len()
    }

    /// Records held for `peer`.
    pub fn records_of(&self, peer: &PeerId) -> usize {
        self.remote.count_of(peer)
    }

    /// What was refused so far.
    pub fn refused(&self) -> Refused {
        self.refused
    }

    /// The addresses our own records carry from now on.
    pub fn set_advertised(&mut self, addrs: Vec<Multiaddr>) {
        self.advertised = addrs;
    }

    /// Drops expired records from the next slice of keys.
    pub fn sweep(&mut self) -> usize {
        self.remote.sweep(SWEEP_BUDGET, Instant::now())
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::vec::IntoIter<Cow<'a, ProviderRecord>>;

    fn get(&self, _: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    fn put(&mut self, _: Record) -> Result<()> {
        self.refused.values += 1;
        Err(Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        let Some(key) = path_key(&record.key) else {
            // Kademlia only logs an error; answering Ok keeps a flood of
            // junk keys from filling the log as well.
            self.refused.malformed += 1;
            return Ok(());
        };
        if record.provider == self.local {
            // Never refused: bounded by what this node holds.
            self.own.insert(key);
            return Ok(());
        }
        let now = Instant::now();
        let expires = record.expires.unwrap_or(now + self.ttl).min(now + self.ttl);
        let proven = &self.proven;
        let added = self.remote.add(
            key,
            record.provider,
            expires,
            &record.addresses,
            &|p| proven.contains(p),
            now,
        );
        if added == Added::Refused {
            self.refused.over_limit += 1;
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let Some(k) = path_key(key) else {
            return Vec::new();
        };
        // Our own record carries the advertised addresses. With none it is
        // left out: Kademlia would fill in every listen address, private
        // and loopback ones too, and nobody could dial them.
        let own = (self.own.contains(&k) && !self.advertised.is_empty()).then(|| ProviderRecord {
            key: key.clone(),
            provider: self.local,
            expires: None,
            addresses: self.advertised.clone(),
        });
        let proven = &self.proven;
        let remote = self
            .remote
            .providers(&k, &|p| proven.contains(p), Instant::now())
            .into_iter()
            .map(|p| ProviderRecord {
                key: key.clone(),
                provider: p.peer,
                expires: Some(p.expires),
                addresses: p.addrs,
            });
        // Our own record first: it is the one we can vouch for.
        own.into_iter().chain(remote).collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.own
            .iter()
            .map(|k| {
                Cow::Owned(ProviderRecord {
                    key: RecordKey::from(k.to_vec()),
                    provider: self.local,
                    expires: None,
                    addresses: Vec::new(),
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        let Some(key) = path_key(k) else { return };
        if *p == self.local {
            self.own.remove(&key);
        } else {
            self.remote.remove(&key, p);
        }
    }
}

#[cfg(test)]
mod tests;
