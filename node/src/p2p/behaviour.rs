//! The libp2p behaviour and swarm construction: TCP and QUIC, noise, yamux,
//! identify, ping, a private Kademlia DHT, optional mDNS, the transfer
//! protocol (request-response, on direct connections only), reachability
//! (AutoNAT v2, UPnP), circuit relay v2 (client, and a bounded service on
//! contributing nodes), hole punching (DCUtR), and connection limits per
//! peer and in all.

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, Swarm, autonat, dcutr, identify, identity, kad, mdns, noise, ping, quic, relay,
    request_response, tcp, yamux,
};

use super::codec::{PROTOCOL, PROTOCOL_V2, TransferCodec};
use super::dial_guard::DialGuard;
use super::direct::DirectOnly;
use super::records::ProviderStore;

/// Our private DHT's protocol name: nixswarm nodes never join the IPFS DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/nixswarm/kad/1.0.0");
/// identify's protocol version string.
pub const IDENTIFY_VERSION: &str = "/nixswarm/1.0.0";

/// Every protocol a node speaks.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so a connection over the limits is refused before any other
    /// behaviour spends anything on it.
    pub limits: connection_limits::Behaviour,
    /// Then the limit of incoming connections from one network.
    pub per_network: super::per_ip::PerNetwork,
    /// And no new connection while the process is above its memory budget.
    pub memory: libp2p::memory_connection_limits::Behaviour,
    pub kad: kad::Behaviour<ProviderStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// NAR bytes: never through a relay.
    pub transfer: DirectOnly<request_response::Behaviour<TransferCodec>>,
    /// Asks peers to dial our address candidates back: the ones servers
    /// in two networks agree on become confirmed external addresses.
    pub autonat: super::autonat::Client,
    /// Dials peers' candidates back (contributing nodes), over direct
    /// connections only and while a direct address of ours is reachable:
    /// behind NAT or through a relay, its dial-backs would map our LAN
    /// for the asker (the actor turns it on and off).
    pub autonat_server: Toggle<DirectOnly<autonat::v2::server::Behaviour>>,
    /// Maps the listen ports on a UPnP IGD router (contributing nodes,
    /// unless turned off); a mapping is an AutoNAT candidate, not a
    /// confirmed address (a LAN host can pose as the router).
    pub upnp: Toggle<super::autonat::Unconfirmed<libp2p::upnp::tokio::Behaviour>>,
    /// Listens through relays while no direct address is reachable.
    pub relay_client: relay::client::Behaviour,
    /// The relay service (contributing nodes, unless turned off), offered
    /// while a direct address is reachable. It never sees relayed
    /// connections: libp2p-relay 0.22 would send its status to their dummy
    /// handlers and panic the connection task.
    pub relay: Toggle<DirectOnly<relay::Behaviour>>,
    /// Upgrades a relayed connection to a direct one (hole punching).
    pub dcutr: dcutr::Behaviour,
}

/// Bounds of the circuit-relay service a node offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Peers holding a reservation at once.
    pub max_reservations: usize,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// The longest one circuit lives.
    pub circuit_duration: Duration,
    /// The most bytes one circuit carries (each way).
    pub circuit_bytes: u64,
}

impl Default for RelayLimits {
    /// libp2p's defaults: enough for DHT and control traffic and for hole
    /// punching, far too little to carry NARs (which never go over a relay).
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_circuits: 16,
            circuit_duration: Duration::from_secs(120),
            circuit_bytes: 128 << 10,
        }
    }
}

impl RelayLimits {
    fn config(&self, count_loopback: bool) -> relay::Config {
        let mut c = relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: 4,
            max_circuit_duration: self.circuit_duration,
            max_circuit_bytes: self.circuit_bytes,
            ..relay::Config::default()
        };
        c.reservation_rate_limiters
            .push(Box::new(super::per_ip::reservations_per_network(count_loopback)));
        c.circuit_src_rate_limiters
            .push(Box::new(super::per_ip::circuits_per_network_and_in_all(count_loopback)));
        c
    }
}

