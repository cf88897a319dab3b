//! Home donors behind NAT, in network namespaces the test makes itself
//! (`tests/support/netns.rs`): public nodes R and R2 on a switch, a donor D
//! behind one masquerading router and a client C behind another, each
//! router dropping every unsolicited inbound connection. Every address
//! exists only inside those namespaces.
//!
//! - With routers that keep source ports, D reserves a slot on both relays,
//!   its provider records carry only relayed addresses, C's gateway gets
//!   every path from D with its upstream down, and the bytes go direct
//!   (hole punched): the relays' interfaces carry under 5% of the NAR bytes.
//! - With a router that picks a random source port for every connection,
//!   hole punching cannot work: C's gateway gets every path from its
//!   upstream, each within the normal fallback time, with no hang.
//!
//! Needs root, iproute2 and nftables (scripts/test.sh runs it as root);
//! without them each test fails and says why.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nixswarm_protocol::NarInfo;
use serde_json::Value;
use support::netns::{Nat, Net};
use support::{ClientStore, Gateway, StaticServer, check, down_upstream, fixture, import, narinfo_file};

const R: &str = "198.18.0.1";
const R2: &str = "198.18.0.2";

/// Which transports the nodes listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transports {
    TcpAndQuic,
    QuicOnly,
}

fn listen_on(ip: &str, t: Transports) -> Vec<String> {
    let quic = format!("/ip4/{ip}/udp/4001/quic-v1");
    match t {
        Transports::TcpAndQuic => vec![format!("/ip4/{ip}/tcp/4001"), quic],
        Transports::QuicOnly => vec![quic],
    }
}

fn start(
    ns: &str,
    ip: &str,
    t: Transports,
    dir: &Path,
    upstreams: &[&str],
    key: &str,
    extra: &[&str],
) -> Result<Gateway> {
    let listen = listen_on(ip, t);
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
    Gateway::start_in(ns, &listen, dir, upstreams, key, extra)
}

