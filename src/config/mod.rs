//! The configuration: defaults < TOML file (`--config`) < `NIXSWARM_*`
//! environment < flags. Every key is shown, commented, in
//! `config.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nixswarm_protocol::{CACHE_NIXOS_ORG_KEY, PublicKey};
use serde::{Deserialize, Serialize};

use libp2p::Multiaddr;
use nixswarm_gateway::Url;

use crate::size::{Amount, Size};

mod donor;
pub mod help;
pub use donor::{Contribute, DonorSection};

/// The upstream used when none is configured.
pub const DEFAULT_UPSTREAM: &str = "https://cache.nixos.org";
/// The node's default TCP listen addresses (IPv4 and IPv6: a home with a
/// global IPv6 address needs no NAT traversal).
pub const DEFAULT_P2P_TCP: [&str; 2] = ["/ip4/0.0.0.0/tcp/37516", "/ip6/::/tcp/37516"];
/// The node's default QUIC listen addresses.
pub const DEFAULT_P2P_QUIC: [&str; 2] = ["/ip4/0.0.0.0/udp/37516/quic-v1", "/ip6/::/udp/37516/quic-v1"];
/// The gateway's default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:37515";

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Where the chunk store (and later the node key) live. Default: the XDG
    /// data directory, e.g. ~/.local/share/nixswarm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The HTTP substituter on localhost.
    pub gateway: GatewaySection,
    /// Binary caches asked when the local store (and later, peers) lack a path.
    pub upstream: UpstreamSection,
    /// The local chunk store.
    pub store: StoreSection,
    /// The peer-to-peer node.
    pub p2p: P2pSection,
    /// What this machine shares with peers.
    pub donor: DonorSection,
}

/// `[p2p]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct P2pSection {
    /// Run the peer-to-peer node. Off: the gateway uses its store and upstreams only.
    pub enable: bool,
    /// Multiaddrs to listen on (TCP and QUIC).
    pub listen: Vec<String>,
    /// Multiaddrs (with /p2p/<peer id>) of nodes to join the swarm through.
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// "auto": contribute (serve chunks, announce), and answer DHT queries
    /// once an address is confirmed reachable; "server": contribute and
    /// always answer DHT queries; "client": fetch only.
    pub mode: P2pMode,
    /// Advertise loopback and private listen addresses as reachable (a
    /// swarm on one machine or one LAN without AutoNAT servers; tests).
    pub announce_private: bool,
    /// Ask the router to forward the listen ports (UPnP IGD) when contributing.
    pub upnp: bool,
    /// The circuit-relay service a contributing node offers.
    pub relay: RelaySection,
    /// Time allowed for one request to a peer.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Upload limit per second for serving peers (e.g. "20M"); "0": unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_limit: Option<Size>,
    /// How long peers get to answer a narinfo lookup before upstreams are
    /// asked too (0, the default: both at once, the first verified answer
    /// wins; a narinfo is ~1 KiB, the NAR's bytes come from peers anyway).
    #[serde(with = "humantime_serde")]
    pub lookup_budget: Duration,
    /// The longest a NAR request waits for the connected peers' answers
    /// before an upstream serves it.
    #[serde(with = "humantime_serde")]
    pub peer_wait_have: Duration,
    /// NarSize that buys one second of waiting for the DHT walk (e.g.
    /// "100M": a 100 MiB NAR waits up to 1 s for providers, a 2 KiB one
    /// only for the connected peers).
    pub peer_wait_rate: Size,
    /// The longest any NAR waits for the DHT walk.
    #[serde(with = "humantime_serde")]
    pub peer_wait_max: Duration,
    /// With `offload = "max"`: how long peers serve a NAR alone before an
    /// upstream starts beside them (whichever is ahead serves).
    #[serde(with = "humantime_serde")]
    pub hedge_after: Duration,
    /// How much to give: "balanced" (Nix never slower than the upstream
    /// alone; peers carry what they can within that) or "max" (peers first
    /// whenever they hold a path, a bounded slowdown for more offload).
    pub offload: Offload,
}