/// Settings that shape the swarm.
#[derive(Debug, Clone)]
pub struct SwarmSettings {
    pub mdns: bool,
    /// A contributing node: it also runs the AutoNAT server (dials peers
    /// back to tell them whether they are reachable).
    pub server: bool,
    /// When Kademlia answers queries and stores records.
    pub dht: super::DhtMode,
    /// Ask the router for port mappings (UPnP IGD).
    pub upnp: bool,
    /// Offer the relay service, so bounded (contributing nodes).
    pub relay: Option<RelayLimits>,
    /// Time allowed for one transfer request.
    pub request_timeout: Duration,
    /// Concurrent transfer streams per connection.
    pub max_streams: usize,
    /// How long announcements live on other nodes.
    pub provider_ttl: Duration,
    /// Test builds only: every byte sent to peers leaves this much later.
    #[cfg(feature = "test-hooks")]
    pub test_latency: Duration,
    /// Count loopback connections toward the per-network limit (tests).
    pub count_loopback: bool,
    /// New connections are refused above this much process memory.
    pub memory_budget: usize,
}

/// Builds the swarm. Every dial passes `guard` (see `dial_guard.rs`).
pub fn build(
    key: identity::Keypair,
    store: ProviderStore,
    s: &SwarmSettings,
    guard: &DialGuard,
) -> anyhow_like::Result<Swarm<Behaviour>> {
    #[cfg(feature = "test-hooks")]
    let delay = s.test_latency;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            #[cfg(feature = "test-hooks")]
            if !delay.is_zero() {
                // TCP only, through the delay line (QUIC would bypass it).
                return super::delay::transport(key, delay)
                    .map(|t| guard.wrap(t))
                    .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into);
            }
            direct_transport(key)
                .map(|t| guard.wrap(t))
                .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
        })
        .map_err(|e| anyhow_like::Error(format!("transport: {e}")))?
        .with_relay_client(noise::Config::new, muxer)
        .map_err(|e| anyhow_like::Error(format!("relay client: {e}")))?
        .with_behaviour(|key, relay| behaviour(key, relay, store, s))
        .map_err(|e| anyhow_like::Error(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
        .build();
    Ok(swarm)
}

/// TCP (noise, yamux) and QUIC, as `SwarmBuilder::with_tcp` and
/// `with_quic` make them.
fn direct_transport(key: &identity::Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(muxer())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let quic =
        quic::tokio::Transport::new(quic::Config::new(key)).map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    Ok(tcp.or_transport(quic).map(|either, _| either.into_inner()).boxed())
}

/// Streams one yamux connection may hold open (libp2p's default is 512).
/// A stream's receive window starts at 256 KiB and grows only as its
/// handler reads, so what a peer can make a connection buffer unread is
/// bounded by this times 256 KiB (64 MiB).
pub const MAX_STREAMS: usize = 256;
/// Above this much memory in the process, new connections are refused
/// (the NixOS module's `MemoryMax` is 1 GiB): what peers make a node
/// buffer then stays with the peers it has.
pub const MEMORY_BUDGET: usize = 768 << 20;

fn muxer() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(MAX_STREAMS);
    c
}

/// Connections kept with one peer (a TCP and a QUIC one may overlap, and
/// a relayed one lasts until hole punching has given a direct one).
pub const MAX_PER_PEER: u32 = 3;
/// Connections kept in all: each may hold `max_streams` requests, so this
/// bounds what the peers together can make the node hold.
pub const MAX_ESTABLISHED: u32 = 256;
/// Incoming connections still handshaking.
pub const MAX_PENDING_INCOMING: u32 = 32;
/// Of `MAX_ESTABLISHED`, kept for this node's own dials: peers that
/// connect cannot take them.
pub const RESERVED_OUTGOING: u32 = 32;

