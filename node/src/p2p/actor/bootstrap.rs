//! Joining through the bootstrap addresses the user gave: dialled at
//! start, and again with backoff whenever the node has no peer at all (a
//! bootstrap node that restarted is found again in seconds, not at the
//! next Kademlia walk). An address may lack `/p2p/<id>` (the id is learnt
//! on connect) and may name a host (`/dns/...`, resolved here: peers'
//! addresses are never resolved). Each failure is logged with its cause.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// The first wait after a failure; it doubles up to [`MAX_WAIT`].
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two attempts at one address.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Entry {
    addr: Multiaddr,
    failures: u32,
    next: Instant,
    /// Being dialled (or resolved) now.
    busy: bool,
}

/// The bootstrap addresses and when each is dialled next.
#[derive(Debug, Default)]
pub struct Bootstrap {
    entries: Vec<Entry>,
}

impl Bootstrap {
    pub fn new(addrs: Vec<Multiaddr>, now: Instant) -> Self {
        Self {
            entries: addrs
                .into_iter()
                .map(|addr| Entry {
                    addr,
                    failures: 0,
                    next: now,
                    busy: false,
                })
                .collect(),
        }
    }

    /// The addresses to dial now: at start, and while the node has no
    /// peer, each whose wait is over. Each is busy until
    /// [`Bootstrap::failed`] or [`Bootstrap::joined`].
    pub fn due(&mut self, now: Instant, has_peers: bool) -> Vec<Multiaddr> {
        if has_peers {
            return Vec::new();
        }
        self.entries
            .iter_mut()
            .filter(|e| !e.busy && now >= e.next)
            .map(|e| {
                e.busy = true;
                e.addr.clone()
            })
            .collect()
    }

    /// Dialling `addr` failed: it waits, twice as long as last time.
    /// Gives back the wait.
    pub fn failed(&mut self, addr: &Multiaddr, now: Instant) -> Option<Duration> {
        let e = self.entries.iter_mut().find(|e| e.addr == *addr)?;
        let wait = FIRST_WAIT.saturating_mul(1 << e.failures.min(16)).min(MAX_WAIT);
        e.failures += 1;
        e.busy = false;
        e.next = now + wait;
        Some(wait)
    }

    /// `addr` connected: should the node lose every peer later, it is
    /// dialled again at once.
    pub fn joined(&mut self, addr: &Multiaddr, now: Instant) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.addr == *addr) {
            e.failures = 0;
            e.busy = false;
            e.next = now;
        }
    }
}

/// The host and port of a `/dns`, `/dns4` or `/dns6` TCP or UDP address,
/// and what follows them (`/quic-v1`, `/p2p/<id>`).
pub fn named(addr: &Multiaddr) -> Option<(String, u16, Vec<Protocol<'static>>)> {
    let mut it = addr.iter();
    let host = match it.next()? {
        Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => h.to_string(),
        _ => return None,
    };
    let (port, transport) = match it.next()? {
        Protocol::Tcp(p) => (p, Protocol::Tcp(p)),
        Protocol::Udp(p) => (p, Protocol::Udp(p)),
        _ => return None,
    };
    let rest = std::iter::once(transport).chain(it).map(|p| p.acquire()).collect();
    Some((host, port, rest))
}

/// Resolves a named address into IP ones (the system resolver, hosts file
/// included), keeping its family if it said one.
pub async fn resolve(addr: Multiaddr) -> Result<Vec<Multiaddr>, String> {
    let (host, port, rest) = named(&addr).ok_or("not a /dns address with a port")?;
    let want = match addr.iter().next() {
        Some(Protocol::Dns4(_)) => Some(true),
        Some(Protocol::Dns6(_)) => Some(false),
        _ => None,
    };
    let found = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let out: Vec<Multiaddr> = found
        .filter(|sa| want.is_none_or(|v4| sa.is_ipv4() == v4))
        .map(|sa| {
            let ip = match sa.ip() {
                std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
                std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
            };
            std::iter::once(ip).chain(rest.iter().cloned()).collect()
        })
        .collect();
    if out.is_empty() {
        return Err(format!("{host} has no address of that family"));
    }
    Ok(out)
}

/// A named bootstrap address and what it resolved to.
pub type Resolved = (Multiaddr, Result<Vec<Multiaddr>, String>);

