//! Prometheus metrics served on `/metrics`, named `nixswarm_<thing>_<unit>`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use nixswarm_node::p2p::NodeStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels for requests: the route and where the answer came from
/// (`local`, `upstream`, `peer`, or `none` for a miss).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub source: String,
}

/// Labels for answers, by HTTP status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

/// Labels for bytes served, by source.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// Labels for bytes served from one upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

/// Labels for latency, by route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Labels for rejected data: which source and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source: String,
    pub reason: String,
}

/// All gateway metrics.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests per store path (for the dashboard).
    pub top_paths: crate::activity::TopPaths,
    /// Paths handed over by `nixswarm import` (for the dashboard).
    pub imports: crate::activity::Imports,
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<StatusLabels, Counter>,
    /// Requests refused because a web page could have sent them
    /// (see [`crate::guard`]).
    pub refused_requests: Counter,
    pub bytes: Family<SourceLabels, Counter>,
    pub upstream_bytes: Family<UpstreamLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub rejected: Family<RejectLabels, Counter>,
    pub store_paths: Gauge,
    pub store_bytes: Gauge,
    pub installed_paths: Gauge,
    pub installed_bytes: Gauge,
    pub installed_queued: Gauge,
    /// NAR bytes fetched from peers into the store when their narinfo was
    /// served, before Nix asked for the NAR.
    pub prefetched_bytes: Counter,
    /// Of those, the bytes of NARs Nix then asked for.
    pub prefetched_asked_bytes: Counter,
    /// Prefetches a NAR request took over as the peers' tail of its
    /// two-ended fetch, and the bytes they had brought by then.
    pub prefetch_tails: Counter,
    pub prefetch_tail_bytes: Counter,
    /// The node's transfer counters, once a node is attached.
    pub node: Arc<OnceLock<Arc<NodeStats>>>,
}

/// Reads the node's own counters at each scrape (they live in the node, as
/// atomics the swarm task and the fetcher bump).
#[derive(Debug)]
struct NodeCounters(Arc<OnceLock<Arc<NodeStats>>>);

