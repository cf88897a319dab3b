//! `nixswarm import` into a node that is running: it finds the node by its
//! data directory and loads through its gateway (no second process opens
//! the store); `--closure` follows references; the node announces what it
//! got, and the real Nix client substitutes it from the node alone.

mod support;

use anyhow::{Result, ensure};
use support::{ClientStore, Gateway, check, fixture};

fn import(data_dir: &std::path::Path, cache: &std::path::Path, key: &str, args: &[&str]) -> Result<(bool, String)> {
    let (url, dir) = (format!("file://{}", cache.display()), data_dir.display().to_string());
    let head = ["import", url.as_str(), "--trusted-key", key, "--data-dir", dir.as_str()];
    support::nixswarm(&[&head[..], args].concat(), &[])
}

#[test]
fn a_running_node_takes_an_import_through_its_gateway_closure_included() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("gw");
    // No upstream: whatever Nix gets, the import put there.
    let gw = Gateway::start(&dir, &[], &fx.trusted_pub)?;
    let top = fx.path_named("top");

    // One path alone.
    let (ok, out) = import(&dir, &fx.cache(), &fx.trusted_pub, &[top])?;
    ensure!(ok, "{out}");
    ensure!(
        out.contains("through the running node") && out.contains("imported 1 paths"),
        "{out}"
    );
    ensure!(gw.status_number("paths")? == 1, "{}", gw.status()?);

    // Its closure: the rest of the fixture.
    let (ok, out) = import(&dir, &fx.cache(), &fx.trusted_pub, &[top, "--closure"])?;
    ensure!(ok, "{out}");
    let n = fx.paths.len();
    ensure!(
        out.contains(&format!("imported {} paths", n - 1)) && out.contains("1 already present"),
        "{out}"
    );
    gw.wait_for("paths", n as u64)?;
    gw.wait_for("provided_keys", n as u64)?;
    // The dashboard's figures count them.
    let status: serde_json::Value = serde_json::from_str(&gw.status()?)?;
    ensure!(
        status["imports"]["stored"] == n as u64 && status["imports"]["running"] == 0,
        "{status}"
    );

    // A path the node's keys do not trust is refused, with the reason.
    let (ok, out) = import(&dir, &fx.untrusted_cache(), &fx.trusted_pub, &[fx.paths[0].as_str()])?;
    ensure!(!ok && out.contains("not signed by a trusted key"), "{out}");

    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(&gw.url, &fx.trusted_pub, &fx.paths, false),
        "nix-store -r from the node alone",
    )?;
    Ok(())
}
