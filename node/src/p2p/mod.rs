//! The peer-to-peer node: one swarm task ([`actor`]), a server answering
//! transfer requests from the chunk store ([`serve`]), an announcer keeping
//! the DHT in step with the store ([`announce`]) and a fetcher that stripes
//! chunk downloads across providers ([`fetch`]).

mod actor;
mod announce;
pub mod autonat;
pub mod behaviour;
mod book;
mod codec;
#[cfg(feature = "test-hooks")]
mod delay;
pub mod dial_guard;
pub mod direct;
mod discover;
mod fetch;
#[cfg(feature = "test-hooks")]
pub mod identify_flood;
mod in_flight;
mod inline;
mod key;
mod known;
mod liar;
mod links;
mod per_ip;
pub mod proven;
mod punch;
mod ratelimit;
mod readvertise;
pub mod records;
#[cfg(feature = "test-hooks")]
pub mod reflector;
mod relays;
mod rtts;
mod schedule;
mod scores;
mod serve;
mod wire_mode;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId, identity};
use nixswarm_protocol::StorePathHash;
use nixswarm_protocol::wire::{Request, Response, path_key};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use actor::{Command, DIALS_PER_LOOKUP, DIRECT_WAIT, PER_BUCKET_NETWORK};
pub use behaviour::RelayLimits;
pub use book::Found;
pub use codec::{PROTOCOL, PROTOCOL_V2, TransferCodec};
pub use discover::{Discovery, DiscoverySettings};
pub use fetch::{FALSE_CLAIMS, FetchSettings, Fetcher, PeerPath, TailStream};
pub use key::load_or_create_key;
pub use liar::Lie;
pub use ratelimit::RateLimiter;
pub use schedule::ScheduleSettings;

use crate::shelf::Shelves;

/// Errors starting or talking to the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node key {path}: {message}")]
    Key { path: String, message: String },
    #[error("data directory: {0}")]
    DataDir(String),
    #[error("swarm: {0}")]
    Swarm(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: Multiaddr, message: String },
    #[error("the node has stopped")]
    Stopped,
    #[error("peer {peer}: {message}")]
    Peer { peer: PeerId, message: String },
}

/// When a node answers DHT queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhtMode {
    /// Once an external address is confirmed (Kademlia's own automatic
    /// mode): a node others cannot dial never enters their routing tables.
    Auto,
    /// Always.
    Server,
    /// Never.
    Client,
}

/// True for an address others outside this machine's LAN could dial: a
/// DNS name, or an IP address on the public internet
/// ([`nixswarm_protocol::ip::is_public`]: no loopback, private, shared,
/// link-local, multicast or reserved address, nor an IPv6 form of one).
pub fn is_global(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match addr.iter().next() {
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => ip_of(addr).is_some_and(nixswarm_protocol::ip::is_public),
    }
}

/// `e` and its causes, each once, joined by ": " (libp2p's and std's
/// errors often keep the cause out of their own message, or leave it
/// empty).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if out.is_empty() {
                out = text;
            } else {
                out = format!("{out}: {text}");
            }
        }
        cause = c.source();
    }
    out
}

/// Why a TCP listen address's port cannot be ours: another socket holds
/// it (bound here without SO_REUSEPORT, which fails while any socket
/// holds the port, reuse or not). `None` for port 0 and non-TCP addresses.
fn tcp_port_taken(addr: &Multiaddr) -> Option<String> {
    use libp2p::multiaddr::Protocol;
    let mut it = addr.iter();
    let ip: std::net::IpAddr = match it.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Some(Protocol::Tcp(port)) = it.next() else {
        return None;
    };
    if port == 0 {
        return None;
    }
    match std::net::TcpListener::bind((ip, port)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some(format!("TCP port {port} is in use")),
        _ => None,
    }
}

/// The IP address `addr` starts with (a relay circuit's: its relay's).
pub fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    use libp2p::multiaddr::Protocol;
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// The network an address is in, for diversity: IPv4 /24, IPv6 /48 (a
/// relay circuit's: its relay's).
pub(crate) fn diversity_network(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    ip_of(addr).map(|ip| network_of(ip, 24, 48))
}