/// How much of a NAR peers carry (`p2p.offload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Offload {
    /// Never slower than the upstream alone; peers carry what fits.
    #[default]
    Balanced,
    /// Peers first whenever they hold the path; the upstream after `hedge-after`.
    Max,
}

impl From<Offload> for nixswarm_gateway::Offload {
    fn from(o: Offload) -> Self {
        match o {
            Offload::Balanced => Self::Balanced,
            Offload::Max => Self::Max,
        }
    }
}

/// `[p2p.relay]`: the circuit-relay v2 service. Nodes behind NAT reserve a
/// slot on two reachable nodes and are dialled through them until hole
/// punching gives a direct connection; NAR bytes never cross a relay, so a
/// circuit needs little.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RelaySection {
    /// Offer the service (contributing nodes; useful once reachable).
    pub serve: bool,
    /// Peers holding a reservation at once.
    pub max_reservations: usize,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// The longest one circuit lives.
    #[serde(with = "humantime_serde")]
    pub circuit_duration: Duration,
    /// The most bytes one circuit carries each way.
    pub circuit_bytes: Size,
}

impl Default for RelaySection {
    fn default() -> Self {
        let l = nixswarm_node::p2p::RelayLimits::default();
        Self {
            serve: true,
            max_reservations: l.max_reservations,
            max_circuits: l.max_circuits,
            circuit_duration: l.circuit_duration,
            circuit_bytes: Size(l.circuit_bytes),
        }
    }
}

impl RelaySection {
    /// The node's relay setting (`None`: no service).
    pub fn limits(&self) -> Option<nixswarm_node::p2p::RelayLimits> {
        self.serve.then_some(nixswarm_node::p2p::RelayLimits {
            max_reservations: self.max_reservations,
            max_circuits: self.max_circuits,
            circuit_duration: self.circuit_duration,
            circuit_bytes: self.circuit_bytes.0,
        })
    }
}

/// What the node does in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum P2pMode {
    /// Contribute; a DHT server only when reachable (AutoNAT confirmed an address).
    Auto,
    /// Contribute, and always a DHT server.
    Server,
    /// Fetch only.
    Client,
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            enable: true,
            listen: DEFAULT_P2P_TCP
                .iter()
                .chain(&DEFAULT_P2P_QUIC)
                .map(|a| (*a).to_owned())
                .collect(),
            bootstrap: vec![],
            mdns: true,
            mode: P2pMode::Auto,
            announce_private: false,
            upnp: true,
            relay: RelaySection::default(),
            peer_timeout: Duration::from_secs(10),
            upload_limit: Some(Size(DEFAULT_UPLOAD_LIMIT)),
            lookup_budget: Duration::ZERO,
            peer_wait_have: Duration::from_millis(500),
            peer_wait_rate: Size(100 << 20),
            peer_wait_max: Duration::from_secs(2),
            hedge_after: Duration::from_secs(1),
            offload: Offload::Balanced,
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GatewaySection {
    /// Address to listen on. Keep it on loopback: the gateway is for this machine.
    pub listen: SocketAddr,
    /// Priority announced in nix-cache-info (lower is tried first; cache.nixos.org is 40).
    pub priority: u32,
    /// How long a path no source has is answered 404 without asking again.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Host names requests may use besides IP addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
}

/// `[upstream]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct UpstreamSection {
    /// Upstream caches in priority order (http:// or https://). Empty: none.
    pub urls: Vec<String>,
    /// Keys a narinfo must be signed with (`name:base64`), for every upstream.
    pub trusted_keys: Vec<String>,
    /// Time allowed for a whole narinfo request to an upstream.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time allowed to connect to an upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct StoreSection {
    /// Most disk space for chunk data, as a size or a percentage of the
    /// filesystem holding `location`; least recently used unpinned paths go first.
    #[serde(alias = "cache-size")]
    pub amount: Amount,
    /// Directory of the chunk store (what this machine fetched, in cache
    /// mode); default: `store` in the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<PathBuf>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 37515))),
            priority: 30,
            negative_ttl: Duration::from_secs(30),
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            urls: vec![DEFAULT_UPSTREAM.to_owned()],
            trusted_keys: vec![CACHE_NIXOS_ORG_KEY.to_owned()],
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            amount: Amount::Bytes(Size(10 << 30)),
            location: None,
        }
    }
}

