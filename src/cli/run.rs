//! `nixswarm run`: open the store and serve the gateway until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use nixswarm_gateway::{Gateway, GatewayOptions, Source, Upstream, http_client};
use nixswarm_node::{ChunkStore, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigArgs};

/// Flags of `nixswarm run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let eff = Config::load(&args.config)?.resolve()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(eff))
}

async fn serve(eff: crate::config::Effective) -> Result<()> {
    let store_dir = eff.data_dir.join("store");
    let store = ChunkStore::open(
        &store_dir,
        StoreOptions {
            quota: eff.config.store.cache_size.0,
        },
    )
    .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let sweeper = store.clone();
    tokio::task::spawn_blocking(move || match sweeper.sweep_orphans() {
        Ok(0) => {}
        Ok(n) => tracing::info!(chunks = n, "removed chunks left by an interrupted download"),
        Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
    });

    let up = &eff.config.upstream;
    let client = http_client(up.connect_timeout, Duration::from_secs(60)).context("building the HTTP client")?;
    let upstreams = eff
        .upstreams
        .iter()
        .map(|u| Upstream::new(u, client.clone(), up.timeout).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let sources: Vec<Arc<dyn Source>> = upstreams
        .iter()
        .map(|u| Arc::new(u.clone()) as Arc<dyn Source>)
        .collect();

    let cancel = CancellationToken::new();
    let options = GatewayOptions {
        priority: eff.config.gateway.priority,
        negative_ttl: eff.config.gateway.negative_ttl,
        keep_fetched: true,
    };
    let gateway = Gateway::new(
        store,
        sources,
        upstreams,
        eff.trusted_keys.clone(),
        options,
        cancel.clone(),
    );
    let listen = eff.config.gateway.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the gateway to {listen} (is another nixswarm running?)"))?;
    let addr = listener.local_addr().context("reading the gateway address")?;
    tracing::info!(data_dir = %eff.data_dir.display(), upstreams = ?eff.config.upstream.urls, "started");
    // One line on stdout, for scripts and tests that start us on port 0.
    println!("nixswarm gateway listening on http://{addr}");

    tokio::spawn(shutdown_signal(cancel.clone()));
    gateway.serve(listener).await.context("serving the gateway")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
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
