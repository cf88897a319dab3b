//! One gate for every outgoing dial, below the swarm (as go-libp2p's
//! connection gater): whatever asks for a dial (Kademlia's queries, a
//! provider found in a DHT answer, DCUtR's candidates, an AutoNAT server's
//! dial-back, a relay reservation), the address passes [`Rules::check`] or
//! the dial fails at once with [`Refused`].
//!
//! Peers tell a node where to dial: DHT answers, provider records,
//! identify and hole-punching messages all carry addresses the sender
//! chose. Without this gate a peer could point every node that looks up a
//! popular path at a victim's address, or at the user's own machine and
//! LAN. So:
//! - loopback, private and other non-public targets only in LAN mode
//!   (`announce_private`), or at an address the user gave (bootstrap) or
//!   mDNS found on a network this node is on;
//! - at most [`TARGET_BURST`] dials to one IPv4 address or IPv6 /64, then
//!   one every [`TARGET_EVERY`] (loopback exempt outside tests: a host
//!   that is already this machine);
//! - at most [`PEER_BURST`] addresses dialled for one peer id, then one
//!   every [`PEER_EVERY`] (a hole-punching message may list hundreds);
//! - at most [`TOTAL_BURST`] dials in all, then [`TOTAL_PER_SEC`] a second.
//!
//! Relayed dials are checked where they reach the network: the dial to
//! the relay.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Dials to one target network before its rate applies.
pub const TARGET_BURST: f64 = 16.0;
/// Then one dial to it this often.
pub const TARGET_EVERY: Duration = Duration::from_secs(2);
/// Addresses dialled for one peer before its rate applies.
pub const PEER_BURST: f64 = 32.0;
/// Then one address this often.
pub const PEER_EVERY: Duration = Duration::from_secs(2);
/// Dials in all before the total rate applies.
pub const TOTAL_BURST: f64 = 256.0;
/// Then this many a second.
pub const TOTAL_PER_SEC: f64 = 64.0;
/// Targets and peers tracked at once; past this, a new one is refused
/// until a tracked one has waited its burst back.
const TRACKED: usize = 4096;
/// Addresses given by the user or found by mDNS, kept at most.
const EXPLICIT: usize = 1024;

/// Why a dial was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} is not a public address (dialled only in LAN mode or when given as a bootstrap address)")]
    NotPublic(IpAddr),
    #[error("too many dials to {0} (network) for now")]
    TargetRate(IpAddr),
    #[error("too many addresses dialled for peer {0} for now")]
    PeerRate(PeerId),
    #[error("too many dials in all for now")]
    TotalRate,
}

/// Counts of refused dials, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RefusedCounts {
    pub not_public: u64,
    pub target_rate: u64,
    pub peer_rate: u64,
    pub total_rate: u64,
}

impl RefusedCounts {
    pub fn total(&self) -> u64 {
        self.not_public + self.target_rate + self.peer_rate + self.total_rate
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self { tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant, per_sec: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * per_sec).min(burst);
        self.at = now;
    }

    fn is_full(mut self, now: Instant, per_sec: f64, burst: f64) -> bool {
        self.refill(now, per_sec, burst);
        self.tokens >= burst
    }
}

/// Buckets by key, bounded: a full bucket is forgotten when room is needed.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    map: HashMap<K, Bucket>,
    per_sec: f64,
    burst: f64,
}

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    pub(crate) fn new(every: Duration, burst: f64) -> Self {
        Self {
            map: HashMap::new(),
            per_sec: 1.0 / every.as_secs_f64(),
            burst,
        }
    }

    /// Whether `key` has a token now (without taking it).
    pub(crate) fn has(&mut self, key: K, now: Instant) -> bool {
        let (per_sec, burst) = (self.per_sec, self.burst);
        if !self.map.contains_key(&key) && self.map.len() >= TRACKED {
            self.map.retain(|_, b| !b.is_full(now, per_sec, burst));
            if self.map.len() >= TRACKED {
                return false;
            }
        }
        let b = self.map.entry(key).or_insert_with(|| Bucket::full(burst, now));
        b.refill(now, per_sec, burst);
        b.tokens >= 1.0
    }

    pub(crate) fn take(&mut self, key: K) {
        if let Some(b) = self.map.get_mut(&key) {
            b.tokens -= 1.0;
        }
    }
}

/// What is dialled and how often.
#[derive(Debug)]
pub struct Rules {
    /// LAN mode: non-public targets too.
    lan: bool,
    /// Tests: loopback targets count toward the per-target limit, as a
    /// remote host's would.
    count_loopback: bool,
    /// Addresses (without `/p2p/`) the user gave or mDNS found.
    explicit: HashSet<Multiaddr>,
    total: Bucket,
    targets: Buckets<IpAddr>,
    peers: Buckets<PeerId>,
    refused: RefusedCounts,
}