/// Where a node's configuration and data are: the flags every command
/// takes. Each also reads a `NIXSWARM_*` variable.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeDirs {
    /// TOML configuration file.
    #[arg(long, env = "NIXSWARM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (chunk store, node key).
    #[arg(long, env = "NIXSWARM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The flags of the commands that talk to a running node (`status`,
/// `pin`, `unpin`, `export`): where its configuration is, to find its
/// gateway.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub node: NodeDirs,
    /// The gateway to ask: a URL or HOST:PORT [default: the configured
    /// gateway address, 127.0.0.1:37515].
    #[arg(long, env = "NIXSWARM_GATEWAY", value_name = "URL")]
    pub gateway: Option<String>,
}

impl ClientArgs {
    /// The node's configuration (its file, the environment and defaults).
    pub fn config(&self) -> Result<Config> {
        Config::load(&ConfigArgs {
            store: StoreArgs {
                node: self.node.clone(),
                ..StoreArgs::default()
            },
            ..ConfigArgs::default()
        })
    }

    /// The gateway's base URL, without a trailing slash.
    pub fn gateway_url(&self) -> Result<Url> {
        let given = match &self.gateway {
            Some(g) => g.clone(),
            None => self.config()?.gateway.listen.to_string(),
        };
        let with_scheme = if given.contains("://") {
            given.clone()
        } else {
            format!("http://{given}")
        };
        let url: Url = with_scheme
            .parse()
            .with_context(|| format!("--gateway {given:?} is neither a URL nor HOST:PORT"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            bail!("--gateway {given:?}: give http://HOST:PORT or HOST:PORT");
        }
        Ok(url)
    }
}

/// The flags of the node's store and what it trusts (all of `import`'s;
/// part of every command that reads the configuration).
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub node: NodeDirs,
    /// Trusted public key NAME:BASE64; repeat for several. Replaces the default (cache.nixos.org-1).
    #[arg(
        long = "trusted-key",
        env = "NIXSWARM_TRUSTED_KEY",
        value_delimiter = ',',
        value_name = "NAME:KEY"
    )]
    pub trusted_keys: Vec<String>,
    /// Most disk space for the chunk store: a size (10G) or a percentage of its filesystem (10%).
    #[arg(long, alias = "cache-size", env = "NIXSWARM_AMOUNT", value_name = "SIZE|PERCENT")]
    pub amount: Option<Amount>,
    /// Directory of the chunk store (default: `store` in the data directory).
    #[arg(long, env = "NIXSWARM_LOCATION", value_name = "DIR")]
    pub location: Option<PathBuf>,
}

impl StoreArgs {
    /// The same, as the configuration's flags.
    pub fn config_args(&self) -> ConfigArgs {
        ConfigArgs {
            store: self.clone(),
            ..ConfigArgs::default()
        }
    }
}

