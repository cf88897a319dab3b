//! A gateway with no peers: what does putting nixswarm between Nix and its
//! cache cost when the swarm has nothing to give? This is every new node's
//! first hour, and the floor under every other figure.
//!
//! The cache is the WAN benchmark's (160 paths made with Nix, references,
//! NARs up to ~23 MB, zstd with NarSize/FileSize about 2.1), served on
//! 127.0.0.1 by nginx. In each round, with fresh client stores and a fresh
//! gateway data dir, Nix realises all 160 paths:
//! - directly from nginx (the reference);
//! - through `nixswarm run` with nginx as its upstream (started afresh and
//!   left to finish its start-up), keeping what it fetches (the default);
//! - the same with `--contribute none` (keeping nothing).
//!
//! Reported: the median time of each and its ratio to the reference, and
//! the gateway's CPU seconds per GB of NAR (user + system, from /proc).
//! `BENCH_RUNS` sets the rounds (default 5).
//!
//! Run with `scripts/bench-alone.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::Result;
use common::corpus::{PATHS, hex_cache, runs, timed_realise};
use common::{Nginx, cpu_seconds, median};
use support::{ClientStore, Gateway, fixture};

/// One way of fetching: its times and the gateway's CPU seconds per round.
#[derive(Default)]
struct Series {
    secs: Vec<f64>,
    cpu: Vec<f64>,
}

/// Waits until a freshly started gateway is idle (start-up work done: a
/// user's runs long before Nix asks), at most 5 s.
fn settle(pid: u32) -> Result<()> {
    let mut last = cpu_seconds(pid)?;
    for _ in 0..25 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = cpu_seconds(pid)?;
        if now - last < 0.005 {
            break;
        }
        last = now;
    }
    Ok(())
}

fn main() -> Result<()> {
    let runs = runs(5);
    let fx = fixture();
    let key = fx.trusted_pub.clone();
    let (cache, paths, nar_gb) = hex_cache(&fx.dir.join("keys"))?;
    let tmp = tempfile::tempdir()?;
    let nginx = Nginx::start(&cache, &tmp.path().join("nginx"))?;
    let modes: [(&str, &[&str]); 2] = [("keeping", &[]), ("keeping nothing", &["--contribute", "none"])];
    let mut direct = Series::default();
    let mut via: Vec<Series> = modes.iter().map(|_| Series::default()).collect();
    for round in 0..runs {
        for (m, ((name, flags), series)) in modes.iter().zip(&mut via).enumerate() {
            let dir = tmp.path().join(format!("r{round}-{m}"));
            let client = ClientStore::new(&dir.join("direct"));
            direct
                .secs
                .push(timed_realise(&client, &nginx.url, &key, &paths, "nginx direct")?);
            let gw = Gateway::start_with(&dir.join("gw"), &[&nginx.url], &key, flags)?;
            settle(gw.pid())?;
            let cpu0 = cpu_seconds(gw.pid())?;
            let client = ClientStore::new(&dir.join("client"));
            let t = timed_realise(&client, &gw.url, &key, &paths, name)?;
            series.cpu.push(cpu_seconds(gw.pid())? - cpu0);
            series.secs.push(t);
            eprintln!(
                "round {round}: {name}: {t:.2}s, nginx direct {:.2}s",
                direct.secs.last().unwrap()
            );
            drop(gw);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let reference = median(direct.secs.clone());
    let mut table = format!(
        "| Nix realising {PATHS} paths ({:.0} MB of NARs) | median s | ratio to nginx direct (target <= 1.1) | gateway CPU s per GB |\n|---|---|---|---|\n| nginx direct | {reference:.2} | 1.00 | |\n",
        nar_gb * 1000.0
    );
    for ((name, _), s) in modes.iter().zip(&via) {
        let t = median(s.secs.clone());
        table.push_str(&format!(
            "| gateway, no peers, {name} | {t:.2} | {:.2} | {:.1} |\n",
            t / reference,
            median(s.cpu.clone()) / nar_gb
        ));
    }
    print!("{table}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(out, &table)?;
    }
    Ok(())
}
