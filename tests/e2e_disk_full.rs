//! A full disk: the gateway's store lives on an 8 MiB tmpfs the test mounts,
//! with an amount (1 GiB) far past what the filesystem holds, so writes
//! fail with ENOSPC rather than being planned around. The real Nix client
//! realises the whole fixture cache (29 paths, one of 20 MB) through the
//! gateway: every path arrives from the upstream, the gateway never answers
//! with a 5xx. Then the rest of the tmpfs is filled, and a second client
//! gets everything again from what is kept and from the upstream.
//!
//! Needs root (to mount the tmpfs); without it the test fails and says so.

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
        log.contains("No space left on device") || log.contains("os error 28"),
        "the store met ENOSPC and said so:\n{log}"
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
