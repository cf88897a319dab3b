//! The real Nix client substitutes a Nix-built, signed binary cache through
//! `nixswarm run`: first pulled through from a real HTTP upstream, then, with
//! the upstream stopped, from the gateway's own store alone.

mod support;

use std::collections::HashMap;

use anyhow::Result;
use support::{ClientStore, Gateway, StaticServer, assert_down, check, fixture};

/// The NARs the gateway's log says it passed through as files: store path
/// to file bytes sent.
fn passed_through_files(log: &str) -> HashMap<String, u64> {
    support::strip_ansi(log)
        .lines()
        .filter(|l| l.contains("NAR served") && l.contains("file_bytes="))
        .filter_map(|l| {
            let field = |name: &str| l.split(&format!("{name}=")).nth(1)?.split_whitespace().next();
            Some((field("path")?.to_owned(), field("file_bytes")?.parse().ok()?))
        })
        .collect()
}

#[test]
fn nix_substitutes_everything_through_the_gateway_then_from_its_store_alone() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let mut upstream = StaticServer::start(&fx.cache());
    let gw = Gateway::start(&tmp.path().join("gw"), &[&upstream.url], &fx.trusted_pub)?;

    // Pull-through: nix-store -r with require-sigs on.
    let a = ClientStore::new(&tmp.path().join("a"));
    check(
        &a.realise(&gw.url, &fx.trusted_pub, &fx.paths, false),
        "nix-store -r via the gateway",
    )?;
    assert_eq!(a.valid(&fx.paths), fx.paths, "every path valid");
    a.verify_contents(&fx.paths)?;
    // No peers: each NAR up to 1 MiB of file reached Nix as the upstream's
    // own file (zstd or xz, Nix decoding it), whole. (A larger one, before
    // the upstream's rate is measured, may leave room for a peer that
    // turns up, so it comes decoded.)
    let files = passed_through_files(&gw.log());
    let mut small = 0;
    for info in support::cache_narinfos(&fx.cache())? {
        let file_size = info.file_size.unwrap_or(u64::MAX);
        if file_size > 1 << 20 {
            continue;
        }
        small += 1;
        assert_eq!(
            files.get(&info.store_path.to_string()).copied(),
            Some(file_size),
            "{} ({}) passed through whole",
            info.store_path,
            info.compression
        );
    }
    assert!(small >= 20, "the fixture has {small} small NARs");
    // The store decodes and keeps them behind the client.
    gw.wait_for("paths", fx.paths.len() as u64)?;

    // nix copy --from (HEAD requests, narinfo, NAR).
    let b = ClientStore::new(&tmp.path().join("b"));
    check(
        &b.copy_from(&gw.url, &fx.trusted_pub, &fx.paths),
        "nix copy --from the gateway",
    )?;
    assert_eq!(b.valid(&fx.paths), fx.paths);
    b.verify_contents(&fx.paths)?;

    // Upstream gone: everything comes from the gateway's store.
    upstream.stop();
    assert_down(&upstream.url);
    let c = ClientStore::new(&tmp.path().join("c"));
    check(
        &c.realise(&gw.url, &fx.trusted_pub, &fx.paths, false),
        "nix-store -r from the local store alone",
    )?;
    assert_eq!(c.valid(&fx.paths), fx.paths);
    c.verify_contents(&fx.paths)?;

    // A path nobody has is a plain 404 for Nix.
    let missing = "/nix/store/00000000000000000000000000000000-missing".to_owned();
    let out = c.realise(&gw.url, &fx.trusted_pub, &[missing], false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("don't know how to build") || err.contains("is not valid") || err.contains("cannot"),
        "{err}"
    );

    gw.stop()?;
    Ok(())
}

#[test]
fn a_binary_cache_in_a_local_directory_serves_as_an_upstream() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let upstream = format!("file://{}", fx.cache().display());
    let gw = Gateway::start(&tmp.path().join("gw"), &[&upstream], &fx.trusted_pub)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(&gw.url, &fx.trusted_pub, &fx.paths, false),
        "nix-store -r through a gateway whose upstream is a directory",
    )?;
    assert_eq!(client.valid(&fx.paths), fx.paths);
    client.verify_contents(&fx.paths)?;
    Ok(())
}
