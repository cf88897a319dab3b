//! Decompression bombs from a hostile upstream. `URL`, `Compression`,
//! `FileHash` and `FileSize` are not covered by a narinfo's signature, so a
//! hostile `http://` upstream can keep a valid signature and point the NAR
//! at a file of its own:
//! - an xz stream whose block header demands a 1.5 GiB dictionary;
//! - a zstd stream and an xz stream that decode to the real NAR followed by
//!   512 MiB of zeros (each under 1 MiB compressed).
//!
//! The gateway's memory is measured from /proc all along: it must stay
//! within a bound. RSS cannot see a dictionary allocated but never touched
//! (pages arrive as they are written), so the log must also say that each
//! bomb was refused, and why. With an honest upstream behind the hostile one, the real
//! Nix client still gets every path, and only the honest bytes are kept.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use nixswarm_protocol::{NarInfo, PublicKey};
use support::{ClientStore, Fixture, Gateway, StaticServer, fixture, narinfo_file, realise_with_retries, rss};

/// What the gateway may grow by while it is bombed.
const BOUND: u64 = 200 << 20;
/// Zeros after the real NAR in the size bombs.
const EXTRA: usize = 512 << 20;

/// The uncompressed NAR of `path`, from the honest cache.
fn nar_of(cache: &Path, info: &NarInfo) -> Result<Vec<u8>> {
    let raw = std::fs::read(cache.join(&info.url))?;
    Ok(match info.compression.as_str() {
        "xz" => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&raw[..]), &mut out)?;
            out
        }
        "zstd" => zstd::decode_all(&raw[..])?,
        "none" => raw,
        c => anyhow::bail!("fixture compression {c}"),
    })
}

fn xz(data: &[u8]) -> Result<Vec<u8>> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 0);
    e.write_all(data)?;
    Ok(e.finish()?)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Points `path`'s narinfo in `dir` at `file` (compressed with
/// `compression`), keeping its signature, as a hostile upstream would.
fn repoint(dir: &Path, path: &str, compression: &str, file: &str, bytes: &[u8]) -> Result<()> {
    let at = narinfo_file(dir, path);
    let mut info = NarInfo::parse(&std::fs::read_to_string(&at)?)?;
    info.url = format!("nar/{file}");
    info.compression = compression.into();
    info.file_hash = None;
    info.file_size = None;
    std::fs::write(dir.join(&info.url), bytes)?;
    std::fs::write(&at, info.to_text())?;
    Ok(())
}

fn make_bombs(fx: &Fixture, dir: &Path) -> Result<Vec<String>> {
    support::copy_dir(&fx.cache(), dir)?;
    let paths: Vec<String> = ["leaf-1", "leaf-2", "leaf-3"]
        .iter()
        .map(|n| fx.path_named(n).to_owned())
        .collect();
    let nar = |p: &str| -> Result<Vec<u8>> {
        let info = NarInfo::parse(&std::fs::read_to_string(narinfo_file(&fx.cache(), p))?)?;
        nar_of(&fx.cache(), &info)
    };
    // 1. The real NAR in xz, its dictionary raised to 1.5 GiB in the block
    //    header: stream header (12 bytes), then size, flags, LZMA2 filter
    //    id 0x21, props size 1, props (dictionary), padding, CRC32.
    let mut dict = xz(&nar(&paths[0])?)?;
    ensure!(
        dict[12..16] == [0x02, 0x00, 0x21, 0x01],
        "the block header as liblzma writes it"
    );
    dict[16] = 37; // 3 << 29 bytes
    let crc = crc32(&dict[12..20]);
    dict[20..24].copy_from_slice(&crc.to_le_bytes());
    repoint(dir, &paths[0], "xz", "dict-bomb.nar.xz", &dict)?;
    // 2. and 3. The real NAR and then 512 MiB of zeros.
    for (path, compression) in [(&paths[1], "zstd"), (&paths[2], "xz")] {
        let mut long = nar(path)?;
        long.resize(long.len() + EXTRA, 0);
        let bomb = match compression {
            "zstd" => zstd::encode_all(&long[..], 3)?,
            _ => xz(&long)?,
        };
        ensure!(bomb.len() < 1 << 20, "{compression} bomb of {} bytes", bomb.len());
        repoint(dir, path, compression, &format!("size-bomb.nar.{compression}"), &bomb)?;
    }
    Ok(paths)
}

/// Samples `pid`'s RSS every 50 ms until stopped; returns the peak.
fn sample(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if let Ok(r) = rss(pid) {
                peak.fetch_max(r, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak.load(Ordering::Relaxed)
    });
    (stop, h)
}

#[test]
fn decompression_bombs_are_refused_within_a_memory_bound() -> Result<()> {
    let fx = fixture();
    let key = fx.trusted_pub.as_str();
    let trusted: PublicKey = key.parse()?;
    let tmp = tempfile::tempdir()?;
    let paths = make_bombs(&fx, &tmp.path().join("bombs"))?;
    let bad = StaticServer::start(&tmp.path().join("bombs"));
    let good = StaticServer::start(&fx.cache());

    // The hostile upstream first, the honest one behind it.
    let gw = Gateway::start(&tmp.path().join("gw"), &[&bad.url, &good.url], key)?;
    let before = rss(gw.pid()).context("the gateway's RSS")?;
    let (stop, sampler) = sample(gw.pid());
    let client = ClientStore::new(&tmp.path().join("client"));
    let attempts = realise_with_retries(&client, &gw.url, key, &paths, 3);
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let log = gw.log();
    eprintln!(
        "gateway RSS {} MiB before, peak {} MiB (+{} MiB, bound {} MiB)",
        before >> 20,
        peak >> 20,
        peak.saturating_sub(before) >> 20,
        BOUND >> 20
    );
    let attempts = attempts.with_context(|| format!("gateway log:\n{log}"))?;
    eprintln!("every path valid after {attempts} nix-store -r run(s)");
    ensure!(peak.saturating_sub(before) <= BOUND, "the gateway grew past the bound");
    // Refused for the right reasons: the dictionary before it was
    // allocated, the zeros at the first byte past NarSize.
    ensure!(log.contains("memory limit reached"), "the dictionary bomb:\n{log}");
    ensure!(
        log.matches("more bytes than NarSize").count() + log.matches("sent more than NarSize").count() >= 2,
        "the size bombs:\n{log}"
    );
    ensure!(client.valid(&paths) == paths);
    client.verify_contents(&paths)?;
    gw.stop()?;
    // Each bomb was refused at the hostile upstream, and what was kept is honest.
    ensure!(
        bad.requests().iter().filter(|r| r.contains("bomb")).count() >= 3,
        "every bomb was tried: {:?}",
        bad.requests()
    );
    let stored = support::audit_gateway_store(&tmp.path().join("gw"), &trusted)?;
    ensure!(stored.len() == 3, "the three honest paths were kept: {stored:?}");
    Ok(())
}