/// The flags shared by every command that reads the configuration. Each
/// also reads a `NIXSWARM_*` variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Gateway listen address.
    #[arg(long, env = "NIXSWARM_GATEWAY_LISTEN", value_name = "ADDR")]
    pub gateway_listen: Option<SocketAddr>,
    /// Upstream cache URL; repeat for several, in priority order. Replaces the default list.
    #[arg(
        long = "upstream",
        env = "NIXSWARM_UPSTREAM",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub upstreams: Vec<String>,
    /// Use no upstream at all (serve only what is stored locally).
    #[arg(long, env = "NIXSWARM_NO_UPSTREAM", value_parser = boolish(), conflicts_with = "upstreams")]
    pub no_upstream: bool,
    #[command(flatten)]
    pub donor: donor::DonorArgs,
    /// Peer-to-peer listen multiaddr; repeat for several. Replaces the default (TCP and QUIC on port 37516).
    #[arg(
        long = "p2p-listen",
        env = "NIXSWARM_P2P_LISTEN",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    pub p2p_listen: Vec<String>,
    /// Node to join the swarm through (multiaddr with /p2p/<peer id>); repeatable.
    #[arg(
        long = "bootstrap",
        env = "NIXSWARM_BOOTSTRAP",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    pub bootstrap: Vec<String>,
    /// Do not look for peers on the local network.
    #[arg(long, env = "NIXSWARM_NO_MDNS", value_parser = boolish())]
    pub no_mdns: bool,
    /// Run the gateway only, without the peer-to-peer node.
    #[arg(long, env = "NIXSWARM_NO_P2P", value_parser = boolish())]
    pub no_p2p: bool,
    /// auto: contribute, a DHT server once reachable; server: contribute, always a DHT server; client: fetch only.
    #[arg(long, env = "NIXSWARM_P2P_MODE", value_name = "MODE")]
    pub p2p_mode: Option<P2pMode>,
    /// Advertise loopback and private listen addresses as reachable (one machine or one LAN).
    #[arg(long, env = "NIXSWARM_ANNOUNCE_PRIVATE", value_parser = boolish())]
    pub announce_private: bool,
    /// Do not ask the router to forward the listen ports (UPnP).
    #[arg(long, env = "NIXSWARM_NO_UPNP", value_parser = boolish())]
    pub no_upnp: bool,
    /// Do not offer the circuit-relay service to nodes behind NAT.
    #[arg(long, env = "NIXSWARM_NO_RELAY_SERVICE", value_parser = boolish())]
    pub no_relay_service: bool,
    /// Relay service: peers holding a reservation at once [default: 128].
    #[arg(long, env = "NIXSWARM_RELAY_MAX_RESERVATIONS", value_name = "N")]
    pub relay_max_reservations: Option<usize>,
    /// Relay service: circuits open at once [default: 16].
    #[arg(long, env = "NIXSWARM_RELAY_MAX_CIRCUITS", value_name = "N")]
    pub relay_max_circuits: Option<usize>,
    /// Relay service: the longest one circuit lives, e.g. 2m [default: 2m].
    #[arg(long, env = "NIXSWARM_RELAY_CIRCUIT_DURATION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub relay_circuit_duration: Option<Duration>,
    /// Relay service: the most bytes one circuit carries each way, e.g. 128K [default: 128K].
    #[arg(long, env = "NIXSWARM_RELAY_CIRCUIT_BYTES", value_name = "SIZE")]
    pub relay_circuit_bytes: Option<Size>,
    /// Time allowed for one request to a peer, e.g. 10s.
    #[arg(long, env = "NIXSWARM_PEER_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub peer_timeout: Option<Duration>,
    /// Upload limit for serving peers, per second, e.g. 20M or 20M/s; 0: unlimited [default: 5M].
    #[arg(long, env = "NIXSWARM_UPLOAD_LIMIT", value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<Size>,
    /// How long peers get before upstreams are asked too, e.g. 50ms.
    #[arg(long, env = "NIXSWARM_LOOKUP_BUDGET", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lookup_budget: Option<Duration>,
    /// Longest wait of a NAR request for the connected peers, e.g. 500ms.
    #[arg(long, env = "NIXSWARM_PEER_WAIT_HAVE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub peer_wait_have: Option<Duration>,
    /// NarSize that buys one second of waiting for the DHT walk, e.g. 100M.
    #[arg(long, env = "NIXSWARM_PEER_WAIT_RATE", value_name = "SIZE")]
    pub peer_wait_rate: Option<Size>,
    /// Longest wait of any NAR request for the DHT walk, e.g. 2s.
    #[arg(long, env = "NIXSWARM_PEER_WAIT_MAX", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub peer_wait_max: Option<Duration>,
    /// With --offload max: peers alone this long before an upstream starts beside them, e.g. 1s.
    #[arg(long, env = "NIXSWARM_HEDGE_AFTER", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub hedge_after: Option<Duration>,
    /// balanced: never slower than the upstream alone; max: peers first whenever they hold a path.
    #[arg(long, env = "NIXSWARM_OFFLOAD", value_name = "MODE")]
    pub offload: Option<Offload>,
}

