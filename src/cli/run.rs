//! `nixswarm run`: open the store, start the peer-to-peer node, and serve
//! the gateway until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nixswarm_gateway::guard::AllowedHosts;
use nixswarm_gateway::{Gateway, GatewayOptions, NarSettings, PeerSource, PeerWait, Source, Upstream, http_client};
use nixswarm_node::installed::{InstalledOptions, InstalledStore, NixDb};
use nixswarm_node::p2p::{DhtMode, FetchSettings, Fetcher, load_or_create_key};
use nixswarm_node::store::FsSpace;
use nixswarm_node::{ChunkStore, Node, NodeConfig, SharePolicy, Shelf, Shelves, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigArgs, Contribute, Effective, P2pMode};

/// Flags of `nixswarm run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[cfg(feature = "test-hooks")]
    #[command(flatten)]
    pub hooks: TestHooks,
}

/// Test builds only (feature `test-hooks`): switches that make this node a
/// misbehaving or far-away peer, for tests and benchmarks.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Default, Args)]
pub struct TestHooks {
    /// Serve corrupted chunks to peers (a lying peer).
    #[arg(long, hide = true)]
    pub test_corrupt_chunks: bool,
    /// Serve a fake manifest, and chunks that match it (a lying peer).
    #[arg(long, hide = true, conflicts_with = "test_corrupt_chunks")]
    pub test_fake_manifest: bool,
    /// Delay every byte sent to peers (DHT and transfer, TCP only) by this
    /// long: between two such nodes a round trip takes twice as long.
    #[arg(long, hide = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub test_peer_latency: Option<Duration>,
    /// Claim this address as one of ours (repeatable): a relay then hands
    /// it to every node holding a reservation (a hostile relay).
    #[arg(long, hide = true, value_name = "MULTIADDR")]
    pub test_claim_addr: Vec<libp2p::Multiaddr>,
}

#[cfg(not(feature = "test-hooks"))]
#[derive(Debug, Clone, Default)]
pub struct TestHooks;

pub fn run(args: RunArgs) -> Result<()> {
    let eff = Config::load(&args.config)?.resolve()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    #[cfg(feature = "test-hooks")]
    let hooks = args.hooks;
    #[cfg(not(feature = "test-hooks"))]
    let hooks = TestHooks;
    rt.block_on(serve(eff, hooks))
}

/// Opens the chunk store in `store.location`.
pub fn open_store(eff: &Effective) -> Result<ChunkStore> {
    let dir = &eff.store_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let amount = eff.config.store.amount;
    let fs = FsSpace::of(dir).with_context(|| format!("sizing store.amount {amount} against {}", dir.display()))?;
    let quota = amount.bytes(&fs);
    // Whatever the amount, and whatever else shares the disk, this much of
    // it stays free (least recently used paths are evicted to keep it).
    let keep_free = fs.reserve();
    tracing::info!(%amount, quota, keep_free, filesystem = fs.size, "store size");
    ChunkStore::open(dir, StoreOptions { quota, keep_free })
        .with_context(|| format!("opening the store in {}", dir.display()))
}

/// Opens the donor index of installed paths and starts following the Nix
/// database on its own thread. `None` when installed paths are not shared,
/// or (in cache mode) when there is no Nix database.
fn open_installed(eff: &Effective, cancel: &CancellationToken) -> Result<Option<InstalledStore>> {
    let donor = &eff.config.donor;
    if !donor.shares_installed() {
        return Ok(None);
    }
    let db = NixDb::under(&donor.nix_store_root);
    if !db.path().exists() {
        if donor.contribute == Contribute::Installed {
            bail!(
                "donor.contribute = installed, but there is no Nix database at {} (set --nix-store-root)",
                db.path().display()
            );
        }
        tracing::info!(db = %db.path().display(), "no Nix database: not sharing installed paths");
        return Ok(None);
    }
    let opts = InstalledOptions {
        root: donor.nix_store_root.clone(),
        share_keys: donor.share_keys()?,
        exclude: donor.patterns()?,
        index_rate: donor.index_rate.map(|r| r.0),
        poll: donor.poll_interval,
    };
    let index = eff.data_dir.join("installed.redb");
    let store = InstalledStore::open(&index, opts).with_context(|| format!("opening {}", index.display()))?;
    let (follower, cancel) = (store.clone(), cancel.clone());
    std::thread::Builder::new()
        .name("installed-paths".into())
        .spawn(move || follower.follow(&cancel))
        .context("starting the installed-paths indexer")?;
    tracing::info!(db = %db.path().display(), "sharing signed installed paths");
    Ok(Some(store))
}

