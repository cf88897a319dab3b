//! Our AutoNAT v2 client: which of our addresses peers can dial.
//!
//! libp2p's client tests each candidate once, with one random server, and
//! takes a dial-back on any inbound connection as proof; its candidates
//! are whatever any peer says it observed. One lying server could then
//! confirm an address we do not have, for good. This client keeps the
//! wire protocol (it asks the same servers) and changes whom it believes:
//! - candidates come only from connections this node dialled (the actor
//!   hands in identify's observation with its connection, [`Client::observed`])
//!   and from UPnP ([`Client::candidate`]), global addresses only;
//! - a dial-back counts only on a direct inbound connection, from the
//!   server that was asked, with the nonce it was given;
//! - an address counts once servers in two networks agree, and is asked
//!   again on a timer; votes expire ([`votes`]); a server is asked only
//!   over a connection this node dialled (its network is where it was
//!   dialled), and its latest answer is its only vote.

mod handler;
#[cfg(feature = "test-hooks")]
pub mod liar;
mod unconfirmed;
pub mod votes;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, ExpiredListenAddr, FromSwarm, NewListenAddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};

pub use handler::Answer;
use handler::{Handler, Out, Probe};
pub use unconfirmed::Unconfirmed;
use votes::{Change, Votes};

use super::direct::is_relayed;

/// How often due probes go out (and votes expire).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// A probe's end, for the log and for the actor (an unreachable answer
/// means relays are worth keeping).
#[derive(Debug)]
pub struct Event {
    pub addr: Multiaddr,
    pub server: PeerId,
    pub result: Result<Answer, String>,
}

#[derive(Debug)]
struct Conn {
    peer: PeerId,
    /// The remote's network (/24, /48), for direct connections.
    net: Option<IpAddr>,
    dialled: bool,
    server: bool,
}

#[derive(Debug)]
struct Pending {
    addr: Multiaddr,
    peer: PeerId,
    conn: ConnectionId,
    net: IpAddr,
    dialled_back: bool,
}

/// The client behaviour.
#[derive(Debug)]
pub struct Client {
    votes: Votes,
    conns: HashMap<ConnectionId, Conn>,
    pending: HashMap<u64, Pending>,
    listen: Vec<Multiaddr>,
    events: VecDeque<ToSwarm<Event, Probe>>,
    /// Made at the first poll (inside the runtime).
    tick: Option<tokio::time::Interval>,
    /// Tests: loopback addresses count as global ones.
    count_loopback: bool,
}

impl Client {
    pub fn new(count_loopback: bool) -> Self {
        Self {
            votes: Votes::default(),
            conns: HashMap::new(),
            pending: HashMap::new(),
            listen: Vec::new(),
            events: VecDeque::new(),
            tick: None,
            count_loopback,
        }
    }

    fn global(&self, addr: &Multiaddr) -> bool {
        super::is_global(addr) || (self.count_loopback && super::ip_of(addr).is_some_and(|ip| ip.is_loopback()))
    }

    /// identify's `observed` address of us on `conn`: a candidate if this
    /// node dialled that connection (directly), translated to our listen
    /// port when the observed port is not one (a port the NAT kept would
    /// be).
    pub fn observed(&mut self, conn: ConnectionId, observed: &Multiaddr) {
        if !self.conns.get(&conn).is_some_and(|c| c.dialled && c.net.is_some()) || is_relayed(observed) {
            return;
        }
        for addr in translate(&self.listen, observed) {
            self.candidate(addr);
        }
    }

    /// A candidate from a source the node trusts to report, not to
    /// confirm (UPnP, whose router any LAN host can pretend to be).
    pub fn candidate(&mut self, addr: Multiaddr) {
        if self.global(&addr) && !self.votes.add(addr.clone(), Instant::now()) {
            tracing::debug!(%addr, "AutoNAT: too many candidates, one dropped");
        }
    }