impl super::Actor {
    /// Dials the bootstrap addresses that are due (at start, and while the
    /// node has no peer); named ones are resolved first.
    pub(super) fn dial_bootstrap(&mut self) {
        let has_peers = self.swarm.connected_peers().next().is_some();
        for given in self.boot.due(Instant::now(), has_peers) {
            if named(&given).is_some() {
                let tx = self.resolved.0.clone();
                tokio::spawn(async move {
                    let found = resolve(given.clone()).await;
                    let _ = tx.send((given, found)).await;
                });
            } else {
                self.dial_boot(&given, given.clone());
            }
        }
    }

    pub(super) fn on_resolved(&mut self, given: Multiaddr, found: Result<Vec<Multiaddr>, String>) {
        match found {
            Ok(addrs) => {
                for addr in addrs {
                    self.dial_boot(&given, addr);
                }
            }
            Err(e) => {
                let wait = self.boot.failed(&given, Instant::now());
                tracing::warn!(addr = %given, error = %e, ?wait, "cannot resolve the bootstrap address");
            }
        }
    }

    /// Dials `addr` (for bootstrap address `given`): by peer id when it
    /// names one, else learning the id on connect.
    fn dial_boot(&mut self, given: &Multiaddr, addr: Multiaddr) {
        use libp2p::swarm::dial_opts::DialOpts;
        let peer = addr.iter().find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        });
        let opts = match peer {
            Some(id) => DialOpts::peer_id(id).addresses(vec![addr.clone()]).build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        self.allow_dial(&addr);
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.boot_dials.insert(id, given.clone());
            }
            Err(e) => {
                let wait = self.boot.failed(given, Instant::now());
                tracing::warn!(%addr, error = %e, ?wait, "cannot dial the bootstrap peer");
            }
        }
    }

    /// Follows the dials of bootstrap addresses: joined, or why not.
    pub(super) fn on_bootstrap_event(&mut self, ev: &libp2p::swarm::SwarmEvent<super::BehaviourEvent>) {
        use libp2p::swarm::SwarmEvent;
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id, connection_id, ..
            } => {
                if let Some(given) = self.boot_dials.remove(connection_id) {
                    tracing::info!(addr = %given, peer = %peer_id, "joined through the bootstrap peer");
                    self.boot.joined(&given, Instant::now());
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id, error, ..
            } => {
                if let Some(given) = self.boot_dials.remove(connection_id) {
                    let wait = self.boot.failed(&given, Instant::now());
                    tracing::warn!(addr = %given, error = %super::super::error_chain(error), ?wait, "cannot reach the bootstrap peer");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn dialled_at_start_then_only_without_peers_with_doubling_waits() {
        let t = Instant::now();
        let boot = a("/ip4/198.51.100.1/tcp/1");
        let mut b = Bootstrap::new(vec![boot.clone()], t);
        assert_eq!(b.due(t, false), vec![boot.clone()]);
        assert!(b.due(t, false).is_empty(), "busy");
        assert_eq!(b.failed(&boot, t), Some(FIRST_WAIT));
        assert!(b.due(t, false).is_empty());
        assert_eq!(b.due(t + FIRST_WAIT, false).len(), 1);
        assert_eq!(b.failed(&boot, t), Some(FIRST_WAIT * 2));
        for _ in 0..10 {
            b.due(t + Duration::from_secs(3600), false);
            b.failed(&boot, t);
        }
        assert_eq!(b.failed(&boot, t), Some(MAX_WAIT));
        // With peers, nothing is dialled; joined resets the wait.
        assert!(b.due(t + Duration::from_secs(3600), true).is_empty());
        b.joined(&boot, t);
        assert_eq!(b.due(t, false).len(), 1);
        assert_eq!(b.failed(&boot, t), Some(FIRST_WAIT));
    }

    #[test]
    fn named_addresses_keep_what_follows_the_host() {
        let (host, port, rest) = named(&a("/dns4/localhost/udp/5/quic-v1")).unwrap();
        assert_eq!((host.as_str(), port), ("localhost", 5));
        assert_eq!(rest, vec![Protocol::Udp(5), Protocol::QuicV1]);
        assert!(named(&a("/ip4/127.0.0.1/tcp/5")).is_none());
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let got = resolve(a("/dns4/localhost/tcp/7")).await.unwrap();
        assert!(got.contains(&a("/ip4/127.0.0.1/tcp/7")), "{got:?}");
    }
}
