//! The peer-to-peer benchmark. Everything runs on 127.0.0.1 with mDNS off,
//! and prints one Markdown table:
//! 1. a 256 MiB NAR through a gateway from 1 peer, against nginx serving the
//!    same file directly;
//!    with the sender's and receiver's CPU per GB, and what a hop cannot
//!    avoid on this machine (see `common::floor`);
//! 2. the same NAR with every provider's upload limited to 20 MiB/s, from
//!    1, 2 and 4 providers;
//! 3. DHT provider lookup latency, p50/p99, in a 20-node swarm (in process);
//! 4. the extra latency of a narinfo no peer has, before the upstream
//!    answers, against asking the upstream directly;
//! 5. the real Nix client substituting the test cache via peers vs from
//!    nginx.
//!
//! Run with `scripts/bench-p2p.sh` (installs nginx, builds release).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use common::{Nginx, cpu_seconds, curl, floor, median, percentile, pseudo_random};
use nixswarm_protocol::{NarInfo, SecretKey, Sha256Hash, StorePath, StorePathHash};
use support::{ClientStore, Gateway, down_upstream, fixture};

const BIG: usize = 256 << 20;

fn signed(key: &SecretKey, n: u32, nar: &[u8]) -> NarInfo {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&n.to_le_bytes());
    h[19] = 0xbe;
    let nar_hash = Sha256Hash::digest(nar);
    let mut info = NarInfo {
        store_path: StorePath::new(StorePathHash::from_bytes(&h), &format!("bench-{n}")).unwrap(),
        url: format!("nar/{}.nar", nar_hash.to_nixbase32()),
        compression: "none".into(),
        file_hash: Some(nar_hash),
        file_size: Some(nar.len() as u64),
        nar_hash,
        nar_size: nar.len() as u64,
        references: vec![],
        deriver: None,
        sigs: vec![],
        ca: None,
    };
    info.sigs = vec![key.sign(&info.fingerprint())];
    info
}

/// Writes a binary cache of the given NARs.
fn write_cache(dir: &Path, items: &[(NarInfo, Option<&[u8]>)]) -> Result<()> {
    std::fs::create_dir_all(dir.join("nar"))?;
    std::fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n")?;
    for (info, nar) in items {
        std::fs::write(dir.join(format!("{}.narinfo", info.store_path.hash())), info.to_text())?;
        if let Some(nar) = nar {
            std::fs::write(dir.join(&info.url), nar)?;
        }
    }
    Ok(())
}

fn import(data_dir: &Path, cache: &Path, key: &str) -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .args([
            "import",
            &format!("file://{}", cache.display()),
            "--trusted-key",
            key,
            "--data-dir",
        ])
        .arg(data_dir)
        .output()?;
    ensure!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// One NAR fetched through a client gateway from peers: MiB/s, and the
/// CPU seconds per GB of NAR the seeds (all together) and the client spent.
#[derive(Debug, Clone, Copy)]
struct Hop {
    speed: f64,
    sender: f64,
    receiver: f64,
}

/// Starts `n` seeds holding `cache` and a client gateway bootstrapped from
/// them; fetches `path`'s NAR through the client.
fn through_peers(work: &Path, seeded: &Path, n: usize, limit: Option<&str>, info: &NarInfo, key: &str) -> Result<Hop> {
    through_peers_into(work, seeded, n, limit, info, key, None, &[])
}