/// Parses a rate: a size per second, with an optional "/s".
/// The upload limit unless configured: 5 MiB/s (about 42 Mbit/s), a third
/// of a common 100 Mbit/s fibre uplink and below what a donor would notice
/// on one; donors on slower links set less, "0" lifts it.
pub const DEFAULT_UPLOAD_LIMIT: u64 = 5 << 20;

pub fn parse_rate(s: &str) -> Result<Size, String> {
    s.trim().trim_end_matches("/s").parse()
}

/// A configuration checked and resolved into the values the program uses.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: Config,
    pub data_dir: PathBuf,
    /// Where the chunk store lives (`store.location`).
    pub store_dir: PathBuf,
    pub p2p_listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub upstreams: Vec<Url>,
    pub trusted_keys: Vec<PublicKey>,
}

/// The XDG data directory for nixswarm.
pub fn default_data_dir() -> Result<PathBuf> {
    directories::ProjectDirs::from("org", "nixswarm", "nixswarm")
        .map(|d| d.data_dir().to_owned())
        .context("cannot find a home directory for the default data directory: pass --data-dir")
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Applies flags (and, through clap, the environment) over this config.
    pub fn apply(mut self, args: &ConfigArgs) -> Self {
        if let Some(d) = &args.store.node.data_dir {
            self.data_dir = Some(d.clone());
        }
        if let Some(l) = args.gateway_listen {
            self.gateway.listen = l;
        }
        if args.no_upstream {
            self.upstream.urls.clear();
        } else if !args.upstreams.is_empty() {
            self.upstream.urls = args.upstreams.clone();
        }
        if !args.store.trusted_keys.is_empty() {
            self.upstream.trusted_keys = args.store.trusted_keys.clone();
        }
        if let Some(s) = args.store.amount {
            self.store.amount = s;
        }
        if let Some(l) = &args.store.location {
            self.store.location = Some(l.clone());
        }
        self.donor.apply(&args.donor);
        if !args.p2p_listen.is_empty() {
            self.p2p.listen = args.p2p_listen.clone();
        }
        if !args.bootstrap.is_empty() {
            self.p2p.bootstrap = args.bootstrap.clone();
        }
        if args.no_mdns {
            self.p2p.mdns = false;
        }
        if args.announce_private {
            self.p2p.announce_private = true;
        }
        if args.no_upnp {
            self.p2p.upnp = false;
        }
        let relay = &mut self.p2p.relay;
        if args.no_relay_service {
            relay.serve = false;
        }
        if let Some(n) = args.relay_max_reservations {
            relay.max_reservations = n;
        }
        if let Some(n) = args.relay_max_circuits {
            relay.max_circuits = n;
        }
        if let Some(d) = args.relay_circuit_duration {
            relay.circuit_duration = d;
        }
        if let Some(b) = args.relay_circuit_bytes {
            relay.circuit_bytes = b;
        }
        if args.no_p2p {
            self.p2p.enable = false;
        }
        if let Some(m) = args.p2p_mode {
            self.p2p.mode = m;
        }
        if let Some(t) = args.peer_timeout {
            self.p2p.peer_timeout = t;
        }
        if let Some(r) = args.upload_limit {
            self.p2p.upload_limit = Some(r);
        }
        if let Some(b) = args.lookup_budget {
            self.p2p.lookup_budget = b;
        }
        if let Some(w) = args.peer_wait_have {
            self.p2p.peer_wait_have = w;
        }
        if let Some(r) = args.peer_wait_rate {
            self.p2p.peer_wait_rate = r;
        }
        if let Some(w) = args.peer_wait_max {
            self.p2p.peer_wait_max = w;
        }
        if let Some(h) = args.hedge_after {
            self.p2p.hedge_after = h;
        }
        if let Some(o) = args.offload {
            self.p2p.offload = o;
        }
        self
    }

    /// Loads defaults, the file named by `--config` (if any), then flags.
    pub fn load(args: &ConfigArgs) -> Result<Self> {
        let base = match &args.store.node.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        Ok(base.apply(args))
    }

    /// Checks every value and resolves defaults.
    pub fn resolve(self) -> Result<Effective> {
        let data_dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => default_data_dir()?,
        };
        let mut upstreams = Vec::new();
        for u in &self.upstream.urls {
            let url: Url = u.parse().with_context(|| format!("upstream {u:?} is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https" | "file") {
                bail!("upstream {u:?}: use http://, https:// or file:///DIR");
            }
            upstreams.push(url);
        }
        let trusted_keys = self
            .upstream
            .trusted_keys
            .iter()
            .map(|k| public_key("trusted key", k))
            .collect::<Result<Vec<_>>>()?;
        if trusted_keys.is_empty() && !upstreams.is_empty() {
            bail!("no trusted keys: every upstream narinfo would be rejected (set --trusted-key)");
        }
        if self.store.amount == Amount::Bytes(Size(0)) {
            bail!("store.amount is 0: nothing could be stored");
        }
        self.donor.check()?;
        for h in &self.gateway.allowed_hosts {
            if nixswarm_gateway::guard::host_name(h).as_deref() != Some(h.to_ascii_lowercase().as_str())
                || h.contains(':')
            {
                bail!("gateway.allowed-hosts: {h:?} is not a host name (no port, no brackets)");
            }
        }
        let store_dir = self.store.location.clone().unwrap_or_else(|| data_dir.join("store"));
        let multiaddrs = |what: &str, list: &[String]| -> Result<Vec<Multiaddr>> {
            list.iter()
                .map(|a| {
                    a.parse::<Multiaddr>()
                        .with_context(|| format!("{what} {a:?} is not a multiaddr"))
                })
                .collect()
        };
        let p2p_listen = multiaddrs("p2p listen address", &self.p2p.listen)?;
        let bootstrap = self
            .p2p
            .bootstrap
            .iter()
            .map(|b| bootstrap_addr(b))
            .collect::<Result<Vec<_>>>()?;
        if self.p2p.enable && p2p_listen.is_empty() && self.p2p.mode != P2pMode::Client {
            bail!("p2p.listen is empty: a contributing (server) node needs an address");
        }
        Ok(Effective {
            config: self,
            data_dir,
            store_dir,
            p2p_listen,
            bootstrap,
            upstreams,
            trusted_keys,
        })
    }
}