/// The network `ip` is in: its first `v4` bits (IPv4) or `v6` bits (IPv6),
/// the rest cleared.
pub(crate) fn network_of(ip: std::net::IpAddr, v4: u32, v6: u32) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match ip {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) & !u32::MAX.checked_shr(v4).unwrap_or(0)).into(),
        IpAddr::V6(a) => Ipv6Addr::from(u128::from(a) & !u128::MAX.checked_shr(v6).unwrap_or(0)).into(),
    }
}

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Serve chunks and announce what is shared (a contributing node).
    pub server: bool,
    /// When to answer DHT queries (Kademlia server mode).
    pub dht: DhtMode,
    /// Ask the router for port mappings with UPnP IGD (contributing nodes).
    /// Off by default here: it multicasts on the LAN. `nixswarm run` turns
    /// it on unless told not to.
    pub upnp: bool,
    /// Take loopback and private listen addresses for reachable ones (a
    /// swarm on one machine or one LAN; tests). Otherwise only global
    /// listen addresses count, and AutoNAT confirms the rest.
    pub announce_private: bool,
    pub request_timeout: Duration,
    /// Upload limit in bytes/s (`None`: unlimited).
    pub upload_limit: Option<u64>,
    /// Most provide queries in flight.
    pub max_provides_in_flight: usize,
    /// How often own keys are announced again.
    pub reprovide_interval: Duration,
    /// How long other nodes' announcements are kept here (and, as every
    /// node runs with the same figure, ours there).
    pub provider_ttl: Duration,
    /// Bounds of the provider records kept for other nodes.
    pub record_limits: records::Limits,
    /// Offer the circuit-relay service, so bounded (contributing nodes;
    /// `None`: off).
    pub relay: Option<RelayLimits>,
    /// Test builds only: lie to peers (corrupt chunks or a fake manifest).
    #[cfg(feature = "test-hooks")]
    pub lie: Lie,
    /// Test builds only: every byte sent to peers (DHT and transfer) leaves
    /// this much later, over TCP only (a far-away peer).
    #[cfg(feature = "test-hooks")]
    pub test_latency: Duration,
    /// Test builds only: loopback connections count toward the limit of
    /// incoming connections per network, as a host's would.
    #[cfg(feature = "test-hooks")]
    pub test_count_loopback: bool,
    /// Test builds only: address candidates handed to AutoNAT at start (as
    /// a lying observer or UPnP router would report them).
    #[cfg(feature = "test-hooks")]
    pub test_candidates: Vec<Multiaddr>,
    /// Test builds only: the memory budget above which new connections
    /// are refused (`behaviour::MEMORY_BUDGET` otherwise).
    #[cfg(feature = "test-hooks")]
    pub test_memory_budget: Option<usize>,
    /// Test builds only: addresses claimed as external ones (a relay hands
    /// its external addresses to every reservation: a hostile relay).
    #[cfg(feature = "test-hooks")]
    pub test_claims: Vec<Multiaddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: vec![],
            bootstrap: vec![],
            mdns: false,
            server: true,
            dht: DhtMode::Auto,
            upnp: false,
            announce_private: false,
            request_timeout: Duration::from_secs(10),
            upload_limit: None,
            max_provides_in_flight: 256,
            reprovide_interval: Duration::from_secs(4 * 3600),
            provider_ttl: Duration::from_secs(12 * 3600),
            record_limits: records::Limits::default(),
            relay: Some(RelayLimits::default()),
            #[cfg(feature = "test-hooks")]
            lie: Lie::Honest,
            #[cfg(feature = "test-hooks")]
            test_latency: Duration::ZERO,
            #[cfg(feature = "test-hooks")]
            test_count_loopback: false,
            #[cfg(feature = "test-hooks")]
            test_candidates: Vec::new(),
            #[cfg(feature = "test-hooks")]
            test_memory_budget: None,
            #[cfg(feature = "test-hooks")]
            test_claims: Vec::new(),
        }
    }
}