async fn start_node(eff: &Effective, shelves: Shelves, hooks: &TestHooks, cancel: &CancellationToken) -> Result<Node> {
    let p2p = &eff.config.p2p;
    let key = load_or_create_key(&eff.data_dir.join("node.key"))?;
    #[allow(unused_mut)]
    let mut config = NodeConfig {
        listen: eff.p2p_listen.clone(),
        bootstrap: eff.bootstrap.clone(),
        mdns: p2p.mdns,
        server: p2p.mode != P2pMode::Client,
        dht: match p2p.mode {
            P2pMode::Auto => DhtMode::Auto,
            P2pMode::Server => DhtMode::Server,
            P2pMode::Client => DhtMode::Client,
        },
        announce_private: p2p.announce_private,
        upnp: p2p.upnp,
        relay: p2p.relay.limits(),
        request_timeout: p2p.peer_timeout,
        upload_limit: p2p.upload_limit.map(|s| s.0).filter(|&r| r > 0),
        ..NodeConfig::default()
    };
    #[cfg(feature = "test-hooks")]
    {
        use nixswarm_node::p2p::Lie;
        config.lie = match (hooks.test_corrupt_chunks, hooks.test_fake_manifest) {
            (true, _) => Lie::Chunks,
            (_, true) => Lie::Manifest,
            _ => Lie::Honest,
        };
        config.test_latency = hooks.test_peer_latency.unwrap_or_default();
        config.test_claims.clone_from(&hooks.test_claim_addr);
    }
    let _ = hooks;
    let node = Node::start(&eff.data_dir.join("p2p"), key, shelves, config, cancel.clone())
        .await
        .context("starting the peer-to-peer node")?;
    for addr in &node.listen_addrs {
        // For scripts and tests: the addresses other nodes bootstrap from.
        println!("nixswarm node listening on {addr}/p2p/{}", node.handle.peer_id());
    }
    Ok(node)
}

