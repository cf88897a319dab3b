//! A full disk: the gateway's store lives on an 8 MiB tmpfs the test mounts,
//! with an amount (1 GiB) far past what the filesystem holds, so writes
//! fail with ENOSPC rather than being planned around. The real Nix client
//! realises the whole fixture cache (29 paths, one of 20 MB) through the
//! gateway: every path arrives from the upstream, the gateway never answers
//! with a 5xx. Then the rest of the tmpfs is filled, and a second client
//! gets everything again from what is kept and from the upstream.
//!
//! A second test gives the store a whole small disk shared with other data,
//! `amount = "100%"`, as the NixOS proposal does: the disk never fills, the
//! store evicting to leave its reserve free.
//!
//! Needs root (to mount the tmpfs); without it the tests fail and say so.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail, ensure};
use support::{ClientStore, Gateway, StaticServer, check, fixture, http_get};

/// Unmounts the tmpfs when the test ends, whatever happened.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "this test needs root to mount a tmpfs (scripts/test.sh runs it as root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self(dir.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Answers with a 5xx status, from the gateway's metrics.
fn server_errors(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("gateway_responses_total{status=\"5"))
        .map(str::to_owned)
        .collect()
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(dir).output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text.lines().nth(1).unwrap_or("0").trim().parse()?)
}

#[test]
fn a_full_disk_costs_no_path_and_no_server_error() -> Result<()> {
    let fx = fixture();
    let key = fx.trusted_pub.as_str();
    let tmp = tempfile::tempdir()?;
    let small = tmp.path().join("small");
    let _mount = Mount::tmpfs(&small, "8m")?;
    let upstream = StaticServer::start(&fx.cache());
    let location = small.join("store");
    let gw = Gateway::start_with(
        &tmp.path().join("gw"),
        &[&upstream.url],
        key,
        &["--location", location.to_str().unwrap(), "--amount", "1G"],
    )?;

    let first = ClientStore::new(&tmp.path().join("client-1"));
    let out = first.realise(&gw.url, key, &fx.paths, false);
    check(&out, "nix-store -r through a gateway on a full disk")?;
    ensure!(first.valid(&fx.paths) == fx.paths, "every path is valid");
    first.verify_contents(&fx.paths)?;
    let log = gw.log();
    ensure!(
        log.contains("No space left on device") || log.contains("os error 28") || log.contains("no room for"),
        "the store met the full disk and said so:\n{log}"
    );
    // What a failed write left behind was cleaned up; now fill the rest, so
    // that every write (and access-time update) fails from here on.
    eprintln!(
        "{} bytes left on the 8 MiB tmpfs after the first client",
        free_bytes(&small)?
    );
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}", small.join("filler").display()))
        .status()?;
    let free = free_bytes(&small)?;
    ensure!(free < 64 << 10, "the tmpfs is not full: {free} bytes free");

    let second = ClientStore::new(&tmp.path().join("client-2"));
    let out = second.realise(&gw.url, key, &fx.paths, false);
    check(&out, "nix-store -r again, the disk still full")?;
    ensure!(second.valid(&fx.paths) == fx.paths);

    let metrics = http_get(&format!("{}/metrics", gw.url))?;
    ensure!(
        metrics.contains("gateway_responses_total{status=\"200\"}"),
        "answers are counted by status:\n{metrics}"
    );
    let errors = server_errors(&metrics);
    ensure!(errors.is_empty(), "server errors: {errors:?}\n{}", gw.log());
    gw.stop()
}

#[test]
fn a_whole_disk_at_100_percent_never_fills_up_even_shared() -> Result<()> {
    let fx = fixture();
    let key = fx.trusted_pub.as_str();
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk");
    let _mount = Mount::tmpfs(&disk, "32m")?;
    // Other data takes 20 MiB of the 32 after the gateway has sized its
    // quota (100% of the disk less the reserve): the quota alone would let
    // the store fill the disk.
    let upstream = StaticServer::start(&fx.cache());
    let gw = Gateway::start_with(
        &tmp.path().join("gw"),
        &[&upstream.url],
        key,
        &["--location", disk.join("store").to_str().unwrap(), "--amount", "100%"],
    )?;
    let status: serde_json::Value = serde_json::from_str(&gw.status()?)?;
    let quota = status["store"]["quota"].as_u64().unwrap_or(0);
    let size = 32u64 << 20;
    let reserve = size / 10; // a small disk's reserve: a tenth of it
    ensure!(quota == size - reserve, "100% of 32 MiB less its reserve, got {quota}");
    let filler = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=20", "status=none"])
        .arg(format!("of={}", disk.join("other-data").display()))
        .status()?;
    ensure!(filler.success(), "writing the other data");

    // One path at a time, so the free space is seen after each.
    let client = ClientStore::new(&tmp.path().join("client"));
    let mut lowest = u64::MAX;
    for p in &fx.paths {
        check(
            &client.realise(&gw.url, key, std::slice::from_ref(p), false),
            "nix-store -r",
        )?;
        lowest = lowest.min(free_bytes(&disk)?);
    }
    client.verify_contents(&fx.paths)?;
    let status: serde_json::Value = serde_json::from_str(&gw.status()?)?;
    eprintln!(
        "lowest free space {lowest} bytes (reserve {reserve}); the store keeps {} paths, {} bytes",
        status["store"]["paths"], status["store"]["bytes"]
    );
    // The metadata database grows outside the reservation: a page or two.
    ensure!(
        lowest + (256 << 10) >= reserve,
        "the disk fell to {lowest} bytes free, below the {reserve}-byte reserve"
    );
    ensure!(
        status["store"]["paths"].as_u64().unwrap_or(0) > 0,
        "the store still keeps what fits: {status}"
    );
    let errors = server_errors(&http_get(&format!("{}/metrics", gw.url))?);
    ensure!(errors.is_empty(), "server errors: {errors:?}");
    gw.stop()
}
