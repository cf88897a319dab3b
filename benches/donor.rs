//! The donor benchmark. Everything runs on 127.0.0.1 with mDNS off, and
//! prints one Markdown table:
//! 1. indexing throughput of installed paths (a 256 MiB path and a path of
//!    5,000 small files, built by Nix in a chroot store and signed), against
//!    sha256 of the same NAR bytes in memory: the verify limit;
//! 2. chunk serving from the store's files: every chunk of the 256 MiB path
//!    rebuilt and verified in process, and the NAR fetched through a
//!    gateway from a donor peer, against nginx serving the NAR file;
//! 3. an idle node sharing 100k indexed paths: resident memory (target under
//!    200 MB), index bytes per path, and how fast they were indexed. Those
//!    100k paths are synthetic (files plus a Nix database with Nix's schema,
//!    signed), since building 100k real paths with Nix takes too long here.
//!
//! Run with `scripts/bench-donor.sh` (installs nginx, builds release).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use nixswarm_node::installed::{InstalledOptions, InstalledStore};
use nixswarm_protocol::{NarInfo, PublicKey, SecretKey, Sha256Hash, StorePath, StorePathHash, fingerprint};
use sha2::Digest as _;
use support::{ClientStore, Gateway, down_upstream, fixture};

use common::{Nginx, curl, median, pseudo_random};

const MIB: f64 = 1024.0 * 1024.0;
const RUNS: usize = 3;
const SYNTHETIC_PATHS: usize = 100_000;

fn nix(args: &[&str]) -> Result<String> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .env("NIX_CONFIG", "build-users-group =\nsubstituters =\n");
    Ok(support::run_ok(&mut c, &format!("{args:?}"))?.trim().to_owned())
}

/// A chroot store with a 256 MiB path and a path of 5,000 small files,
/// built by Nix and signed with the fixture's trusted key.
fn donor_store(work: &Path, secret: &Path) -> Result<(ClientStore, Vec<String>)> {
    let store = ClientStore::new(&work.join("donor"));
    let big = store.build(
        r#"derivation { name = "big-256m"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "/usr/bin/head -c 268435456 /dev/urandom > $out" ]; }"#,
    )?;
    let many = store.build(
        r#"derivation { name = "many-files"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "/bin/mkdir $out && /usr/bin/head -c 20000000 /dev/urandom | /usr/bin/split -a 4 -b 4000 - $out/f" ]; }"#,
    )?;
    let s = format!("local?root={}", store.root.display());
    let k = secret.to_str().context("utf-8")?;
    nix(&[
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "store",
        "sign",
        "--store",
        &s,
        "--key-file",
        k,
        &big,
        &many,
    ])?;
    Ok((store, vec![big, many]))
}

fn installed(root: &Path, index: &Path, key: PublicKey) -> Result<InstalledStore> {
    let _ = std::fs::remove_file(index);
    Ok(InstalledStore::open(
        index,
        InstalledOptions {
            root: root.to_owned(),
            share_keys: vec![key],
            exclude: vec![],
            index_rate: None,
            poll: Duration::from_secs(1),
        },
    )?)
}

/// Indexing MiB/s (median of RUNS, fresh index each time) and the sha256
/// MiB/s over the same NAR bytes in memory.
fn indexing(root: &Path, work: &Path, key: &PublicKey, paths: &[String]) -> Result<(f64, f64, u64)> {
    let mut rates = Vec::new();
    let mut bytes = 0;
    for _ in 0..RUNS {
        let store = installed(root, &work.join("index.redb"), key.clone())?;
        let t = Instant::now();
        store.sync_once()?;
        let secs = t.elapsed().as_secs_f64();
        let stats = store.stats()?;
        ensure!(stats.paths_shared == paths.len() as u64, "indexed {stats:?}");
        bytes = stats.bytes_indexed;
        rates.push(bytes as f64 / MIB / secs);
    }
    let mut nars = Vec::new();
    for p in paths {
        let mut nar = Vec::new();
        nixswarm_node::nar::dump(&root.join(p.trim_start_matches('/')), &mut nar)?;
        nars.push(nar);
    }
    let mut sha = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        for nar in &nars {
            std::hint::black_box(sha2::Sha256::digest(nar));
        }
        sha.push(bytes as f64 / MIB / t.elapsed().as_secs_f64());
    }
    Ok((median(rates), median(sha), bytes))
}