async fn serve(eff: Effective, hooks: TestHooks) -> Result<()> {
    let store = open_store(&eff)?;
    let sweeper = store.clone();
    tokio::task::spawn_blocking(move || match sweeper.sweep_orphans() {
        Ok(0) => {}
        Ok(n) => tracing::info!(chunks = n, "removed chunks left by an interrupted download"),
        Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
    });

    let up = &eff.config.upstream;
    let http: Vec<_> = eff.upstreams.iter().filter(|u| u.scheme() != "file").cloned().collect();
    let client = http_client(up.connect_timeout, Duration::from_secs(60), &http).context("building the HTTP client")?;
    let upstreams = http
        .iter()
        .map(|u| Upstream::new(u, client.clone(), up.timeout).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    // In the configured order: an HTTP upstream, or a binary cache in a
    // local directory (file:///DIR, as `nix copy --to` writes it).
    let mut upstream_sources: Vec<Arc<dyn Source>> = Vec::new();
    let mut http_sources = upstreams.iter();
    for u in &eff.upstreams {
        if u.scheme() == "file" {
            upstream_sources.push(Arc::new(nixswarm_gateway::FileSource::new(std::path::Path::new(
                u.path(),
            ))));
        } else if let Some(x) = http_sources.next() {
            upstream_sources.push(Arc::new(x.clone()));
        }
    }

    let cancel = CancellationToken::new();
    tokio::spawn(shutdown_signal(cancel.clone()));
    let installed = open_installed(&eff, &cancel)?;
    let mut shelves: Vec<Arc<dyn Shelf>> = Vec::new();
    if let Some(i) = &installed {
        shelves.push(Arc::new(i.clone()));
    }
    if eff.config.donor.keeps_fetched() {
        shelves.push(Arc::new(store.clone()));
    }
    let share_keys = eff.config.donor.share_keys()?;
    for k in eff.trusted_keys.iter().filter(|k| !share_keys.contains(k)) {
        // Trusting is not sharing: say so once, with the way to share.
        tracing::warn!(
            key = %k.name(),
            "paths signed only by trusted key {:?} are used here but not shared with peers \
             (to share them: --share-key {k}, or donor.share-keys in the configuration)",
            k.name()
        );
    }
    let node = if eff.config.p2p.enable {
        let policy = SharePolicy::new(eff.config.donor.share_keys()?, eff.config.donor.share_content_addressed);
        Some(start_node(&eff, Shelves::new(shelves, policy), &hooks, &cancel).await?)
    } else {
        None
    };

    let mut sources = Vec::new();
    if let Some(node) = &node {
        let fetcher = Fetcher::new(
            node.handle.clone(),
            store.clone(),
            eff.trusted_keys.clone(),
            FetchSettings::default(),
        );
        let p2p = &eff.config.p2p;
        let wait = PeerWait {
            have: p2p.peer_wait_have,
            rate: p2p.peer_wait_rate.0,
            max: p2p.peer_wait_max,
        };
        sources.push(Arc::new(PeerSource::new(fetcher, wait)) as Arc<dyn Source>);
    }
    sources.extend(upstream_sources);

    let options = GatewayOptions {
        priority: eff.config.gateway.priority,
        negative_ttl: eff.config.gateway.negative_ttl,
        keep_fetched: eff.config.donor.keeps_fetched(),
        lookup_budget: eff.config.p2p.lookup_budget,
        nar: NarSettings {
            offload: eff.config.p2p.offload.into(),
            hedge_after: eff.config.p2p.hedge_after,
            ..NarSettings::default()
        },
        allowed_hosts: AllowedHosts::new(eff.config.gateway.allowed_hosts.iter().cloned()),
        share_keys: Some(eff.config.donor.share_keys()?),
        version: crate::VERSION.to_owned(),
    };
    let mut gateway = Gateway::new(
        store,
        sources,
        upstreams,
        eff.trusted_keys.clone(),
        options,
        cancel.clone(),
    );
    if let Some(node) = &node {
        gateway = gateway.with_node(node.handle.clone());
    }
    if let Some(i) = installed {
        gateway = gateway.with_installed(i);
    }
    let listen = eff.config.gateway.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the gateway to {listen} (is another nixswarm running?)"))?;
    let addr = listener.local_addr().context("reading the gateway address")?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the gateway listens beyond this machine: anyone who can reach {addr} can read what this \
             machine has cached and make it fetch and keep paths (gateway.listen = \"127.0.0.1:37515\" keeps \
             it local)"
        );
    }
    tracing::info!(data_dir = %eff.data_dir.display(), upstreams = ?eff.config.upstream.urls, "started");
    // `nixswarm import` with this data directory finds the running node
    // here and loads through it rather than opening the store.
    let address_file = gateway_file(&eff.data_dir);
    if let Err(e) = std::fs::write(&address_file, format!("http://{addr}\n")) {
        tracing::warn!(path = %address_file.display(), error = %e, "cannot record the gateway's address");
    }
    // The last start-up line on stdout, for scripts and tests on port 0.
    println!("nixswarm gateway listening on http://{addr}");

    // Counters a donor watches go on from where the last run left them.
    let node_stats = node.as_ref().map(|n| n.handle.stats.clone());
    super::counters::restore(&eff.data_dir, &gateway.metrics(), node_stats.as_deref());
    let saver = tokio::spawn(super::counters::keep(
        eff.data_dir.clone(),
        gateway.metrics(),
        node_stats,
        cancel.clone(),
    ));

    gateway.serve(listener).await.context("serving the gateway")?;
    finish_writes().await;
    cancel.cancel();
    let _ = saver.await;
    let _ = std::fs::remove_file(&address_file);
    tracing::info!("stopped");
    Ok(())
}

/// Where a running node records its gateway's URL in its data directory.
pub fn gateway_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("gateway.url")
}

/// The longest a stopping gateway waits for the store to finish writing
/// NARs it has served (the store writes behind its clients).
const FINISH_WRITES: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits until the NARs being written behind their clients are committed.
async fn finish_writes() {
    let running = nixswarm_node::IngestWriter::running;
    if running() > 0 {
        tracing::info!(running = running(), "finishing writes to the store");
    }
    let deadline = tokio::time::Instant::now() + FINISH_WRITES;
    while running() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                running = running(),
                "stopping before every served NAR was stored; those are fetched again when asked"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn shutdown_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
    cancel.cancel();
}