/// Counters shared with the swarm task.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Chunk bytes (uncompressed) served to peers.
    pub bytes_served: AtomicU64,
    /// NAR bytes fetched from peers and verified, each chunk counted once
    /// per transfer.
    pub bytes_fetched: AtomicU64,
    /// Verified chunk bytes that arrived a second time (the endgame asks
    /// two peers for the last batches): network cost that brought nothing.
    pub bytes_fetched_duplicate: AtomicU64,
    /// Bytes on the wire of the verified chunk answers (compressed where
    /// they were asked and sent so): against `bytes_fetched`, what
    /// compression saved.
    pub bytes_fetched_wire: AtomicU64,
    /// Of `bytes_fetched`, those that came with a path's lookup (small
    /// NARs in one round trip).
    pub bytes_fetched_inline: AtomicU64,
    /// Round trips to connected peers (ping).
    pub rtts: rtts::Rtts,
    /// Peers that served verified chunks (the record store prefers them).
    pub proven: Arc<proven::Proven>,
    /// Fires when the node's routing table gets its first entry: what it
    /// announced before reached nobody, so it announces again.
    pub joined: tokio::sync::Notify,
    /// Fires when the IP addresses the node advertises change: its records
    /// carry stale addresses (acted on after a debounce, `readvertise.rs`).
    pub readdressed: tokio::sync::Notify,
    /// Reachability as the swarm task last saw it (for the metrics).
    pub reach: std::sync::Mutex<Reach>,
    /// DHT peers kept out of the routing table: their bucket held enough
    /// of their network.
    pub not_admitted: AtomicU64,
    /// The rules every dial passes, with their refusal counts (the swarm
    /// task adds the addresses it is told to dial, and mDNS finds).
    pub dials: std::sync::OnceLock<dial_guard::DialGuard>,
    /// The upload limit (set at start).
    pub upload: std::sync::OnceLock<Arc<RateLimiter>>,
    /// Connected peers and established connections (each second).
    pub peers: AtomicU64,
    pub connections: AtomicU64,
    /// Test builds only: the store-path hashes peers asked about.
    #[cfg(feature = "test-hooks")]
    asked: std::sync::Mutex<std::collections::HashSet<StorePathHash>>,
}

impl NodeStats {
    /// Test builds only: notes the store-path hashes a peer asked about.
    #[cfg(feature = "test-hooks")]
    pub fn heard(&self, request: &Request) {
        let hashes: Vec<StorePathHash> = match request {
            Request::Have { hashes } => hashes.clone(),
            Request::PathInfo { hash } | Request::PathInline { hash, .. } => vec![*hash],
            Request::Chunks { .. } => return,
        };
        let mut asked = self.asked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if asked.len() < 100_000 {
            asked.extend(hashes);
        }
    }

    /// Test builds only: every store-path hash peers asked about so far.
    #[cfg(feature = "test-hooks")]
    pub fn asked(&self) -> std::collections::HashSet<StorePathHash> {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Dials refused so far, by reason.
    pub fn dials_refused(&self) -> dial_guard::RefusedCounts {
        self.dials.get().map(|g| g.with(|r| r.refused())).unwrap_or_default()
    }
}

/// Whether and how others can reach this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// "public", "private" or "unknown" (as in [`NodeStatus`]).
    pub state: &'static str,
    /// The advertised addresses.
    pub external_addrs: Vec<String>,
    /// Relays holding (or asked for) a reservation.
    pub relays: Vec<String>,
    pub dht_server: bool,
}

