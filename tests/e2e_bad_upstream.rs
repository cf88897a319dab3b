//! A lying upstream: altered NARs, a narinfo signed by an untrusted key, a
//! forged NarHash, truncated NARs and a garbage narinfo. Nothing wrong may
//! become valid in the Nix store or be kept by the gateway; other paths keep
//! working; with a good upstream behind the bad one, everything arrives.

mod support;

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Result;
use nixswarm_protocol::{NarInfo, PublicKey};
use support::{ClientStore, Fixture, Gateway, StaticServer, fixture, realise_with_retries};

fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

fn read_narinfo(cache: &Path, path: &str) -> Result<NarInfo> {
    let text = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(path))))?;
    Ok(NarInfo::parse(&text)?)
}

fn decompress(info: &NarInfo, raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match info.compression.as_str() {
        "zstd" => {
            zstd::stream::read::Decoder::new(raw)?.read_to_end(&mut out)?;
        }
        "xz" => {
            xz2::read::XzDecoder::new(raw).read_to_end(&mut out)?;
        }
        c => anyhow::bail!("fixture compression {c}"),
    }
    Ok(out)
}

fn compress(info: &NarInfo, nar: &[u8]) -> Result<Vec<u8>> {
    Ok(match info.compression.as_str() {
        "zstd" => zstd::encode_all(nar, 1)?,
        "xz" => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 0);
            e.write_all(nar)?;
            e.finish()?
        }
        c => anyhow::bail!("fixture compression {c}"),
    })
}

/// Rewrites the uncompressed NAR of `path` in the cache at `dir`.
fn mangle_nar(dir: &Path, path: &str, f: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
    let info = read_narinfo(dir, path)?;
    let file = dir.join(&info.url);
    let mut nar = decompress(&info, &std::fs::read(&file)?)?;
    f(&mut nar);
    std::fs::write(&file, compress(&info, &nar)?)?;
    Ok(())
}

/// Builds the lying cache; returns the store paths it lies about.
fn make_bad_cache(fx: &Fixture, dir: &Path) -> Result<Vec<String>> {
    support::copy_dir(&fx.cache(), dir)?;
    let bad = |n: &str| fx.path_named(n).to_owned();

    // 1. A NAR altered at the upstream (narinfo and signature intact).
    mangle_nar(dir, &bad("mid-3"), |nar| {
        let i = nar.len() / 2;
        nar[i] ^= 0x55;
    })?;
    // ... and one altered deep inside a 20 MB NAR.
    mangle_nar(dir, &bad("big-20m"), |nar| nar[10_000_000] ^= 1)?;

    // 2. A narinfo signed by a key the client does not trust.
    let xz2 = bad("xz-2");
    let untrusted = read_narinfo(&fx.untrusted_cache(), &xz2)?;
    std::fs::copy(fx.untrusted_cache().join(&untrusted.url), dir.join(&untrusted.url))?;
    std::fs::write(dir.join(format!("{}.narinfo", hash_of(&xz2))), untrusted.to_text())?;

    // 3. A forged NarHash (the signature no longer verifies).
    let mid5 = bad("mid-5");
    let mut forged = read_narinfo(dir, &mid5)?;
    forged.nar_hash = read_narinfo(dir, &bad("mid-6"))?.nar_hash;
    std::fs::write(dir.join(format!("{}.narinfo", hash_of(&mid5))), forged.to_text())?;

    // 4. Truncated NARs: validly compressed but short, and a cut compressed file.
    mangle_nar(dir, &bad("big-text"), |nar| nar.truncate(nar.len() / 2))?;
    let mid7 = read_narinfo(dir, &bad("mid-7"))?;
    let raw = std::fs::read(dir.join(&mid7.url))?;
    std::fs::write(dir.join(&mid7.url), &raw[..raw.len() / 2])?;

    // 5. Garbage instead of a narinfo.
    std::fs::write(
        dir.join(format!("{}.narinfo", hash_of(&bad("leaf-4")))),
        "<html>500 oops</html>\n",
    )?;

    Ok(["mid-3", "big-20m", "xz-2", "mid-5", "big-text", "mid-7", "leaf-4"]
        .iter()
        .map(|n| bad(n))
        .collect())
}

#[test]
fn a_lying_upstream_never_wins() -> Result<()> {
    let fx = fixture();
    let key: PublicKey = fx.trusted_pub.parse()?;
    let tmp = tempfile::tempdir()?;
    let bad_paths = make_bad_cache(&fx, &tmp.path().join("bad-cache"))?;
    let bad_server = StaticServer::start(&tmp.path().join("bad-cache"));

    // Phase A: only the lying upstream.
    let gw = Gateway::start(&tmp.path().join("gw-a"), &[&bad_server.url], &fx.trusted_pub)?;
    let client = ClientStore::new(&tmp.path().join("client-a"));
    let out = client.realise(&gw.url, &fx.trusted_pub, &fx.paths, true);
    assert!(
        !out.status.success(),
        "some paths cannot be had from a lying upstream alone"
    );
    let valid = client.valid(&fx.paths);
    client.verify_contents(&valid)?;
    for p in &bad_paths {
        assert!(!valid.contains(p), "{p} came from a lying upstream but is valid");
    }
    // The gateway kept serving everything else.
    for name in ["leaf-0", "leaf-9", "mid-0", "mid-9", "xz-0"] {
        assert!(
            valid.contains(&fx.path_named(name).to_owned()),
            "{name} should have arrived"
        );
    }
    let log = gw.log();
    gw.stop()?;
    let stored = support::audit_gateway_store(&tmp.path().join("gw-a"), &key)?;
    for p in &bad_paths {
        assert!(
            !stored.contains(hash_of(p)),
            "the gateway stored {p} from a lying upstream"
        );
    }
    assert!(log.contains("NAR failed verification"), "rejections are logged:\n{log}");

    // Phase B: the lying upstream first, a good one behind it.
    let good_server = StaticServer::start(&fx.cache());
    let gw = Gateway::start(
        &tmp.path().join("gw-b"),
        &[&bad_server.url, &good_server.url],
        &fx.trusted_pub,
    )?;
    let client = ClientStore::new(&tmp.path().join("client-b"));
    let attempts = realise_with_retries(&client, &gw.url, &fx.trusted_pub, &fx.paths, 3)?;
    eprintln!("every path valid after {attempts} nix-store -r run(s)");
    assert_eq!(client.valid(&fx.paths), fx.paths);
    client.verify_contents(&fx.paths)?;
    gw.stop()?;
    let stored = support::audit_gateway_store(&tmp.path().join("gw-b"), &key)?;
    assert_eq!(stored.len(), fx.paths.len(), "every verified path was kept");
    Ok(())
}
