//! The WAN benchmark: is Nix through the swarm as fast as the upstream
//! alone when peers are farther away than the cache, and how many bytes do
//! the peers carry? Six cache-mode nodes, each in its own network
//! namespace at 198.18.0.i behind a userspace delay line (10 ms each way to
//! the switch, 1500-byte MTU; `tests/support/delay.rs`): peers are 40 ms
//! apart, the upstream (nginx with an access log, in its own namespace on
//! the switch) 20 ms away. The cache (made with Nix) is the swarm
//! benchmark's 160 paths with compressible contents, NARs stored with zstd
//! (NarSize/FileSize about 2.7). Nix on each node in turn realises a
//! Zipf-popular sample of roots (closures included) through its gateway.
//! Run twice: uplinks uncapped, and every node's uplink capped at 50 Mbit/s
//! (`tc tbf`).
//!
//! References measured in the same run, for nodes 2..N and the same
//! samples with fresh client stores:
//! - the upstream direct: a second nginx beside the upstream;
//! - topology: nginx serving the cache from node 1's namespace, so its
//!   bytes cross the hops and caps a peer's bytes cross;
//! - the line itself: one TCP flow over one delayed hop and over two.
//!
//! The peers' share of the NAR bytes has a bound when the peers are slower
//! than the upstream: a two-ended fetch that is never slower than the
//! upstream alone gets at most P / (ρ·C + P) of a NAR from peers (peer rate
//! P in NAR bytes, upstream rate C in wire bytes, compression ratio ρ). P
//! and C are measured in the same run: one large NAR through a fresh node
//! with no upstream (peers only), and the same NAR's compressed file from
//! the upstream, both from node N's namespace.
//!
//! Run with `scripts/bench-wan.sh` (root: namespaces, TAP devices, tc).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use common::corpus::{Content, PATHS, build_cache, closure, nar_responses, narinfos, samples, timed_realise};
use common::{Nginx, curl_in, pseudo_random};
use nixswarm_protocol::NarInfo;
use support::netns::Net;
use support::{ClientStore, Gateway, fixture};

const NODES: usize = 6;
const DELAY: Duration = Duration::from_millis(10);
const UPSTREAM_IP: &str = "198.18.0.250";
const LINE_TEST: &str = "line-test.bin";

fn node_ip(i: usize) -> String {
    format!("198.18.0.{i}")
}

struct Row {
    uplink: &'static str,
    /// Line capacity, MB/s: one TCP flow over one delayed hop, over two.
    line: (f64, f64),
    /// Upstream wire bytes sent for NARs, and their NAR-byte equivalent.
    upstream_wire: u64,
    upstream_nar: f64,
    /// Unique NARs asked for: wire (FileSize) and NAR bytes.
    unique_wire: u64,
    asked_nar: u64,
    unique_nar: u64,
    nix_swarm: f64,
    nix_direct: f64,
    nix_topology: f64,
    /// Node 1 (no peer holds anything yet): swarm, upstream direct.
    first: (f64, f64),
    /// Peer rate (NAR bytes/s), upstream rate (wire bytes/s), ρ of that NAR.
    peer_rate: f64,
    upstream_rate: f64,
    rho: f64,
}

/// NAR bytes the upstream's access log says it sent: (wire bytes, the NAR
/// bytes they stand for, each response's bytes scaled by its NAR's
/// NarSize/FileSize).
fn upstream_sent(log: &Path, by_url: &HashMap<String, &NarInfo>) -> Result<(u64, f64)> {
    let (mut wire, mut nar) = (0u64, 0f64);
    for (uri, bytes) in nar_responses(log) {
        let info = by_url
            .get(uri.trim_start_matches('/'))
            .context("an unknown NAR in the log")?;
        wire += bytes;
        nar += bytes as f64 * info.nar_size as f64 / info.file_size.unwrap_or(info.nar_size) as f64;
    }
    Ok((wire, nar))
}

fn mbps((secs, bytes): (f64, u64)) -> f64 {
    bytes as f64 / secs / 1e6
}

struct Run<'a> {
    cache: &'a Path,
    key: &'a str,
    samples: &'a [Vec<String>],
    infos: &'a HashMap<String, NarInfo>,
}