/// Same, with the client's data directory under `client_root` (e.g. tmpfs)
/// and extra flags for the client.
#[allow(clippy::too_many_arguments)]
fn through_peers_into(
    work: &Path,
    seeded: &Path,
    n: usize,
    limit: Option<&str>,
    info: &NarInfo,
    key: &str,
    client_root: Option<&Path>,
    client_flags: &[&str],
) -> Result<Hop> {
    let run = work.join(format!("run-{n}-{}", limit.unwrap_or("none")));
    let mut seeds = Vec::new();
    for i in 0..n {
        let dir = run.join(format!("seed{i}"));
        copy_dir(seeded, &dir)?;
        let mut extra = vec![];
        if let Some(l) = limit {
            extra.extend(["--upload-limit", l]);
        }
        let boot;
        if let Some(first) = seeds.first() {
            let first: &Gateway = first;
            boot = first.node_addrs[0].clone();
            extra.extend(["--bootstrap", boot.as_str()]);
        }
        seeds.push(Gateway::start_with(&dir, &[], key, &extra)?);
    }
    for s in &seeds {
        s.wait_for("provided_keys", 1)?;
    }
    // Flush the seed copies so their writeback is not measured below.
    Command::new("sync").status()?;
    let down = down_upstream();
    let client_dir = client_root.map_or_else(|| run.join("client"), |r| r.join("client"));
    let mut flags = vec!["--bootstrap", seeds[0].node_addrs[0].as_str()];
    flags.extend_from_slice(client_flags);
    let client = Gateway::start_with(&client_dir, &[&down], key, &flags)?;
    client.wait_for("peers", n as u64)?;
    seeds[0].wait_for("provider_records", n as u64)?;
    let narinfo = Command::new("curl")
        .args(["-sf", &format!("{}/{}.narinfo", client.url, info.store_path.hash())])
        .output()?;
    let text = String::from_utf8(narinfo.stdout)?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .context("gateway narinfo")?
        .to_owned();
    let seeds_cpu = || seeds.iter().map(|s| cpu_seconds(s.pid())).sum::<Result<f64>>();
    let (s0, c0) = (seeds_cpu()?, cpu_seconds(client.pid())?);
    let (secs, bytes) = curl(&format!("{}/{url}", client.url))?;
    ensure!(bytes == info.nar_size, "got {bytes} bytes");
    let gb = bytes as f64 / 1e9;
    let hop = Hop {
        speed: bytes as f64 / secs / f64::from(1 << 20),
        sender: (seeds_cpu()? - s0) / gb,
        receiver: (cpu_seconds(client.pid())? - c0) / gb,
    };
    eprintln!(
        "  {n} provider(s), limit {limit:?}: {:.0} MiB/s, CPU s per GB: sender {:.2}, receiver {:.2}",
        hop.speed, hop.sender, hop.receiver
    );
    client.stop()?;
    for s in seeds {
        s.stop()?;
    }
    let _ = std::fs::remove_dir_all(&run);
    let _ = std::fs::remove_dir_all(&client_dir);
    Ok(hop)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    ensure!(st.success(), "cp -a failed");
    Ok(())
}

