//! The fetch policy with the real Nix client: never slower than the
//! upstream alone, peers carrying what they can. Each test asserts a
//! mechanism (who sent which bytes, which requests reached the upstream),
//! never a wall-clock figure; the benchmarks measure the speed.

mod support;

use anyhow::{Result, ensure};
use support::{ClientStore, Gateway, StaticServer, check, fixture, http_get, narinfo_file};

fn nar_requests(log: &[String]) -> Vec<&String> {
    log.iter().filter(|r| r.contains("/nar/")).collect()
}

/// Nix realises the whole fixture through node 2 (`gw`) into a fresh
/// store under `tmp`: every path valid, every file's contents right.
fn nix_gets_every_path(tmp: &std::path::Path, gw: &Gateway, key: &str) -> Result<()> {
    let paths = &fixture().paths;
    let client = ClientStore::new(&tmp.join("client"));
    check(
        &client.realise(&gw.url, key, paths, false),
        "nix-store -r through node 2",
    )?;
    assert_eq!(&client.valid(paths), paths);
    client.verify_contents(paths)
}

/// The NarSize of `paths` together, from `gw`'s narinfos.
fn nar_bytes(gw: &Gateway, paths: &[String]) -> Result<u64> {
    paths
        .iter()
        .map(|p| -> Result<u64> {
            let text = http_get(&format!("{}/{}.narinfo", gw.url, &p[11..43]))?;
            Ok(nixswarm_protocol::NarInfo::parse(&text)?.nar_size)
        })
        .sum()
}