/// The connection limits every node runs with.
pub fn limits() -> ConnectionLimits {
    ConnectionLimits::default()
        .with_max_established_per_peer(Some(MAX_PER_PEER))
        .with_max_established(Some(MAX_ESTABLISHED))
        .with_max_established_incoming(Some(MAX_ESTABLISHED - RESERVED_OUTGOING))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
}

/// How long a connection with no open stream is kept.
const IDLE: Duration = Duration::from_secs(120);

fn behaviour(
    key: &identity::Keypair,
    relay_client: relay::client::Behaviour,
    store: ProviderStore,
    s: &SwarmSettings,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let local = key.public().to_peer_id();
    let mut kcfg = kad::Config::new(KAD_PROTOCOL);
    kcfg.set_query_timeout(Duration::from_secs(30));
    kcfg.set_provider_record_ttl(Some(s.provider_ttl));
    // nixswarm re-announces its own keys in bounded batches (see
    // announce.rs) instead of one DHT walk per key from kad's job.
    kcfg.set_provider_publication_interval(None);
    // The actor stores what peers announce, keeping of each record only
    // the addresses its sender was seen at (`records::addresses_seen_from`).
    kcfg.set_record_filtering(kad::StoreInserts::FilterBoth);
    // Peers enter the routing table through the actor (dialled, and no
    // more than a few per network and bucket: `actor/admission.rs`).
    kcfg.set_kbucket_inserts(kad::BucketInserts::Manual);
    let mut kad = kad::Behaviour::with_config(local, store, kcfg);
    kad.set_mode(match s.dht {
        // The actor makes it a server once a direct external address is
        // confirmed (kad's own auto mode would count relayed ones too).
        super::DhtMode::Auto => Some(kad::Mode::Client),
        super::DhtMode::Server => Some(kad::Mode::Server),
        super::DhtMode::Client => Some(kad::Mode::Client),
    });
    let mdns = if s.mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
    } else {
        None
    };
    let rr = request_response::Config::default()
        .with_request_timeout(s.request_timeout)
        .with_max_concurrent_streams(s.max_streams);
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits()),
        per_network: super::per_ip::PerNetwork::new(s.count_loopback),
        memory: libp2p::memory_connection_limits::Behaviour::with_max_bytes(s.memory_budget),
        kad,
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                .with_agent_version(concat!("nixswarm/", env!("CARGO_PKG_VERSION")).into())
                // Only the advertised (external) addresses go to peers, not
                // every listen address (LAN, VPN, container bridges): the
                // actor makes global listen addresses external, and all of
                // them in LAN mode.
                .with_hide_listen_addrs(true),
        ),
        ping: ping::Behaviour::default(),
        mdns: Toggle::from(mdns),
        transfer: DirectOnly::new(request_response::Behaviour::new(
            [
                (PROTOCOL_V2, request_response::ProtocolSupport::Full),
                (PROTOCOL, request_response::ProtocolSupport::Full),
            ],
            rr,
        )),
        autonat: super::autonat::Client::new(s.count_loopback),
        autonat_server: Toggle::from(s.server.then(|| {
            let mut server = DirectOnly::new(autonat::v2::server::Behaviour::default());
            server.set_on(false);
            server
        })),
        upnp: Toggle::from(
            (s.server && s.upnp).then(|| super::autonat::Unconfirmed(libp2p::upnp::tokio::Behaviour::default())),
        ),
        relay_client,
        relay: Toggle::from(s.relay.as_ref().filter(|_| s.server).map(|l| {
            let mut r = relay::Behaviour::new(local, l.config(s.count_loopback));
            // The actor enables it once a direct address is confirmed.
            r.set_status(Some(relay::Status::Disable));
            DirectOnly::new(r)
        })),
        dcutr: dcutr::Behaviour::new(local),
    })
}

/// A minimal error for swarm construction.
pub mod anyhow_like {
    /// Swarm construction failed.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Error(pub String);
    pub type Result<T> = std::result::Result<T, Error>;
}
