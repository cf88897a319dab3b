//! `nixswarm import URL [PATH...]`: load a binary cache (`file://` or
//! `http(s)://`, any compression) into the node's store, verifying every
//! narinfo against the trusted keys and every NAR against its NarHash.
//! When a node runs on the same data directory, the paths go through its
//! gateway (`PUT /import/<hash>`), which verifies them again, stores and
//! announces them; otherwise the store is opened here and `nixswarm run`
//! announces them when it starts. `--closure` follows references.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures::StreamExt as _;
use nixswarm_gateway::{FileSource, Source, Upstream, Url, http_client};
use nixswarm_protocol::{StorePath, StorePathHash};

use crate::config::{Config, StoreArgs};

/// Flags of `nixswarm import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The binary cache: file:///dir, http(s)://..., or
    /// s3://BUCKET[/PREFIX]?region=R&endpoint=HOST:PORT&scheme=http (as Nix
    /// names it; AWS credentials from the environment or ~/.aws/credentials)
    pub url: String,
    /// Store paths (or their 32-character hashes) to import; default: every
    /// path of a file:// cache.
    pub paths: Vec<String>,
    /// Also import every path the named ones refer to, recursively.
    #[arg(long)]
    pub closure: bool,
}

/// The running node's gateway on this data directory, if one answers.
async fn running_gateway(data_dir: &std::path::Path) -> Option<String> {
    let url = std::fs::read_to_string(super::run::gateway_file(data_dir)).ok()?;
    let base = url.trim().trim_end_matches('/').to_owned();
    let up = reqwest::Client::new()
        .get(format!("{base}/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    up.then_some(base)
}

/// Every narinfo in an S3 cache (ListObjectsV2, page by page).
async fn list_s3(
    loc: &nixswarm_gateway::s3::S3Location,
    client: &reqwest::Client,
    signer: Option<&nixswarm_gateway::s3::Signer>,
) -> Result<Vec<StorePathHash>> {
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = client.get(loc.list_url(token.as_deref())).build()?;
        let resp = nixswarm_gateway::s3::send(client, req, signer)
            .await
            .with_context(|| format!("listing s3://{}", loc.bucket))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("listing s3://{}: {status}: {}", loc.bucket, text.trim());
        }
        let (hashes, next) = loc.parse_list(&text);
        all.extend(hashes);
        match next {
            Some(t) => token = Some(t),
            None => return Ok(all),
        }
    }
}

/// Where the paths go: the running node's gateway, or the store itself.
enum Target {
    Gateway { client: reqwest::Client, base: String },
    Store(nixswarm_node::ChunkStore),
}