/// `addr` without a trailing `/p2p/<id>`, and that id.
fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(p)) => (a, Some(p)),
        Some(other) => {
            a.push(other);
            (a, None)
        }
        None => (a, None),
    }
}

impl Rules {
    pub fn new(lan: bool, count_loopback: bool) -> Self {
        let now = Instant::now();
        Self {
            lan,
            count_loopback,
            explicit: HashSet::new(),
            total: Bucket::full(TOTAL_BURST, now),
            targets: Buckets::new(TARGET_EVERY, TARGET_BURST),
            peers: Buckets::new(PEER_EVERY, PEER_BURST),
            refused: RefusedCounts::default(),
        }
    }

    /// Allows dials to `addr` whatever its IP (a bootstrap address, or
    /// one mDNS found on an attached network); not rate-limited per target.
    pub fn allow(&mut self, addr: &Multiaddr) {
        if self.explicit.len() < EXPLICIT {
            self.explicit.insert(split_peer(addr).0);
        }
    }

    pub fn refused(&self) -> RefusedCounts {
        self.refused
    }

    /// Admits a dial to `addr` (counting it) or says why not.
    pub fn check(&mut self, addr: &Multiaddr, now: Instant) -> Result<(), Refused> {
        let r = self.decide(addr, now);
        match &r {
            Ok(()) => {}
            Err(Refused::NotPublic(_)) => self.refused.not_public += 1,
            Err(Refused::TargetRate(_)) => self.refused.target_rate += 1,
            Err(Refused::PeerRate(_)) => self.refused.peer_rate += 1,
            Err(Refused::TotalRate) => self.refused.total_rate += 1,
        }
        r
    }

    fn decide(&mut self, addr: &Multiaddr, now: Instant) -> Result<(), Refused> {
        let (bare, peer) = split_peer(addr);
        let explicit = self.explicit.contains(&bare);
        let target = super::ip_of(addr).map(|ip| super::network_of(ip, 32, 64));
        if let Some(ip) = target
            && !explicit
            && !self.lan
            && !nixswarm_protocol::ip::is_public(ip)
        {
            return Err(Refused::NotPublic(ip));
        }
        let limited_target = target.filter(|ip| !explicit && (self.count_loopback || !ip.is_loopback()));
        self.total.refill(now, TOTAL_PER_SEC, TOTAL_BURST);
        if self.total.tokens < 1.0 {
            return Err(Refused::TotalRate);
        }
        if let Some(ip) = limited_target
            && !self.targets.has(ip, now)
        {
            return Err(Refused::TargetRate(ip));
        }
        let limited_peer = peer.filter(|_| limited_target.is_some());
        if let Some(p) = limited_peer
            && !self.peers.has(p, now)
        {
            return Err(Refused::PeerRate(p));
        }
        self.total.tokens -= 1.0;
        if let Some(ip) = limited_target {
            self.targets.take(ip);
        }
        if let Some(p) = limited_peer {
            self.peers.take(p);
        }
        Ok(())
    }
}

/// The rules, shared between the transport and the task that owns the
/// swarm (which adds bootstrap and mDNS addresses and reads the counts).
#[derive(Debug, Clone)]
pub struct DialGuard(Arc<Mutex<Rules>>);

impl DialGuard {
    pub fn new(rules: Rules) -> Self {
        Self(Arc::new(Mutex::new(rules)))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Rules) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// `inner`, with every dial checked first.
    pub fn wrap(&self, inner: Boxed<(PeerId, StreamMuxerBox)>) -> Boxed<(PeerId, StreamMuxerBox)> {
        Guarded {
            inner,
            guard: self.clone(),
        }
        .boxed()
    }
}

/// A transport whose dials pass the guard first.
struct Guarded {
    inner: Boxed<(PeerId, StreamMuxerBox)>,
    guard: DialGuard,
}

