//! Where provider records land: each key on the [`REPLICAS`] DHT servers
//! closest to it (Kademlia's XOR distance between SHA-256 positions), and
//! what each server then holds, through the node's own record index
//! (`nixswarm_node::p2p::records::index::Index`, with its quotas per
//! peer, per key and in all) rather than a second model of it.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use nixswarm_node::p2p::records::index::{Added, Index, Key, Limits};
use rand::{RngExt as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};

/// Servers each key is stored on (Kademlia's replication factor).
pub const REPLICAS: usize = 20;

/// The DHT servers, by their position in the key space.
#[derive(Debug)]
pub struct Servers {
    /// (position, peer), sorted by position.
    sorted: Vec<(Key, PeerId)>,
}

/// A peer id made from `n` and a seed (deterministic, unlike
/// `PeerId::random`).
pub fn peer(seed: u64, n: u64) -> PeerId {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.to_le_bytes());
    let key = libp2p::identity::Keypair::ed25519_from_bytes(bytes).expect("32 bytes make an ed25519 key");
    key.public().to_peer_id()
}

/// A peer's position: SHA-256 of its id, as Kademlia hashes it.
pub fn position(p: &PeerId) -> Key {
    Sha256::digest(p.to_bytes()).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// `key` with its bits after the first `len` cleared (`ones`: set).
fn prefix(key: &Key, len: usize, ones: bool) -> Key {
    std::array::from_fn(|i| {
        let keep = len.saturating_sub(8 * i).min(8);
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        (key[i] & mask) | if ones { !mask } else { 0 }
    })
}

impl Servers {
    pub fn new(peers: Vec<PeerId>) -> Self {
        let mut sorted: Vec<(Key, PeerId)> = peers.into_iter().map(|p| (position(&p), p)).collect();
        sorted.sort_unstable_by_key(|s| s.0);
        Self { sorted }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The servers whose positions share `key`'s first `len` bits: a
    /// range of the sorted list.
    fn range(&self, key: &Key, len: usize) -> std::ops::Range<usize> {
        let (lo, hi) = (prefix(key, len, false), prefix(key, len, true));
        let start = self.sorted.partition_point(|(p, _)| *p < lo);
        let end = self.sorted.partition_point(|(p, _)| *p <= hi);
        start..end
    }

    /// The `k` servers closest to `key`, closest first (indexes into the
    /// sorted list). The longest prefix of `key` that `k` servers share
    /// holds them all, and a few more: only those are compared.
    pub fn closest(&self, key: &Key, k: usize) -> Vec<usize> {
        let k = k.min(self.sorted.len());
        let (mut lo, mut hi) = (0usize, 256usize);
        // The longest prefix length whose range still holds k servers.
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.range(key, mid).len() >= k {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let mut candidates: Vec<usize> = self.range(key, lo).collect();
        candidates.sort_unstable_by_key(|i| xor(&self.sorted[*i].0, key));
        candidates.truncate(k);
        candidates
    }

    pub fn peer(&self, i: usize) -> PeerId {
        self.sorted[i].1
    }
}

/// What the servers hold after every donor announced its paths once.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Records per server: mean, 99th percentile, most.
    pub mean: f64,
    pub p99: usize,
    pub max: usize,
    /// Records the servers' indexes refused (quotas, rates).
    pub refused: u64,
}

/// `donors` donors, each announcing `paths` random keys, spread evenly
/// over `every` (the announcer's re-announcement interval), to `servers`
/// servers whose indexes have `limits`.
pub fn announce_once(servers: usize, donors: usize, paths: usize, every: Duration, limits: &Limits, seed: u64) -> Load {
    let net = Servers::new((0..servers as u64).map(|n| peer(seed, n)).collect());
    let mut indexes: Vec<Index> = (0..servers).map(|_| Index::new(limits.clone())).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let expires = start + 3 * every;
    let mut refused = 0u64;
    let step = every / u32::try_from(paths.max(1)).unwrap_or(u32::MAX);
    for d in 0..donors {
        let donor = peer(seed.wrapping_add(1), d as u64);
        for i in 0..paths {
            let key: Key = rng.random();
            let now = start + step * u32::try_from(i).unwrap_or(u32::MAX);
            for s in net.closest(&key, REPLICAS) {
                if indexes[s].add(key, donor, expires, &[], &|_| false, now) == Added::Refused {
                    refused += 1;
                }
            }
        }
    }
    let mut held: Vec<usize> = indexes.iter().map(Index::len).collect();
    held.sort_unstable();
    let total: usize = held.iter().sum();
    Load {
        mean: total as f64 / servers.max(1) as f64,
        p99: held[(held.len() * 99 / 100).min(held.len().saturating_sub(1))],
        max: held.last().copied().unwrap_or(0),
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_servers_are_the_closest_by_xor() {
        let net = Servers::new((0..500).map(|n| peer(9, n)).collect());
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for _ in 0..50 {
            let key: Key = rng.random();
            let got = net.closest(&key, REPLICAS);
            let mut all: Vec<usize> = (0..net.len()).collect();
            all.sort_unstable_by_key(|i| xor(&net.sorted[*i].0, &key));
            assert_eq!(got, all[..REPLICAS], "the scan and the prefix search agree");
        }
    }

    #[test]
    fn each_record_lands_on_twenty_servers_and_quotas_refuse_the_excess() {
        let limits = Limits::default();
        let load = announce_once(200, 10, 100, Duration::from_secs(4 * 3600), &limits, 1);
        // 1,000 keys on 20 servers each, over 200 servers.
        assert!((load.mean - 100.0).abs() < 1e-9, "{load:?}");
        assert_eq!(load.refused, 0);
        assert!(load.max < 250, "placement is even enough: {load:?}");
        // A server keeps at most 30 records of one donor: the rest is refused.
        let tight = Limits {
            max_per_peer: 30,
            ..Limits::default()
        };
        let load = announce_once(200, 1, 1000, Duration::from_secs(4 * 3600), &tight, 1);
        assert!(load.refused > 0 && load.max <= 30, "{load:?}");
    }
}
