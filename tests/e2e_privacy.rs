//! Trusting a key is not sharing what it signed. Node A trusts two keys:
//! the test key (standing for cache.nixos.org's, and shared) and a second
//! one standing for a company's private cache (trusted, not shared). Its
//! upstream serves one path signed by the public key, one signed only by
//! the company's and one signed by both. The real Nix client fetches all
//! three through A, which keeps them. Then, over the wire and through
//! another node's gateway: the company's path is never announced, never
//! answered (even when asked for by hash), and the path signed by both
//! travels with the public signature only.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nixswarm_protocol::wire::{Request, Response};
use nixswarm_protocol::{NarInfo, PublicKey};
use support::probe::{hash_of, listener, path_info, probe};
use support::{ClientStore, Fixture, Gateway, StaticServer, check, down_upstream, fixture, narinfo_file};

fn read(cache: &Path, path: &str) -> Result<NarInfo> {
    Ok(NarInfo::parse(&std::fs::read_to_string(narinfo_file(cache, path))?)?)
}

/// The upstream: the signed test cache, with `company` signed only by the
/// company key and `both` by both keys.
fn mixed_cache(fx: &Fixture, dir: &Path, company: &str, both: &str) -> Result<()> {
    let src = fx.cache();
    std::fs::create_dir_all(dir.join("nar"))?;
    std::fs::copy(src.join("nix-cache-info"), dir.join("nix-cache-info"))?;
    for p in &fx.paths {
        let info = read(&src, p)?;
        std::fs::copy(src.join(&info.url), dir.join(&info.url))?;
        std::fs::copy(narinfo_file(&src, p), narinfo_file(dir, p))?;
    }
    let private = read(&fx.untrusted_cache(), company)?;
    std::fs::copy(fx.untrusted_cache().join(&private.url), dir.join(&private.url))?;
    std::fs::write(narinfo_file(dir, company), private.to_text())?;
    let mut two = read(&src, both)?;
    two.sigs.extend(read(&fx.untrusted_cache(), both)?.sigs);
    ensure!(two.sigs.len() == 2);
    std::fs::write(narinfo_file(dir, both), two.to_text())?;
    Ok(())
}

/// The upstream serving the mixed cache, and node A trusting both keys
/// and sharing the public one's (`start_with` adds `--share-key` for the
/// test key only).
struct Setup {
    tmp: tempfile::TempDir,
    public: String,
    company: String,
    open: String,
    private: String,
    both: String,
    a: Gateway,
    _upstream: StaticServer,
}

fn setup() -> Result<Setup> {
    setup_with(&[])
}

/// Same, with extra flags for A.
fn setup_with(extra: &[&str]) -> Result<Setup> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let public = fx.trusted_pub.clone();
    let company = std::fs::read_to_string(fx.dir.join("keys/untrusted.pub"))?
        .trim()
        .to_owned();
    let (open, private, both) = (
        fx.path_named("leaf-0").to_owned(),
        fx.path_named("leaf-1").to_owned(),
        fx.path_named("leaf-2").to_owned(),
    );
    let cache = tmp.path().join("cache");
    mixed_cache(&fx, &cache, &private, &both)?;
    let upstream = StaticServer::start(&cache);
    let a = Gateway::start_with(
        &tmp.path().join("a"),
        &[&upstream.url],
        &public,
        &[&["--trusted-key", &company], extra].concat(),
    )?;
    Ok(Setup {
        tmp,
        public,
        company,
        open,
        private,
        both,
        a,
        _upstream: upstream,
    })
}

