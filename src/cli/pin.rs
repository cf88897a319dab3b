//! `nixswarm pin PATH...` and `nixswarm unpin PATH...`: keep store paths
//! and their closures in the running node's cache regardless of eviction.
//! Pinning first asks the gateway for every path of the closure (narinfo,
//! then NAR), so the node fetches and keeps what it does not hold yet.

use std::collections::{HashSet, VecDeque};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nixswarm_protocol::{NarInfo, StorePathHash};

use crate::config::ClientArgs;

/// Flags of `nixswarm pin` and `nixswarm unpin`.
#[derive(Debug, Clone, Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Store paths (/nix/store/<hash>-<name>, or the 32-character hash).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

fn hash_of(p: &str) -> Result<StorePathHash> {
    let base = p.trim_end_matches('/').rsplit('/').next().unwrap_or(p);
    base.get(..32)
        .and_then(|h| h.parse().ok())
        .with_context(|| format!("{p:?} is not a store path"))
}

/// Sends `req`; an unreachable gateway and an error answer each get a
/// message that says which.
pub(crate) async fn send(req: reqwest::RequestBuilder, base: &str) -> Result<reqwest::Response> {
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            anyhow::anyhow!(
                "cannot reach the gateway at {base} (is `nixswarm run` running?): {}",
                root_cause(&e)
            )
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let status = resp.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    bail!("the gateway answered {status}: {}", body.trim())
}

/// The innermost cause of `e` ("Connection refused"), which reqwest's own
/// message leaves out.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// Makes the gateway hold every path of `root`'s closure.
async fn fetch_closure(client: &reqwest::Client, base: &str, root: StorePathHash) -> Result<usize> {
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    let mut progress = super::progress::Progress::new();
    let (mut done, mut bytes) = (0usize, 0u64);
    while let Some(h) = queue.pop_front() {
        done += 1;
        progress.update(done, done + queue.len(), bytes, &h.to_string());
        let url = format!("{base}/{h}.narinfo");
        let resp = send(client.get(&url), base).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            bail!("{h} is not available from the gateway (nor its peers and upstreams)");
        }
        let text = resp.text().await?;
        let info = NarInfo::parse(&text).with_context(|| format!("narinfo of {h}"))?;
        let nar = format!("{base}/{}", info.url);
        let mut resp = send(client.get(&nar), base).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            bail!("the NAR of {h} is not available from the gateway");
        }
        while let Some(c) = resp.chunk().await? {
            bytes += c.len() as u64;
        }
        for r in &info.references {
            if seen.insert(r.hash()) {
                queue.push_back(r.hash());
            }
        }
    }
    progress.interrupt();
    Ok(seen.len())
}

pub fn run(args: &PinArgs, pin: bool) -> Result<()> {
    let base = args.client.gateway_url()?.as_str().trim_end_matches('/').to_owned();
    let hashes = args.paths.iter().map(|p| hash_of(p)).collect::<Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        for (h, p) in hashes.iter().zip(&args.paths) {
            if pin {
                let n = fetch_closure(&client, &base, *h)
                    .await
                    .with_context(|| format!("fetching the closure of {p}"))?;
                tracing::debug!(paths = n, "closure held");
            }
            let url = format!("{base}/pin/{h}");
            let req = if pin { client.post(&url) } else { client.delete(&url) };
            let resp = send(req.header(nixswarm_gateway::pin::WRITE_HEADER, "1"), &base)
                .await
                .with_context(|| p.clone())?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{p}: {}", body.trim());
            }
            let v: serde_json::Value = serde_json::from_str(&body).context("parsing the answer")?;
            let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
            if pin {
                let (held, missing) = (count("pinned"), count("missing"));
                if missing == 0 {
                    println!("pinned {p} and its closure ({held} paths)");
                } else {
                    // Just fetched and still being stored, or unavailable:
                    // pinned too, and kept once they arrive.
                    println!(
                        "pinned {p} and its closure ({} paths, {missing} not stored yet)",
                        held + missing
                    );
                }
            } else if count("unpinned") == 0 {
                bail!("{p} was not pinned (nothing to unpin)");
            } else {
                println!("unpinned {p} and its closure ({} paths)", count("unpinned"));
            }
        }
        Ok(())
    })
}
