//! `nixswarm export --to file:///DIR PATH...`: rebuilds a binary cache from
//! the swarm, with no egress. Each path's narinfo and NAR come from the
//! running node's store or its peers, never an upstream
//! (`GET /export/<hash>`); the narinfo must verify against the trusted keys
//! and the NAR against its NarHash and NarSize before anything is written.
//! The cache keeps the original signatures, with zstd NARs. Paths the swarm
//! could not supply are named, and make the command fail unless
//! `--allow-missing`.

use std::collections::{HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nixswarm_protocol::{NarCheck, NarInfo, PublicKey, Sha256Hash, StorePath, StorePathHash};
use sha2::Digest as _;

use super::import::parse_path;
use crate::config::public_key;

/// Flags of `nixswarm export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub client: crate::config::ClientArgs,
    /// The binary cache to write: file:///DIR (made if missing), or
    /// s3://BUCKET[/PREFIX]?region=R&endpoint=HOST:PORT&scheme=http (as Nix
    /// names it; AWS credentials from the environment or ~/.aws/credentials).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Trusted public key NAME:BASE64; repeat for several [default: the node's configuration].
    #[arg(long = "trusted-key", value_name = "NAME:KEY")]
    pub trusted_keys: Vec<String>,
    /// Read store paths (or hashes) from this file, one per line.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Also export every path the named ones refer to, recursively.
    #[arg(long)]
    pub closure: bool,
    /// Succeed even when the swarm could not supply some paths.
    #[arg(long)]
    pub allow_missing: bool,
    /// Store paths (/nix/store/<hash>-<name>) or their 32-character hashes.
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

fn keys(args: &ExportArgs) -> Result<Vec<PublicKey>> {
    let given = if args.trusted_keys.is_empty() {
        args.client.config()?.upstream.trusted_keys
    } else {
        args.trusted_keys.clone()
    };
    given.iter().map(|k| public_key("trusted key", k)).collect()
}

pub fn run(args: &ExportArgs) -> Result<()> {
    // An S3 cache is written to a staging directory first, each path
    // uploaded (NAR, then narinfo) as soon as it is complete.
    let bucket = match args.to.strip_prefix("s3://") {
        Some(_) => Some(Bucket::new(&args.to)?),
        None => None,
    };
    let dir = match (&bucket, args.to.strip_prefix("file://")) {
        (Some(b), _) => b.staging.clone(),
        (None, Some(d)) if d.starts_with('/') => PathBuf::from(d),
        _ => bail!(
            "--to {:?}: give file:///ABSOLUTE/DIR or s3://BUCKET[/PREFIX]?...",
            args.to
        ),
    };
    let keys = keys(args)?;
    let mut named = args.paths.iter().map(|p| parse_path(p)).collect::<Result<Vec<_>>>()?;
    if let Some(f) = &args.from_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            named.push(parse_path(line)?);
        }
    }
    if named.is_empty() {
        bail!("no paths to export: name store paths or use --from-file");
    }
    std::fs::create_dir_all(dir.join("nar")).with_context(|| format!("making {}", dir.display()))?;
    let info_file = dir.join("nix-cache-info");
    if !info_file.exists() {
        std::fs::write(&info_file, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 50\n")?;
    }
    let base = args.client.gateway_url()?.as_str().trim_end_matches('/').to_owned();
    let mut progress = super::progress::Progress::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut seen: HashSet<StorePathHash> = named.iter().copied().collect();
        let mut queue: VecDeque<StorePathHash> = named.into_iter().collect();
        let (mut written, mut present, mut bytes) = (0usize, 0usize, 0u64);
        let mut missing: Vec<String> = Vec::new();
        while let Some(hash) = queue.pop_front() {
            let done = written + present + missing.len() + 1;
            progress.update(done, done + queue.len(), bytes, &hash.to_string());
            let exported = match export_one(&client, &base, &dir, &keys, &hash).await {
                Ok(Some((info, n))) if n > 0 => match &bucket {
                    Some(b) => b.put_path(&dir, &info).await.map(|()| Some((info, n))),
                    None => Ok(Some((info, n))),
                },
                other => other,
            };
            match exported {
                Ok(Some((info, n))) => {
                    if n == 0 {
                        present += 1;
                    } else {
                        written += 1;
                        bytes += n;
                    }
                    if args.closure {
                        for r in info.references.iter().map(StorePath::hash) {
                            if seen.insert(r) {
                                queue.push_back(r);
                            }
                        }
                    }
                }
                Ok(None) => missing.push(format!("{hash}: the swarm has no copy")),
                Err(e) => missing.push(format!("{hash}: {e:#}")),
            }
        }
        progress.interrupt();
        for m in &missing {
            eprintln!("missing {m}");
        }
        if let Some(b) = &bucket {
            b.put(&dir.join("nix-cache-info"), "nix-cache-info").await?;
            let _ = std::fs::remove_dir_all(&b.staging);
        }
        println!(
            "exported {written} paths ({} MiB of NAR) to {}, {present} already there, {} missing",
            bytes >> 20,
            dir.display(),
            missing.len()
        );
        if !missing.is_empty() && !args.allow_missing {
            bail!(
                "{} paths could not be exported (named above; --allow-missing accepts that)",
                missing.len()
            );
        }
        Ok(())
    })
}