/// What `nixswarm status` shows about the node.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub peers: usize,
    /// Established connections (at most `behaviour::MAX_PER_PEER` per peer).
    pub connections: u32,
    /// "public" (a direct external address is confirmed), "private"
    /// (AutoNAT found none dialable; relayed addresses may be advertised)
    /// or "unknown" (not tested yet).
    pub reachability: String,
    /// The confirmed external addresses: the ones advertised (direct, or
    /// through relays while not reachable directly).
    pub external_addrs: Vec<String>,
    /// The relays this node holds (or asks for) a reservation on.
    pub relays: Vec<String>,
    /// Kademlia answers queries (server mode).
    pub dht_server: bool,
    pub provided_keys: usize,
    pub provider_records: usize,
    /// Addresses Kademlia's routing table holds, over all its peers (at
    /// most a few per peer: see `known.rs`).
    pub routing_addresses: usize,
    /// Records other nodes sent that were not kept: provider records
    /// malformed or over a quota, a rate or a cap, and value records
    /// (nixswarm uses none).
    pub records_refused: u64,
    /// Dials refused: a target that is not public (outside LAN mode), or
    /// over a rate (`dial_guard.rs`).
    pub dials_refused: u64,
    /// DHT peers kept out of the routing table for network diversity.
    pub not_admitted: u64,
    pub bytes_served: u64,
    pub bytes_fetched: u64,
    pub bytes_fetched_duplicate: u64,
    pub bytes_fetched_wire: u64,
    pub bytes_fetched_inline: u64,
    /// The upload limit, and how long senders waited for it.
    pub upload: ratelimit::Throttle,
}

/// One provider of a key as this node's record store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    pub peer: PeerId,
    /// The addresses its record carries (for our own: the advertised ones).
    pub addrs: Vec<Multiaddr>,
}

/// Transfer requests this node has in flight to one peer at most. A
/// connection carries `max_streams` (64) requests both ways together, and
/// a stream past that fails on our side, or the peer drops it unread
/// ("unexpected end of file"); so a burst (a closure's prefetches and NAR
/// requests at once) waits here instead.
const PER_PEER_IN_FLIGHT: usize = 32;

/// A cheap, cloneable handle to the running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    pub stats: Arc<NodeStats>,
    /// Room for requests in flight, per peer with any in flight.
    in_flight: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, Arc<tokio::sync::Semaphore>>>>,
}

/// The DHT key of a store path.
pub fn dht_key(hash: &StorePathHash) -> RecordKey {
    RecordKey::new(&path_key(hash))
}

impl NodeHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn send(&self, cmd: Command) -> Result<(), NodeError> {
        self.tx.send(cmd).await.map_err(|_| NodeError::Stopped)
    }

    /// Announces a path; returns when the provide query ended.
    pub async fn provide(&self, hash: &StorePathHash) -> Result<(), NodeError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Provide {
            key: dht_key(hash),
            done,
        })
        .await?;
        wait.await.map_err(|_| NodeError::Stopped)
    }

    /// Stops announcing a path.
    pub async fn withdraw(&self, hash: &StorePathHash) -> Result<(), NodeError> {
        self.send(Command::Withdraw { key: dht_key(hash) }).await
    }

    /// Providers of a path as the DHT finds them.
    pub async fn find_providers(&self, hash: &StorePathHash) -> Result<mpsc::Receiver<PeerId>, NodeError> {
        let (found, rx) = mpsc::channel(64);
        self.send(Command::FindProviders {
            key: dht_key(hash),
            found,
        })
        .await?;
        Ok(rx)
    }

    /// Sends one transfer request and waits for its answer.
    /// Waits while [`PER_PEER_IN_FLIGHT`] requests to `peer` are.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NodeError> {
        let room = {
            let mut map = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(peer)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PER_PEER_IN_FLIGHT)))
                .clone()
        };
        let answer = match room.acquire().await {
            Ok(_permit) => {
                let (reply, wait) = oneshot::channel();
                self.send(Command::Request { peer, request, reply }).await?;
                wait.await
                    .map_err(|_| NodeError::Stopped)?
                    .map_err(|message| NodeError::Peer { peer, message })
            }
            Err(_) => Err(NodeError::Stopped),
        };
        // The last request to a peer takes its entry along.
        let mut map = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if Arc::strong_count(&room) == 2 && room.available_permits() == PER_PEER_IN_FLIGHT {
            map.remove(&peer);
        }
        answer
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NodeError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Peers { reply }).await?;
        wait.await.map_err(|_| NodeError::Stopped)
    }

    /// The connected peers worth asking which paths they hold (see
    /// `Command::AskablePeers`).
    pub async fn askable_peers(&self) -> Result<Vec<PeerId>, NodeError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::AskablePeers { reply }).await?;
        wait.await.map_err(|_| NodeError::Stopped)
    }

    /// Node status.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        wait.await.map_err(|_| NodeError::Stopped)
    }

    /// The providers of a path this node's record store lists, as one DHT
    /// answer from it would.
    pub async fn local_providers(&self, hash: &StorePathHash) -> Result<Vec<PeerId>, NodeError> {
        Ok(self.provider_records(hash).await?.into_iter().map(|p| p.peer).collect())
    }

    /// The provider records of a path this node holds, with the addresses
    /// they carry.
    pub async fn provider_records(&self, hash: &StorePathHash) -> Result<Vec<ProviderInfo>, NodeError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::LocalProviders {
            key: dht_key(hash),
            reply,
        })
        .await?;
        wait.await.map_err(|_| NodeError::Stopped)
    }

    /// The peers in this node's Kademlia routing table (DHT servers only).
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, NodeError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::RoutingTable { reply }).await?;
        wait.await.map_err(|_| NodeError::Stopped)
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.send(Command::Dial { addr }).await
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub handle: NodeHandle,
    pub listen_addrs: Vec<Multiaddr>,
}

