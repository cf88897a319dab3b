//! A hostile identify-push flood, for minutes: one libp2p peer (in this
//! process: `p2p::identify_flood`, test builds only) claims the DHT protocol and pushes identify messages of 150
//! fresh public addresses 20 times a second at a `nixswarm run` on
//! 127.0.0.1 (mDNS and UPnP off, upstream down). Measured on the victim,
//! first idle for `BENCH_IDLE_SECS` (default 20) as the reference, then
//! under the flood for `BENCH_FLOOD_SECS` (default 180): its CPU seconds
//! (user + system, from /proc), its resident memory, the latency of its
//! `/status` answers (one a second, over a fresh connection), and the
//! addresses its routing table holds.
//!
//! Run with `scripts/bench-flood.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use common::{cpu_seconds, percentile};
use libp2p::Multiaddr;
use nixswarm_node::p2p::identify_flood::{self, PER_PUSH};
use nixswarm_protocol::SecretKey;
use support::{Gateway, down_upstream, rss};

fn secs(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Milliseconds for one `/status` over a fresh connection.
fn status_ms(addr: &str) -> Result<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    anyhow::ensure!(
        body.starts_with(b"HTTP/1.1 200"),
        "status answered {:?}",
        String::from_utf8_lossy(&body[..body.len().min(40)])
    );
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// One phase's samples, a second apart.
struct Phase {
    cpu: f64,
    secs: f64,
    rss_start: u64,
    rss_end: u64,
    rss_max: u64,
    status: Vec<f64>,
}

fn watch(g: &Gateway, addr: &str, secs: u64) -> Result<Phase> {
    let pid = g.pid();
    let (c0, t0, r0) = (cpu_seconds(pid)?, Instant::now(), rss(pid)?);
    let (mut status, mut rss_max) = (Vec::new(), r0);
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        status.push(status_ms(addr)?);
        rss_max = rss_max.max(rss(pid)?);
    }
    Ok(Phase {
        cpu: cpu_seconds(pid)? - c0,
        secs: t0.elapsed().as_secs_f64(),
        rss_start: r0,
        rss_end: rss(pid)?,
        rss_max,
        status,
    })
}

fn row(name: &str, p: &Phase, addrs: &str) -> String {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    format!(
        "| {name} | {:.0} | {:.2} ({:.1}% of a core) | {:.0} → {:.0} (max {:.0}) | {:.1} / {:.1} / {:.1} | {addrs} |",
        p.secs,
        p.cpu,
        100.0 * p.cpu / p.secs,
        mib(p.rss_start),
        mib(p.rss_end),
        mib(p.rss_max),
        percentile(p.status.clone(), 0.5),
        percentile(p.status.clone(), 0.99),
        p.status.iter().copied().fold(0.0, f64::max),
    )
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    // SAFETY: set before any thread is spawned.
    unsafe { std::env::set_var("NIXSWARM_CHILD_LOG", "warn") };
    let tmp = common::scratch()?;
    let key = SecretKey::from_seed("nixswarm-bench-1", &[42; 32])
        .public_key()
        .to_string();
    let victim = Gateway::start_with(&tmp.path().join("victim"), &[&down_upstream()], &key, &[])?;
    let addr = victim.url.trim_start_matches("http://").to_owned();
    let node: Multiaddr = victim.node_addrs[0].parse()?;
    let victim_id = match node.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => id,
        _ => anyhow::bail!("no peer id in {node}"),
    };
    let (idle_secs, flood_secs) = (secs("BENCH_IDLE_SECS", 20), secs("BENCH_FLOOD_SECS", 180));
    eprintln!("victim idle for {idle_secs} s...");
    let idle = watch(&victim, &addr, idle_secs)?;
    let addresses = |g: &Gateway| -> Result<String> {
        let s: serde_json::Value = serde_json::from_str(&g.get("/status")?)?;
        Ok(s["node"]["routing_addresses"].to_string())
    };
    let idle_addrs = addresses(&victim)?;
    eprintln!("flooding for {flood_secs} s...");
    let (stop, pushes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (me, _) = tokio::sync::oneshot::channel();
    let attack = rt.spawn(identify_flood::run(
        true,
        node,
        victim_id,
        None,
        stop.clone(),
        pushes.clone(),
        me,
    ));
    let flooded = watch(&victim, &addr, flood_secs)?;
    let flood_addrs = addresses(&victim)?;
    stop.store(true, Ordering::Relaxed);
    rt.block_on(attack)
        .context("the flooder")?
        .map_err(|e| anyhow::anyhow!("the flooder: {e}"))?;
    let n = pushes.load(Ordering::Relaxed);
    let table = format!(
        "| phase | seconds | victim CPU s | victim RSS MiB | `/status` p50 / p99 / max, ms | routing table addresses |\n|---|---|---|---|---|---|\n{}\n{}\n\n{n} identify pushes of {PER_PUSH} fresh addresses ({} addresses claimed).\n",
        row("idle", &idle, &idle_addrs),
        row("identify-push flood", &flooded, &flood_addrs),
        u64::from(n) * u64::from(PER_PUSH),
    );
    println!("{table}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(out, &table)?;
    }
    victim.stop()?;
    Ok(())
}
