//! `nixswarm export`: a binary cache rebuilt from the swarm. Node A holds
//! the fixture (imported); node B, whose upstream also has it, exports the
//! closure of its top path through its peers only: the upstream is asked
//! for no NAR (nor narinfo), and the real Nix client substitutes every
//! path from the written cache with signatures required. A path nobody
//! holds is named and fails the command, unless `--allow-missing`.

mod support;

use anyhow::{Result, ensure};
use support::{ClientStore, Gateway, StaticServer, check, fixture, import};

fn export(gateway: &str, to: &std::path::Path, key: &str, args: &[&str]) -> Result<(bool, String)> {
    let to = format!("--to=file://{}", to.display());
    let head = ["export", "--gateway", gateway, "--trusted-key", key, to.as_str()];
    support::nixswarm(&[&head[..], args].concat(), &[])
}

#[test]
fn a_cache_rebuilt_from_the_swarm_costs_the_upstream_nothing_and_nix_takes_it() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    import(&tmp.path().join("a"), &fx.cache(), key)?;
    let a = Gateway::start(&tmp.path().join("a"), &[], key)?;
    let upstream = StaticServer::start(&fx.cache());
    let b = Gateway::start_with(
        &tmp.path().join("b"),
        &[&upstream.url],
        key,
        &["--bootstrap", &a.node_addrs[0]],
    )?;
    b.wait_for("peers", 1)?;
    let top = fx.path_named("top");
    let out_dir = tmp.path().join("rebuilt");
    let (ok, out) = export(&b.url, &out_dir, key, &[top, "--closure"])?;
    ensure!(ok, "{out}");
    let n = fx.paths.len();
    ensure!(out.contains(&format!("exported {n} paths")), "{out}");
    ensure!(
        upstream.requests().is_empty(),
        "the upstream was asked: {:?}",
        upstream.requests()
    );

    // Nix substitutes everything from the rebuilt cache, signatures checked.
    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.copy_from(&format!("file://{}", out_dir.display()), key, &fx.paths),
        "nix copy from the exported cache",
    )?;
    ensure!(client.valid(&fx.paths) == fx.paths, "not every path is valid");
    client.verify_contents(&fx.paths)?;

    // A path nobody has is named, and fails the command.
    let absent = "/nix/store/00000000000000000000000000000000-absent";
    let (ok, out) = export(&b.url, &out_dir, key, &[absent])?;
    ensure!(!ok && out.contains("00000000000000000000000000000000"), "{out}");
    let (ok, out) = export(&b.url, &out_dir, key, &[absent, "--allow-missing"])?;
    ensure!(ok && out.contains("1 missing"), "{out}");
    ensure!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    Ok(())
}
