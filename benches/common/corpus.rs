//! The swarm benchmarks' cache: input-addressed paths with references, NARs
//! from 64 bytes to ~24 MB (log-uniform), built with Nix and signed with
//! the fixture key; Zipf-popular samples of roots; the upstream's count of
//! NAR bytes sent.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use nixswarm_protocol::NarInfo;

pub const PATHS: usize = 160;
/// Roots drawn per node (with replacement, then deduplicated).
const ROOTS: usize = 8;
const ZIPF_S: f64 = 1.1;

/// Deterministic xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The paths of the benchmark cache: (size in bytes, indexes of references).
fn spec() -> Vec<(u64, Vec<usize>)> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    (0..PATHS)
        .map(|i| {
            let size = (64.0 * (24e6f64 / 64.0).powf(rng.unit())) as u64;
            let n = if i == 0 { 0 } else { (rng.next() % 4) as usize };
            let refs: BTreeSet<usize> = (0..n).map(|_| (rng.next() as usize) % i).collect();
            (size, refs.into_iter().collect())
        })
        .collect()
}

fn nix_expr(spec: &[(u64, Vec<usize>)], content: Content) -> String {
    let mut e = String::from(
        "let\n  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" (\"export PATH=/usr/bin:/bin; set -e; \" + script) ]; };\n",
    );
    for (i, (size, refs)) in spec.iter().enumerate() {
        let refs: Vec<String> = refs.iter().map(|r| format!("${{p{r}}}")).collect();
        e.push_str(&format!(
            "  p{i} = mk \"swarm-{i}\" \"mkdir $out; {} > $out/blob; echo {} > $out/refs\";\n",
            content.command(*size),
            refs.join(" ")
        ));
    }
    let all: Vec<String> = (0..spec.len()).map(|i| format!("p{i}")).collect();
    e.push_str(&format!("in [ {} ]\n", all.join(" ")));
    e
}

/// What the paths' blobs hold.
#[derive(Clone, Copy)]
pub enum Content {
    /// Random bytes: NARs stored uncompressed, FileSize = NarSize.
    Random,
    /// Random bytes written as hex (`od -tx1`): NARs stored with zstd,
    /// about 2.7 times smaller, as real store paths compress.
    Hex,
}

impl Content {
    fn command(self, size: u64) -> String {
        match self {
            Self::Random => format!("head -c {size} /dev/urandom"),
            // od writes 49 characters for every 16 bytes.
            Self::Hex => format!("head -c {} /dev/urandom | od -An -tx1 -v", size * 16 / 49),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Random => "bench-swarm-cache-v1",
            Self::Hex => "bench-wan-cache-v1",
        }
    }

    fn compression(self) -> &'static str {
        match self {
            Self::Random => "none",
            Self::Hex => "zstd",
        }
    }
}

/// Builds (once) the benchmark cache with Nix, signed with the fixture key.
/// Returns the cache directory and the store paths in spec order.
pub fn build_cache(keys: &Path, content: Content) -> Result<(PathBuf, Vec<String>)> {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(content.name());
    let paths_file = out.join("paths");
    if !out.join("done").exists() {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("paths.nix"), nix_expr(&spec(), content))?;
        let store = format!("local?root={}", out.join("store").display());
        eprintln!("building the {PATHS}-path benchmark cache with Nix (once)...");
        let mut build = Command::new("nix-build");
        build
            .args(["--store", &store, "--no-out-link", "--max-jobs", "4"])
            .args([
                "--option",
                "sandbox",
                "true",
                "--option",
                "extra-sandbox-paths",
                "/bin /usr /lib /lib64",
            ])
            .arg(out.join("paths.nix"))
            .env("NIX_CONFIG", "build-users-group =\nsubstituters =\n")
            .env("XDG_CACHE_HOME", out.join("xdg"));
        let paths = crate::support::run_ok(&mut build, "nix-build of the benchmark cache")?;
        let to = format!(
            "file://{}?compression={}&secret-key={}",
            out.join("cache").display(),
            content.compression(),
            keys.join("trusted.sec").display()
        );
        let mut copy = Command::new("nix");
        copy.args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--store",
            &store,
            "--to",
            &to,
        ])
        .args(paths.lines())
        .env("NIX_CONFIG", "build-users-group =\nsubstituters =\n")
        .env("XDG_CACHE_HOME", out.join("xdg"));
        crate::support::run_ok(&mut copy, "nix copy to the benchmark cache")?;
        std::fs::write(&paths_file, &paths)?;
        std::fs::write(out.join("done"), "")?;
    }
    let paths = std::fs::read_to_string(&paths_file)?
        .lines()
        .map(str::to_owned)
        .collect();
    Ok((out.join("cache"), paths))
}