    /// `addr` is no candidate any more.
    pub fn withdraw(&mut self, addr: &Multiaddr) {
        if let Some(change) = self.votes.remove(addr) {
            self.apply(change);
        }
    }

    fn apply(&mut self, change: Change) {
        self.events.push_back(match change {
            Change::Confirmed(a) => {
                tracing::info!(addr = %a, "reachable: servers in {} networks agree", votes::AGREE);
                ToSwarm::ExternalAddrConfirmed(a)
            }
            Change::Expired(a) => {
                tracing::info!(addr = %a, "no longer confirmed reachable");
                ToSwarm::ExternalAddrExpired(a)
            }
        });
    }

    /// Sends the probes that are due, each to a server in a network that
    /// has not answered for that candidate lately.
    fn send_probes(&mut self, now: Instant) {
        for change in self.votes.expire(now) {
            self.apply(change);
        }
        for (addr, avoid) in self.votes.due(now) {
            let busy: Vec<ConnectionId> = self.pending.values().map(|p| p.conn).collect();
            let servers: Vec<(ConnectionId, PeerId, IpAddr)> = self
                .conns
                .iter()
                .filter(|(id, c)| c.server && !busy.contains(id))
                .filter_map(|(id, c)| Some((*id, c.peer, c.net?)))
                .filter(|(_, _, net)| !avoid.contains(net))
                .collect();
            if servers.is_empty() {
                self.votes.no_answer(&addr, now, PROBE_EVERY);
                continue;
            }
            let (conn, peer, net) = servers[rand::random_range(0..servers.len())];
            let nonce = rand::random::<u64>();
            tracing::debug!(%addr, server = %peer, "AutoNAT: asking for a dial-back");
            self.pending.insert(
                nonce,
                Pending {
                    addr: addr.clone(),
                    peer,
                    conn,
                    net,
                    dialled_back: false,
                },
            );
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(conn),
                event: Probe { nonce, addr },
            });
        }
    }

    fn outcome(&mut self, nonce: u64, result: Result<Answer, String>) {
        let Some(p) = self.pending.remove(&nonce) else {
            return;
        };
        let now = Instant::now();
        let result = match result {
            Ok(Answer::Reachable) if !p.dialled_back => Err("said reachable without dialling back".to_owned()),
            other => other,
        };
        match &result {
            Ok(answer) => {
                let vote = votes::Vote {
                    net: p.net,
                    server: p.peer,
                    reachable: *answer == Answer::Reachable,
                };
                if let Some(change) = self.votes.vote(&p.addr, vote, now) {
                    self.apply(change);
                }
            }
            Err(_) => self.votes.no_answer(&p.addr, now, votes::NO_ANSWER_WAIT),
        }
        self.events.push_back(ToSwarm::GenerateEvent(Event {
            addr: p.addr,
            server: p.peer,
            result,
        }));
    }
}

