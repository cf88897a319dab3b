//! A hostile upstream serving content-addressed paths with substituted
//! contents. Flat (`nix-store --add-fixed`) and text (`builtins.toFile`)
//! paths need no signature, and their NarHash is whatever the sender says:
//! only the content address ties the bytes to the path. The gateway must
//! check it before anything is stored (and so announced), and the next
//! upstream must then serve the right contents.

mod support;

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use nixswarm_protocol::{CACHE_NIXOS_ORG_KEY, NarInfo, PublicKey, Sha256Hash, Trust};
use support::{ClientStore, Gateway, StaticServer, realise_with_retries};

const FLAT: &str = "a flat file, fetched as fetchurl would\n";
const TEXT: &str = "Hello from a text path\n";

/// Rewrites `dir`'s copy of `path`: `contents` becomes other bytes of the
/// same length, and the narinfo's NarHash and FileHash describe the new NAR,
/// as an attacker would write them. Returns the forged narinfo.
fn forge(dir: &Path, path: &str, contents: &str) -> Result<NarInfo> {
    let file = support::narinfo_file(dir, path);
    let mut info = NarInfo::parse(&std::fs::read_to_string(&file)?)?;
    let nar = std::fs::read_to_string(dir.join(&info.url)).context("an uncompressed NAR")?;
    let evil = "X".repeat(contents.len());
    let forged = nar.replace(contents, &evil);
    ensure!(
        forged != nar && forged.len() == nar.len(),
        "contents not found in the NAR"
    );
    info.nar_hash = Sha256Hash::digest(forged.as_bytes());
    info.file_hash = Some(info.nar_hash);
    info.url = format!("nar/forged-{}.nar", info.store_path.hash());
    std::fs::write(dir.join(&info.url), forged)?;
    std::fs::write(&file, info.to_text())?;
    Ok(info)
}

#[test]
fn substituted_content_addressed_contents_are_never_stored() -> Result<()> {
    support::fixture_nix_available();
    let tmp = tempfile::tempdir()?;
    let key = CACHE_NIXOS_ORG_KEY;
    let trusted: PublicKey = key.parse()?;

    // Real content-addressed paths made by Nix, in an unsigned cache.
    let src = ClientStore::new(&tmp.path().join("src"));
    let file = tmp.path().join("data.txt");
    std::fs::write(&file, FLAT)?;
    let flat = src.add_flat(&file)?;
    let text = src.to_file("greeting", TEXT)?;
    let paths = vec![flat.clone(), text.clone()];
    let good = tmp.path().join("good-cache");
    src.copy_to_cache(&good, &paths)?;
    let bad = tmp.path().join("bad-cache");
    support::copy_dir(&good, &bad)?;
    for (path, contents, kind) in [(&flat, FLAT, "CA: fixed:sha256:"), (&text, TEXT, "CA: text:sha256:")] {
        let forged = forge(&bad, path, contents)?;
        // The forgery is one the narinfo rules alone accept.
        ensure!(forged.to_text().contains(kind), "{path} is not {kind}");
        ensure!(
            forged.trust(&[]) == Some(Trust::ContentAddressed),
            "{path}: forged narinfo untrusted"
        );
    }
    let bad_server = StaticServer::start(&bad);
    let good_server = StaticServer::start(&good);

    // Only the hostile upstream: nothing arrives, nothing is kept.
    let gw = Gateway::start(&tmp.path().join("gw-a"), &[&bad_server.url], key)?;
    let client = ClientStore::new(&tmp.path().join("client-a"));
    let out = client.realise(&gw.url, key, &paths, true);
    ensure!(!out.status.success(), "forged contents must not be realised");
    ensure!(client.valid(&paths).is_empty(), "a forged path became valid");
    let log = gw.log();
    gw.stop()?;
    let stored = support::audit_gateway_store(&tmp.path().join("gw-a"), &trusted)?;
    ensure!(stored.is_empty(), "the gateway kept forged contents: {stored:?}");
    ensure!(log.contains("content hash"), "the rejection says why:\n{log}");

    // The hostile upstream first, an honest one behind it.
    let gw = Gateway::start(&tmp.path().join("gw-b"), &[&bad_server.url, &good_server.url], key)?;
    let client = ClientStore::new(&tmp.path().join("client-b"));
    let attempts = realise_with_retries(&client, &gw.url, key, &paths, 3)?;
    eprintln!("both paths valid after {attempts} nix-store -r run(s)");
    ensure!(client.valid(&paths) == paths);
    client.verify_contents(&paths)?;
    let got = std::fs::read_to_string(client.root.join(flat.trim_start_matches('/')))?;
    ensure!(got == FLAT, "flat contents: {got:?}");
    let got = std::fs::read_to_string(client.root.join(text.trim_start_matches('/')))?;
    ensure!(got == TEXT, "text contents: {got:?}");
    gw.stop()?;
    // What was kept (and so announced to peers) is the honest contents.
    let stored = support::audit_gateway_store(&tmp.path().join("gw-b"), &trusted)?;
    ensure!(stored.len() == 2, "both honest paths were kept: {stored:?}");
    Ok(())
}