/// A store path (`/nix/store/<hash>-<name>`) or its 32-character hash.
pub(crate) fn parse_path(p: &str) -> Result<StorePathHash> {
    let p = p.trim();
    if let Ok(h) = p.parse() {
        return Ok(h);
    }
    Ok(p.parse::<StorePath>()
        .with_context(|| format!("{p:?} is neither a store path nor a store path hash"))?
        .hash())
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let eff = Config::load(&args.store.config_args())?.resolve()?;
    let url: Url = args
        .url
        .parse()
        .with_context(|| format!("{:?} is not a URL", args.url))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let target = match running_gateway(&eff.data_dir).await {
            Some(base) => {
                eprintln!("importing through the running node at {base}");
                Target::Gateway {
                    client: reqwest::Client::new(),
                    base,
                }
            }
            None => Target::Store(
                super::run::open_store(&eff).context("(is a node starting or stopping on this data directory?)")?,
            ),
        };
        let (source, listed): (Arc<dyn Source>, Option<Vec<StorePathHash>>) = match url.scheme() {
            "file" => {
                let dir = PathBuf::from(url.path());
                let fs = FileSource::new(&dir);
                let all = fs.list().with_context(|| format!("listing {}", dir.display()))?;
                (Arc::new(fs), Some(all))
            }
            "http" | "https" => {
                let client = http_client(
                    Duration::from_secs(10),
                    Duration::from_secs(60),
                    std::slice::from_ref(&url),
                )?;
                (
                    Arc::new(Upstream::new(&url, client, Duration::from_secs(30)).map_err(anyhow::Error::msg)?),
                    None,
                )
            }
            "s3" => {
                let loc = nixswarm_gateway::s3::S3Location::parse(&url).map_err(anyhow::Error::msg)?;
                let root = loc.root();
                let client = http_client(
                    Duration::from_secs(10),
                    Duration::from_secs(60),
                    std::slice::from_ref(&root),
                )?;
                let signer = loc.signer();
                let mut up =
                    Upstream::new(&root, client.clone(), Duration::from_secs(30)).map_err(anyhow::Error::msg)?;
                if let Some(s) = &signer {
                    up = up.with_signer(s.clone());
                }
                let listed = if args.paths.is_empty() {
                    Some(list_s3(&loc, &client, signer.as_ref()).await?)
                } else {
                    None
                };
                (Arc::new(up), listed)
            }
            s => bail!("unsupported URL scheme {s:?}: use file://, http://, https:// or s3://"),
        };
        let named = if args.paths.is_empty() {
            listed.context("an http(s) cache cannot be listed: name the store paths to import")?
        } else {
            args.paths.iter().map(|p| parse_path(p)).collect::<Result<Vec<_>>>()?
        };
        let mut progress = super::progress::Progress::new();
        let mut queue: std::collections::VecDeque<StorePathHash> = named.iter().copied().collect();
        let mut seen: std::collections::HashSet<StorePathHash> = queue.iter().copied().collect();
        let (mut done, mut imported, mut present, mut failed, mut bytes) = (0usize, 0usize, 0usize, 0usize, 0u64);
        while let Some(hash) = queue.pop_front() {
            done += 1;
            progress.update(done, done + queue.len(), bytes, &hash.to_string());
            match import_one(&*source, &target, &eff.trusted_keys, &hash).await {
                Ok((outcome, refs)) => {
                    match outcome {
                        Some(n) => {
                            imported += 1;
                            bytes += n;
                        }
                        None => present += 1,
                    }
                    if args.closure {
                        for r in refs {
                            if seen.insert(r) {
                                queue.push_back(r);
                            }
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    progress.interrupt();
                    eprintln!("{hash}: {e:#}");
                }
            }
        }
        progress.interrupt();
        println!(
            "imported {imported} paths ({} MiB), {present} already present, {failed} failed",
            bytes >> 20
        );
        if failed > 0 {
            bail!("{failed} of {done} paths could not be imported");
        }
        Ok(())
    })
}

/// Imports one path: the NAR bytes imported (`None`: already there) and
/// the paths it refers to.
async fn import_one(
    source: &dyn Source,
    target: &Target,
    keys: &[nixswarm_protocol::PublicKey],
    hash: &StorePathHash,
) -> Result<(Option<u64>, Vec<StorePathHash>)> {
    let info = source.narinfo(hash).await?.context("no narinfo in the cache")?;
    if info.store_path.hash() != *hash {
        bail!("the narinfo is for {}", info.store_path);
    }
    if info.trust(keys).is_none() {
        bail!("not signed by a trusted key (see --trusted-key)");
    }
    let refs: Vec<StorePathHash> = info
        .references
        .iter()
        .map(StorePath::hash)
        .filter(|r| r != hash)
        .collect();
    let size = info.nar_size;
    match target {
        Target::Store(store) => {
            if store.contains(hash)? {
                return Ok((None, refs));
            }
            let mut nar = source.nar(&info).await?.context("the NAR is missing from the cache")?;
            let mut ingest = store.begin_ingest(info)?;
            while let Some(piece) = nar.next().await {
                ingest.write(&piece.context("reading the NAR")?)?;
            }
            tokio::task::spawn_blocking(move || ingest.finish()).await??;
            Ok((Some(size), refs))
        }
        Target::Gateway { client, base } => {
            let nar = source.nar(&info).await?.context("the NAR is missing from the cache")?;
            let head = nixswarm_gateway::import::frame(&info.to_text());
            let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(nar);
            let resp = super::pin::send(
                client
                    .put(format!("{base}/import/{hash}"))
                    .header(nixswarm_gateway::pin::WRITE_HEADER, "1")
                    .body(reqwest::Body::wrap_stream(body)),
                base,
            )
            .await?;
            match resp.status() {
                reqwest::StatusCode::CREATED => Ok((Some(size), refs)),
                reqwest::StatusCode::OK => Ok((None, refs)),
                s => bail!(
                    "the node answered {s}: {}",
                    resp.text().await.unwrap_or_default().trim()
                ),
            }
        }
    }
}