impl Run<'_> {
    fn go(&self, uplink: &'static str, cap: Option<u32>) -> Result<Row> {
        let (cache, key, infos) = (self.cache, self.key, self.infos);
        let mut tmp = tempfile::tempdir()?;
        if std::env::var_os("BENCH_KEEP").is_some() {
            tmp.disable_cleanup(true);
            eprintln!("  keeping {}", tmp.path().display());
        }
        let mut net = Net::new("wan")?;
        let up_ns = net.public("up", 250)?;
        let mut ns = Vec::new();
        for i in 1..=NODES {
            let n = net.delayed(&format!("n{i}"), u8::try_from(i)?, DELAY)?;
            if let Some(mbit) = cap {
                Net::cap_uplink(&n, "eth0", mbit)?;
            }
            ns.push(n);
        }
        let upstream = Nginx::start_in(cache, &tmp.path().join("up"), &up_ns, (UPSTREAM_IP, 8080), true)?;
        let direct = Nginx::start_in(cache, &tmp.path().join("direct"), &up_ns, (UPSTREAM_IP, 8081), false)?;
        let topology = Nginx::start_in(cache, &tmp.path().join("topo"), &ns[0], (&node_ip(1), 8080), false)?;

        let last = ns.last().context("no nodes")?.as_str();
        let line = (
            mbps(curl_in(Some(last), &format!("{}/{LINE_TEST}", direct.url))?),
            mbps(curl_in(Some(last), &format!("{}/{LINE_TEST}", topology.url))?),
        );
        eprintln!(
            "  {uplink}: line capacity {:.0} MB/s over one hop, {:.0} over two",
            line.0, line.1
        );

        let flags = ["--contribute", "cache", "--amount", "4G"];
        let start = |i: usize, extra: &[&str], upstreams: &[&str], port: u16| -> Result<Gateway> {
            let ip = node_ip(i);
            let l = [format!("/ip4/{ip}/tcp/{port}"), format!("/ip4/{ip}/udp/{port}/quic-v1")];
            let l: Vec<&str> = l.iter().map(String::as_str).collect();
            let mut f: Vec<&str> = flags.to_vec();
            f.extend(extra);
            Gateway::start_in(
                &ns[i - 1],
                &l,
                &tmp.path().join(format!("n{i}-{port}")),
                upstreams,
                key,
                &f,
            )
        };
        let first = start(1, &[], &[&upstream.url], 4001)?;
        let boot = first.node_addrs[0].clone();
        let mut nodes = vec![first];
        for i in 2..=NODES {
            nodes.push(start(i, &["--bootstrap", &boot], &[&upstream.url], 4001)?);
        }
        for n in &nodes {
            n.wait_for("peers", 1)?;
        }

        let (mut nix_swarm, mut nix_direct, mut nix_topology) = (0.0, 0.0, 0.0);
        let mut first = (0.0, 0.0);
        let mut asked_nar = 0;
        let mut unique = BTreeSet::new();
        for (i, (node, roots)) in nodes.iter().zip(self.samples).enumerate() {
            let paths = closure(roots, infos);
            asked_nar += paths.iter().map(|p| infos[p].nar_size).sum::<u64>();
            unique.extend(paths.iter().cloned());
            let at = &ns[i];
            let client = ClientStore::new_in(&tmp.path().join(format!("client-{i}")), at);
            let t = timed_realise(&client, &node.url, key, roots, &format!("node {} realising", i + 1))?;
            let d = ClientStore::new_in(&tmp.path().join(format!("direct-{i}")), at);
            let td = timed_realise(&d, &direct.url, key, roots, "upstream direct")?;
            if i == 0 {
                eprintln!(
                    "  {uplink}: node 1 realised {} paths in {t:.2}s (upstream direct {td:.2}s)",
                    paths.len()
                );
                first = (t, td);
                continue;
            }
            let r = ClientStore::new_in(&tmp.path().join(format!("topo-{i}")), at);
            let tt = timed_realise(&r, &topology.url, key, roots, "nginx from node 1")?;
            eprintln!(
                "  {uplink}: node {} realised {} paths in {t:.2}s (upstream direct {td:.2}s, nginx from node 1 {tt:.2}s)",
                i + 1,
                paths.len()
            );
            nix_swarm += t;
            nix_direct += td;
            nix_topology += tt;
        }
        if let Some(secs) = std::env::var("BENCH_PAUSE").ok().and_then(|s| s.parse().ok()) {
            for (i, n) in nodes.iter().enumerate() {
                eprintln!(
                    "  node {}: {} in {} (upstream {}, direct {})",
                    i + 1,
                    n.url,
                    ns[i],
                    upstream.url,
                    direct.url
                );
            }
            std::thread::sleep(Duration::from_secs(secs));
        }
        if std::env::var_os("BENCH_KEEP").is_some() {
            for (i, n) in nodes.iter().enumerate() {
                std::fs::write(tmp.path().join(format!("n{}.metrics", i + 1)), n.get("/metrics")?)?;
            }
        }
        let by_url: HashMap<String, &NarInfo> = infos.values().map(|i| (i.url.clone(), i)).collect();
        let (upstream_wire, upstream_nar) =
            upstream_sent(upstream.access_log.as_deref().context("access log")?, &by_url)?;

        // The rates of the bound, on the largest NAR the swarm holds: peers
        // only (a fresh node without an upstream, in node N's namespace), and
        // the upstream's file of it.
        let big = unique
            .iter()
            .max_by_key(|p| infos[*p].nar_size)
            .context("nothing asked")?;
        let info = &infos[big];
        let probe = start(NODES, &["--bootstrap", &boot], &[], 4002)?;
        probe.wait_for("peers", 1)?;
        let t = Instant::now();
        let narinfo = probe.get(&format!("/{}.narinfo", info.store_path.hash()))?;
        let url = NarInfo::parse(&narinfo).map_err(|e| anyhow::anyhow!("{e}"))?.url;
        let (_, got) = curl_in(Some(last), &format!("{}/{url}", probe.url))?;
        ensure!(
            got == info.nar_size,
            "the probe got {got} of {} NAR bytes",
            info.nar_size
        );
        let peer_rate = info.nar_size as f64 / t.elapsed().as_secs_f64();
        let (secs, wire) = curl_in(Some(last), &format!("{}/{}", direct.url, info.url))?;
        let upstream_rate = wire as f64 / secs;
        let rho = info.nar_size as f64 / wire as f64;

        let unique_wire = unique
            .iter()
            .map(|p| infos[p].file_size.unwrap_or(infos[p].nar_size))
            .sum();
        let unique_nar = unique.iter().map(|p| infos[p].nar_size).sum();
        Ok(Row {
            uplink,
            line,
            upstream_wire,
            upstream_nar,
            unique_wire,
            asked_nar,
            unique_nar,
            nix_swarm,
            nix_direct,
            nix_topology,
            first,
            peer_rate,
            upstream_rate,
            rho,
        })
    }
}