/// A node's address to bootstrap through, on the transport in use.
fn boot_addr(g: &Gateway, t: Transports) -> Result<String> {
    let want = if t == Transports::QuicOnly {
        "/quic-v1/"
    } else {
        "/tcp/"
    };
    g.node_addrs
        .iter()
        .find(|a| a.contains(want))
        .cloned()
        .with_context(|| format!("no {want} address in {:?}", g.node_addrs))
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// Polls `f` every 250 ms for up to `secs` seconds until it gives `Some`.
fn wait<T>(secs: u64, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f()? {
            return Ok(t);
        }
        if Instant::now() > end {
            bail!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The swarm of both tests: R and R2 public, D (holding the fixture's
/// signed paths) behind `d_nat`, C behind `c_nat`. Returns the nodes and
/// the namespaces' names; D has reserved its relays when this returns.
struct Swarm {
    r: Gateway,
    r2: Gateway,
    d: Gateway,
    d_id: String,
    c_ns: String,
    // Last: the namespaces go after the processes in them.
    net: Net,
}

/// What the relay R claims besides its real address: nobody is there.
const CLAIMED_IP: &str = "198.18.0.200";
const CLAIMED: &str = "/ip4/198.18.0.200/tcp/4001";

fn swarm(
    tag: &str,
    tmp: &Path,
    t: Transports,
    d_nat: Nat,
    c_nat: Nat,
    c_upstream: impl FnOnce(&str) -> String,
    c_extra: &[&str],
) -> Result<(Swarm, Gateway)> {
    let fx = fixture();
    let key = fx.trusted_pub.as_str();
    let mut net = Net::new(tag)?;
    let r_ns = net.public("r", 1)?;
    let r2_ns = net.public("r2", 2)?;
    let d_ns = net.home("d", 11, d_nat)?;
    let c_ns = net.home("c", 12, c_nat)?;

    // R claims an address that is not its own (a host that does not
    // exist on the test internet): a relay hands its addresses to every
    // reservation, and D must not advertise circuits through it.
    let r = start(&r_ns, R, t, &tmp.join("r"), &[], key, &["--test-claim-addr", CLAIMED])?;
    let boot = boot_addr(&r, t)?;
    let r2 = start(&r2_ns, R2, t, &tmp.join("r2"), &[], key, &["--bootstrap", &boot])?;
    let boot2 = boot_addr(&r2, t)?;

    import(&tmp.join("d"), &fx.cache(), key)?;
    let d = start(
        &d_ns,
        "0.0.0.0",
        t,
        &tmp.join("d"),
        &[],
        key,
        &["--bootstrap", &boot, "--bootstrap", &boot2],
    )?;
    let d_id = json(&d.status()?)?["node"]["peer_id"]
        .as_str()
        .context("D's peer id")?
        .to_owned();

    // D finds out it is not reachable (AutoNAT) and reserves both relays.
    let status = wait(90, "D to reserve two relays", || {
        let s = json(&d.status()?)?;
        let relays = s["node"]["relays"].as_array().map_or(0, Vec::len);
        let relayed = s["node"]["external_addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit")))
            .count();
        Ok((relays >= 2 && relayed >= 2).then_some(s))
    })
    .map_err(|e| e.context(d.log()))?;
    ensure!(status["node"]["reachability"] == "private", "D is behind NAT: {status}");
    ensure!(
        !status["node"]["external_addrs"].to_string().contains(CLAIMED_IP),
        "D advertises a circuit through the address R claimed: {status}"
    );
    ensure!(status["node"]["dht_server"] == false, "D stays a DHT client: {status}");

    let upstream = c_upstream(&c_ns);
    let c = start(
        &c_ns,
        "0.0.0.0",
        t,
        &tmp.join("c"),
        &[&upstream],
        key,
        &[&["--bootstrap", &boot], c_extra].concat(),
    )?;
    Ok((
        Swarm {
            r,
            r2,
            d,
            d_id,
            c_ns,
            net,
        },
        c,
    ))
}

/// The NarSize of every fixture path, summed.
fn nar_bytes(cache: &Path, paths: &[String]) -> Result<u64> {
    let mut total = 0;
    for p in paths {
        total += NarInfo::parse(&std::fs::read_to_string(narinfo_file(cache, p))?)?.nar_size;
    }
    Ok(total)
}

fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len()..][..32]
}

#[test]
fn a_donor_behind_nat_serves_a_client_behind_nat_over_a_punched_direct_connection() -> Result<()> {
    direct_transfer("a", Transports::TcpAndQuic)
}

/// The same over QUIC alone: UDP hole punching.
#[test]
fn the_same_over_quic_alone() -> Result<()> {
    direct_transfer("q", Transports::QuicOnly)
}

