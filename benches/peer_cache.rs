//! The whole cache through peers: Nix realises every path of a Nix-made
//! cache through a gateway whose only source is peers (its upstream is
//! down), against nginx serving the same cache directly.
//!
//! The cache is the WAN benchmark's (160 paths with references, 182 MB of
//! NARs, zstd, NarSize/FileSize about 2.1), imported into 1 and into 4
//! seed nodes on 127.0.0.1. In each round, with fresh client stores and a
//! fresh client gateway, Nix realises all 160 paths from nginx directly
//! and through the gateway from the seeds, the gateway keeping what it
//! fetches and keeping nothing; and, as a row of its own, only the paths
//! whose closures hold no NAR of 1 MiB or more (the small paths, where
//! round trips per path weigh most), against nginx direct for the same
//! paths. Reported: median times, their ratio to nginx direct for the same
//! paths in the same rounds, and CPU seconds per GB of NAR of the seeds
//! (all of them) and of the client gateway. `BENCH_RUNS` sets the rounds
//! (default 3).
//!
//! Run with `scripts/bench-p2p.sh` (after the single-NAR benchmark).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::Result;
use common::corpus::{PATHS, closure, hex_cache, narinfos, runs, timed_realise};
use common::{Nginx, cpu_seconds, file_creation_cost, median};
use support::{ClientStore, Gateway, copy_dir, down_upstream, fixture, import_paths};

/// A NAR at least this large makes a path not small.
const SMALL_NAR: u64 = 1 << 20;

/// One configuration's times and CPU seconds per round.
#[derive(Default)]
struct Series {
    direct: Vec<f64>,
    secs: Vec<f64>,
    seeds_cpu: Vec<f64>,
    client_cpu: Vec<f64>,
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let runs = runs(3);
    let fx = fixture();
    let key = fx.trusted_pub.clone();
    let (cache, paths, nar_gb) = hex_cache(&fx.dir.join("keys"))?;
    let tmp = common::scratch()?;
    let nginx = Nginx::start(&cache, &tmp.path().join("nginx"))?;
    let seeded = tmp.path().join("seeded");
    import_paths(&seeded, &cache, &key, PATHS)?;
    let down = down_upstream();

    let infos = narinfos(&cache)?;
    let small: Vec<String> = paths
        .iter()
        .filter(|p| {
            closure(std::slice::from_ref(*p), &infos)
                .iter()
                .all(|q| infos[q].nar_size < SMALL_NAR)
        })
        .cloned()
        .collect();
    let small_gb = small.iter().map(|p| infos[p].nar_size).sum::<u64>() as f64 / 1e9;
    let configs: [(usize, &str, &[&str], &[String]); 4] = [
        (1, "1 peer, keeping", &[], &paths),
        (1, "1 peer, keeping nothing", &["--contribute", "none"], &paths),
        (4, "4 peers, keeping", &[], &paths),
        (1, "1 peer, keeping, small paths only", &[], &small),
    ];
    let mut via: Vec<Series> = configs.iter().map(|_| Series::default()).collect();
    // What keeping costs the kernel on this disk now: about one file per
    // 64 KiB of NAR (2,800 for this cache), measured each round.
    let mut creating = Vec::new();
    for round in 0..runs {
        creating.push(file_creation_cost(tmp.path(), 3000)?);
        for (c, ((n, name, flags, paths), series)) in configs.iter().zip(&mut via).enumerate() {
            let dir = tmp.path().join(format!("r{round}-{c}"));
            let mut seeds: Vec<Gateway> = Vec::new();
            for i in 0..*n {
                let d = dir.join(format!("seed{i}"));
                copy_dir(&seeded, &d)?;
                let boot = seeds.first().map(|s| s.node_addrs[0].clone());
                let extra: Vec<&str> = boot.iter().flat_map(|b| ["--bootstrap", b.as_str()]).collect();
                seeds.push(Gateway::start_with(&d, &[], &key, &extra)?);
            }
            for s in &seeds {
                s.wait_for("provided_keys", PATHS as u64)?;
            }
            std::process::Command::new("sync").status()?;
            let client = ClientStore::new(&dir.join("direct"));
            series
                .direct
                .push(timed_realise(&client, &nginx.url, &key, paths, "nginx direct")?);
            let mut gw_flags = vec!["--bootstrap", seeds[0].node_addrs[0].as_str()];
            gw_flags.extend_from_slice(flags);
            let gw = Gateway::start_with(&dir.join("gw"), &[&down], &key, &gw_flags)?;
            gw.wait_for("peers", *n as u64)?;
            let seeds_cpu0: f64 = seeds.iter().map(|s| cpu_seconds(s.pid()).unwrap_or(0.0)).sum();
            let cpu0 = cpu_seconds(gw.pid())?;
            let client = ClientStore::new(&dir.join("client"));
            let t = timed_realise(&client, &gw.url, &key, paths, name)?;
            series.client_cpu.push(cpu_seconds(gw.pid())? - cpu0);
            let seeds_cpu: f64 = seeds.iter().map(|s| cpu_seconds(s.pid()).unwrap_or(0.0)).sum();
            series.seeds_cpu.push(seeds_cpu - seeds_cpu0);
            series.secs.push(t);
            eprintln!(
                "round {round}: {name}: {t:.2}s, nginx direct {:.2}s",
                series.direct.last().unwrap()
            );
            drop(gw);
            drop(seeds);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let mut table = format!(
        "| Nix realising {PATHS} paths ({:.0} MB of NARs; the {} small paths: {:.1} MB), upstream down | median s | nginx direct, same paths, median s | ratio | seeds' CPU s per GB | client gateway's CPU s per GB |\n|---|---|---|---|---|---|\n",
        nar_gb * 1000.0,
        small.len(),
        small_gb * 1000.0
    );
    for ((_, name, _, p), s) in configs.iter().zip(&via) {
        let (t, reference) = (median(s.secs.clone()), median(s.direct.clone()));
        let gb = p.iter().map(|x| infos[x].nar_size).sum::<u64>() as f64 / 1e9;
        table.push_str(&format!(
            "| gateway via {name} | {t:.2} | {reference:.2} | {:.2} | {:.1} | {:.1} |\n",
            t / reference,
            median(s.seeds_cpu.clone()) / gb,
            median(s.client_cpu.clone()) / gb
        ));
    }
    table.push_str(&format!(
        "\nCreating 3,000 files of 64 KiB in the same directory, each round: {} s wall ({} s of it in the kernel).\n",
        creating
            .iter()
            .map(|(w, _)| format!("{w:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
        creating
            .iter()
            .map(|(_, k)| format!("{k:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
    ));
    print!("{table}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(format!("{out}.cache"), &table)?;
    }
    Ok(())
}
