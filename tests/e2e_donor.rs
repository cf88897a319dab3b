//! Donor mode against a real Nix store: a chroot store substitutes the
//! signed test cache, then gets paths Nix added (`nix-store --add`) and
//! built locally (both unsigned), and one path whose files are changed
//! after registration. Node A shares that store's installed paths; node B,
//! whose upstream is down, substitutes the signed paths from A for the
//! real Nix client. Over the wire, A refuses every unsigned or modified
//! path, and withdraws a path once Nix garbage-collects it.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nixswarm_protocol::wire::{Request, Response};
use support::probe::{hash_of, path_info, probe};
use support::{ClientStore, Gateway, check, down_upstream, fixture};

/// A chroot store into which Nix substituted the whole signed test cache.
fn signed_donor_store(dir: &std::path::Path, fx: &support::Fixture) -> Result<ClientStore> {
    let donor = ClientStore::new(&dir.join("donor"));
    check(
        &donor.realise(
            &format!("file://{}", fx.cache().display()),
            &fx.trusted_pub,
            &fx.paths,
            false,
        ),
        "substituting the signed cache into the donor store",
    )?;
    Ok(donor)
}

/// Node A in donor mode, sharing the installed paths of `donor`.
fn start_donor(dir: &std::path::Path, key: &str, donor: &ClientStore, poll: &str, rate: &str) -> Result<Gateway> {
    let root = donor.root.to_str().context("utf-8")?;
    Gateway::start_with(
        dir,
        &[],
        key,
        &[
            "--contribute",
            "installed",
            "--nix-store-root",
            root,
            "--poll-interval",
            poll,
            "--index-rate",
            rate,
        ],
    )
}

#[test]
fn shares_signed_installed_paths_and_never_anything_else() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();

    // The donor's Nix store: the signed cache substituted by Nix itself...
    let donor = signed_donor_store(tmp.path(), &fx)?;
    // ...a file added locally (content-addressed, unsigned)...
    let secret = tmp.path().join("my-secret.txt");
    std::fs::write(&secret, "the donor's private notes")?;
    let added = donor.add(&secret)?;
    // ...a path built locally (unsigned)...
    let built = donor.build(
        r#"derivation { name = "local-build"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "echo built here > $out" ]; }"#,
    )?;
    // ...and a signed path whose files were changed after registration.
    let modified = fx
        .paths
        .iter()
        .find(|p| p.ends_with("-leaf-3"))
        .context("leaf-3")?
        .clone();
    let file = donor.root.join(modified.trim_start_matches('/'));
    std::fs::write(&file, "tampered")?;
    let shared: Vec<String> = fx.paths.iter().filter(|p| **p != modified).cloned().collect();
    // leaf-3 is referenced by mids that are shared; Nix needs it too, so the
    // client gets it from... nowhere: leave its referrers out.
    let independent: Vec<String> = shared
        .iter()
        .filter(|p| p.contains("-leaf-") || p.ends_with("-big-20m"))
        .cloned()
        .collect();

    let a = start_donor(&tmp.path().join("a"), key, &donor, "200ms", "0")?;
    a.wait_for("paths_shared", shared.len() as u64)?;
    ensure!(
        a.status_number("rejected")? == 1,
        "the modified path is rejected: {}",
        a.status()?
    );
    ensure!(a.status_number("not_shareable")? >= 2, "{}", a.status()?);
    let metrics = support::http_get(&format!("{}/metrics", a.url))?;
    ensure!(
        metrics.contains(&format!("nixswarm_installed_paths {}", shared.len())),
        "{metrics}"
    );

    // The real Nix client, through B (upstream down), gets signed paths from A.
    let b = Gateway::start_with(
        &tmp.path().join("b"),
        &[&down_upstream()],
        key,
        &["--bootstrap", &a.node_addrs[0]],
    )?;
    b.wait_for("peers", 1)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(&b.url, key, &independent, false),
        "nix-store -r through B from A's installed paths",
    )?;
    ensure!(client.valid(&independent) == independent, "every shared path is valid");
    client.verify_contents(&independent)?;

    // Over the wire, A answers for signed paths only.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (probe, a_peer) = probe(&tmp.path().join("probe"), &a.node_addrs[0]).await?;
        let signed = path_info(&probe, a_peer, &independent[0]).await?;
        let Response::PathInfo { manifest, .. } = signed else {
            bail!("a shared path must be answered: {signed:?}")
        };
        let got = probe
            .request(
                a_peer,
                Request::Chunks {
                    ids: vec![manifest.chunks[0].id],
                    compress: true,
                },
            )
            .await?;
        ensure!(
            matches!(&got, Response::Chunks { chunks } if chunks.len() == 1),
            "{got:?}"
        );
        for p in [&added, &built, &modified] {
            let r = path_info(&probe, a_peer, p).await?;
            ensure!(r == Response::NotFound, "{p} must be refused, got {r:?}");
        }
        // Nor are they announced: nobody provides them.
        for p in [&added, &built, &modified] {
            let mut providers = probe.find_providers(&hash_of(p)).await?;
            let found = tokio::time::timeout(Duration::from_secs(2), providers.recv()).await;
            ensure!(!matches!(found, Ok(Some(_))), "{p} has a provider");
        }

        // Garbage collection: the top of the closure goes, and is withdrawn.
        let top = fx.paths.iter().find(|p| p.ends_with("-top")).context("top")?;
        ensure!(matches!(
            path_info(&probe, a_peer, top).await?,
            Response::PathInfo { .. }
        ));
        donor.delete(top)?;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match path_info(&probe, a_peer, top).await? {
                Response::NotFound => break,
                _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(100)).await,
                r => bail!("a collected path is still served: {r:?}"),
            }
        }
        Ok(())
    })?;
    // And it leaves the index (and the node's announcements).
    let until = Instant::now() + Duration::from_secs(20);
    while a.status_number("paths_shared")? != shared.len() as u64 - 1 {
        ensure!(Instant::now() < until, "not withdrawn: {}", a.status()?);
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        a.status_number("provided_keys")? == shared.len() as u64 - 1,
        "{}",
        a.status()?
    );
    Ok(())
}