fn direct_transfer(tag: &str, t: Transports) -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    // The DHT wait gets the whole cap for any NAR, and C has no upstream:
    // what is tested is that D is found and reached, not timing.
    let flags = [
        "--peer-wait-have",
        "20s",
        "--peer-wait-rate",
        "0",
        "--peer-wait-max",
        "20s",
    ];
    let (s, c) = swarm(
        tag,
        tmp.path(),
        t,
        Nat::PortPreserving,
        Nat::PortPreserving,
        |_| down_upstream(),
        &flags,
    )?;

    // The metrics say the same as the status.
    let metrics = s.d.get("/metrics")?;
    for want in [
        "nixswarm_node_reachability{state=\"private\"} 1",
        "nixswarm_node_relay_reservations 2",
        "nixswarm_node_dht_server 0",
        "/p2p-circuit",
    ] {
        ensure!(metrics.contains(want), "{want} is not in D's metrics:\n{metrics}");
    }

    // Outside D's LAN, D's records carry only its relayed addresses, and D
    // is in no routing table (it is not reachable, so not a DHT server).
    let probe = hash_of(&fx.paths[0]);
    for (name, relay) in [("R", &s.r), ("R2", &s.r2)] {
        let addrs = wait(
            60,
            &format!("{name} to hold D's record with its relayed addresses"),
            || {
                let v = json(&relay.get(&format!("/dht/{probe}"))?)?;
                let d = v["providers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["peer"] == s.d_id.as_str())
                    .cloned();
                Ok(d.and_then(|d| {
                    let addrs: Vec<String> = d["addrs"]
                        .as_array()?
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect();
                    (!addrs.is_empty()).then_some(addrs)
                }))
            },
        )?;
        for a in &addrs {
            ensure!(
                a.contains("/p2p-circuit") && !a.contains("/ip4/10.") && !a.contains("/ip4/127."),
                "{name} holds a record of D with an address nobody outside D's LAN can dial: {addrs:?}"
            );
        }
        let table = json(&relay.get("/dht")?)?;
        ensure!(
            !table["routing_table"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p == s.d_id.as_str()),
            "D (unreachable) is in {name}'s routing table: {table}"
        );
    }

    let before = Net::traffic(&s.net.ns("r"), "eth0")? + Net::traffic(&s.net.ns("r2"), "eth0")?;
    let client = ClientStore::new_in(&tmp.path().join("client"), &s.c_ns);
    check(
        &client.realise(&c.url, key, &fx.paths, false),
        "nix-store -r in C's namespace",
    )
    .map_err(|e| e.context(format!("--- C ---\n{}\n--- D ---\n{}", c.log(), s.d.log())))?;
    assert_eq!(client.valid(&fx.paths), fx.paths);
    client.verify_contents(&fx.paths)?;
    let relayed = Net::traffic(&s.net.ns("r"), "eth0")? + Net::traffic(&s.net.ns("r2"), "eth0")? - before;

    ensure!(
        c.log().contains("hole punched: direct connection") || s.d.log().contains("hole punched: direct connection"),
        "no hole punch was logged"
    );
    // For scripts/bench-punch.sh: how the punch went.
    eprintln!(
        "punch: {} punches failed first, {} retries",
        s.d.log().matches("hole punching failed").count() + c.log().matches("hole punching failed").count(),
        c.log().matches("trying hole punching again").count()
    );
    let nar = nar_bytes(&fx.cache(), &fx.paths)?;
    let status = json(&c.status()?)?;
    let from_peers = status["served"]["peer"].as_u64().unwrap_or(0);
    eprintln!(
        "NAR bytes {nar}; served to C's Nix from peers {from_peers}; through R and R2's interfaces meanwhile {relayed} ({:.2}%)",
        100.0 * relayed as f64 / nar as f64
    );
    ensure!(from_peers >= nar, "every NAR came from peers: {status}");
    ensure!(
        relayed * 20 < nar,
        "the relays carried {relayed} bytes of {nar} NAR bytes (5% or more): the transfer was not direct"
    );
    // Chunks that several NARs share cross the network once: what D sent
    // is below the NAR bytes, and the relays carried a small part of it too.
    let d = json(&s.d.status()?)?;
    let sent = d["node"]["bytes_served"].as_u64().unwrap_or(0);
    eprintln!(
        "D sent {sent} chunk bytes; the relays carried {:.2}% of that",
        100.0 * relayed as f64 / sent as f64
    );
    ensure!(
        relayed * 20 < sent,
        "D sent {sent} bytes, the relays carried {relayed}: {d}"
    );
    Ok(())
}

