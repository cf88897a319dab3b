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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use nixswarm_protocol::NarInfo;
use support::{ClientStore, Gateway, check, fixture};

use common::Nginx;

const NODES: usize = 8;
const PATHS: usize = 160;
/// Roots drawn per node (with replacement, then deduplicated).
const ROOTS: usize = 8;
const ZIPF_S: f64 = 1.1;

/// Deterministic xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The paths of the benchmark cache: (size in bytes, indexes of references).
fn spec() -> Vec<(u64, Vec<usize>)> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    (0..PATHS)
        .map(|i| {
            let size = (64.0 * (24e6f64 / 64.0).powf(rng.unit())) as u64;
            let n = if i == 0 { 0 } else { (rng.next() % 4) as usize };
            let refs: BTreeSet<usize> = (0..n).map(|_| (rng.next() as usize) % i).collect();
            (size, refs.into_iter().collect())
        })
        .collect()
}

fn nix_expr(spec: &[(u64, Vec<usize>)]) -> String {
    let mut e = String::from(
        "let\n  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" (\"export PATH=/usr/bin:/bin; set -e; \" + script) ]; };\n",
    );
    for (i, (size, refs)) in spec.iter().enumerate() {
        let refs: Vec<String> = refs.iter().map(|r| format!("${{p{r}}}")).collect();
        e.push_str(&format!(
            "  p{i} = mk \"swarm-{i}\" \"mkdir $out; head -c {size} /dev/urandom > $out/blob; echo {} > $out/refs\";\n",
            refs.join(" ")
        ));
    }
    let all: Vec<String> = (0..spec.len()).map(|i| format!("p{i}")).collect();
    e.push_str(&format!("in [ {} ]\n", all.join(" ")));
    e
}

/// Builds (once) the benchmark cache with Nix, signed with the fixture key,
/// NARs uncompressed (so FileSize is NarSize). Returns the cache directory
/// and the store paths in spec order.
fn build_cache(keys: &Path) -> Result<(PathBuf, Vec<String>)> {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-swarm-cache-v1");
    let paths_file = out.join("paths");
    if !out.join("done").exists() {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("paths.nix"), nix_expr(&spec()))?;
        let store = format!("local?root={}", out.join("store").display());
        eprintln!("building the {PATHS}-path benchmark cache with Nix (once)...");
        let mut build = Command::new("nix-build");
        build
            .args(["--store", &store, "--no-out-link", "--max-jobs", "4"])
            .args([
                "--option",
                "sandbox",
                "true",
                "--option",
                "extra-sandbox-paths",
                "/bin /usr /lib /lib64",
            ])
            .arg(out.join("paths.nix"))
            .env("NIX_CONFIG", "build-users-group =\nsubstituters =\n")
            .env("XDG_CACHE_HOME", out.join("xdg"));
        let paths = support::run_ok(&mut build, "nix-build of the benchmark cache")?;
        let to = format!(
            "file://{}?compression=none&secret-key={}",
            out.join("cache").display(),
            keys.join("trusted.sec").display()
        );
        let mut copy = Command::new("nix");
        copy.args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--store",
            &store,
            "--to",
            &to,
        ])
        .args(paths.lines())
        .env("NIX_CONFIG", "build-users-group =\nsubstituters =\n")
        .env("XDG_CACHE_HOME", out.join("xdg"));
        support::run_ok(&mut copy, "nix copy to the benchmark cache")?;
        std::fs::write(&paths_file, &paths)?;
        std::fs::write(out.join("done"), "")?;
    }
    let paths = std::fs::read_to_string(&paths_file)?
        .lines()
        .map(str::to_owned)
        .collect();
    Ok((out.join("cache"), paths))
}

/// NarSize and references of every path, from the cache's narinfos.
fn narinfos(cache: &Path) -> Result<HashMap<String, NarInfo>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(cache)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "narinfo") {
            let info = NarInfo::parse(&std::fs::read_to_string(&p)?).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.insert(info.store_path.to_string(), info);
        }
    }
    Ok(out)
}

fn closure(roots: &[String], infos: &HashMap<String, NarInfo>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(infos[&p].references.iter().map(ToString::to_string));
        }
    }
    seen
}

/// A Zipf-popular sample of roots for each node.
fn samples(paths: &[String]) -> Vec<Vec<String>> {
    let mut rng = Rng(0xfeed_0042_0000_0007);
    // Popularity rank: a fixed shuffle of the paths.
    let mut ranked: Vec<&String> = paths.iter().collect();
    for i in (1..ranked.len()).rev() {
        ranked.swap(i, (rng.next() as usize) % (i + 1));
    }
    let weights: Vec<f64> = (1..=ranked.len()).map(|r| 1.0 / (r as f64).powf(ZIPF_S)).collect();
    let total: f64 = weights.iter().sum();
    (0..NODES)
        .map(|_| {
            let picked: BTreeSet<&String> = (0..ROOTS)
                .map(|_| {
                    let mut x = rng.unit() * total;
                    let mut i = 0;
                    while x > weights[i] && i + 1 < weights.len() {
                        x -= weights[i];
                        i += 1;
                    }
                    ranked[i]
                })
                .collect();
            picked.into_iter().cloned().collect()
        })
        .collect()
}

fn timed_realise(client: &ClientStore, url: &str, key: &str, roots: &[String], what: &str) -> Result<f64> {
    let t = Instant::now();
    check(&client.realise(url, key, roots, false), what)?;
    Ok(t.elapsed().as_secs_f64())
}

/// NAR bytes the access log says were sent.
fn nar_bytes_sent(log: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok(text
        .lines()
        .filter(|l| l.starts_with("/nar/"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum())
}

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
        upstream: nar_bytes_sent(upstream.access_log.as_deref().context("access log")?)?,
        unique: unique_bytes,
        asked,
        nix_swarm,
        nix_nginx,
    })
}

fn main() -> Result<()> {
    let fx = fixture();
    let key = fx.trusted_pub.clone();
    let (cache, paths) = build_cache(&fx.dir.join("keys"))?;
    let infos = narinfos(&cache)?;
    ensure!(infos.len() == PATHS, "the cache has {} narinfos", infos.len());
    let samples = samples(&paths);
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
