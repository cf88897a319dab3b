//! Separate `nixswarm` processes and the real Nix client: node A imports a
//! signed cache built by Nix; node C knows only node B, and its upstream is
//! down; `nix-store -r` through C's gateway gets every path from peers.
//! Then a lying peer joins the providers: nothing wrong becomes valid and
//! everything arrives.

mod support;

use anyhow::Result;
use support::{ClientStore, Gateway, check, down_upstream, fixture, import};

#[test]
fn nix_substitutes_from_peers_through_a_node_that_knows_one_peer_and_has_no_upstream() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let down = down_upstream();

    import(&tmp.path().join("a"), &fx.cache(), key)?;
    let a = Gateway::start(&tmp.path().join("a"), &[], key)?;
    let b = Gateway::start_with(&tmp.path().join("b"), &[], key, &["--bootstrap", &a.node_addrs[0]])?;
    // A announced while alone, and again once B connected: wait for B to
    // hold those announcements, as it would in a swarm that has settled.
    b.wait_for("provider_records", 29)?;
    let c = Gateway::start_with(&tmp.path().join("c"), &[&down], key, &["--bootstrap", &b.node_addrs[0]])?;
    c.wait_for("peers", 1)?;

    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(&c.url, key, &fx.paths, false),
        "nix-store -r through C from peers",
    )?;
    assert_eq!(client.valid(&fx.paths), fx.paths);
    client.verify_contents(&fx.paths)?;

    let status = c.status()?;
    assert!(status.contains("\"bytes_fetched\":"), "{status}");
    assert!(
        !status.contains("\"bytes_fetched\":0"),
        "C fetched from peers: {status}"
    );
    // The same counters on /metrics (the duplicate bytes may be any
    // number: they depend on how the endgame fell).
    let fetched = c.status_number("bytes_fetched")?;
    let metrics = support::http_get(&format!("{}/metrics", c.url))?;
    assert!(
        metrics.contains(&format!("nixswarm_node_fetched_bytes_total {fetched}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("nixswarm_node_fetched_duplicate_bytes_total "),
        "{metrics}"
    );
    // Peers and connections as gauges (published each second, so only
    // their presence and a peer are checked, not equality with /status).
    let gauge = |name: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    assert!(gauge("nixswarm_node_peers").is_some_and(|p| p >= 1), "{metrics}");
    assert!(metrics.contains("nixswarm_node_connections "), "{metrics}");
    assert!(
        metrics.contains("nixswarm_node_upload_throttled_milliseconds_total "),
        "{metrics}"
    );
    assert!(c.status()?.contains("\"bytes_fetched_duplicate\":"));
    let a_status = a.status()?;
    assert!(!a_status.contains("\"bytes_served\":0"), "A served: {a_status}");
    assert!(
        a_status.contains("\"provided_keys\":29"),
        "A announced every path: {a_status}"
    );

    for g in [c, b, a] {
        g.stop()?;
    }
    Ok(())
}

#[cfg(feature = "test-hooks")]
#[test]
fn a_lying_peer_among_the_providers_changes_nothing() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let down = down_upstream();

    import(&tmp.path().join("honest"), &fx.cache(), key)?;
    import(&tmp.path().join("liar"), &fx.cache(), key)?;
    let honest = Gateway::start(&tmp.path().join("honest"), &[], key)?;
    let liar = Gateway::start_with(
        &tmp.path().join("liar"),
        &[],
        key,
        &["--bootstrap", &honest.node_addrs[0], "--test-corrupt-chunks"],
    )?;
    let d = Gateway::start_with(
        &tmp.path().join("d"),
        &[&down],
        key,
        &["--bootstrap", &liar.node_addrs[0]],
    )?;
    // D learns of the honest node through the DHT (it only knows the liar).
    d.wait_for("peers", 2)?;

    let client = ClientStore::new(&tmp.path().join("client"));
    let out = client.realise(&d.url, key, &fx.paths, true);
    let valid = client.valid(&fx.paths);
    client.verify_contents(&valid)?;
    check(&out, "nix-store -r through D with a lying peer among the providers")?;
    assert_eq!(valid, fx.paths);
    let log = d.log();
    eprintln!("lies caught: {}", log.matches("peer misbehaved").count());
    assert!(
        !liar.status()?.contains("\"bytes_served\":0"),
        "the liar was asked, and caught"
    );
    assert!(log.contains("peer misbehaved"), "D noticed the lies");
    for g in [d, liar, honest] {
        g.stop()?;
    }
    Ok(())
}