fn nixswarm(args: &[&str]) -> Result<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .args(args)
        .output()?)
}

#[test]
fn pin_fetches_and_keeps_a_closure_and_needs_cache_mode() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let upstream = support::StaticServer::start(&fx.cache());
    let gw = Gateway::start_with(
        &tmp.path().join("gw"),
        &[&upstream.url],
        key,
        &["--contribute", "cache"],
    )?;
    let top = fx.paths.iter().find(|p| p.ends_with("-top")).context("top")?;
    let out = nixswarm(&["pin", "--gateway", &gw.url, top])?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("(29 paths"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    gw.wait_for("paths", 29)?; // the closure is held
    let pins = std::fs::read_to_string(tmp.path().join("gw/store/pins"))?;
    ensure!(pins.lines().count() == 29, "{pins}");
    let out = nixswarm(&["unpin", "--gateway", &gw.url, top])?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ensure!(std::fs::read_to_string(tmp.path().join("gw/store/pins"))?.is_empty());
    // Unpinning what is not pinned says so, and fails.
    let out = nixswarm(&["unpin", "--gateway", &gw.url, top])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("was not pinned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let none = Gateway::start_with(
        &tmp.path().join("none"),
        &[&upstream.url],
        key,
        &["--contribute", "none"],
    )?;
    let out = nixswarm(&["pin", "--gateway", &none.url, top])?;
    ensure!(!out.status.success());
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("contribute = cache"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn indexing_killed_midway_resumes_and_serves_nothing_half_written() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let donor = signed_donor_store(tmp.path(), &fx)?;
    // About 37 MB at 8 MB/s, killed (SIGKILL, on drop) once some paths are
    // indexed: a condition, not a sleep, so a busy machine kills it midway
    // too (a slower machine only indexes more slowly).
    let a = start_donor(&tmp.path().join("a"), key, &donor, "200ms", "8M")?;
    a.wait_for("paths_shared", 1)?;
    let before = a.status_number("paths_shared")?;
    drop(a);
    ensure!(
        before < 29,
        "indexing finished before the kill ({before}): slow it down"
    );

    let a = start_donor(&tmp.path().join("a"), key, &donor, "200ms", "0")?;
    a.wait_for("paths_shared", 29)?;
    ensure!(a.status_number("rejected")? == 0, "{}", a.status()?);
    // Everything it serves is whole: the Nix client gets every path through B.
    let b = Gateway::start_with(
        &tmp.path().join("b"),
        &[&down_upstream()],
        key,
        &["--bootstrap", &a.node_addrs[0]],
    )?;
    b.wait_for("peers", 1)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    check(&client.realise(&b.url, key, &fx.paths, false), "nix-store -r through B")?;
    client.verify_contents(&fx.paths)?;
    Ok(())
}

#[test]
fn a_node_killed_during_a_download_keeps_nothing_half_written() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let upstream = support::StaticServer::start(&fx.cache());
    // A seed that uploads slowly: the 20 MB NAR takes ~10 s to reach B.
    let a = Gateway::start_with(&tmp.path().join("a"), &[&upstream.url], key, &["--upload-limit", "2M"])?;
    let big = fx.paths.iter().find(|p| p.ends_with("-big-20m")).context("big-20m")?;
    let seeder = ClientStore::new(&tmp.path().join("seed-client"));
    check(
        &seeder.realise(&a.url, key, std::slice::from_ref(big), false),
        "seeding A",
    )?;
    a.wait_for("paths", 1)?;

    let b_dir = tmp.path().join("b");
    let flags = ["--contribute", "cache", "--bootstrap", &a.node_addrs[0]];
    let b = Gateway::start_with(&b_dir, &[&down_upstream()], key, &flags)?;
    b.wait_for("peers", 1)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    let (url, path) = (b.url.clone(), big.clone());
    let key_owned = key.to_owned();
    let download = std::thread::spawn(move || client.realise(&url, &key_owned, &[path], false));
    // Kill B (SIGKILL, on drop) once the transfer is under way.
    let until = Instant::now() + Duration::from_secs(20);
    while b.status_number("bytes_fetched")? < 2_000_000 {
        ensure!(Instant::now() < until, "the download never started: {}", b.status()?);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(b);
    let out = download.join().map_err(|_| anyhow::anyhow!("download thread"))?;
    ensure!(
        !out.status.success(),
        "the client cannot have finished from a killed gateway"
    );

    // Nothing half-written is in B's store...
    let key_parsed: nixswarm_protocol::PublicKey = key.parse()?;
    ensure!(support::audit_gateway_store(&b_dir, &key_parsed)?.is_empty());
    // ...and after a restart it serves the path whole.
    let b = Gateway::start_with(&b_dir, &[&down_upstream()], key, &flags)?;
    b.wait_for("peers", 1)?;
    let client = ClientStore::new(&tmp.path().join("client-2"));
    check(
        &client.realise(&b.url, key, std::slice::from_ref(big), false),
        "after the restart",
    )?;
    client.verify_contents(std::slice::from_ref(big))?;
    b.stop()?;
    ensure!(support::audit_gateway_store(&b_dir, &key_parsed)?.len() == 1);
    Ok(())
}

#[test]
fn follows_nix_writing_the_store_while_it_reads() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let donor = ClientStore::new(&tmp.path().join("donor"));
    let cache = format!("file://{}", fx.cache().display());
    let leaves: Vec<String> = fx.paths.iter().filter(|p| p.contains("-leaf-")).cloned().collect();
    check(&donor.realise(&cache, key, &leaves, false), "substituting the leaves")?;
    let a = start_donor(&tmp.path().join("a"), key, &donor, "50ms", "0")?;
    a.wait_for("paths_shared", leaves.len() as u64)?;
    // Nix writes the rest (in its own transactions) while the node polls.
    check(&donor.realise(&cache, key, &fx.paths, false), "substituting the rest")?;
    a.wait_for("paths_shared", fx.paths.len() as u64)?;
    ensure!(a.status_number("rejected")? == 0, "{}", a.status()?);
    ensure!(!a.log().contains("cannot follow the Nix store"), "{}", a.log());
    Ok(())
}
