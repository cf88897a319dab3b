//! What a NAR's trip through one peer cannot avoid on this machine,
//! measured in the same run as the benchmark that compares against it.
//!
//! - [`irreducible`]: one core's cost per GB of each step no design can
//!   skip: sha256 (the NarHash), BLAKE3 (a chunk's id), and one seal and
//!   one open of ChaCha20-Poly1305 (noise's cipher, in `ring`, as libp2p's
//!   noise uses it), in 64 KiB records.
//! - [`pipeline`]: those steps as threads joined by two loopback TCP
//!   connections, as a peer hop has them (sender: seal and send; receiver:
//!   open and BLAKE3 per chunk on one thread, sha256 and send on on
//!   another; a client reading the NAR): no libp2p, no store, no HTTP.
//!   What this reaches on two cores is as fast as a peer hop could be
//!   here.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::Digest as _;

/// Plaintext bytes per record: noise's largest frame less its tag.
const RECORD: usize = 65535 - TAG;
const TAG: usize = 16;

/// Core-seconds per GB of each irreducible step.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    pub sha256: f64,
    pub blake3: f64,
    pub seal: f64,
    pub open: f64,
}

impl Work {
    /// A hop's pair of processes: hashing once on each side (BLAKE3 where
    /// chunks are stored or checked, sha256 where the NAR is checked), one
    /// seal and one open.
    pub fn pair(&self) -> f64 {
        self.sha256 + self.blake3 + self.seal + self.open
    }
}

fn key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("a 32-byte key"))
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

/// Seconds per GB of `f` over `data`, the best of three passes.
fn per_gb(data: &[u8], mut f: impl FnMut(&[u8])) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f(data);
            t.elapsed().as_secs_f64() / (data.len() as f64 / 1e9)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures the irreducible steps over `data`.
pub fn irreducible(data: &[u8]) -> Result<Work> {
    let sha256 = per_gb(data, |d| {
        std::hint::black_box(sha2::Sha256::digest(d));
    });
    let blake3 = per_gb(data, |d| {
        for c in d.chunks(64 << 10) {
            std::hint::black_box(blake3::hash(c));
        }
    });
    let k = key();
    let mut buf = vec![0u8; RECORD + TAG];
    let seal = per_gb(data, |d| {
        for (n, c) in d.chunks(RECORD).enumerate() {
            let mut b = c.to_vec();
            let tag = k
                .seal_in_place_separate_tag(nonce(n as u64), Aad::empty(), &mut b)
                .expect("sealing");
            let _ = std::hint::black_box(tag);
        }
    });
    // Records to open, sealed once beforehand.
    let sealed: Vec<Vec<u8>> = data
        .chunks(RECORD)
        .enumerate()
        .map(|(n, c)| {
            let mut b = c.to_vec();
            k.seal_in_place_append_tag(nonce(n as u64), Aad::empty(), &mut b)
                .map(|()| b)
                .map_err(|_| anyhow!("sealing"))
        })
        .collect::<Result<_>>()?;
    let open = per_gb(data, |_| {
        for (n, s) in sealed.iter().enumerate() {
            buf.clear();
            buf.extend_from_slice(s);
            std::hint::black_box(
                k.open_in_place(nonce(n as u64), Aad::empty(), &mut buf)
                    .expect("opening"),
            );
        }
    });
    Ok(Work {
        sha256,
        blake3,
        seal,
        open,
    })
}

/// The irreducible pipeline's best of three runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pipeline {
    pub mib_s: f64,
    /// CPU seconds (user and system, all three threads) per GB.
    pub cpu_per_gb: f64,
}

/// `data` through the irreducible pipeline (best of three).
pub fn pipeline(data: &[u8]) -> Result<Pipeline> {
    let mut best = Pipeline::default();
    for _ in 0..3 {
        let c0 = process_cpu();
        let mib_s = pipeline_once(data)?;
        let cpu_per_gb = (process_cpu() - c0) / (data.len() as f64 / 1e9);
        if mib_s > best.mib_s {
            best = Pipeline { mib_s, cpu_per_gb };
        }
    }
    Ok(best)
}

/// This process's CPU seconds so far, every thread's, user and system.
fn process_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn pipeline_once(data: &[u8]) -> Result<f64> {
    let hop = TcpListener::bind("127.0.0.1:0")?;
    let out = TcpListener::bind("127.0.0.1:0")?;
    let (hop_addr, out_addr) = (hop.local_addr()?, out.local_addr()?);
    let t = Instant::now();
    let got = std::thread::scope(|s| -> Result<u64> {
        let sender = s.spawn(move || -> Result<()> {
            let k = key();
            let mut conn = TcpStream::connect(hop_addr)?;
            let mut b = Vec::with_capacity(RECORD + TAG);
            for (n, c) in data.chunks(RECORD).enumerate() {
                b.clear();
                b.extend_from_slice(c);
                k.seal_in_place_append_tag(nonce(n as u64), Aad::empty(), &mut b)
                    .map_err(|_| anyhow!("sealing"))?;
                conn.write_all(&b)?;
            }
            Ok(())
        });
        let len = data.len();
        // The receiver on two threads, so that both cores can work: one
        // opens and checks each chunk, the other hashes the NAR and sends
        // it on, a few records apart.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let receiver = s.spawn(move || -> Result<()> {
            let k = key();
            let (mut conn, _) = hop.accept()?;
            let (mut left, mut n) = (len, 0u64);
            while left > 0 {
                let plain = left.min(RECORD);
                let mut rec = vec![0u8; plain + TAG];
                conn.read_exact(&mut rec)?;
                let p = k
                    .open_in_place(nonce(n), Aad::empty(), &mut rec)
                    .map_err(|_| anyhow!("opening"))?;
                std::hint::black_box(blake3::hash(p));
                rec.truncate(plain);
                tx.send(rec)?;
                left -= plain;
                n += 1;
            }
            Ok(())
        });
        let forwarder = s.spawn(move || -> Result<()> {
            let mut next = TcpStream::connect(out_addr)?;
            let mut nar = sha2::Sha256::new();
            for p in rx {
                nar.update(&p);
                next.write_all(&p)?;
            }
            std::hint::black_box(nar.finalize());
            Ok(())
        });
        let (mut conn, _) = out.accept()?;
        let mut b = vec![0u8; 256 << 10];
        let mut got = 0u64;
        loop {
            let n = conn.read(&mut b)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        sender.join().map_err(|_| anyhow!("sender panicked"))??;
        receiver.join().map_err(|_| anyhow!("receiver panicked"))??;
        forwarder.join().map_err(|_| anyhow!("forwarder panicked"))??;
        Ok(got)
    })?;
    let secs = t.elapsed().as_secs_f64();
    (got == data.len() as u64)
        .then_some(got as f64 / secs / f64::from(1 << 20))
        .context("the pipeline lost bytes")
}