/// C's router drops everything between C and D's router until C's first
/// hole punch to D has failed; then the way is open. Before, a punch that
/// failed was not tried again until something else opened a new relayed
/// connection: C stayed without a direct connection to D.
#[test]
fn a_punch_that_failed_is_tried_again_and_gets_through() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let (s, c) = swarm(
        "p",
        tmp.path(),
        Transports::QuicOnly,
        Nat::PortPreserving,
        Nat::PortPreserving,
        |_| down_upstream(),
        &[],
    )?;
    let router = s.net.ns("c-router");
    Net::nft(
        &router,
        "table ip punchblock {
  chain block {
    type filter hook forward priority -10; policy accept;
    ip daddr 198.18.0.11 drop
    ip saddr 198.18.0.11 drop
  }
}
",
    )?;
    let logs = || format!("--- C ---\n{}\n--- D ---\n{}", c.log(), s.d.log());
    wait(30, "C to join", || {
        Ok((json(&c.status()?)?["node"]["peers"].as_u64() >= Some(2)).then_some(()))
    })?;
    // A narinfo D holds: C finds D in the DHT and dials it through a relay.
    let narinfo = format!("/{}.narinfo", hash_of(&fx.paths[0]));
    let t = Instant::now();
    // D starts the punch (it is the relayed connection's listener) and
    // reports its end.
    wait(90, "the first punch between C and D to fail", || {
        if !s.d.log().contains("hole punching failed") {
            let _ = c.get(&narinfo);
            return Ok(None);
        }
        Ok(Some(()))
    })
    .map_err(|e| e.context(logs()))?;
    let failed_after = t.elapsed();
    Net::nft(&router, "delete table ip punchblock")?;
    let c_id = json(&c.status()?)?["node"]["peer_id"]
        .as_str()
        .context("C's peer id")?
        .to_owned();
    let (to_d, to_c) = (
        format!("hole punched: direct connection peer={}", s.d_id),
        format!("hole punched: direct connection peer={c_id}"),
    );
    wait(90, "C and D to punch through on a retry", || {
        Ok(
            (support::strip_ansi(&c.log()).contains(&to_d) || support::strip_ansi(&s.d.log()).contains(&to_c))
                .then_some(()),
        )
    })
    .map_err(|e| e.context(logs()))?;
    eprintln!(
        "the first punch failed {failed_after:?} after the lookup; a retry got through {:?} later",
        t.elapsed() - failed_after
    );
    ensure!(
        c.log().contains("trying hole punching again"),
        "no retry logged:\n{}",
        c.log()
    );
    Ok(())
}

#[test]
fn behind_a_router_that_cannot_be_punched_the_upstream_serves_without_a_stall() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    let mut upstream = None;
    let (s, c) = swarm(
        "b",
        tmp.path(),
        Transports::TcpAndQuic,
        Nat::Random,
        Nat::Random,
        |ns| {
            let u = StaticServer::start_in(&fx.cache(), Some(ns));
            let url = u.url.clone();
            upstream = Some(u);
            url
        },
        &[],
    )?;
    let upstream = upstream.context("C's upstream")?;

    // C finds D through the DHT, reaches it through a relay, and cannot
    // punch through. The narinfos start NARs from D (prefetches); a NAR
    // request never waits for a prefetch with no bytes yet, so they are
    // asked first and given the time to try D.
    for p in &fx.paths {
        c.get(&format!("/{}.narinfo", hash_of(p)))?;
    }
    let tried = |log: &str| log.contains("hole punching failed") || log.contains("no direct connection");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tried(&c.log()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every path comes from the upstream, one at a time so each one's
    // time shows.
    let client = ClientStore::new_in(&tmp.path().join("client"), &s.c_ns);
    let mut slowest = Duration::ZERO;
    for p in &fx.paths {
        let t = Instant::now();
        check(
            &client.realise(&c.url, key, std::slice::from_ref(p), false),
            "nix-store -r in C's namespace",
        )?;
        slowest = slowest.max(t.elapsed());
    }
    client.verify_contents(&fx.paths)?;
    let log = c.log();
    eprintln!("slowest path through C's gateway: {slowest:?}");
    ensure!(tried(&log), "C tried D and could not reach it directly:\n{log}");
    // C reached D only through the relays, and NAR bytes never cross one.
    let d = json(&s.d.status()?)?;
    ensure!(d["node"]["bytes_served"] == 0, "D served chunks through a relay: {d}");
    let nars = upstream.requests().iter().filter(|r| r.contains("/nar/")).count();
    ensure!(nars >= fx.paths.len(), "the upstream served every NAR ({nars})");
    // Not a speed target (benchmarks measure speed): a path that took as
    // long as several request timeouts would be a hang.
    ensure!(
        slowest < Duration::from_secs(30),
        "a path took {slowest:?}: the fetch hung on a peer it cannot reach"
    );
    drop(s);
    Ok(())
}
