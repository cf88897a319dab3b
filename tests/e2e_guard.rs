//! The local gateway serves programs on this machine, not web pages: a page
//! that rebinds its name to 127.0.0.1 (its requests name it in `Host`), or
//! one of another site sending requests to 127.0.0.1 (`Origin`,
//! `Sec-Fetch-Site`), is refused on every route, before anything is
//! fetched; the real Nix client, which sends neither, is served.

mod support;

use anyhow::{Context as _, Result, ensure};
use support::{ClientStore, Gateway, StaticServer, check, fixture, http_status_with as status, narinfo_file};

#[test]
fn web_pages_are_refused_on_every_route_and_nix_is_served() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let upstream = StaticServer::start(&fx.cache());
    let gw = Gateway::start(&tmp.path().join("gw"), &[&upstream.url], &fx.trusted_pub)?;
    let port = gw.url.rsplit(':').next().context("gateway port")?;
    let page = |h: &str| vec![format!("Host: evil.example:{port}"), h.to_owned()];
    // A rebound name (with its own, same-origin headers), and pages of
    // other sites: every way a browser would send them.
    let hostile = [
        page("Sec-Fetch-Site: same-origin"),
        vec![format!("Host: evil.example:{port}")],
        vec!["Origin: http://evil.example".to_owned()],
        vec!["Origin: null".to_owned()],
        vec!["Sec-Fetch-Site: cross-site".to_owned()],
        vec!["Sec-Fetch-Site: same-site".to_owned()],
    ];

    // A page asks for a path nobody has fetched yet: refused, and the
    // upstream never hears of it.
    let (first, rest) = fx.paths.split_first().context("fixture paths")?;
    let info = nixswarm_protocol::NarInfo::parse(&std::fs::read_to_string(narinfo_file(&fx.cache(), first))?)?;
    let hash = info.store_path.hash().to_string();
    for h in &hostile {
        ensure!(status("GET", &format!("{}/{hash}.narinfo", gw.url), h)? == 403, "{h:?}");
    }
    ensure!(
        !upstream.requests().iter().any(|r| r.contains(&hash)),
        "a refused request reached the upstream: {:?}",
        upstream.requests()
    );

    // The real Nix client is served.
    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(&gw.url, &fx.trusted_pub, &fx.paths, false),
        "nix-store -r through the guarded gateway",
    )?;
    assert_eq!(client.valid(&fx.paths), fx.paths);
    ensure!(!rest.is_empty());

    // Every route, now that the gateway has the paths: refused for every
    // hostile request, served for a program's.
    let nar = gw.get(&format!("/{hash}.narinfo"))?;
    let nar_url = nar
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .context("narinfo URL")?
        .to_owned();
    let routes: Vec<(&str, String, Vec<String>)> = vec![
        ("GET", "/".into(), vec![]),
        ("GET", "/nix-cache-info".into(), vec![]),
        ("GET", "/metrics".into(), vec![]),
        ("GET", "/status".into(), vec![]),
        ("GET", "/dht".into(), vec![]),
        ("GET", format!("/dht/{hash}"), vec![]),
        ("GET", format!("/{hash}.narinfo"), vec![]),
        ("GET", format!("/{nar_url}"), vec![]),
        ("GET", format!("/{hash}.ls"), vec![]),
        ("GET", "/log/00000000000000000000000000000000-x.drv".into(), vec![]),
        ("GET", "/no-such-route".into(), vec![]),
        ("POST", format!("/pin/{hash}"), vec!["x-nixswarm-request: 1".into()]),
        ("DELETE", format!("/pin/{hash}"), vec!["x-nixswarm-request: 1".into()]),
    ];
    let mut refused = 0;
    for (method, path, own) in &routes {
        let url = format!("{}{path}", gw.url);
        let served = status(method, &url, own)?;
        ensure!(served != 403, "{method} {path}: a program was refused");
        for h in &hostile {
            let headers: Vec<String> = own.iter().cloned().chain(h.iter().cloned()).collect();
            let got = status(method, &url, &headers)?;
            ensure!(got == 403, "{method} {path} with {h:?}: {got}");
            refused += 1;
        }
    }
    // The gateway's own origin (the dashboard's requests) is served.
    let own_origin = [format!("Origin: {}", gw.url), "Sec-Fetch-Site: same-origin".to_owned()];
    ensure!(status("GET", &format!("{}/status", gw.url), &own_origin)? == 200);
    let counted = gw.get("/metrics")?;
    let counted = counted
        .lines()
        .find_map(|l| l.strip_prefix("nixswarm_gateway_refused_requests_total "))
        .context("the refused-requests metric")?;
    assert_eq!(counted.trim().parse::<u64>()?, refused + hostile.len() as u64);
    Ok(())
}