/// Every chunk of `path` rebuilt from the files and verified, in process.
fn serve_in_process(root: &Path, work: &Path, key: &PublicKey, path: &str) -> Result<f64> {
    let store = installed(root, &work.join("serve.redb"), key.clone())?;
    store.sync_once()?;
    let hash: StorePathHash = path.trim_start_matches("/nix/store/")[..32].parse()?;
    let (_, manifest) = store.path_info(&hash)?.context("indexed")?;
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        for c in &manifest.chunks {
            store.read_chunk(&c.id)?.context("chunk served")?;
        }
        rates.push(manifest.nar_size as f64 / MIB / t.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

fn mib_per_s(url: &str) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..RUNS {
        let (secs, bytes) = curl(url)?;
        v.push(bytes as f64 / MIB / secs);
    }
    Ok(median(v))
}

/// The big NAR through gateway B (keeps nothing) from donor A, and from nginx.
fn serve_over_network(work: &Path, store: &ClientStore, key_pub: &str, secret: &Path, big: &str) -> Result<(f64, f64)> {
    let root = store.root.to_str().context("utf-8")?;
    let a = Gateway::start_with(
        &work.join("a"),
        &[],
        key_pub,
        &[
            "--contribute",
            "installed",
            "--nix-store-root",
            root,
            "--index-rate",
            "0",
        ],
    )?;
    a.wait_for("paths_shared", 2)?;
    let b = Gateway::start_with(
        &work.join("b"),
        &[&down_upstream()],
        key_pub,
        &["--contribute", "none", "--bootstrap", &a.node_addrs[0]],
    )?;
    b.wait_for("peers", 1)?;
    let hash = &big.trim_start_matches("/nix/store/")[..32];
    let text = support::http_get(&format!("{}/{hash}.narinfo", b.url))?;
    let info = NarInfo::parse(&text)?;
    let through_peer = mib_per_s(&format!("{}/{}", b.url, info.url))?;

    let www = work.join("www");
    let s = format!("local?root={}", store.root.display());
    let to = format!(
        "file://{}?compression=none&secret-key={}",
        www.display(),
        secret.display()
    );
    nix(&[
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "copy",
        "--store",
        &s,
        "--to",
        &to,
        big,
    ])?;
    let nginx = Nginx::start(&www, work)?;
    let narinfo = std::fs::read_to_string(www.join(format!("{hash}.narinfo")))?;
    let url = NarInfo::parse(&narinfo)?.url;
    let direct = mib_per_s(&format!("{}/{url}", nginx.url))?;
    Ok((through_peer, direct))
}

/// `n` signed single-file paths of 200 B–4 KiB, with a Nix database.
fn synthetic_store(root: &Path, n: usize, key: &SecretKey) -> Result<()> {
    std::fs::create_dir_all(root.join("nix/store"))?;
    std::fs::create_dir_all(root.join("nix/var/nix/db"))?;
    let mut db = rusqlite::Connection::open(root.join("nix/var/nix/db/db.sqlite"))?;
    db.execute_batch(nixswarm_node::installed::nixdb::SCHEMA)?;
    let tx = db.transaction()?;
    {
        let mut insert = tx.prepare(
            "insert into ValidPaths (path, hash, registrationTime, narSize, sigs) values (?1, ?2, 1700000000, ?3, ?4)",
        )?;
        for i in 0..n {
            let seed = pseudo_random(20, 2 * i as u64 + 1);
            let hash = StorePathHash::from_bytes(&seed.try_into().unwrap());
            let sp = StorePath::new(hash, &format!("synthetic-{i}"))?;
            let file = root.join("nix/store").join(sp.base_name());
            std::fs::write(&file, pseudo_random(200 + (i * 37) % 4000, i as u64 + 7))?;
            let mut nar = Vec::new();
            nixswarm_node::nar::dump(&file, &mut nar)?;
            let nar_hash = Sha256Hash::digest(&nar);
            let sig = key.sign(&fingerprint(&sp, &nar_hash, nar.len() as u64, &[]));
            insert.execute(rusqlite::params![
                format!("/nix/store/{}", sp.base_name()),
                format!("sha256:{}", nar_hash.to_hex()),
                nar.len() as i64,
                sig.to_string()
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// (RSS MiB when idle, index bytes per path, paths indexed per second).
fn idle_memory(work: &Path) -> Result<(f64, f64, f64)> {
    let key = SecretKey::from_seed("bench-donor-1", &[42; 32]);
    let root = work.join("synthetic");
    eprintln!("writing {SYNTHETIC_PATHS} synthetic signed paths...");
    synthetic_store(&root, SYNTHETIC_PATHS, &key)?;
    let pubkey = key.public_key().to_string();
    let root_s = root.to_str().context("utf-8")?;
    let dir = work.join("idle");
    let t = Instant::now();
    let node = Gateway::start_with(
        &dir,
        &[],
        &pubkey,
        &[
            "--contribute",
            "installed",
            "--nix-store-root",
            root_s,
            "--index-rate",
            "0",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while node.status_number("paths_shared")? < SYNTHETIC_PATHS as u64 {
        ensure!(Instant::now() < deadline, "indexing too slow: {}", node.status()?);
        std::thread::sleep(Duration::from_millis(500));
    }
    let per_s = SYNTHETIC_PATHS as f64 / t.elapsed().as_secs_f64();
    eprintln!("indexed; letting the node settle...");
    std::thread::sleep(Duration::from_secs(10));
    let rss = support::rss(node.pid())? as f64 / f64::from(1 << 20);
    let index_bytes = std::fs::metadata(dir.join("installed.redb"))?.len() as f64 / SYNTHETIC_PATHS as f64;
    Ok((rss, index_bytes, per_s))
}

fn main() -> Result<()> {
    let fx = fixture();
    let work: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-donor");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let secret = fx.dir.join("keys/trusted.sec");
    let key: PublicKey = fx.trusted_pub.parse()?;

    eprintln!("building the donor store with Nix...");
    let (store, paths) = donor_store(&work, &secret)?;
    eprintln!("1/3 indexing...");
    let (index_rate, sha_rate, bytes) = indexing(&store.root, &work, &key, &paths)?;
    eprintln!("2/3 serving...");
    let in_process = serve_in_process(&store.root, &work, &key, &paths[0])?;
    let (peer, nginx) = serve_over_network(&work, &store, &fx.trusted_pub, &secret, &paths[0])?;
    eprintln!("3/3 an idle node with {SYNTHETIC_PATHS} paths...");
    let (rss, per_path, per_s) = idle_memory(&work)?;

    println!("| measurement | reference | nixswarm | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| indexing installed paths ({:.0} MiB: 256 MiB file + 5,000 small files), MiB/s vs sha256 in memory | {sha_rate:.0} | {index_rate:.0} | {:.2} | |",
        bytes as f64 / MIB,
        index_rate / sha_rate
    );
    println!(
        "| serving the 256 MiB path's chunks from /nix/store in process (seek, read, BLAKE3), MiB/s vs nginx | {nginx:.0} | {in_process:.0} | {:.2} | |",
        in_process / nginx
    );
    println!(
        "| the same NAR through a gateway from a donor peer, MiB/s vs nginx | {nginx:.0} | {peer:.0} | {:.2} | |",
        peer / nginx
    );
    println!("| idle node sharing {SYNTHETIC_PATHS} indexed paths: resident memory, MiB | | {rss:.0} | | < 200 MB |");
    println!("| index bytes per path (installed.redb / paths) | | {per_path:.0} | | |");
    println!("| indexing {SYNTHETIC_PATHS} small paths, paths/s | | {per_s:.0} | | |");
    Ok(())
}
