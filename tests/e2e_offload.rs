//! `offload = max`, with far-away peers: every node's peer traffic goes
//! through the test-only delay line (`--test-peer-latency`), so the
//! upstream (a real HTTP server on loopback, serving the signed cache made
//! with Nix) answers far sooner than any peer. Still, once a peer holds a
//! path, its NAR bytes come from peers: the upstream's own request log
//! shows no NAR request from the nodes that came later.

#![cfg(feature = "test-hooks")]

mod support;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use support::{ClientStore, Gateway, StaticServer, check, fixture, http_get};

/// One-way delay on everything a node sends to peers (a round trip between
/// two nodes takes twice this).
const LATENCY: &str = "30ms";

fn node(dir: &std::path::Path, upstream: &str, key: &str, bootstrap: Option<&str>, latency: &str) -> Result<Gateway> {
    // `offload = max`: peers first whenever they hold a path (the default,
    // balanced, would let this fast upstream carry the heads; see
    // tests/e2e_policy.rs). Deadlines far beyond the peers' round trip:
    // what is tested is the decision (peers hold it, so peers send it), not
    // how a busy machine's timing falls; the hedge has tests of its own
    // (gateway/src/nar/merge_tests.rs).
    let mut flags = vec![
        "--contribute",
        "cache",
        "--offload",
        "max",
        "--test-peer-latency",
        latency,
    ];
    // The DHT wait too (rate 0: the whole cap for any NAR), so a `Have`
    // answer that a loaded machine delays past its 2 s deadline still
    // finds the provider through the DHT instead of falling back.
    flags.extend(["--peer-wait-have", "20s", "--hedge-after", "60s"]);
    flags.extend(["--peer-wait-rate", "0", "--peer-wait-max", "20s"]);
    if let Some(b) = bootstrap {
        flags.extend(["--bootstrap", b]);
    }
    Gateway::start_with(dir, &[upstream], key, &flags)
}

fn nar_requests(log: &[String]) -> Vec<&String> {
    log.iter().filter(|r| r.contains("/nar/")).collect()
}

#[test]
fn once_a_peer_holds_a_path_its_nar_comes_from_peers_even_when_the_upstream_is_faster() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let upstream = StaticServer::start(&fx.cache());

    let first = node(&tmp.path().join("n1"), &upstream.url, key, None, LATENCY)?;
    let boot = first.node_addrs[0].clone();
    let mut later = Vec::new();
    for i in 2..=4 {
        later.push(node(
            &tmp.path().join(format!("n{i}")),
            &upstream.url,
            key,
            Some(&boot),
            LATENCY,
        )?);
    }
    for n in &later {
        n.wait_for("peers", 1)?;
    }

    // Node 1 realises every path: nobody else has them, the upstream serves.
    let client = ClientStore::new(&tmp.path().join("client-1"));
    check(
        &client.realise(&first.url, key, &fx.paths, false),
        "nix-store -r through node 1",
    )?;
    first.wait_for("provided_keys", fx.paths.len() as u64)?;
    let served_first = nar_requests(&upstream.requests()).len();
    ensure!(
        served_first == fx.paths.len(),
        "node 1 fetched every NAR from the upstream"
    );

    // Then nodes 2-4, one after another, the same paths.
    let mark = upstream.requests().len();
    for (i, n) in later.iter().enumerate() {
        let client = ClientStore::new(&tmp.path().join(format!("client-{}", i + 2)));
        check(
            &client.realise(&n.url, key, &fx.paths, false),
            &format!("nix-store -r through node {}", i + 2),
        )?;
        assert_eq!(client.valid(&fx.paths), fx.paths);
        client.verify_contents(&fx.paths)?;
    }
    let log = upstream.requests();
    let after = &log[mark..];
    if !nar_requests(after).is_empty() {
        for (i, n) in later.iter().enumerate() {
            let text = n.log();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("DEBUG") || l.contains("nar") || l.contains("p2p") || l.contains("fetch"))
                .collect();
            eprintln!(
                "--- node {} log (not DEBUG, or about NARs) ---\n{}",
                i + 2,
                lines.join("\n")
            );
        }
    }
    assert!(
        nar_requests(after).is_empty(),
        "the upstream served NARs that peers held: {:?}",
        nar_requests(after)
    );
    assert!(
        after.iter().any(|r| r.ends_with(".narinfo")),
        "narinfos may (and, being faster, do) come from the upstream"
    );

    for n in &later {
        let status = n.status()?;
        let saved = n.status_number("egress_saved")?;
        ensure!(saved > 0, "peers saved egress: {status}");
        ensure!(status.contains("\"offload_share\":1.0"), "{status}");
        let metrics = http_get(&format!("{}/metrics", n.url))?;
        ensure!(
            metrics.contains(&format!(
                "nixswarm_gateway_served_bytes_total{{source=\"peer\"}} {saved}\n"
            )),
            "{metrics}"
        );
        ensure!(
            !metrics.contains("nixswarm_gateway_upstream_served_bytes_total{"),
            "no NAR byte from any upstream: {metrics}"
        );
    }
    // The same, as `nixswarm status` prints it for a donor.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .args(["status", "--gateway", &later[0].url])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.contains("egress saved:") && text.contains("(offload share 100.0%)"),
        "{text}"
    );
    let metrics = http_get(&format!("{}/metrics", first.url))?;
    ensure!(
        metrics.contains(&format!(
            "nixswarm_gateway_upstream_served_bytes_total{{upstream=\"{}/\"}}",
            upstream.url
        )) || metrics.contains(&format!(
            "nixswarm_gateway_upstream_served_bytes_total{{upstream=\"{}\"}}",
            upstream.url
        )),
        "node 1's bytes are credited to its upstream by name: {metrics}"
    );
    Ok(())
}

/// With peers a long way off (a round trip of 2 s), a path nobody has is
/// answered 404 as soon as the upstream says so: the gateway does not wait
/// for the peers. The check is structural (far less than one peer round
/// trip), not a speed target; the figures are printed.
#[test]
fn a_miss_is_answered_when_the_upstream_answers_not_after_the_peers() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let upstream = StaticServer::start(&fx.cache());
    let slow = "1s";
    let a = node(&tmp.path().join("a"), &upstream.url, key, None, slow)?;
    let b = node(&tmp.path().join("b"), &upstream.url, key, Some(&a.node_addrs[0]), slow)?;
    b.wait_for("peers", 1)?;

    let absent = "00000000000000000000000000000000";
    let time = |url: String| -> Result<(Duration, String)> {
        let t = Instant::now();
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()?;
        Ok((t.elapsed(), String::from_utf8(out.stdout)?))
    };
    let (direct, code) = time(format!("{}/{absent}.narinfo", upstream.url))?;
    assert_eq!(code, "404");
    for n in 0..3 {
        // A fresh hash each time: the gateway's negative cache is not what is measured.
        let h = format!("{}{n}", &absent[..31]);
        let (through, code) = time(format!("{}/{h}.narinfo", b.url))?;
        eprintln!("miss {n}: upstream directly {direct:?}, through the gateway {through:?}");
        assert_eq!(code, "404");
        assert!(
            through < Duration::from_secs(1),
            "the miss waited for the peers ({through:?}; a peer round trip is 2 s)"
        );
    }
    Ok(())
}