/// Parses a flag's environment variable: 1/0, yes/no, on/off, true/false.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// Parses a public key `NAME:BASE64`. The error names the key by its name
/// only: what was given may be a secret key, which must not reach a log.
pub fn public_key(what: &str, k: &str) -> Result<PublicKey> {
    let name = k
        .split_once(':')
        .map_or_else(|| "(without a NAME: part)".to_owned(), |(n, _)| format!("{n:?}"));
    k.parse::<PublicKey>().map_err(|e| {
        if k.parse::<nixswarm_protocol::SecretKey>().is_ok() {
            anyhow::anyhow!(
                "{what} {name} is a secret key; give its public key instead \
                 (`nix key convert-secret-to-public < SECRET-KEY-FILE`)"
            )
        } else {
            // `e` may quote the value: only its kind is kept.
            let why = match e {
                nixswarm_protocol::signature::KeyError::MissingName { .. } => "not of the form NAME:BASE64".to_owned(),
                other => other.to_string(),
            };
            anyhow::anyhow!("{what} {name}: {why} (as `nix key convert-secret-to-public` prints it)")
        }
    })
}

/// A bootstrap address as the user may write it: a multiaddr (`/ip4`,
/// `/ip6`, `/dns`, `/dns4`, `/dns6`; `/p2p/<id>` optional: the id is
/// learnt on connect), or `HOST:PORT` (TCP; `[v6]:PORT` for IPv6).
pub fn bootstrap_addr(s: &str) -> Result<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let s = s.trim();
    let hint = "write /ip4/ADDRESS/tcp/PORT, /dns/HOST/tcp/PORT (each optionally ending in /p2p/PEER-ID) or HOST:PORT; \
                `nixswarm status` on the other node prints its address";
    if s.starts_with('/') {
        let a: Multiaddr = s
            .parse()
            .map_err(|e| anyhow::anyhow!("bootstrap address {s:?} is not a multiaddr ({e}): {hint}"))?;
        let ok = matches!(
            a.iter().next(),
            Some(Protocol::Ip4(_) | Protocol::Ip6(_) | Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_))
        ) && matches!(a.iter().nth(1), Some(Protocol::Tcp(_) | Protocol::Udp(_)));
        if !ok {
            bail!("bootstrap address {s:?}: {hint}");
        }
        return Ok(a);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("bootstrap address {s:?} has no port: {hint}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("bootstrap address {s:?}: {port:?} is not a port: {hint}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let first = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => Protocol::Ip4(ip),
        Ok(std::net::IpAddr::V6(ip)) => Protocol::Ip6(ip),
        Err(_) if !host.is_empty() && !host.contains(['/', ' ']) => Protocol::Dns(host.into()),
        Err(_) => bail!("bootstrap address {s:?}: {hint}"),
    };
    Ok(Multiaddr::empty().with(first).with(Protocol::Tcp(port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: ConfigArgs,
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let example: Config = toml::from_str(include_str!("../../config.example.toml")).unwrap();
        let expected = Config {
            data_dir: example.data_dir.clone(),
            ..Config::default()
        };
        assert_eq!(example, expected);
        example.resolve().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("[gateway]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n[store]\ncache-size = \"1G\"\n",
        )
        .unwrap();
        let t = T::try_parse_from(["t", "--config", file.to_str().unwrap(), "--cache-size", "2G"]).unwrap();
        let c = Config::load(&t.args).unwrap();
        assert_eq!(c.upstream.urls, vec!["http://127.0.0.1:1".to_owned()]);
        assert_eq!(c.store.amount, Amount::Bytes(Size(2 << 30)));
        let t = T::try_parse_from(["t", "--config", file.to_str().unwrap(), "--no-upstream"]).unwrap();
        assert!(Config::load(&t.args).unwrap().upstream.urls.is_empty());
        let t = T::try_parse_from([
            "t",
            "--upstream",
            "http://127.0.0.1:2",
            "--upstream",
            "http://127.0.0.1:3",
        ])
        .unwrap();
        assert_eq!(Config::load(&t.args).unwrap().upstream.urls.len(), 2);
    }

    #[test]
    fn bad_values_are_explained() {
        let mut c = Config::default();
        c.upstream.urls = vec!["ftp://x".into()];
        assert!(c.clone().resolve().unwrap_err().to_string().contains("file:///DIR"));
        c.upstream.urls = vec!["http://127.0.0.1:1".into()];
        c.upstream.trusted_keys = vec!["nonsense".into()];
        assert!(format!("{:#}", c.clone().resolve().unwrap_err()).contains("NAME:BASE64"));
        c.upstream.trusted_keys.clear();
        assert!(c.clone().resolve().unwrap_err().to_string().contains("no trusted keys"));
        c.upstream.urls.clear();
        for bad in ["cache.lan:80", "[::1]", "", "a b"] {
            c.gateway.allowed_hosts = vec![bad.into()];
            let err = c.clone().resolve().unwrap_err().to_string();
            assert!(err.contains("allowed-hosts"), "{bad:?}: {err}");
        }
        c.gateway.allowed_hosts = vec!["Cache.LAN".into()];
        c.clone().resolve().unwrap();
    }
}