/// `observed` as a candidate: as it is if its port is one we listen on,
/// else with the port of each listen address of the same transport.
fn translate(listen: &[Multiaddr], observed: &Multiaddr) -> Vec<Multiaddr> {
    let observed_tail = tail(observed);
    if listen.iter().any(|l| tail(l) == observed_tail) {
        return vec![observed.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()];
    }
    let Some(ip) = observed.iter().next() else {
        return Vec::new();
    };
    let mut out: Vec<Multiaddr> = listen
        .iter()
        .filter(|l| !is_relayed(l) && shape(&tail(l)) == shape(&observed_tail))
        .map(|l| std::iter::once(ip.clone()).chain(tail(l)).collect())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `a` after its IP, without `/p2p/<id>`.
fn tail(a: &Multiaddr) -> Vec<Protocol<'_>> {
    a.iter().skip(1).filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

/// Which protocols `t` has, ports left out.
fn shape(t: &[Protocol<'_>]) -> Vec<std::mem::Discriminant<Protocol<'static>>> {
    t.iter().map(|p| std::mem::discriminant(&p.clone().acquire())).collect()
}

/// The network of a direct address (`None` through a relay).
fn network(addr: &Multiaddr) -> Option<IpAddr> {
    if is_relayed(addr) {
        return None;
    }
    super::diversity_network(addr)
}

impl NetworkBehaviour for Client {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let net = network(remote).filter(|_| !is_relayed(local));
        self.conns.insert(
            id,
            Conn {
                peer,
                net,
                dialled: false,
                server: false,
            },
        );
        Ok(Handler::new(net.is_some()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.conns.insert(
            id,
            Conn {
                peer,
                net: network(addr),
                dialled: role == Endpoint::Dialer,
                server: false,
            },
        );
        Ok(Handler::new(false))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.conns.remove(&connection_id);
                let gone: Vec<u64> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.conn == connection_id)
                    .map(|(n, _)| *n)
                    .collect();
                for nonce in gone {
                    self.outcome(nonce, Err("the server's connection closed".into()));
                }
            }
            FromSwarm::NewListenAddr(NewListenAddr { addr, .. }) if !is_relayed(addr) => {
                self.listen.push(addr.clone());
            }
            FromSwarm::ExpiredListenAddr(ExpiredListenAddr { addr, .. }) => {
                self.listen.retain(|a| a != addr);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {
            Out::Server => {
                // Asked only over connections this node dialled: the
                // server's network is the one it was dialled in.
                if let Some(c) = self.conns.get_mut(&id) {
                    c.server = c.dialled && c.net.is_some();
                }
            }
            Out::DialBack { nonce, ours } => {
                // Only the server asked, with the nonce it was given.
                let mine = self.pending.get_mut(&nonce).filter(|p| p.peer == peer);
                let ok = mine.is_some();
                if let Some(p) = mine {
                    p.dialled_back = true;
                }
                let _ = ours.send(ok);
            }
            Out::Outcome { nonce, result } => self.outcome(nonce, result),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        let tick = self.tick.get_or_insert_with(|| {
            let mut t = tokio::time::interval(PROBE_EVERY);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        if tick.poll_tick(cx).is_ready() {
            self.send_probes(Instant::now());
        }
        match self.events.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
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
    fn an_observed_listen_port_is_kept_and_another_is_translated_per_transport() {
        let listen = [a("/ip4/0.0.0.0/tcp/4001"), a("/ip4/0.0.0.0/udp/4001/quic-v1")];
        assert_eq!(
            translate(&listen, &a("/ip4/203.0.113.5/tcp/4001")),
            [a("/ip4/203.0.113.5/tcp/4001")]
        );
        assert_eq!(
            translate(&listen, &a("/ip4/203.0.113.5/tcp/55555")),
            [a("/ip4/203.0.113.5/tcp/4001")]
        );
        assert_eq!(
            translate(&listen, &a("/ip4/203.0.113.5/udp/5/quic-v1")),
            [a("/ip4/203.0.113.5/udp/4001/quic-v1")]
        );
        assert!(translate(&listen, &a("/ip4/203.0.113.5/udp/5/webrtc-direct")).is_empty());
    }

    #[test]
    fn only_dialled_direct_connections_and_global_addresses_give_candidates() {
        let mut c = Client::new(false);
        c.listen.push(a("/ip4/0.0.0.0/tcp/4001"));
        let peer = PeerId::random();
        let (dialled, inbound) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        for (id, d) in [(dialled, true), (inbound, false)] {
            c.conns.insert(
                id,
                Conn {
                    peer,
                    net: Some(IpAddr::from([198, 51, 100, 0])),
                    dialled: d,
                    server: true,
                },
            );
        }
        c.observed(inbound, &a("/ip4/81.2.69.160/tcp/4001"));
        c.observed(dialled, &a("/ip4/10.0.0.5/tcp/4001"));
        assert!(c.votes.due(Instant::now()).is_empty(), "neither is a candidate");
        c.observed(dialled, &a("/ip4/81.2.69.160/tcp/4001"));
        let due = c.votes.due(Instant::now());
        assert_eq!(due.len(), 1);
    }
}