#[test]
fn a_trusted_key_that_is_not_shared_never_leaves_the_machine() -> Result<()> {
    let Setup {
        tmp,
        public,
        company,
        open,
        private,
        both,
        a,
        _upstream,
    } = setup()?;
    let company_name = company.split(':').next().context("key name")?.to_owned();
    let client = ClientStore::new(&tmp.path().join("client-a"));
    let all = vec![open.clone(), private.clone(), both.clone()];
    check(
        &client.realise(&a.url, &format!("{public} {company}"), &all, false),
        "nix-store -r through A of paths signed by either key",
    )?;
    a.wait_for("paths", 3)?;
    // Two paths are shareable, so two are announced; the third never is.
    a.wait_for("provided_keys", 2)?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(a.status_number("provided_keys")? == 2, "{}", a.status()?);
    // And the user is told: a warning at start, a line in the status.
    let status = a.status()?;
    ensure!(
        status.contains("trusted_not_shared") && status.contains(&company),
        "the status does not name the key that is not shared: {status}"
    );
    ensure!(
        a.log()
            .contains(&format!("trusted key \"{company_name}\" are used here but not shared")),
        "no warning at start: {}",
        a.log()
    );

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (probe, a_peer) = probe(&tmp.path().join("probe"), &a.node_addrs[0]).await?;
        // Asked by hash: not there, for the company's path.
        let r = path_info(&probe, a_peer, &private).await?;
        ensure!(r == Response::NotFound, "the company's path was answered: {r:?}");
        let r = probe
            .request(
                a_peer,
                Request::Have {
                    hashes: vec![hash_of(&private), hash_of(&open)],
                },
            )
            .await?;
        ensure!(
            r == Response::Have {
                have: vec![false, true]
            },
            "{r:?}"
        );
        // The others travel with the shared key's signature alone.
        for p in [&open, &both] {
            let Response::PathInfo { narinfo, .. } = path_info(&probe, a_peer, p).await? else {
                bail!("{p} is shared but not answered");
            };
            ensure!(
                !narinfo.contains(&company_name),
                "{p}: a private key's name left: {narinfo}"
            );
            let info = NarInfo::parse(&narinfo)?;
            ensure!(info.sigs.len() == 1, "{narinfo}");
            let key: PublicKey = public.parse()?;
            ensure!(info.trust(std::slice::from_ref(&key)).is_some(), "{narinfo}");
        }
        // Nor is the company's path announced: nobody provides it.
        let mut providers = probe.find_providers(&hash_of(&private)).await?;
        let found = tokio::time::timeout(Duration::from_secs(2), providers.recv()).await;
        ensure!(!matches!(found, Ok(Some(_))), "the company's path has a provider");
        Ok(())
    })?;

    // Through another node's gateway (upstream down), trusting both keys:
    // the shared paths arrive from A, the company's path is a miss.
    let b = Gateway::start_with(
        &tmp.path().join("b"),
        &[&down_upstream()],
        &public,
        &["--trusted-key", &company, "--bootstrap", &a.node_addrs[0]],
    )?;
    b.wait_for("peers", 1)?;
    let client = ClientStore::new(&tmp.path().join("client-b"));
    let shared = vec![open.clone(), both.clone()];
    check(
        &client.realise(&b.url, &format!("{public} {company}"), &shared, false),
        "nix-store -r through B of the shared paths",
    )?;
    let url = format!("{}/{}.narinfo", b.url, hash_of(&private));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let code = support::http_status(&url)?;
        ensure!(code == 404, "B answered {code} for the company's path");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// What peers hear. A node that trusts a key it does not share asks its
/// upstreams first, and peers hear of a path only once a share key signed
/// its narinfo: a peer A dialled (an in-process node that notes every
/// hash it is asked about) heard of the public path, never of the
/// company's. And a peer that only connected to A, which A neither
/// dialled nor admitted, hears of nothing. Before, discovery started as
/// Nix asked for each narinfo, and went to every connected peer.
#[test]
fn a_private_cache_s_paths_are_never_asked_of_peers() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let (listener, listener_addr) = rt.block_on(listener(&dir.path().join("listener")))?;
    let Setup {
        tmp,
        public,
        company,
        open,
        private,
        a,
        _upstream,
        ..
    } = setup_with(&["--bootstrap", &listener_addr])?;
    let (stranger, _) = rt.block_on(probe(&tmp.path().join("probe"), &a.node_addrs[0]))?;
    a.wait_for("peers", 2)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(
            &a.url,
            &format!("{public} {company}"),
            &[open.clone(), private.clone()],
            false,
        ),
        "nix-store -r through A",
    )?;
    // Discovery runs in the background: give it time to ask.
    let heard_open = |l: &nixswarm_node::NodeHandle| l.stats.asked().contains(&hash_of(&open));
    let end = Instant::now() + Duration::from_secs(10);
    while !heard_open(&listener) {
        ensure!(
            Instant::now() < end,
            "the peer never heard of the public path: the test shows nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let asked = listener.stats.asked();
    ensure!(
        !asked.contains(&hash_of(&private)),
        "a peer was asked about the company's path ({} hashes asked in all)",
        asked.len()
    );
    let heard = stranger.stats.asked();
    ensure!(
        heard.is_empty(),
        "a peer A never dialled was asked about {} paths",
        heard.len()
    );
    drop(rt);
    Ok(())
}