/// A counter of `gw`'s `/metrics` (0 if absent).
fn metric(gw: &Gateway, name: &str) -> Result<u64> {
    let m = http_get(&format!("{}/metrics", gw.url))?;
    Ok(m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Node 1 holds every path of the fixture (imported); node 2 joins it.
fn swarm(tmp: &std::path::Path, upstream: &str, key: &str, donor_flags: &[&str]) -> Result<(Gateway, Gateway)> {
    let fx = fixture();
    support::import(&tmp.join("n1"), &fx.cache(), key)?;
    let mut flags = vec!["--contribute", "cache"];
    flags.extend(donor_flags);
    let n1 = Gateway::start_with(&tmp.join("n1"), &[support::down_upstream().as_str()], key, &flags)?;
    n1.wait_for("provided_keys", fx.paths.len() as u64)?;
    let n2 = Gateway::start_with(
        &tmp.join("n2"),
        &[upstream],
        key,
        &["--contribute", "cache", "--bootstrap", &n1.node_addrs[0]],
    )?;
    n2.wait_for("peers", 1)?;
    Ok((n1, n2))
}

/// Peers slower than the upstream: the upstream streams each large NAR's
/// head while peers fetch its tail, and the upstream's connection is
/// closed where they meet. Every path arrives valid; the upstream's log
/// shows NAR responses cut short, and peers sent the rest. The NARs were
/// started from the peers' end when their narinfos were served, and a NAR
/// request that did not wait for its prefetch took it over as its tail.
#[test]
fn with_capped_peers_the_upstream_sends_the_head_and_peers_the_tail() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    // The upstream at 4 MiB/s, the donor's upload at 2 MiB/s: peers are
    // slower, but not so slow that they carry nothing.
    let upstream = StaticServer::start_paced(&fx.cache(), 4 << 20);
    let (_n1, n2) = swarm(tmp.path(), &upstream.url, key, &["--upload-limit", "2M"])?;

    nix_gets_every_path(tmp.path(), &n2, key)?;

    let sent = upstream.sent();
    let cut: Vec<_> = sent
        .iter()
        .filter(|s| s.path.contains("/nar/") && s.cut_short())
        .collect();
    let status = n2.status()?;
    let from_peers = n2.status_number("peer")?;
    eprintln!("upstream NAR responses cut short: {cut:?}\nnode 2: {status}");
    if cut.is_empty() {
        eprintln!("--- node 2 log ---\n{}", n2.log());
    }
    ensure!(!cut.is_empty(), "some NAR left the upstream only in part: {sent:?}");
    ensure!(from_peers > 0, "peers carried bytes: {status}");
    let tails = metric(&n2, "nixswarm_gateway_prefetch_tails_total")?;
    ensure!(tails > 0, "a prefetch became a NAR's tail:\n{}", n2.log());
    let big = fx.path_named("big-20m");
    let url = nixswarm_protocol::NarInfo::parse(&std::fs::read_to_string(narinfo_file(&fx.cache(), big))?)?.url;
    ensure!(
        cut.iter().any(|s| s.path.ends_with(&url)),
        "the 20 MB NAR's upstream response was cut where the peers' tail began: {cut:?}"
    );
    Ok(())
}

/// Peers that are fast: a NAR starts from them when its narinfo is served,
/// so by the time Nix asks for the NARs they are in the store and no NAR
/// request reaches the upstream.
#[test]
fn nars_start_at_the_narinfo_and_nix_finds_them_done() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let upstream = StaticServer::start(&fx.cache());
    let (_n1, n2) = swarm(tmp.path(), &upstream.url, key, &["--upload-limit", "0"])?;

    // Nix asks for a closure's narinfos first; here they are asked by hand,
    // and the NARs they name are then waited for (the wait is the test's,
    // so that a busy machine cannot turn a late prefetch into a failure).
    let total = nar_bytes(&n2, &fx.paths)?;
    let metric = |name: &str| metric(&n2, name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while metric("nixswarm_gateway_prefetched_bytes_total")? < total {
        ensure!(
            std::time::Instant::now() < deadline,
            "prefetched {} of {total} bytes:\n{}",
            metric("nixswarm_gateway_prefetched_bytes_total")?,
            n2.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mark = upstream.requests().len();
    nix_gets_every_path(tmp.path(), &n2, key)?;
    let log = upstream.requests();
    ensure!(
        nar_requests(&log[mark..]).is_empty(),
        "no NAR request reached the upstream: {:?}",
        nar_requests(&log[mark..])
    );
    ensure!(
        metric("nixswarm_gateway_prefetched_asked_bytes_total")? == total,
        "every prefetched byte was asked for"
    );
    Ok(())
}

/// No upstream has the paths (it is down) and the donor's upload is
/// capped: Nix's request for a NAR whose prefetch is under way waits for
/// that prefetch (a transfer of its own would ask the same peers from byte
/// 0) and gets the NAR from the store. Every NAR crosses the link once.
#[test]
fn with_peers_only_a_nar_request_joins_its_prefetch() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let down = support::down_upstream();
    let (_n1, n2) = swarm(tmp.path(), &down, key, &["--upload-limit", "4M"])?;

    nix_gets_every_path(tmp.path(), &n2, key)?;

    let total = nar_bytes(&n2, &fx.paths)?;
    let (prefetched, fetched) = (
        metric(&n2, "nixswarm_gateway_prefetched_bytes_total")?,
        metric(&n2, "nixswarm_node_fetched_bytes_total")?,
    );
    // Fetched bytes leave out chunks already held (paths share some).
    ensure!(
        prefetched == total && fetched <= total,
        "every NAR came by its prefetch, once: {prefetched} prefetched and {fetched} fetched of {total}\n{}",
        n2.log()
    );
    Ok(())
}

/// A path no peer holds starts from the upstream at once: with peers a
/// second away each way, Nix gets the whole fixture in less than one peer
/// round trip per path would allow (structural, not a speed target).
#[test]
fn a_path_no_peer_holds_starts_from_the_upstream_at_once() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let upstream = StaticServer::start(&fx.cache());
    let a = Gateway::start_with(&tmp.path().join("a"), &[&upstream.url], key, &["--contribute", "cache"])?;
    let mut flags = vec!["--contribute", "cache", "--bootstrap", a.node_addrs[0].as_str()];
    if cfg!(feature = "test-hooks") {
        flags.extend(["--test-peer-latency", "1s"]);
    }
    let b = Gateway::start_with(&tmp.path().join("b"), &[&upstream.url], key, &flags)?;
    b.wait_for("peers", 1)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    let t = std::time::Instant::now();
    check(&client.realise(&b.url, key, &fx.paths, false), "nix-store -r through b")?;
    let took = t.elapsed();
    eprintln!("{} paths nobody held, through b: {took:?}", fx.paths.len());
    ensure!(
        nar_requests(&upstream.requests()).len() == fx.paths.len(),
        "every NAR came from the upstream"
    );
    ensure!(
        b.status_number("peer")? == 0,
        "no peer had anything to send: {}",
        b.status()?
    );
    Ok(())
}

/// The first upstream, a plain static server, serves a small path's zstd
/// NAR cut to half (HTTP 200, a clean end); the second serves it whole.
/// One `nix-store -r` with Nix's own retries gets every path valid: the
/// short NAR is blamed and the rest comes from the next upstream.
#[test]
fn a_truncated_nar_from_the_first_upstream_is_completed_from_the_second() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let bad = tmp.path().join("bad-cache");
    support::copy_dir(&fx.cache(), &bad)?;
    let mut cut = Vec::new();
    for name in ["leaf-3", "mid-2"] {
        let path = fx.path_named(name);
        let text = std::fs::read_to_string(narinfo_file(&bad, path))?;
        let info = nixswarm_protocol::NarInfo::parse(&text)?;
        ensure!(info.compression == "zstd", "{name} is zstd in the fixture");
        let file = bad.join(&info.url);
        let raw = std::fs::read(&file)?;
        std::fs::write(&file, &raw[..raw.len() / 2])?;
        cut.push(path.to_owned());
    }
    let first = StaticServer::start(&bad);
    let second = StaticServer::start(&fx.cache());
    let gw = Gateway::start(&tmp.path().join("gw"), &[&first.url, &second.url], key)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    let out = client.realise_with(&gw.url, key, &fx.paths, false, &["--option", "download-attempts", "3"]);
    check(&out, "one nix-store -r with retries").map_err(|e| e.context(gw.log()))?;
    assert_eq!(client.valid(&fx.paths), fx.paths);
    client.verify_contents(&fx.paths)?;
    let log = gw.log();
    ensure!(log.contains("ended after"), "the short NAR was logged:\n{log}");
    for p in &cut {
        ensure!(
            second.requests().iter().any(|r| r.contains("/nar/")) && log.contains(&p["/nix/store/".len()..]),
            "{p} was completed from the second upstream"
        );
    }
    Ok(())
}