impl Node {
    /// Starts the swarm, the server and the announcer, sharing what `store`
    /// shares. `data_dir` holds the provider record database.
    pub async fn start(
        data_dir: &Path,
        key: identity::Keypair,
        store: Shelves,
        config: NodeConfig,
        cancel: CancellationToken,
    ) -> Result<Self, NodeError> {
        let peer_id = key.public().to_peer_id();
        std::fs::create_dir_all(data_dir).map_err(|e| NodeError::DataDir(e.to_string()))?;
        // Provider records live in memory now (records/mod.rs says why).
        let old = data_dir.join("records.redb");
        if old.exists() {
            match std::fs::remove_file(&old) {
                Ok(()) => tracing::info!(path = %old.display(), "removed the old provider record database"),
                Err(e) => {
                    tracing::warn!(path = %old.display(), error = %e, "cannot remove the old provider record database")
                }
            }
        }
        let stats = Arc::new(NodeStats::default());
        let records = records::ProviderStore::new(
            peer_id,
            config.record_limits.clone(),
            config.provider_ttl,
            stats.proven.clone(),
        );
        #[cfg(feature = "test-hooks")]
        let count_loopback = config.test_count_loopback;
        #[cfg(not(feature = "test-hooks"))]
        let count_loopback = false;
        #[cfg(feature = "test-hooks")]
        let memory_budget = config.test_memory_budget.unwrap_or(behaviour::MEMORY_BUDGET);
        #[cfg(not(feature = "test-hooks"))]
        let memory_budget = behaviour::MEMORY_BUDGET;
        let settings = behaviour::SwarmSettings {
            mdns: config.mdns,
            server: config.server,
            dht: if config.server { config.dht } else { DhtMode::Client },
            upnp: config.upnp,
            relay: config.relay.clone(),
            request_timeout: config.request_timeout,
            max_streams: 64,
            provider_ttl: config.provider_ttl,
            #[cfg(feature = "test-hooks")]
            test_latency: config.test_latency,
            count_loopback,
            memory_budget,
        };
        let guard = dial_guard::DialGuard::new(dial_guard::Rules::new(config.announce_private, count_loopback));
        // The user gave these: dialled whatever their address.
        guard.with(|r| config.bootstrap.iter().for_each(|a| r.allow(a)));
        let _ = stats.dials.set(guard.clone());
        let mut swarm =
            behaviour::build(key, records, &settings, &guard).map_err(|e| NodeError::Swarm(e.to_string()))?;
        // An IPv6 address that cannot be bound (a host without IPv6) is
        // skipped while an IPv4 one works; anything else is an error.
        let has_ip4 = config
            .listen
            .iter()
            .any(|a| matches!(a.iter().next(), Some(libp2p::multiaddr::Protocol::Ip4(_))));
        let mut pending = std::collections::HashSet::new();
        for addr in &config.listen {
            // libp2p's TCP listener sets SO_REUSEPORT (for hole punching),
            // so a second process could bind the same port and take half
            // the connections: a port another process holds is refused.
            if let Some(taken) = tcp_port_taken(addr) {
                return Err(NodeError::Listen {
                    addr: addr.clone(),
                    message: format!("{taken} (is another nixswarm running? choose another --p2p-listen port)"),
                });
            }
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    pending.insert(id);
                }
                Err(e) if has_ip4 && matches!(addr.iter().next(), Some(libp2p::multiaddr::Protocol::Ip6(_))) => {
                    tracing::warn!(%addr, error = %e, "not listening on IPv6");
                }
                Err(e) => {
                    return Err(NodeError::Listen {
                        addr: addr.clone(),
                        message: error_chain(&e),
                    });
                }
            }
        }
        // Wait for each listener's first address, so callers (and tests)
        // know the real ports.
        let mut listen_addrs = Vec::new();
        while !pending.is_empty() {
            match tokio::time::timeout(
                Duration::from_secs(10),
                futures::StreamExt::select_next_some(&mut swarm),
            )
            .await
            {
                Ok(libp2p::swarm::SwarmEvent::NewListenAddr { address, listener_id }) => {
                    pending.remove(&listener_id);
                    listen_addrs.push(address);
                }
                Ok(libp2p::swarm::SwarmEvent::ListenerError { error, .. }) => {
                    return Err(NodeError::Swarm(error_chain(&error)));
                }
                Ok(_) => {}
                Err(_) => return Err(NodeError::Swarm("timed out waiting for listeners".into())),
            }
        }
        // Only addresses others can dial are advertised (in identify and in
        // provider records); AutoNAT confirms the ones behind a NAT. The
        // actor does the same for addresses that turn up later.
        for a in listen_addrs.iter().filter(|a| config.announce_private || is_global(a)) {
            swarm.add_external_address(a.clone());
        }
        #[cfg(feature = "test-hooks")]
        for a in &config.test_candidates {
            swarm.behaviour_mut().autonat.candidate(a.clone());
        }
        #[cfg(feature = "test-hooks")]
        for a in &config.test_claims {
            swarm.add_external_address(a.clone());
        }
        let (tx, rx) = mpsc::channel(1024);
        let (inbound_tx, inbound_rx) = mpsc::channel(256);
        let handle = NodeHandle {
            tx,
            peer_id,
            stats: stats.clone(),
            in_flight: Arc::default(),
        };
        let mut actor = actor::Actor::new(swarm, rx, inbound_tx, stats, cancel.clone(), config.bootstrap.clone());
        actor.announce_private = config.announce_private;
        actor.known = known::KnownAddrs::new(config.announce_private);
        actor.dht_auto = config.server && config.dht == DhtMode::Auto;
        actor.contributing = config.server;
        actor.count_loopback = count_loopback;
        tokio::spawn(actor.run());
        let limiter = Arc::new(RateLimiter::new(config.upload_limit));
        let _ = handle.stats.upload.set(limiter.clone());
        #[cfg(feature = "test-hooks")]
        let liar = Arc::new(liar::Liar::new(config.lie));
        #[cfg(not(feature = "test-hooks"))]
        let liar = Arc::new(liar::Liar::default());
        tokio::spawn(serve::run(
            handle.clone(),
            store.clone(),
            inbound_rx,
            limiter,
            liar,
            cancel.clone(),
        ));
        if config.server {
            tokio::spawn(announce::run(
                handle.clone(),
                store,
                config.max_provides_in_flight,
                config.reprovide_interval,
                cancel,
            ));
        }
        Ok(Self { handle, listen_addrs })
    }
}