/// Exports one path into `dir`: its narinfo and the NAR bytes written
/// (0: it was there already), or `None` if the swarm has no copy.
async fn export_one(
    client: &reqwest::Client,
    base: &str,
    dir: &Path,
    keys: &[PublicKey],
    hash: &StorePathHash,
) -> Result<Option<(NarInfo, u64)>> {
    let narinfo_file = dir.join(format!("{hash}.narinfo"));
    if dir.join(".s3-staging").exists() {
        // Staged for S3: what is already in the bucket is not looked at.
    } else if let Ok(text) = std::fs::read_to_string(&narinfo_file)
        && let Ok(info) = NarInfo::parse(&text)
        && dir.join(&info.url).exists()
    {
        return Ok(Some((info, 0)));
    }
    let mut resp = super::pin::send(client.get(format!("{base}/export/{hash}")), base).await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let mut buf = Vec::new();
    let (text, first) = loop {
        if let Some(h) = nixswarm_gateway::import::head(&buf).map_err(anyhow::Error::msg)? {
            break h;
        }
        match resp.chunk().await? {
            Some(c) => buf.extend_from_slice(&c),
            None => bail!("the answer ended within its narinfo"),
        }
    };
    let mut info = NarInfo::parse(&text).context("the narinfo")?;
    if info.store_path.hash() != *hash {
        bail!("the narinfo is for {}", info.store_path);
    }
    if info.trust(keys).is_none() {
        bail!("its narinfo is not signed by a trusted key (see --trusted-key)");
    }
    // The NAR, checked as it comes, compressed into a file of its own.
    let tmp = dir.join("nar").join(format!(".{hash}.tmp"));
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut zstd = zstd::Encoder::new(HashingWriter::new(file), 3)?;
    let mut check = NarCheck::new(&info);
    let mut piece = first;
    loop {
        if !piece.is_empty() {
            check.update(&piece).context("the NAR from the swarm")?;
            zstd.write_all(&piece)?;
        }
        match resp.chunk().await? {
            Some(c) => piece = c,
            None => break,
        }
    }
    check.finish().context("the NAR from the swarm")?;
    let (file_hash, file_size) = zstd.finish()?.done()?;
    let url = format!("nar/{}.nar.zst", file_hash.to_nixbase32());
    std::fs::rename(&tmp, dir.join(&url))?;
    info.url = url;
    info.compression = "zstd".into();
    info.file_hash = Some(file_hash);
    info.file_size = Some(file_size);
    let tmp_info = narinfo_file.with_extension("narinfo.tmp");
    std::fs::write(&tmp_info, info.to_text())?;
    std::fs::rename(&tmp_info, &narinfo_file)?;
    let size = info.nar_size;
    Ok(Some((info, size.max(1))))
}

/// An S3 bucket being written, and the local directory paths are staged in.
struct Bucket {
    loc: nixswarm_gateway::s3::S3Location,
    client: reqwest::Client,
    signer: Option<nixswarm_gateway::s3::Signer>,
    staging: PathBuf,
}

impl Bucket {
    fn new(url: &str) -> Result<Self> {
        let parsed: reqwest::Url = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
        let loc = nixswarm_gateway::s3::S3Location::parse(&parsed).map_err(anyhow::Error::msg)?;
        let signer = loc.signer();
        let staging = std::env::temp_dir().join(format!("nixswarm-export-{}", std::process::id()));
        std::fs::create_dir_all(staging.join("nar"))?;
        std::fs::write(staging.join(".s3-staging"), "")?;
        Ok(Self {
            loc,
            client: reqwest::Client::new(),
            signer,
            staging,
        })
    }

    /// Uploads `file` as `key` (relative to the cache's root).
    async fn put(&self, file: &Path, key: &str) -> Result<()> {
        let url = self.loc.root().join(key)?;
        let len = std::fs::metadata(file)?.len();
        let body = tokio::fs::File::open(file).await?;
        let req = self
            .client
            .put(url.clone())
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::from(body))
            .build()?;
        let resp = nixswarm_gateway::s3::send(&self.client, req, self.signer.as_ref())
            .await
            .with_context(|| format!("uploading {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "uploading {url}: {status}: {}",
                resp.text().await.unwrap_or_default().trim()
            );
        }
        Ok(())
    }

    /// Uploads a staged path (its NAR, then its narinfo: a reader never
    /// sees a narinfo without its NAR) and drops the staged files.
    async fn put_path(&self, dir: &Path, info: &NarInfo) -> Result<()> {
        let narinfo = format!("{}.narinfo", info.store_path.hash());
        self.put(&dir.join(&info.url), &info.url).await?;
        self.put(&dir.join(&narinfo), &narinfo).await?;
        let _ = std::fs::remove_file(dir.join(&info.url));
        let _ = std::fs::remove_file(dir.join(&narinfo));
        Ok(())
    }
}

/// A file that hashes (sha256) and counts what is written to it.
struct HashingWriter {
    file: std::fs::File,
    sha: sha2::Sha256,
    size: u64,
}

impl HashingWriter {
    fn new(file: std::fs::File) -> Self {
        Self {
            file,
            sha: sha2::Sha256::new(),
            size: 0,
        }
    }

    /// Flushes to disk: the file's hash and size.
    fn done(mut self) -> Result<(Sha256Hash, u64)> {
        self.file.flush()?;
        self.file.sync_all()?;
        Ok((Sha256Hash(self.sha.finalize().into()), self.size))
    }
}

impl std::io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