/// DHT lookup latency in an in-process swarm of `n` nodes.
fn dht_lookups(n: usize, keys_per_node: usize) -> Result<[f64; 4]> {
    use nixswarm_node::p2p::load_or_create_key;
    use nixswarm_node::{ChunkStore, Node, NodeConfig, SharePolicy, Shelves, StoreOptions};
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let tmp = tempfile::tempdir()?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut nodes = Vec::new();
        let mut boot = None;
        for i in 0..n {
            let dir = tmp.path().join(format!("n{i}"));
            let store = ChunkStore::open(&dir.join("store"), StoreOptions::with_quota(1 << 30))?;
            let config = NodeConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                bootstrap: boot.clone().into_iter().collect(),
                announce_private: true,
                ..NodeConfig::default()
            };
            let policy = SharePolicy::new(vec![SecretKey::from_seed("k", &[1; 32]).public_key()], false);
            let node = Node::start(
                &dir,
                load_or_create_key(&dir.join("node.key"))?,
                Shelves::store(store.clone(), policy),
                config,
                cancel.clone(),
            )
            .await?;
            if boot.is_none() {
                boot = Some(
                    node.listen_addrs[0]
                        .clone()
                        .with(libp2p::multiaddr::Protocol::P2p(node.handle.peer_id())),
                );
            }
            nodes.push((node, store));
        }
        let key = SecretKey::from_seed("k", &[1; 32]);
        let mut hashes = Vec::new();
        for (i, (_, store)) in nodes.iter().enumerate().skip(1) {
            for k in 0..keys_per_node {
                let nar = pseudo_random(200, (i * 1000 + k) as u64);
                let info = signed(&key, (i * 1000 + k) as u32, &nar);
                hashes.push((i, info.store_path.hash()));
                let mut ing = store.begin_ingest(info)?;
                ing.write(&nar)?;
                ing.finish()?;
            }
        }
        // Let announcements settle: every node provides its keys.
        for _ in 0..600 {
            let mut done = true;
            for (node, _) in nodes.iter().skip(1) {
                if node.handle.status().await?.provided_keys < keys_per_node {
                    done = false;
                }
            }
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (mut first, mut walk) = (Vec::new(), Vec::new());
        for (j, (owner, hash)) in hashes.iter().enumerate() {
            let asker = &nodes[(owner + 1 + j % (n - 2)) % n].0.handle;
            let start = Instant::now();
            let mut rx = asker.find_providers(hash).await?;
            let found = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .ok()
                .flatten();
            ensure!(found.is_some(), "lookup {j} found nobody");
            first.push(start.elapsed().as_secs_f64() * 1000.0);
            // The whole walk: until the query has asked the closest peers.
            while tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .ok()
                .flatten()
                .is_some()
            {}
            walk.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        cancel.cancel();
        Ok([
            percentile(first.clone(), 0.5),
            percentile(first, 0.99),
            percentile(walk.clone(), 0.5),
            percentile(walk, 0.99),
        ])
    })
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list`: nothing to list
    }
    // SAFETY: set before any thread is spawned.
    unsafe { std::env::set_var("NIXSWARM_CHILD_LOG", "warn") };
    let tmp = common::scratch()?;
    let work = tmp.path().to_owned();
    let key = SecretKey::from_seed("nixswarm-bench-1", &[42; 32]);
    let pubk = key.public_key().to_string();
    let mut rows: Vec<String> = Vec::new();

    // Caches served by nginx: one big NAR, and narinfos nobody's peers have.
    eprintln!("writing the benchmark caches...");
    let big = pseudo_random(BIG, 7);
    let big_info = signed(&key, 1, &big);
    write_cache(&work.join("www/big"), &[(big_info.clone(), Some(&big))])?;
    drop(big);
    let misses: Vec<NarInfo> = (0..200u32)
        .map(|i| signed(&key, 10_000 + i, &i.to_le_bytes()))
        .collect();
    write_cache(
        &work.join("www/miss"),
        &misses.iter().map(|i| (i.clone(), None)).collect::<Vec<_>>(),
    )?;
    let fx = fixture();
    std::os::unix::fs::symlink(fx.cache(), work.join("www/fixture"))?;
    let nginx = Nginx::start(&work.join("www"), &work)?;

    // 1 and 2: the big NAR.
    eprintln!("1-2/5 a 256 MiB NAR through a gateway from peers...");
    let direct = median(
        (0..3)
            .map(|_| {
                curl(&format!("{}/big/{}", nginx.url, big_info.url)).map(|(s, b)| b as f64 / s / f64::from(1 << 20))
            })
            .collect::<Result<Vec<_>>>()?,
    );
    let seeded = work.join("seeded");
    import(&seeded, &work.join("www/big"), &pubk)?;
    let one = through_peers(&work, &seeded, 1, None, &big_info, &pubk)?.speed;
    rows.push(format!(
        "| 256 MiB NAR: gateway from 1 peer vs nginx direct, MiB/s | {direct:.0} | {one:.0} | {:.2} | >= 0.4 |",
        one / direct
    ));
    // The same with the client's store in memory: the network path without this disk.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let root = tempfile::tempdir_in(shm)?;
        let mem = through_peers_into(&work, &seeded, 1, None, &big_info, &pubk, Some(root.path()), &[])?.speed;
        rows.push(format!(
            "| same, client store on tmpfs, MiB/s | {direct:.0} | {mem:.0} | {:.2} | |",
            mem / direct
        ));
    }
    // The client keeping nothing: transport, verification and HTTP only.
    let none = through_peers_into(
        &work,
        &seeded,
        1,
        None,
        &big_info,
        &pubk,
        None,
        &["--contribute", "none"],
    )?;
    rows.push(format!(
        "| same, client keeping nothing (--contribute none), MiB/s | {direct:.0} | {:.0} | {:.2} | >= 0.4 |",
        none.speed,
        none.speed / direct
    ));
    // What a peer hop cannot avoid here, in the same run: the work per GB,
    // and that work as a pipeline over loopback TCP (no libp2p, store or
    // HTTP): as fast as a hop could be on this machine.
    let sample = pseudo_random(BIG, 9);
    let work_gb = floor::irreducible(&sample[..64 << 20])?;
    let pipe = floor::pipeline(&sample)?;
    drop(sample);
    rows.push(format!(
        "| same, keeping nothing: CPU s per GB, sender / receiver (irreducible: sha256 {:.2}, BLAKE3 {:.2}, seal {:.2}, open {:.2}) | | {:.2} / {:.2} | pair {:.2} vs {:.2} irreducible | |",
        work_gb.sha256,
        work_gb.blake3,
        work_gb.seal,
        work_gb.open,
        none.sender,
        none.receiver,
        none.sender + none.receiver,
        work_gb.pair()
    ));
    rows.push(format!(
        "| the irreducible work as a pipeline on two loopback TCP hops (seal; open, BLAKE3, sha256; a reader; {:.2} CPU s per GB), vs nginx direct, MiB/s | {direct:.0} | {:.0} | {:.2} (keeping nothing: {:.2} of it) | |",
        pipe.cpu_per_gb,
        pipe.mib_s,
        pipe.mib_s / direct,
        none.speed / pipe.mib_s
    ));
    let l1 = through_peers(&work, &seeded, 1, Some("20M"), &big_info, &pubk)?.speed;
    let l2 = through_peers(&work, &seeded, 2, Some("20M"), &big_info, &pubk)?.speed;
    let l4 = through_peers(&work, &seeded, 4, Some("20M"), &big_info, &pubk)?.speed;
    rows.push(format!("| upload limited to 20 MiB/s per provider: 1 / 2 / 4 providers, MiB/s | | {l1:.1} / {l2:.1} / {l4:.1} | 4 vs 1: {:.2} | 4 vs 1 >= 3.2 |", l4 / l1));

    // 3: DHT lookups.
    eprintln!("3/5 DHT provider lookups in a 20-node swarm...");
    let [f50, f99, w50, w99] = dht_lookups(20, 10)?;
    rows.push(format!(
        "| DHT provider lookup, 20 nodes, 190 keys, ms: first provider p50 / p99; whole walk p50 / p99 | | {f50:.1} / {f99:.1}; {w50:.1} / {w99:.1} | | |"
    ));

    // 4: a path no peer has.
    eprintln!("4/5 narinfo misses on peers, answered by the upstream...");
    let seed = Gateway::start_with(&work.join("miss-seed"), &[], &pubk, &[])?;
    let client = Gateway::start_with(
        &work.join("miss-client"),
        &[&format!("{}/miss", nginx.url)],
        &pubk,
        &["--bootstrap", &seed.node_addrs[0]],
    )?;
    client.wait_for("peers", 1)?;
    let (mut via, mut straight) = (Vec::new(), Vec::new());
    for info in &misses {
        let h = info.store_path.hash();
        straight.push(curl(&format!("{}/miss/{h}.narinfo", nginx.url))?.0 * 1000.0);
        via.push(curl(&format!("{}/{h}.narinfo", client.url))?.0 * 1000.0);
    }
    let extra: Vec<f64> = via.iter().zip(&straight).map(|(a, b)| a - b).collect();
    rows.push(format!(
        "| narinfo no peer has: upstream direct p50 / gateway p50 / extra p50, p99 ms | {:.1} | {:.1} | +{:.1}, +{:.1} | extra p50 <= 50 |",
        median(straight),
        median(via),
        percentile(extra.clone(), 0.5),
        percentile(extra, 0.99)
    ));
    client.stop()?;
    seed.stop()?;

    // 5: the real Nix client.
    eprintln!("5/5 nix-store -r via peers vs nginx...");
    let fseed = work.join("fixture-seed");
    import(&fseed, &fx.cache(), &fx.trusted_pub)?;
    let seed = Gateway::start_with(&fseed, &[], &fx.trusted_pub, &[])?;
    seed.wait_for("provided_keys", fx.paths.len() as u64)?;
    let mut nginx_times = Vec::new();
    let mut peer_times = Vec::new();
    let down = down_upstream();
    for i in 0..3 {
        let c = ClientStore::new(&work.join(format!("nix-nginx-{i}")));
        let t = Instant::now();
        support::check(
            &c.realise(&format!("{}/fixture", nginx.url), &fx.trusted_pub, &fx.paths, false),
            "nix via nginx",
        )?;
        nginx_times.push(t.elapsed().as_secs_f64());
        let g = Gateway::start_with(
            &work.join(format!("nix-gw-{i}")),
            &[&down],
            &fx.trusted_pub,
            &["--bootstrap", &seed.node_addrs[0]],
        )?;
        g.wait_for("peers", 1)?;
        let c = ClientStore::new(&work.join(format!("nix-peers-{i}")));
        let t = Instant::now();
        support::check(&c.realise(&g.url, &fx.trusted_pub, &fx.paths, false), "nix via peers")?;
        peer_times.push(t.elapsed().as_secs_f64());
        g.stop()?;
    }
    seed.stop()?;
    let (n, p) = (median(nginx_times), median(peer_times));
    rows.push(format!(
        "| nix-store -r, {} paths: nginx direct vs gateway via 1 peer, s | {n:.2} | {p:.2} | {:.2} | |",
        fx.paths.len(),
        p / n
    ));

    let table = format!(
        "| measurement | nginx / upstream | nixswarm | ratio | target |\n|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("{table}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(PathBuf::from(out), &table)?;
    }
    drop(nginx);
    Ok(())
}
