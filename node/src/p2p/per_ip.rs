//! Incoming connections per network: identities are free, addresses are
//! not. Without this, one host with ~86 fresh identities filled every
//! connection slot (3 per peer, 256 in all), the ones the node's own dials
//! need included. So at most [`MAX_PER_NETWORK`] incoming connections come
//! from one IPv4 address or one IPv6 /64; relayed connections (whose
//! address is the relay's) and, outside tests, loopback ones (a host that
//! is already this machine) are not counted. The slots kept for outgoing
//! connections are `behaviour::RESERVED_OUTGOING`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Incoming connections from one IPv4 address or IPv6 /64.
pub const MAX_PER_NETWORK: usize = 8;

/// The network an incoming connection comes from: its IPv4 address or
/// IPv6 /64 (`None`: relayed).
fn network(remote: &Multiaddr) -> Option<IpAddr> {
    if super::direct::is_relayed(remote) {
        return None;
    }
    super::ip_of(remote).map(|ip| super::network_of(ip, 32, 64))
}

/// Relay reservations (new or renewed) from one network before its rate
/// applies.
pub const RESERVATION_BURST: f64 = 8.0;
/// Then one this often. A reservation lasts an hour and its client renews
/// it about every 45 minutes, so one network holds a handful at once,
/// however many identities it makes.
pub const RESERVATION_EVERY: std::time::Duration = std::time::Duration::from_secs(450);

/// The relay service's limit of reservations per IPv4 address or IPv6
/// /64 (libp2p-relay's own per-IP limit counts IPv6 per /128, and a home
/// gets a /64 or more), for `relay::Config::reservation_rate_limiters`.
/// Loopback is exempt unless `count_loopback` (tests).
pub fn reservations_per_network(
    count_loopback: bool,
) -> impl FnMut(PeerId, &Multiaddr, std::time::Instant) -> bool + Send {
    let mut buckets = super::dial_guard::Buckets::new(RESERVATION_EVERY, RESERVATION_BURST);
    move |_, addr: &Multiaddr, now| {
        let Some(net) = network(addr) else {
            return true;
        };
        if net.is_loopback() && !count_loopback {
            return true;
        }
        let ok = buckets.has(net, now);
        if ok {
            buckets.take(net);
        }
        ok
    }
}

/// Relayed circuits from one network (IPv4 address, IPv6 /64) before its
/// rate applies (libp2p-relay's own per-IP limit counts IPv6 per /128).
pub const CIRCUIT_BURST: f64 = 8.0;
/// Then one this often.
pub const CIRCUIT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Circuits in all before the budget's rate applies.
pub const CIRCUITS_BURST: f64 = 16.0;
/// Then one this often, from anyone. A circuit carries at most
/// `RelayLimits::circuit_bytes` each way, so relayed bytes stay within
/// 2 x 128 KiB every 4 s (64 KiB/s) beyond the burst: the relay's budget,
/// apart from the upload limit (libp2p-relay copies circuit bytes itself).
pub const CIRCUITS_EVERY: std::time::Duration = std::time::Duration::from_secs(4);

/// The relay service's limits of new circuits, per source network and in
/// all, for `relay::Config::circuit_src_rate_limiters`. Loopback is exempt
/// from the per-network one unless `count_loopback` (tests).
pub fn circuits_per_network_and_in_all(
    count_loopback: bool,
) -> impl FnMut(PeerId, &Multiaddr, std::time::Instant) -> bool + Send {
    let mut per_network = super::dial_guard::Buckets::new(CIRCUIT_EVERY, CIRCUIT_BURST);
    let mut all = super::dial_guard::Buckets::new(CIRCUITS_EVERY, CIRCUITS_BURST);
    move |_, addr: &Multiaddr, now| {
        let net = network(addr).filter(|n| count_loopback || !n.is_loopback());
        if !all.has((), now) || net.is_some_and(|n| !per_network.has(n, now)) {
            return false;
        }
        all.take(());
        if let Some(n) = net {
            per_network.take(n);
        }
        true
    }
}

/// The limit, as a behaviour placed right after the connection limits.
#[derive(Debug, Default)]
pub struct PerNetwork {
    counts: HashMap<IpAddr, usize>,
    by_connection: HashMap<ConnectionId, IpAddr>,
    /// Count loopback connections too (tests, where every peer is on
    /// 127.0.0.1).
    count_loopback: bool,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_PER_NETWORK} incoming connections from {0} already")]
pub struct TooMany(IpAddr);

impl PerNetwork {
    pub fn new(count_loopback: bool) -> Self {
        Self {
            count_loopback,
            ..Self::default()
        }
    }

    /// Admits an incoming connection from `remote`, or says why not.
    fn admit(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), TooMany> {
        let Some(net) = network(remote) else {
            return Ok(());
        };
        if net.is_loopback() && !self.count_loopback {
            return Ok(());
        }
        let n = self.counts.entry(net).or_default();
        if *n >= MAX_PER_NETWORK {
            return Err(TooMany(net));
        }
        *n += 1;
        self.by_connection.insert(id, net);
        Ok(())
    }