fn table(rows: &[Row]) -> String {
    let mb = |b: f64| b / 1e6;
    let mut t = String::from(
        "| uplinks | line MB/s (1 hop / 2 hops) | Nix node 1 (no peer holds anything): swarm / upstream direct | Nix nodes 2..6: swarm / upstream direct (target <= 1.1) | nginx from node 1 / upstream direct (topology) | upstream / unique, wire bytes (target <= 1.05) | peers' share of NAR bytes (ideal) | bound P/(ρ·C+P): P, C, ρ |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let share = 1.0 - r.upstream_nar / r.asked_nar as f64;
        let ideal = 1.0 - r.unique_nar as f64 / r.asked_nar as f64;
        let bound = r.peer_rate / (r.rho * r.upstream_rate + r.peer_rate);
        t.push_str(&format!(
            "| {} | {:.0} / {:.0} | {:.2}s / {:.2}s = {:.2} | {:.1}s / {:.1}s = **{:.2}** | {:.1}s / {:.1}s = {:.2} | {:.0} / {:.0} MB = **{:.2}** | **{:.0}%** ({:.0}%) | {:.0}%: {:.0} MB/s, {:.0} MB/s, {:.1} |\n",
            r.uplink,
            r.line.0,
            r.line.1,
            r.first.0,
            r.first.1,
            r.first.0 / r.first.1,
            r.nix_swarm,
            r.nix_direct,
            r.nix_swarm / r.nix_direct,
            r.nix_topology,
            r.nix_direct,
            r.nix_topology / r.nix_direct,
            mb(r.upstream_wire as f64),
            mb(r.unique_wire as f64),
            r.upstream_wire as f64 / r.unique_wire as f64,
            100.0 * share,
            100.0 * ideal,
            100.0 * bound,
            mb(r.peer_rate),
            mb(r.upstream_rate),
            r.rho,
        ));
    }
    t
}

fn main() -> Result<()> {
    let fx = fixture();
    let key = fx.trusted_pub.clone();
    let (cache, paths) = build_cache(&fx.dir.join("keys"), Content::Hex)?;
    let infos = narinfos(&cache)?;
    ensure!(infos.len() == PATHS, "the cache has {} narinfos", infos.len());
    let line_test = cache.join(LINE_TEST);
    if !line_test.exists() {
        std::fs::write(&line_test, pseudo_random(256 << 20, 7))?;
    }
    let samples = samples(&paths, NODES);
    let run = Run {
        cache: &cache,
        key: &key,
        samples: &samples,
        infos: &infos,
    };
    let only = std::env::var("WAN_ONLY").unwrap_or_default();
    let mut rows = Vec::new();
    for (name, cap) in [("uncapped", None), ("50 Mbit/s", Some(50))] {
        if only.is_empty() || name.starts_with(&only) {
            eprintln!("run with uplinks {name}...");
            rows.push(run.go(name, cap)?);
            let t = table(&rows);
            eprint!("{t}");
        }
    }
    let t = table(&rows);
    print!("{t}");

    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(out, &t)?;
    }
    Ok(())
}
