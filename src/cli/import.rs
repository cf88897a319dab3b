//! `nixswarm import URL [PATH...]`: load a binary cache (`file://` or
//! `http(s)://`, any compression) into the node's store, verifying every
//! narinfo against the trusted keys and every NAR against its NarHash. The
//! node announces what it holds when `nixswarm run` starts.

use std::io::IsTerminal as _;
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
    /// The binary cache: file:///dir, http://... or https://...
    pub url: String,
    /// Store paths (or their 32-character hashes) to import; default: every
    /// path of a file:// cache.
    pub paths: Vec<String>,
}

fn parse_path(p: &str) -> Result<StorePathHash> {
    if let Ok(h) = p.parse() {
        return Ok(h);
    }
    Ok(p.parse::<StorePath>()
        .with_context(|| format!("{p:?} is neither a store path nor a store path hash"))?
        .hash())
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let eff = Config::load(&args.store.config_args())?.resolve()?;
    let store = super::run::open_store(&eff).context("(stop `nixswarm run` before importing into its store)")?;
    let url: Url = args
        .url
        .parse()
        .with_context(|| format!("{:?} is not a URL", args.url))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
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
            s => bail!("unsupported URL scheme {s:?}: use file://, http:// or https://"),
        };
        let hashes = if args.paths.is_empty() {
            listed.context("an http(s) cache cannot be listed: name the store paths to import")?
        } else {
            args.paths.iter().map(|p| parse_path(p)).collect::<Result<Vec<_>>>()?
        };
        let progress = std::io::stderr().is_terminal();
        let (mut imported, mut present, mut failed, mut bytes) = (0usize, 0usize, 0usize, 0u64);
        for (i, hash) in hashes.iter().enumerate() {
            if progress {
                eprint!("\r\x1b[K[{}/{}] {} MiB  {hash}", i + 1, hashes.len(), bytes >> 20);
            }
            if store.contains(hash)? {
                present += 1;
                continue;
            }
            match import_one(&*source, &store, &eff.trusted_keys, hash).await {
                Ok(n) => {
                    imported += 1;
                    bytes += n;
                }
                Err(e) => {
                    failed += 1;
                    if progress {
                        eprintln!();
                    }
                    eprintln!("{hash}: {e:#}");
                }
            }
        }
        if progress {
            eprintln!();
        }
        println!(
            "imported {imported} paths ({} MiB), {present} already present, {failed} failed",
            bytes >> 20
        );
        if failed > 0 {
            bail!("{failed} of {} paths could not be imported", hashes.len());
        }
        Ok(())
    })
}

async fn import_one(
    source: &dyn Source,
    store: &nixswarm_node::ChunkStore,
    keys: &[nixswarm_protocol::PublicKey],
    hash: &StorePathHash,
) -> Result<u64> {
    let info = source.narinfo(hash).await?.context("no narinfo in the cache")?;
    if info.store_path.hash() != *hash {
        bail!("the narinfo is for {}", info.store_path);
    }
    if info.trust(keys).is_none() {
        bail!("not signed by a trusted key (see --trusted-key)");
    }
    let mut nar = source.nar(&info).await?.context("the NAR is missing from the cache")?;
    let size = info.nar_size;
    let mut ingest = store.begin_ingest(info)?;
    while let Some(piece) = nar.next().await {
        ingest.write(&piece.context("reading the NAR")?)?;
    }
    tokio::task::spawn_blocking(move || ingest.finish()).await??;
    Ok(size)
}