impl Collector for NodeCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = self.0.get() else {
            return Ok(());
        };
        let counters = [
            (
                "node_served_bytes",
                "Chunk bytes (uncompressed) served to peers",
                &stats.bytes_served,
            ),
            (
                "node_fetched_bytes",
                "NAR bytes fetched from peers and verified, each chunk once per transfer",
                &stats.bytes_fetched,
            ),
            (
                "node_fetched_duplicate_bytes",
                "Verified chunk bytes received a second time (endgame duplicates)",
                &stats.bytes_fetched_duplicate,
            ),
            (
                "node_fetched_wire_bytes",
                "Bytes on the wire of verified chunk answers (compressed where asked and smaller)",
                &stats.bytes_fetched_wire,
            ),
            (
                "node_fetched_inline_bytes",
                "NAR bytes that came with a path's lookup (small NARs in one round trip)",
                &stats.bytes_fetched_inline,
            ),
        ];
        let waited = stats.upload.get().map_or(0, |l| l.throttle().waited_ms);
        let counters: Vec<(&str, &str, u64)> = counters
            .into_iter()
            .map(|(n, h, v)| (n, h, v.load(Ordering::Relaxed)))
            .chain([(
                "node_upload_throttled_milliseconds",
                "Time senders waited for the upload limit, in all",
                waited,
            )])
            .collect();
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let refused = stats.dials_refused();
        let mut family = encoder.encode_descriptor(
            "node_dials_refused",
            "Dials refused: a target that is not public (outside LAN mode), or over a rate per target, per peer or in all",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("not_public", refused.not_public),
            ("target_rate", refused.target_rate),
            ("peer_rate", refused.peer_rate),
            ("total_rate", refused.total_rate),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        let reach = stats.reach.lock().map(|r| r.clone()).unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "node_reachability",
            "1 for the current state: public (a direct address confirmed), private (behind NAT) or unknown",
            None,
            MetricType::Gauge,
        )?;
        for state in ["public", "private", "unknown"] {
            ConstGauge::new(i64::from(reach.state == state)).encode(family.encode_family(&[("state", state)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "node_external_address",
            "The addresses advertised to peers (direct, or through a relay)",
            None,
            MetricType::Gauge,
        )?;
        for a in &reach.external_addrs {
            ConstGauge::new(1).encode(family.encode_family(&[("address", a.as_str())])?)?;
        }
        for (name, help, value) in [
            (
                "node_relay_reservations",
                "Relays holding (or asked for) a reservation for this node",
                reach.relays.len() as i64,
            ),
            (
                "node_dht_server",
                "1 while Kademlia answers queries (server mode)",
                i64::from(reach.dht_server),
            ),
            (
                "node_peers",
                "Peers connected",
                i64::try_from(stats.peers.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "node_connections",
                "Connections established (a peer may have a TCP, a QUIC and a relayed one)",
                i64::try_from(stats.connections.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "node_upload_throttling",
                "1 while the upload limit holds senders back (within the last 5 s)",
                i64::from(stats.upload.get().is_some_and(|l| l.throttle().now)),
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("nixswarm");
        let requests = Family::<RequestLabels, Counter>::default();
        let responses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "gateway_responses",
            "Gateway answers by HTTP status code",
            responses.clone(),
        );
        let refused_requests = Counter::default();
        registry.register(
            "gateway_refused_requests",
            "Requests refused for a Host, Origin or Sec-Fetch-Site a web page would send",
            refused_requests.clone(),
        );
        let bytes = Family::<SourceLabels, Counter>::default();
        let upstream_bytes = Family::<UpstreamLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let rejected = Family::<RejectLabels, Counter>::default();
        let store_paths = Gauge::default();
        let store_bytes = Gauge::default();
        let (installed_paths, installed_bytes, installed_queued) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "gateway_requests",
            "Gateway requests by route and answering source",
            requests.clone(),
        );
        registry.register(
            "gateway_served_bytes",
            "NAR bytes served to the client, by source (local, peer, upstream)",
            bytes.clone(),
        );
        registry.register(
            "gateway_upstream_served_bytes",
            "NAR bytes served to the client from each upstream",
            upstream_bytes.clone(),
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Time to answer (headers), by route",
            latency.clone(),
        );
        registry.register(
            "gateway_rejected",
            "Narinfos and NARs rejected by verification, by source and reason",
            rejected.clone(),
        );
        registry.register(
            "store_paths",
            "Store paths held in the local chunk store",
            store_paths.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes of chunk data held in the local chunk store",
            store_bytes.clone(),
        );
        registry.register(
            "installed_paths",
            "Installed store paths shared from the Nix store (donor mode)",
            installed_paths.clone(),
        );
        registry.register(
            "installed_bytes",
            "NAR bytes of the shared installed paths",
            installed_bytes.clone(),
        );
        registry.register(
            "installed_queued",
            "Valid installed paths waiting to be indexed",
            installed_queued.clone(),
        );
        let (prefetched_bytes, prefetched_asked_bytes) = (Counter::default(), Counter::default());
        registry.register(
            "gateway_prefetched_bytes",
            "NAR bytes fetched from peers into the store when the narinfo was served",
            prefetched_bytes.clone(),
        );
        registry.register(
            "gateway_prefetched_asked_bytes",
            "Prefetched NAR bytes that Nix then asked for (the rest it never did)",
            prefetched_asked_bytes.clone(),
        );
        let (prefetch_tails, prefetch_tail_bytes) = (Counter::default(), Counter::default());
        registry.register(
            "gateway_prefetch_tails",
            "Prefetches a NAR request took over as the peers' tail of its fetch (the upstream sends the head)",
            prefetch_tails.clone(),
        );
        registry.register(
            "gateway_prefetch_tail_bytes",
            "NAR bytes those prefetches had brought when taken over",
            prefetch_tail_bytes.clone(),
        );
        let node = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(NodeCounters(node.clone())));
        Arc::new(Self {
            registry,
            top_paths: crate::activity::TopPaths::default(),
            imports: crate::activity::Imports::default(),
            requests,
            responses,
            refused_requests,
            bytes,
            upstream_bytes,
            latency,
            rejected,
            store_paths,
            store_bytes,
            installed_paths,
            installed_bytes,
            installed_queued,
            prefetched_bytes,
            prefetched_asked_bytes,
            prefetch_tails,
            prefetch_tail_bytes,
            node,
        })
    }

    pub fn request(&self, route: &str, source: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                source: source.into(),
            })
            .inc();
    }

    pub fn reject(&self, source: &str, reason: &str) {
        self.rejected
            .get_or_create(&RejectLabels {
                source: source.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn served(&self, source: &str, n: u64) {
        self.bytes
            .get_or_create(&SourceLabels { source: source.into() })
            .inc_by(n);
    }

    pub fn served_upstream(&self, upstream: &str, n: u64) {
        self.upstream_bytes
            .get_or_create(&UpstreamLabels {
                upstream: upstream.into(),
            })
            .inc_by(n);
    }

    /// NAR bytes served so far from `source` (local, peer, upstream).
    pub fn served_total(&self, source: &str) -> u64 {
        self.bytes.get_or_create(&SourceLabels { source: source.into() }).get()
    }

    pub fn observe(&self, route: &str, seconds: f64) {
        self.latency
            .get_or_create(&RouteLabels { route: route.into() })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
