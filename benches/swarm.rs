//! The swarm benchmark: does the swarm carry the bytes? Eight cache-mode
//! nodes as separate `nixswarm run` processes on 127.0.0.1 (mDNS off), one
//! upstream (nginx with an access log) serving a cache made with Nix: 160
//! input-addressed paths with references, NARs from 64 bytes to ~24 MB
//! (log-uniform). Nix on each node in turn realises a Zipf-popular sample
//! of roots (closures included) through that node's gateway. Run once with
//! no peer latency and once with every node's peer traffic 30 ms late each
//! way (`--test-peer-latency`, a test-only switch; the upstream is at 0 ms).
//!
//! Reported, per run, in one Markdown table:
//! - upstream NAR bytes / unique NAR bytes asked for (ideal 1.00: each path
//!   leaves the upstream once), from nginx's own access log;
//! - the offload share (NAR bytes not from the upstream, of all NAR bytes
//!   the nodes' Nix asked for) against its ideal (1 - unique / asked);
//! - Nix's time on nodes 2..N against nginx direct for the same samples
//!   (a second nginx, fresh client stores).
//!
//! Run with `scripts/bench-swarm.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use nixswarm_protocol::NarInfo;
use support::{ClientStore, Gateway, fixture};

use common::Nginx;
use common::corpus::{Content, PATHS, build_cache, closure, nar_bytes_sent, narinfos, samples, timed_realise};

const NODES: usize = 8;

struct Row {
    latency: &'static str,
    upstream: u64,
    unique: u64,
    asked: u64,
    nix_swarm: f64,
    nix_nginx: f64,
}

fn run(
    latency: &'static str,
    cache: &Path,
    key: &str,
    samples: &[Vec<String>],
    infos: &HashMap<String, NarInfo>,
) -> Result<Row> {
    let tmp = tempfile::tempdir()?;
    let upstream = Nginx::start_logged(cache, &tmp.path().join("up"))?;
    let reference = Nginx::start(cache, &tmp.path().join("ref"))?;
    let mut flags: Vec<&str> = vec!["--contribute", "cache", "--amount", "4G"];
    if latency != "0ms" {
        flags.extend(["--test-peer-latency", latency]);
    }
    let first = Gateway::start_with(&tmp.path().join("n1"), &[&upstream.url], key, &flags)?;
    let boot = first.node_addrs[0].clone();
    let mut nodes = vec![first];
    for i in 2..=NODES {
        let mut f = flags.clone();
        f.extend(["--bootstrap", boot.as_str()]);
        nodes.push(Gateway::start_with(
            &tmp.path().join(format!("n{i}")),
            &[&upstream.url],
            key,
            &f,
        )?);
    }
    for n in &nodes {
        n.wait_for("peers", 1)?;
    }
    let (mut nix_swarm, mut nix_nginx) = (0.0, 0.0);
    let mut asked = 0u64;
    let mut unique = BTreeSet::new();
    for (i, (node, roots)) in nodes.iter().zip(samples).enumerate() {
        let paths = closure(roots, infos);
        asked += paths.iter().map(|p| infos[p].nar_size).sum::<u64>();
        unique.extend(paths.iter().cloned());
        let client = ClientStore::new(&tmp.path().join(format!("client-{i}")));
        let t = timed_realise(&client, &node.url, key, roots, &format!("node {} realising", i + 1))?;
        eprintln!("  {latency}: node {} realised {} paths in {t:.2}s", i + 1, paths.len());
        if i > 0 {
            nix_swarm += t;
            let direct = ClientStore::new(&tmp.path().join(format!("direct-{i}")));
            nix_nginx += timed_realise(&direct, &reference.url, key, roots, "nginx direct")?;
        }
    }
    let unique_bytes = unique.iter().map(|p| infos[p].nar_size).sum();
    Ok(Row {
        latency,
        upstream: nar_bytes_sent(upstream.access_log.as_deref().context("access log")?),
        unique: unique_bytes,
        asked,
        nix_swarm,
        nix_nginx,
    })
}

fn main() -> Result<()> {
    let fx = fixture();
    let key = fx.trusted_pub.clone();
    let (cache, paths) = build_cache(&fx.dir.join("keys"), Content::Random)?;
    let infos = narinfos(&cache)?;
    ensure!(infos.len() == PATHS, "the cache has {} narinfos", infos.len());
    let samples = samples(&paths, NODES);
    let mut rows = Vec::new();
    for latency in ["0ms", "30ms"] {
        eprintln!("run with peer latency {latency}...");
        rows.push(run(latency, &cache, &key, &samples, &infos)?);
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut table = String::from(
        "| peer latency (each way) | upstream NAR MiB | unique NAR MiB asked | upstream / unique (target <= 1.05) | offload share (ideal) | Nix time nodes 2..8, swarm / nginx direct |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.1}% ({:.1}%) | {:.1}s / {:.1}s = {:.2} |\n",
            r.latency,
            mib(r.upstream),
            mib(r.unique),
            r.upstream as f64 / r.unique as f64,
            100.0 * (1.0 - r.upstream as f64 / r.asked as f64),
            100.0 * (1.0 - r.unique as f64 / r.asked as f64),
            r.nix_swarm,
            r.nix_nginx,
            r.nix_swarm / r.nix_nginx,
        ));
    }
    print!("{table}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(out, &table)?;
    }
    Ok(())
}