/// The WAN benchmark's cache (built once): its directory, its store paths
/// in spec order, and its NAR bytes in GB.
pub fn hex_cache(keys: &Path) -> Result<(PathBuf, Vec<String>, f64)> {
    let (cache, paths) = build_cache(keys, Content::Hex)?;
    let infos = narinfos(&cache)?;
    anyhow::ensure!(infos.len() == PATHS, "the cache has {} narinfos", infos.len());
    let nar_gb = infos.values().map(|i| i.nar_size).sum::<u64>() as f64 / 1e9;
    Ok((cache, paths, nar_gb))
}

/// The rounds a benchmark runs: `BENCH_RUNS`, or `default`.
pub fn runs(default: usize) -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// NarSize and references of every path, from the cache's narinfos.
pub fn narinfos(cache: &Path) -> Result<HashMap<String, NarInfo>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(cache)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "narinfo") {
            let info = NarInfo::parse(&std::fs::read_to_string(&p)?).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.insert(info.store_path.to_string(), info);
        }
    }
    Ok(out)
}

pub fn closure(roots: &[String], infos: &HashMap<String, NarInfo>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(infos[&p].references.iter().map(ToString::to_string));
        }
    }
    seen
}

/// A Zipf-popular sample of roots for each node.
pub fn samples(paths: &[String], nodes: usize) -> Vec<Vec<String>> {
    let mut rng = Rng(0xfeed_0042_0000_0007);
    // Popularity rank: a fixed shuffle of the paths.
    let mut ranked: Vec<&String> = paths.iter().collect();
    for i in (1..ranked.len()).rev() {
        ranked.swap(i, (rng.next() as usize) % (i + 1));
    }
    let weights: Vec<f64> = (1..=ranked.len()).map(|r| 1.0 / (r as f64).powf(ZIPF_S)).collect();
    let total: f64 = weights.iter().sum();
    (0..nodes)
        .map(|_| {
            let picked: BTreeSet<&String> = (0..ROOTS)
                .map(|_| {
                    let mut x = rng.unit() * total;
                    let mut i = 0;
                    while x > weights[i] && i + 1 < weights.len() {
                        x -= weights[i];
                        i += 1;
                    }
                    ranked[i]
                })
                .collect();
            picked.into_iter().cloned().collect()
        })
        .collect()
}

/// The NAR responses in an access log ("URI BYTES_SENT ..."): each one's
/// URI and body bytes sent.
pub fn nar_responses(log: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("/nar/"))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// NAR bytes the access log says were sent.
pub fn nar_bytes_sent(log: &Path) -> u64 {
    nar_responses(log).iter().map(|(_, b)| b).sum()
}

/// Seconds `nix-store -r ROOTS` takes through `url`.
pub fn timed_realise(
    client: &crate::support::ClientStore,
    url: &str,
    key: &str,
    roots: &[String],
    what: &str,
) -> Result<f64> {
    let t = std::time::Instant::now();
    crate::support::check(&client.realise(url, key, roots, false), what)?;
    Ok(t.elapsed().as_secs_f64())
}
