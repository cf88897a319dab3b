//! The real Nix client substitutes a Nix-built, signed binary cache through
//! `nixswarm run`: first pulled through from a real HTTP upstream, then, with
//! the upstream stopped, from the gateway's own store alone.

mod support;

use anyhow::Result;
use support::{ClientStore, Gateway, StaticServer, assert_down, check, fixture};

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