impl Transport for Guarded {
    type Output = (PeerId, StreamMuxerBox);
    type Error = io::Error;
    type ListenerUpgrade = <Boxed<(PeerId, StreamMuxerBox)> as Transport>::ListenerUpgrade;
    type Dial = <Boxed<(PeerId, StreamMuxerBox)> as Transport>::Dial;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<io::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<io::Error>> {
        if let Err(refused) = self.guard.with(|r| r.check(&addr, Instant::now())) {
            tracing::debug!(%addr, %refused, "dial refused");
            return Err(TransportError::Other(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("dial refused: {refused}"),
            )));
        }
        self.inner.dial(addr, opts)
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str) -> Multiaddr {
        addr.parse().unwrap()
    }

    fn peer_addr(ip: &str, port: u16, peer: PeerId) -> Multiaddr {
        at(&format!("/ip4/{ip}/tcp/{port}/p2p/{peer}"))
    }

    #[test]
    fn non_public_targets_only_in_lan_mode_or_when_given() {
        let now = Instant::now();
        let mut r = Rules::new(false, false);
        for a in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.0.0.5/udp/2/quic-v1",
            "/ip6/fd00::1/tcp/3",
            "/ip4/0.1.2.3/tcp/4",
        ] {
            assert!(matches!(r.check(&at(a), now), Err(Refused::NotPublic(_))), "{a}");
        }
        assert_eq!(r.check(&at("/ip4/198.51.99.1/tcp/1"), now), Ok(()));
        // A bootstrap address the user gave: that address only.
        let p = PeerId::random();
        r.allow(&peer_addr("192.168.1.5", 4001, p));
        assert_eq!(r.check(&peer_addr("192.168.1.5", 4001, p), now), Ok(()));
        assert_eq!(r.check(&at("/ip4/192.168.1.5/tcp/4001"), now), Ok(()));
        assert!(r.check(&at("/ip4/192.168.1.5/tcp/22"), now).is_err());
        assert_eq!(r.refused().not_public, 5);
        let mut lan = Rules::new(true, false);
        assert_eq!(lan.check(&at("/ip4/10.0.0.5/tcp/1"), now), Ok(()));
    }

    #[test]
    fn one_target_gets_its_burst_then_its_rate() {
        let now = Instant::now();
        let mut r = Rules::new(false, false);
        let dial = |r: &mut Rules, port: u16, t| r.check(&peer_addr("198.51.99.7", port, PeerId::random()), t);
        for port in 0..TARGET_BURST as u16 {
            assert_eq!(dial(&mut r, port, now), Ok(()));
        }
        assert!(matches!(dial(&mut r, 999, now), Err(Refused::TargetRate(_))));
        // Another host is not held back by that one.
        assert_eq!(r.check(&at("/ip4/198.51.99.8/tcp/1"), now), Ok(()));
        assert_eq!(dial(&mut r, 999, now + TARGET_EVERY), Ok(()));
        assert!(dial(&mut r, 998, now + TARGET_EVERY).is_err());
        // An IPv6 /64 is one target.
        let mut v6 = Rules::new(false, false);
        for i in 0..TARGET_BURST as u16 {
            assert_eq!(v6.check(&at(&format!("/ip6/2a01:4f8::{i:x}/tcp/1")), now), Ok(()));
        }
        assert!(v6.check(&at("/ip6/2a01:4f8::ffff/tcp/1"), now).is_err());
        assert_eq!(v6.check(&at("/ip6/2a01:4f8:0:1::1/tcp/1"), now), Ok(()));
    }

    #[test]
    fn one_peer_gets_a_bounded_number_of_addresses() {
        let now = Instant::now();
        let mut r = Rules::new(false, false);
        let p = PeerId::random();
        let mut ok = 0;
        // Hundreds of candidates on as many hosts (a hole-punching message).
        for i in 0..300u32 {
            let ip = format!("198.51.{}.{}", i / 250, i % 250 + 1);
            if r.check(&peer_addr(&ip, 4001, p), now).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, PEER_BURST as usize);
        assert_eq!(r.refused().peer_rate, 300 - PEER_BURST as u64);
    }

    #[test]
    fn dials_in_all_are_bounded() {
        let now = Instant::now();
        let mut r = Rules::new(true, false);
        // Loopback in LAN mode: no per-target limit, the total still holds.
        let ok = (0..1000u16)
            .filter(|i| r.check(&at(&format!("/ip4/127.0.0.1/tcp/{i}")), now).is_ok())
            .count();
        assert_eq!(ok, TOTAL_BURST as usize);
        assert_eq!(r.check(&at("/ip4/127.0.0.1/tcp/1"), now), Err(Refused::TotalRate));
        assert_eq!(
            r.check(&at("/ip4/127.0.0.1/tcp/1"), now + Duration::from_secs(1)),
            Ok(())
        );
        // Tests count loopback as a host.
        let mut t = Rules::new(true, true);
        let ok = (0..100u16)
            .filter(|i| t.check(&at(&format!("/ip4/127.0.0.1/tcp/{i}")), now).is_ok())
            .count();
        assert_eq!(ok, TARGET_BURST as usize);
    }

    #[test]
    fn tracking_is_bounded() {
        let now = Instant::now();
        let mut b = Buckets::new(TARGET_EVERY, TARGET_BURST);
        for i in 0..TRACKED as u32 {
            assert!(b.has(i, now));
            b.take(i);
        }
        assert!(!b.has(u32::MAX, now), "a new key past the bound is refused");
        assert_eq!(b.map.len(), TRACKED);
        // Once the tracked ones have their burst back, they make room.
        assert!(b.has(u32::MAX, now + TARGET_EVERY));
        assert_eq!(b.map.len(), 1);
    }
}
