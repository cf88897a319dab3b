//! The one task that owns the libp2p `Swarm`. Everything else talks to it
//! through [`NodeHandle`] over a bounded command channel; each command that
//! needs an answer carries a oneshot. Pending queries and requests wait in
//! maps keyed by their ids. Requests to a peer with no direct connection
//! wait in [`Links`] (`requests.rs`); reachability, relay reservations
//! ([`Relays`]) and hole punching are handled in `reach.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};
use nixswarm_protocol::wire::{Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod admission;
mod bootstrap;
pub use admission::PER_BUCKET_NETWORK;
mod reach;
mod requests;

use super::behaviour::{Behaviour, BehaviourEvent};

/// The request-response handler's error for a request that found every
/// stream of its connection in use (`max_streams`; libp2p-request-response
/// 0.30, `handler.rs`).
const STREAMS_FULL: &str = "max sub-streams reached";
use super::known::{KnownAddrs, Source};
use super::links::Links;
use super::relays::Relays;
use super::{NodeStats, NodeStatus, ProviderInfo};

/// How long a request waits for a direct connection to its peer (a dial,
/// or hole punching through a relayed connection) before it fails and the
/// fetcher moves on.
pub const DIRECT_WAIT: Duration = Duration::from_secs(5);
/// A node connected this long with no direct address confirmed counts as
/// behind NAT. AutoNAT v2 reports a failed dial-back, but a router that
/// drops the dial-back's packets makes the probe time out instead, which
/// it does not report; a success arrives within a probe round (5 s).
pub const PRIVATE_AFTER: Duration = Duration::from_secs(15);
/// After a peer's requests gave up on a direct connection, new ones fail at
/// once for this long (unless a direct connection comes up meanwhile).
pub const OUT_OF_REACH: Duration = Duration::from_secs(60);
/// Providers a lookup dials as it finds them (the rest are dialled when
/// a transfer asks for them, with what the routing table knows).
pub const DIALS_PER_LOOKUP: usize = 4;
/// The relay service's protocol: a peer that speaks it can be reserved on.
const RELAY_HOP: &str = "/libp2p/circuit/relay/0.2.0/hop";

type Reply = oneshot::Sender<Result<Response, String>>;

/// A request from another node, for the server task.
#[derive(Debug)]
pub struct Inbound {
    pub peer: PeerId,
    pub id: InboundRequestId,
    pub request: Request,
    pub channel: ResponseChannel<Response>,
}

/// What callers can ask of the swarm task.
#[derive(Debug)]
pub enum Command {
    /// Announce a key; `done` fires when the provide query ends.
    Provide { key: RecordKey, done: oneshot::Sender<()> },
    /// Stop announcing a key.
    Withdraw { key: RecordKey },
    /// Stream the providers of a key as they are found; closed when the lookup ends.
    FindProviders {
        key: RecordKey,
        found: mpsc::Sender<PeerId>,
    },
    /// Send a transfer request.
    Request {
        peer: PeerId,
        request: Request,
        reply: Reply,
    },
    /// Answer an inbound request; `written` fires once the answer has
    /// been written to the peer, or could not be.
    Respond {
        channel: ResponseChannel<Response>,
        response: Response,
        written: Option<(InboundRequestId, oneshot::Sender<()>)>,
    },
    /// Dial an address (bootstrap, or one a program chose): allowed by
    /// the dial guard whatever its IP.
    Dial { addr: Multiaddr },
    /// Connected peers.
    Peers { reply: oneshot::Sender<Vec<PeerId>> },
    /// The connected peers worth asking which paths they hold: those that
    /// served verified chunks, those in the routing table, those this
    /// node dialled (proven ones first).
    AskablePeers { reply: oneshot::Sender<Vec<PeerId>> },
    /// Status for `nixswarm status`.
    Status { reply: oneshot::Sender<NodeStatus> },
    /// The peers in the Kademlia routing table.
    RoutingTable { reply: oneshot::Sender<Vec<PeerId>> },
    /// The providers this node's own record store lists for a key (one
    /// answer, as a DHT query would get it).
    LocalProviders {
        key: RecordKey,
        reply: oneshot::Sender<Vec<ProviderInfo>>,
    },
}

pub(super) struct Actor {
    pub swarm: Swarm<Behaviour>,
    pub commands: mpsc::Receiver<Command>,
    pub inbound: mpsc::Sender<Inbound>,
    pub stats: Arc<NodeStats>,
    pub cancel: CancellationToken,
    /// The bootstrap addresses and their redials.
    boot: bootstrap::Bootstrap,
    /// Dials of bootstrap addresses, to the address the user gave.
    boot_dials: HashMap<ConnectionId, Multiaddr>,
    /// Named bootstrap addresses resolved (by tasks of their own).
    resolved: (mpsc::Sender<bootstrap::Resolved>, mpsc::Receiver<bootstrap::Resolved>),
    provides: HashMap<QueryId, oneshot::Sender<()>>,
    finds: HashMap<QueryId, (mpsc::Sender<PeerId>, HashSet<PeerId>)>,
    requests: HashMap<OutboundRequestId, Reply>,
    /// The addresses kept for each peer (and given to Kademlia).
    pub known: KnownAddrs,
    /// The IP addresses advertised when the records were last made.
    advertised_ips: std::collections::BTreeSet<std::net::IpAddr>,
    /// Some address was advertised once (later changes are debounced).
    addressed_once: bool,
    /// Answers being written, and who waits for each to be.
    writing: HashMap<InboundRequestId, oneshot::Sender<()>>,
    /// AutoNAT found an address candidate undialable.
    unreachable: bool,
    /// Loopback and private listen addresses count as external too.
    pub announce_private: bool,
    /// Kademlia mode follows reachability (`DhtMode::Auto`).
    pub dht_auto: bool,
    /// Contributing: reserve relay slots when not reachable directly.
    pub contributing: bool,
    /// Connections by kind; requests waiting for a direct one.
    links: Links<(Request, Reply)>,
    relays: Relays,
    /// Where we dialled each direct outbound connection, and whom.
    dialed: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    /// When each peer that connected to us was last dialled back.
    dial_backs: HashMap<PeerId, Instant>,
    /// Hole punches to try again.
    punches: super::punch::Punches,
    /// Tests: loopback addresses count as a host's network.
    pub count_loopback: bool,
    /// When the first connection came up (AutoNAT servers to ask).
    first_connected: Option<Instant>,
    /// Dials through relays tried again, by peer: since when, how often,
    /// and the addresses of the one due (empty: none due).
    relay_redials: HashMap<PeerId, (Instant, u32, Vec<Multiaddr>)>,
    /// The IP addresses of each peer's direct connections.
    direct_ips: HashMap<PeerId, Vec<(ConnectionId, std::net::IpAddr)>>,
}

impl Actor {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        inbound: mpsc::Sender<Inbound>,
        stats: Arc<NodeStats>,
        cancel: CancellationToken,
        bootstrap: Vec<Multiaddr>,
    ) -> Self {
        Self {
            swarm,
            commands,
            inbound,
            stats,
            cancel,
            boot: bootstrap::Bootstrap::new(bootstrap, Instant::now()),
            boot_dials: HashMap::new(),
            resolved: mpsc::channel(16),
            provides: HashMap::new(),
            finds: HashMap::new(),
            requests: HashMap::new(),
            known: KnownAddrs::new(false),
            advertised_ips: std::collections::BTreeSet::new(),
            addressed_once: false,
            writing: HashMap::new(),
            unreachable: false,
            announce_private: false,
            dht_auto: false,
            contributing: false,
            links: Links::default(),
            relays: Relays::default(),
            dialed: HashMap::new(),
            dial_backs: HashMap::new(),
            punches: super::punch::Punches::default(),
            count_loopback: false,
            first_connected: None,
            direct_ips: HashMap::new(),
            relay_redials: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self) {
        self.dial_bootstrap();
        let mut bootstrap_tick = tokio::time::interval(std::time::Duration::from_secs(300));
        // Expired provider records go a slice of keys at a time.
        let mut sweep_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        self.update_mode();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                Some((given, found)) = self.resolved.1.recv() => self.on_resolved(given, found),
                _ = bootstrap_tick.tick() => {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                _ = sweep_tick.tick() => {
                    self.swarm.behaviour_mut().kad.store_mut().sweep();
                    // Waiters that gave up (an event that never came).
                    self.writing.retain(|_, tx| !tx.is_closed());
                    self.expire_parked();
                    self.redial_due();
                    self.dial_bootstrap();
                    self.punch_again();
                    self.reach_tick();
                }
            }
        }
        tracing::debug!("swarm task stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Command::Provide { key, done } => match b.kad.start_providing(key) {
                Ok(id) => {
                    self.provides.insert(id, done);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a provided key");
                    let _ = done.send(());
                }
            },
            Command::Withdraw { key } => b.kad.stop_providing(&key),
            Command::FindProviders { key, found } => {
                let id = b.kad.get_providers(key);
                self.finds.insert(id, (found, HashSet::new()));
            }
            Command::Request { peer, request, reply } => self.request(peer, request, reply),
            Command::Respond {
                channel,
                response,
                written,
            } => {
                if let Response::Chunks { chunks } | Response::PathInline { chunks, .. } = &response {
                    let n: usize = chunks.iter().map(|c| c.data.len()).sum();
                    self.stats.bytes_served.fetch_add(n as u64, Ordering::Relaxed);
                }
                // If the stream is gone, `written` drops here: its waiter
                // wakes at once.
                if b.transfer.inner.send_response(channel, response).is_ok()
                    && let Some((id, tx)) = written
                {
                    self.writing.insert(id, tx);
                }
            }
            Command::Dial { addr } => {
                // Asked for by name (bootstrap, or a program's own choice):
                // dialled whatever the address.
                self.allow_dial(&addr);
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "cannot dial");
                }
            }
            Command::LocalProviders { key, reply } => {
                use libp2p::kad::store::RecordStore as _;
                let found = b.kad.store_mut().providers(&key);
                let _ = reply.send(
                    found
                        .into_iter()
                        .map(|r| ProviderInfo {
                            peer: r.provider,
                            addrs: r.addresses,
                        })
                        .collect(),
                );
            }
            Command::RoutingTable { reply } => {
                let peers = b
                    .kad
                    .kbuckets()
                    .flat_map(|bucket| bucket.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let _ = reply.send(peers);
            }
            Command::AskablePeers { reply } => {
                let _ = reply.send(self.askable_peers());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Status { reply } => {
                let reach = self.reach();
                let status = NodeStatus {
                    peer_id: self.swarm.local_peer_id().to_string(),
                    listen_addrs: self.swarm.listeners().map(ToString::to_string).collect(),
                    peers: self.swarm.connected_peers().count(),
                    connections: self.swarm.network_info().connection_counters().num_established(),
                    reachability: reach.state.into(),
                    external_addrs: reach.external_addrs,
                    relays: reach.relays,
                    dht_server: reach.dht_server,
                    provided_keys: self.swarm.behaviour_mut().kad.store_mut().provided_count(),
                    provider_records: self.swarm.behaviour_mut().kad.store_mut().provider_records(),
                    routing_addresses: self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .kbuckets()
                        .map(|b| b.iter().map(|e| e.node.value.len()).sum::<usize>())
                        .sum(),
                    records_refused: {
                        let r = self.swarm.behaviour_mut().kad.store_mut().refused();
                        r.malformed + r.over_limit + r.values
                    },
                    dials_refused: self.stats.dials_refused().total(),
                    upload: self.stats.upload.get().map(|l| l.throttle()).unwrap_or_default(),
                    not_admitted: self.stats.not_admitted.load(Ordering::Relaxed),
                    bytes_served: self.stats.bytes_served.load(Ordering::Relaxed),
                    bytes_fetched: self.stats.bytes_fetched.load(Ordering::Relaxed),
                    bytes_fetched_duplicate: self.stats.bytes_fetched_duplicate.load(Ordering::Relaxed),
                    bytes_fetched_wire: self.stats.bytes_fetched_wire.load(Ordering::Relaxed),
                    bytes_fetched_inline: self.stats.bytes_fetched_inline.load(Ordering::Relaxed),
                };
                let _ = reply.send(status);
            }
        }
    }

    /// Keeps what is worth keeping of `addrs` for `peer` (see
    /// [`KnownAddrs`]) and, for a peer in the routing table, tells
    /// Kademlia what changed: it never holds more of a peer's addresses
    /// than the book does (peers enter the table in `admission.rs`).
    fn learn(&mut self, peer: PeerId, source: Source, addrs: impl IntoIterator<Item = Multiaddr>) {
        let swarm = &self.swarm;
        let change = self
            .known
            .learn(peer, source, addrs, Instant::now(), |p| swarm.is_connected(p));
        if change == super::known::Change::default() || !self.in_table(&peer) {
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        // Added first: removing a peer's last address drops it from the table.
        for a in change.added {
            kad.add_address(&peer, a);
        }
        for a in &change.removed {
            kad.remove_address(&peer, a);
        }
    }

    /// Lets the dial guard dial `addr` whatever its IP (the user or mDNS
    /// named it).
    fn allow_dial(&self, addr: &Multiaddr) {
        if let Some(g) = self.stats.dials.get() {
            g.with(|r| r.allow(addr));
        }
    }

    /// True if `addr` is in the IPv4 /24 or IPv6 /64 of one of this
    /// node's listen addresses (loopback excluded).
    fn on_attached_network(&self, addr: &Multiaddr) -> bool {
        let Some(ip) = super::ip_of(addr).filter(|ip| !ip.is_loopback()) else {
            return false;
        };
        let net = super::network_of(ip, 24, 64);
        self.swarm
            .listeners()
            .filter_map(super::ip_of)
            .any(|own| super::network_of(own, 24, 64) == net)
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.on_bootstrap_event(&ev);
        if matches!(
            ev,
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. }
        ) {
            self.publish_counts();
        }
        let Some(ev) = self.on_reach_event(ev) else {
            return;
        };
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                self.first_connected.get_or_insert_with(Instant::now);
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed, "connected");
                for (request, reply) in self.links.up(peer_id, connection_id, relayed) {
                    self.send_request(peer_id, request, reply);
                }
                // The circuit costs the relay; the direct connection serves.
                for c in self.links.redundant_relayed(&peer_id) {
                    self.swarm.close_connection(c);
                }
                if !relayed {
                    self.punches.direct(&peer_id);
                } else if endpoint.is_dialer() {
                    self.punches
                        .relayed(peer_id, endpoint.get_remote_address().clone(), Instant::now());
                }
                if !relayed && let Some(ip) = super::ip_of(endpoint.get_remote_address()) {
                    self.direct_ips.entry(peer_id).or_default().push((connection_id, ip));
                }
                if endpoint.is_dialer() && !relayed {
                    let addr = endpoint.get_remote_address().clone();
                    self.dialed.insert(connection_id, (peer_id, addr.clone()));
                    self.learn(peer_id, Source::Dialed, [addr]);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.links.down(&peer_id, connection_id);
                self.dialed.remove(&connection_id);
                if let Some(ips) = self.direct_ips.get_mut(&peer_id) {
                    ips.retain(|(c, _)| *c != connection_id);
                    if ips.is_empty() {
                        self.direct_ips.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.punches.gone(&peer_id);
                    self.relays.gone(&peer_id);
                    self.stats.rtts.forget(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if !self.links.connected(&peer) && !self.redial_through_relay(peer, &error) => {
                self.fail_parked(&peer, &format!("cannot connect: {error}"));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            })) => {
                // What the peer saw us connect from: an address candidate
                // if we dialled it.
                self.swarm
                    .behaviour_mut()
                    .autonat
                    .observed(connection_id, &info.observed_addr);
                // A DHT server that connected to us enters the routing
                // table once a dial back at what it claims works.
                if info.protocols.contains(&super::behaviour::KAD_PROTOCOL) {
                    let dialled = self.dialled(&peer_id);
                    if !dialled {
                        self.dial_back(peer_id, connection_id, &info.listen_addrs);
                    }
                    self.learn(peer_id, Source::Claimed, info.listen_addrs);
                    if dialled {
                        self.admit(peer_id);
                    }
                }
                if info.protocols.iter().any(|p| p.as_ref() == RELAY_HOP)
                    && let Some((_, addr)) = self.dialed.get(&connection_id)
                    && (self.announce_private || super::is_global(addr))
                {
                    self.relays.candidate(peer_id, addr.clone());
                    self.ensure_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    // Any host on the LAN can answer mDNS with any address:
                    // only one on a network this node listens on is taken
                    // (and then dialled, though not public).
                    if !self.announce_private && !self.on_attached_network(&addr) {
                        tracing::debug!(%peer, %addr, "mDNS address not on an attached network; ignored");
                        continue;
                    }
                    self.allow_dial(&addr);
                    self.learn(peer, Source::Lan, [addr]);
                    // Dialled, it enters the routing table (`RoutablePeer`).
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(
                            DialOpts::peer_id(peer)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build(),
                        );
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutablePeer { peer, address })) => {
                // Dialled, and it confirmed the DHT protocol.
                self.learn(peer, Source::Dialed, [address]);
                self.admit(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { is_new_peer: true, .. })) => {
                // The first entry in the routing table: what was announced
                // while it was empty reached nobody.
                let entries: usize = self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum();
                if entries == 1 {
                    self.stats.joined.notify_one();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(mut record),
                    },
            })) => {
                use libp2p::kad::store::RecordStore as _;
                let from: Vec<_> = self
                    .direct_ips
                    .get(&record.provider)
                    .map(|v| v.iter().map(|(_, ip)| *ip).collect())
                    .unwrap_or_default();
                record.addresses = super::records::addresses_seen_from(&record.addresses, &from);
                // The store counts what it refuses; nothing to tell the peer.
                let _ = self.swarm.behaviour_mut().kad.store_mut().add_provider(record);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord {
                    record: Some(record), ..
                },
            })) => {
                use libp2p::kad::store::RecordStore as _;
                // Refused and counted (nixswarm uses no value records).
                let _ = self.swarm.behaviour_mut().kad.store_mut().put(record);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => {
                self.on_query(id, result, step.last);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Transfer(ev)) => self.on_transfer(ev),
            // Transfers use direct connections: their round trips size
            // the requests in flight.
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            })) if self.links.is_direct(&peer, connection) => self.stats.rtts.set(peer, rtt),
            _ => {}
        }
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::StartProviding(_) => {
                if let Some(done) = self.provides.remove(&id) {
                    let _ = done.send(());
                }
            }
            QueryResult::GetProviders(r) => {
                if let Some((tx, seen)) = self.finds.get_mut(&id) {
                    if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r {
                        let local = *self.swarm.local_peer_id();
                        for p in providers {
                            if p != local && seen.insert(p) {
                                // Dial now, while the query still holds the
                                // addresses the record came with (a provider
                                // behind NAT is in nobody's routing table);
                                // only the first few: an answer may list
                                // any number, and each costs a dial.
                                if seen.len() <= DIALS_PER_LOOKUP && !self.links.connected(&p) {
                                    // (No addresses given: the behaviours' are used.)
                                    let opts = DialOpts::peer_id(p)
                                        .condition(PeerCondition::DisconnectedAndNotDialing)
                                        .build();
                                    let _ = self.swarm.dial(opts);
                                }
                                if tx.try_send(p).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    if last || tx.is_closed() {
                        self.finds.remove(&id);
                        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                            q.finish();
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_transfer(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request,
                    channel,
                    request_id,
                } => {
                    let inb = Inbound {
                        peer,
                        id: request_id,
                        request,
                        channel,
                    };
                    if let Err(mpsc::error::TrySendError::Full(inb) | mpsc::error::TrySendError::Closed(inb)) =
                        self.inbound.try_send(inb)
                    {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .transfer
                            .inner
                            .send_response(inb.channel, Response::Busy);
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "transfer request failed");
                if let Some(reply) = self.requests.remove(&request_id) {
                    // Every stream of the connection in use: this side is
                    // full for now, the peer is not wrong. Answered as a
                    // peer with a full queue answers (every caller waits
                    // and asks again), not as a failure that makes the
                    // caller forget the provider.
                    let full =
                        matches!(&error, request_response::OutboundFailure::Io(e) if e.to_string() == STREAMS_FULL);
                    let _ = reply.send(if full {
                        Ok(Response::Busy)
                    } else {
                        Err(error.to_string())
                    });
                }
            }
            request_response::Event::InboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                tracing::debug!(%peer, %error, "answering a transfer request failed");
                self.writing.remove(&request_id);
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                if let Some(tx) = self.writing.remove(&request_id) {
                    let _ = tx.send(());
                }
            }
        }
    }
}
