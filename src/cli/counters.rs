//! The counters a donor watches (NAR bytes served to Nix by source, egress
//! saved, bytes served to and fetched from peers) survive restarts: saved
//! in the data directory every 30 s and at shutdown, added back at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result};
use nixswarm_gateway::metrics::Metrics;
use nixswarm_node::p2p::NodeStats;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How often the counters are saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// The saved counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub served_local: u64,
    pub served_peer: u64,
    pub served_upstream: u64,
    pub bytes_served: u64,
    pub bytes_fetched: u64,
}

/// The counters' file in `data_dir`.
pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("counters.json")
}

/// What the process counts now.
pub fn current(metrics: &Metrics, node: Option<&NodeStats>) -> Counters {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Counters {
        served_local: metrics.served_total("local"),
        served_peer: metrics.served_total("peer"),
        served_upstream: metrics.served_total("upstream"),
        bytes_served: node.map_or(0, |s| n(&s.bytes_served)),
        bytes_fetched: node.map_or(0, |s| n(&s.bytes_fetched)),
    }
}

/// Adds the saved counters to this process's (once, at start). A missing
/// file is a first start; an unreadable one is reported and left alone.
pub fn restore(data_dir: &Path, metrics: &Metrics, node: Option<&NodeStats>) -> Counters {
    let path = file(data_dir);
    let saved = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Counters>(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "counters unreadable: counting from zero");
                return Counters::default();
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Counters::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "counters unreadable: counting from zero");
            return Counters::default();
        }
    };
    metrics.served("local", saved.served_local);
    metrics.served("peer", saved.served_peer);
    metrics.served("upstream", saved.served_upstream);
    if let Some(s) = node {
        s.bytes_served.fetch_add(saved.bytes_served, Ordering::Relaxed);
        s.bytes_fetched.fetch_add(saved.bytes_fetched, Ordering::Relaxed);
    }
    saved
}

/// Writes `c` (to a temporary file, then renamed: a crash leaves the old
/// or the new counters, never half of them).
pub fn save(data_dir: &Path, c: &Counters) -> Result<()> {
    let path = file(data_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(c)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))
}

/// Saves every [`SAVE_EVERY`] until `cancel`, then once more.
pub async fn keep(data_dir: PathBuf, metrics: Arc<Metrics>, node: Option<Arc<NodeStats>>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.tick().await;
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            () = cancel.cancelled() => true,
        };
        if let Err(e) = save(&data_dir, &current(&metrics, node.as_deref())) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the counters");
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_added_back_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let stats = NodeStats::default();
        m.served("peer", 100);
        stats.bytes_served.store(7, Ordering::Relaxed);
        save(dir.path(), &current(&m, Some(&stats))).unwrap();
        let (m2, stats2) = (Metrics::new(), NodeStats::default());
        restore(dir.path(), &m2, Some(&stats2));
        m2.served("peer", 1);
        assert_eq!(m2.served_total("peer"), 101);
        assert_eq!(stats2.bytes_served.load(Ordering::Relaxed), 7);
        // A damaged file counts from zero.
        std::fs::write(file(dir.path()), "{").unwrap();
        assert_eq!(restore(dir.path(), &Metrics::new(), None), Counters::default());
    }
}
