//! The nixswarm gateway: an HTTP binary cache on localhost that the Nix
//! client uses as a substituter. It answers from the local chunk store,
//! then from each [`Source`] in order (peers, then upstream caches),
//! verifying every narinfo against the trusted keys and every NAR against
//! its signed NarHash and NarSize as the bytes pass, and keeps what verified.
//!
//! - [`routes`]: the HTTP routes and narinfo rewriting.
//! - [`resolve`]: narinfos: source order, verification, negative and
//!   bad-source caches.
//! - [`nar`]: the NAR pipeline: the fetch policy, the legs of one NAR
//!   (upstream head, peers' tail, hedge, failover), verification and
//!   ingest, prefetching at the narinfo.
//! - [`peers`]: the swarm as a source.
//! - [`source`]: the [`Source`] trait; [`upstream`]: HTTP binary caches.
//! - [`range`]: `Range` header parsing. [`metrics`]: Prometheus metrics.
//! - [`ttl`]: the expiring map every cache here uses.

pub mod activity;
pub mod dht;
pub mod error;
pub mod export;
pub mod file_source;
pub mod guard;
pub mod import;
pub mod metrics;
pub mod nar;
pub mod outbound;
pub mod peers;
pub mod pin;
pub mod range;
pub mod resolve;
pub mod routes;
pub mod s3;
pub mod source;
pub mod ttl;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use nixswarm_node::{AsyncStore, ChunkStore};
use nixswarm_protocol::PublicKey;
use tokio_util::sync::CancellationToken;

pub use error::GatewayError;
pub use file_source::FileSource;
pub use metrics::Metrics;
pub use nar::{NarPipeline, NarSettings, Offload, PrefetchSettings};
pub use peers::{PeerSource, PeerWait};
pub use reqwest::Url;
pub use resolve::Resolver;
pub use source::{ByteStream, Source, SourceError, SourceId, SourceKind};
pub use upstream::{Upstream, http_client};

/// Gateway behaviour settings.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// `Priority` in nix-cache-info (lower is tried first; cache.nixos.org is 40).
    pub priority: u32,
    /// How long "no source has this path" is remembered.
    pub negative_ttl: Duration,
    /// Keep NARs fetched from sources in the local store.
    pub keep_fetched: bool,
    /// How long peers get to answer a narinfo lookup before the upstreams
    /// are asked as well.
    pub lookup_budget: Duration,
    /// Where NAR bytes come from: offload, hedge, tail budget, prefetch.
    pub nar: NarSettings,
    /// Host names requests may use besides IP addresses and `localhost`
    /// (see [`guard`]).
    pub allowed_hosts: guard::AllowedHosts,
    /// The keys whose paths may leave the machine (`None`: every trusted
    /// key). A trusted key not among them keeps its paths from peers'
    /// ears: see [`Resolver::with_share_keys`].
    pub share_keys: Option<Vec<PublicKey>>,
    /// The program's version, for `/status` and the dashboard.
    pub version: String,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            priority: 30,
            negative_ttl: Duration::from_secs(30),
            keep_fetched: true,
            lookup_budget: Duration::ZERO,
            nar: NarSettings::default(),
            allowed_hosts: guard::AllowedHosts::default(),
            share_keys: None,
            version: String::new(),
        }
    }
}

/// Shared state of all requests.
#[derive(Debug)]
pub struct AppState {
    /// The local store, through its async facade.
    pub store: AsyncStore,
    pub resolver: Arc<Resolver>,
    /// Where NARs the store lacks come from.
    pub nar: NarPipeline,
    /// Upstreams for unsigned pass-through (logs, `.ls`).
    pub upstreams: Vec<Upstream>,
    pub metrics: Arc<Metrics>,
    pub options: GatewayOptions,
    pub cancel: CancellationToken,
    /// The peer-to-peer node, if this gateway runs one (for `/status`).
    pub node: Option<nixswarm_node::NodeHandle>,
    /// The installed paths this node shares, if any (for `/status`).
    pub installed: Option<nixswarm_node::installed::InstalledStore>,
    /// Trusted keys that are not share keys: what only they signed is used
    /// here but never offered to peers (for `/status`).
    pub trusted_not_shared: Vec<PublicKey>,
}

/// The gateway: build it, then [`Gateway::serve`] it or use its router.
#[derive(Debug, Clone)]
pub struct Gateway {
    state: Arc<AppState>,
}

impl Gateway {
    /// A gateway over `store` that resolves misses through `sources` in order.
    pub fn new(
        store: ChunkStore,
        sources: Vec<Arc<dyn Source>>,
        upstreams: Vec<Upstream>,
        keys: Vec<PublicKey>,
        options: GatewayOptions,
        cancel: CancellationToken,
    ) -> Self {
        let metrics = Metrics::new();
        let trusted_not_shared = match &options.share_keys {
            Some(share) => keys.iter().filter(|k| !share.contains(k)).cloned().collect(),
            None => Vec::new(),
        };
        let mut resolver = Resolver::new(
            sources,
            keys,
            options.negative_ttl,
            options.lookup_budget,
            metrics.clone(),
        );
        if let Some(share) = &options.share_keys {
            resolver = resolver.with_share_keys(share.clone());
        }
        let resolver = Arc::new(resolver);
        let store: AsyncStore = store.into();
        let mut nar_settings = options.nar.clone();
        if !options.keep_fetched {
            nar_settings.prefetch.running = 0; // nowhere to put them
        }
        let nar = NarPipeline::new(resolver.clone(), store.clone(), metrics.clone(), nar_settings);
        Self {
            state: Arc::new(AppState {
                store,
                resolver,
                nar,
                upstreams,
                metrics,
                options,
                cancel,
                node: None,
                installed: None,
                trusted_not_shared,
            }),
        }
    }

    /// Reports this node's status on `/status`. Call before serving.
    pub fn with_node(mut self, node: nixswarm_node::NodeHandle) -> Self {
        let _ = self.state.metrics.node.set(node.stats.clone());
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.node = Some(node);
        }
        self
    }

    /// Reports the shared installed paths on `/status`. Call before serving.
    pub fn with_installed(mut self, installed: nixswarm_node::installed::InstalledStore) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.installed = Some(installed);
        }
        self
    }

    /// The axum router (for tests without sockets, or embedding).
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves on `listener` until `cancel` fires.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let cancel = self.state.cancel.clone();
        // Without TCP_NODELAY a NAR body written after its headers waits for
        // the client's delayed ACK (~40 ms) on every reused connection.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    }
}