    /// A connection admitted before went (closed, or denied later).
    fn gone(&mut self, id: ConnectionId) {
        if let Some(net) = self.by_connection.remove(&id)
            && let Some(n) = self.counts.get_mut(&net)
        {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&net);
            }
        }
    }
}

impl NetworkBehaviour for PerNetwork {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(id, remote).map_err(ConnectionDenied::new)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(c) => self.gone(c.connection_id),
            FromSwarm::ListenFailure(f) => self.gone(f.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_network_gets_a_few_connections_and_gives_them_back() {
        let mut p = PerNetwork::new(false);
        let ids: Vec<ConnectionId> = (0..MAX_PER_NETWORK + 1)
            .map(|_| ConnectionId::new_unchecked(rand_id()))
            .collect();
        for id in &ids[..MAX_PER_NETWORK] {
            p.admit(*id, &addr("/ip4/1.2.3.4/tcp/5000")).unwrap();
        }
        assert!(p.admit(ids[MAX_PER_NETWORK], &addr("/ip4/1.2.3.4/tcp/5001")).is_err());
        // One IPv6 /64 is one network.
        for i in 0..MAX_PER_NETWORK {
            p.admit(
                ConnectionId::new_unchecked(rand_id()),
                &addr(&format!("/ip6/2001:db8:1:2::{i}/tcp/1")),
            )
            .unwrap();
        }
        assert!(
            p.admit(
                ConnectionId::new_unchecked(rand_id()),
                &addr("/ip6/2001:db8:1:2:ffff::1/tcp/1")
            )
            .is_err()
        );
        assert!(
            p.admit(
                ConnectionId::new_unchecked(rand_id()),
                &addr("/ip6/2001:db8:1:3::1/tcp/1")
            )
            .is_ok()
        );
        // Others, relayed connections and (outside tests) loopback pass.
        assert!(
            p.admit(ConnectionId::new_unchecked(rand_id()), &addr("/ip4/1.2.3.5/tcp/5000"))
                .is_ok()
        );
        let circuit = "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWGyfMDKvKQbDSZgYLVawzM7CroAFy1TaPr3T8LHuRyjTU/p2p-circuit";
        assert!(p.admit(ConnectionId::new_unchecked(rand_id()), &addr(circuit)).is_ok());
        for _ in 0..20 {
            assert!(
                p.admit(ConnectionId::new_unchecked(rand_id()), &addr("/ip4/127.0.0.1/tcp/1"))
                    .is_ok()
            );
        }
        // A connection that goes frees its place.
        p.gone(ids[0]);
        assert!(p.admit(ids[MAX_PER_NETWORK], &addr("/ip4/1.2.3.4/tcp/5001")).is_ok());
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn relay_reservations_are_limited_per_network_with_ipv6_per_64() {
        let mut limit = reservations_per_network(false);
        let now = std::time::Instant::now();
        let mut from = |a: &str, t| limit(PeerId::random(), &addr(a), t);
        // Fresh identities and addresses across one /64.
        let ok = (0..20)
            .filter(|i| from(&format!("/ip6/2001:db8:1:2::{i:x}/tcp/1"), now))
            .count();
        assert_eq!(ok, RESERVATION_BURST as usize);
        assert!(
            from("/ip6/2001:db8:1:3::1/tcp/1", now),
            "another /64 is another network"
        );
        assert!(!from("/ip6/2001:db8:1:2::99/tcp/1", now));
        assert!(from("/ip6/2001:db8:1:2::99/tcp/1", now + RESERVATION_EVERY));
        // Loopback is this machine (outside tests).
        assert!((0..20).all(|_| from("/ip4/127.0.0.1/tcp/1", now)));
    }

    #[test]
    fn relayed_circuits_are_limited_per_network_and_in_all() {
        let mut limit = circuits_per_network_and_in_all(false);
        let now = std::time::Instant::now();
        let mut from = |a: &str, t| limit(PeerId::random(), &addr(a), t);
        let ok = (0..20)
            .filter(|i| from(&format!("/ip6/2001:db8:1:2::{i:x}/tcp/1"), now))
            .count();
        assert_eq!(ok, CIRCUIT_BURST as usize, "one /64");
        // Other networks share what is left of the budget in all.
        let ok = (0..40u8)
            .filter(|i| from(&format!("/ip4/81.2.69.{i}/tcp/1"), now))
            .count();
        assert_eq!(ok, (CIRCUITS_BURST - CIRCUIT_BURST) as usize);
        assert!(!from("/ip4/81.2.70.1/tcp/1", now));
        assert!(from("/ip4/81.2.70.1/tcp/1", now + CIRCUITS_EVERY));
        assert!(!from("/ip4/81.2.70.2/tcp/1", now + CIRCUITS_EVERY), "one per period");
    }
}
