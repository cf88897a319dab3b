//! A hostile identify-push flood, for minutes: one libp2p peer (in this
//! process) claims the DHT protocol and pushes identify messages of 150
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
use futures::StreamExt as _;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, kad, noise, tcp, yamux};
use nixswarm_node::p2p::behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL};
use nixswarm_protocol::SecretKey;
use support::{Gateway, down_upstream, rss};

#[derive(NetworkBehaviour)]
struct Pusher {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

const PER_PUSH: u32 = 150;
const PUSH_EVERY: Duration = Duration::from_millis(50);

fn fresh(i: u32) -> Multiaddr {
    let [_, b, c, d] = i.to_be_bytes();
    format!("/ip4/1.{b}.{c}.{d}/tcp/{}", 1024 + i % 50_000).parse().unwrap()
}

fn secs(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Pushes until `stop`; counts the pushes.
async fn flood(victim: Multiaddr, victim_id: PeerId, stop: Arc<AtomicBool>, pushes: Arc<AtomicU32>) -> Result<()> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut kad =
                kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kad::Config::new(KAD_PROTOCOL));
            kad.set_mode(Some(kad::Mode::Server));
            Pusher {
                identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public())),
                kad,
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.dial(victim)?;
    let mut tick = tokio::time::interval(PUSH_EVERY);
    let (mut claimed, mut connected, mut n) = (Vec::new(), false, 0u32);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == victim_id => connected = true,
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == victim_id => {
                    connected = false;
                    swarm.dial(victim_id)?;
                }
                _ => {}
            },
            _ = tick.tick(), if connected => {
                for a in claimed.drain(..) {
                    swarm.remove_external_address(&a);
                }
                for i in 0..PER_PUSH {
                    let a = fresh(n.wrapping_mul(PER_PUSH).wrapping_add(i));
                    swarm.add_external_address(a.clone());
                    claimed.push(a);
                }
                swarm.behaviour_mut().identify.push([victim_id]);
                n += 1;
                pushes.store(n, Ordering::Relaxed);
            }
        }
    }
    Ok(())
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
    let attack = rt.spawn(flood(node, victim_id, stop.clone(), pushes.clone()));
    let flooded = watch(&victim, &addr, flood_secs)?;
    let flood_addrs = addresses(&victim)?;
    stop.store(true, Ordering::Relaxed);
    rt.block_on(attack).context("the flooder")??;
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
