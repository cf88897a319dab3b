//! Passing an upstream's NAR file through to Nix unchanged.
//!
//! When the upstream alone will send a NAR, decompressing it here only to
//! send Nix the NAR's bytes costs this machine what Nix would spend itself
//! (on the same cores). So the gateway forwards the compressed file with
//! `Content-Encoding` (which Nix decodes; HTTP lets a server use any coding
//! when the request has no `Accept-Encoding`, as Nix's have none), and
//! checks it as it passes: no more than FileSize, and its FileHash and
//! FileSize before the last piece goes out. A file that ends early or
//! breaks is continued in the same response from another upstream with the
//! same file (Nix 2.8 takes a content-coded body cut short for a decoding
//! error, not a transfer to retry); failing that, or for a file that does
//! not match, the response is aborted, never ended cleanly, and the
//! upstream is skipped for that NAR. Nix resuming a broken file with
//! `Range` gets the rest of the same file (`NarPipeline::open_resumed`).
//!
//! FileSize and FileHash are unsigned: they catch a file cut short or
//! damaged on the way, not an upstream that lies. Nix checks the NarHash of
//! what it decodes, as it does from any cache, and the store checks the
//! NAR itself: the writer thread decodes the file behind the client at the
//! lowest priority and stores it only if NarSize, NarHash and the content
//! address match ([`nixswarm_node::IngestWriter`]).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use nixswarm_node::{ChunkStore, IngestWriter};
use nixswarm_protocol::{NarInfo, Sha256Hash};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::FileLeg;
use super::merge::Blame;
use crate::metrics::Metrics;
use crate::source::{ByteStream, Source, SourceKind};

/// The content codings a request accepts, for a file passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codings {
    /// Not a file: a Range request, or the NAR's own bytes are wanted.
    None,
    /// No `Accept-Encoding` header: any coding (RFC 9110, 12.5.3).
    Any,
    /// The codings listed (without q=0).
    Only(Vec<String>),
}

impl Codings {
    /// From a request's `Accept-Encoding` header (`None` if absent).
    pub fn from_header(header: Option<&str>) -> Self {
        let Some(h) = header else { return Self::Any };
        Self::Only(
            h.split(',')
                .filter_map(|e| {
                    let mut parts = e.split(';').map(str::trim);
                    let coding = parts.next()?.to_ascii_lowercase();
                    let refused = parts.any(|p| {
                        p.replace(' ', "").starts_with("q=0") && !p.contains(|c: char| ('1'..='9').contains(&c))
                    });
                    (!coding.is_empty() && !refused).then_some(coding)
                })
                .collect(),
        )
    }

    /// True if the request names `coding` (not just any coding).
    pub fn lists(&self, coding: &str) -> bool {
        matches!(self, Self::Only(list) if list.iter().any(|c| c == coding))
    }

    /// True if a file compressed with `compression` may be sent.
    pub fn allow(&self, compression: &str) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::Only(list) => list.iter().any(|c| c == compression || c == "*"),
        }
    }
}

/// Everything [`passed_through`] needs besides the file.
#[derive(Debug)]
pub struct Passed {
    /// The narinfo Nix was given.
    pub info: NarInfo,
    /// The part of the file the client asked for (a resumed download).
    pub start: u64,
    pub end: u64,
    /// The store to keep the NAR in if it verifies (none: not kept).
    pub keep: Option<ChunkStore>,
    pub source: Arc<dyn Source>,
    pub blame: Arc<dyn Blame>,
    pub metrics: Arc<Metrics>,
    /// Stops the transfer early (shutdown).
    pub cancel: CancellationToken,
}

/// Whether a whole file (FileSize bytes: fewer and more are caught as they
/// stream) has its FileHash.
fn check_hash(hash: Sha256Hash, file: &NarInfo) -> Result<(), String> {
    match file.file_hash {
        Some(h) if h != hash => Err(format!("file hash {hash}, FileHash says {h}")),
        _ => Ok(()),
    }
}

/// Streams `leg`'s file to the client while checking it against its
/// FileSize and FileHash; the last piece is held back until both match.
pub fn passed_through(mut leg: Box<FileLeg>, p: Passed) -> ByteStream {
    let (tx, rx) = mpsc::channel(super::verify::BODY_QUEUE);
    let path = p.info.store_path.to_string();
    tokio::spawn(async move {
        let Passed {
            info,
            start,
            end,
            keep,
            source,
            blame,
            metrics,
            cancel,
        } = p;
        let file_size = leg.file.file_size.unwrap_or(0);
        // Served bytes are counted as the NAR bytes they stand for.
        let scale = info.nar_size as f64 / file_size.max(1) as f64;
        let decode = crate::upstream::write_decoder(&leg.file.compression);
        let mut writer = keep.and_then(|store| IngestWriter::start(store, info.clone(), decode));
        let mut sha = Sha256::new();
        let mut size = 0u64;
        let mut first = None;
        let mut held: Option<Bytes> = None;
        let mut client = Some(tx);
        let outcome = loop {
            let next = tokio::select! {
                n = leg.stream.next() => n,
                () = cancel.cancelled() => break Err("the gateway is shutting down".to_owned()),
            };
            match next {
                Some(Ok(b)) if b.is_empty() => {}
                Some(Ok(b)) => {
                    first.get_or_insert_with(tokio::time::Instant::now);
                    size += b.len() as u64;
                    if size > file_size {
                        break Err(format!("more bytes than FileSize {file_size}"));
                    }
                    sha.update(&b);
                    if let Some(w) = &writer
                        && !w.write(b.clone()).await
                    {
                        writer = None;
                    }
                    // Only the asked part goes out; its last piece waits.
                    let at = size - b.len() as u64;
                    let (s, e) = (at.max(start), size.min(end));
                    let part = (s < e).then(|| b.slice((s - at) as usize..(e - at) as usize));
                    if let Some(prev) = part.and_then(|p| held.replace(p)) {
                        send(&mut client, prev, scale, &metrics, source.name()).await;
                        if client.is_none() && writer.is_none() {
                            return; // nobody wants the rest
                        }
                    }
                }
                // Cut short or broken: the same file from another
                // upstream continues where this one stopped.
                Some(Err(_)) | None if size < file_size => {
                    let why = match next {
                        Some(Err(e)) => e.to_string(),
                        _ => format!("ended after {size} of {file_size} bytes (FileSize)"),
                    };
                    let failed = leg.id;
                    match resume(&mut leg, size).await {
                        Some(source) => {
                            blame.leg_failed(failed, &info, &why);
                            tracing::info!(%path, from = source, at = size, "the NAR's file continues from another upstream");
                        }
                        // Blamed below, once.
                        None => break Err(why),
                    }
                }
                Some(Err(e)) => break Err(e.to_string()),
                None => break check_hash(Sha256Hash(sha.finalize().into()), &leg.file),
            }
        };
        match outcome {
            Ok(()) => {
                if let Some(last) = held.take() {
                    send(&mut client, last, scale, &metrics, source.name()).await;
                }
                if let Some(first) = first {
                    leg.estimates.record(false, first - leg.opened, size, first.elapsed());
                }
                tracing::info!(%path, bytes = info.nar_size, file_bytes = size, from = source.name(), ms = leg.opened.elapsed().as_millis(), "NAR served");
                if let Some(w) = writer {
                    w.commit_detached().await;
                }
            }
            Err(why) => {
                // Dropping the writer without a commit discards what was written.
                drop(writer);
                super::verify::abort(client, &path, &why).await;
                blame.leg_failed(leg.id, &info, &why);
            }
        }
    });
    super::verify::body_stream(rx)
}

/// Switches `leg` to the next upstream with the same file (the same
/// FileHash), skipping its first `at` bytes; returns that upstream's name.
async fn resume(leg: &mut FileLeg, at: u64) -> Option<String> {
    let hash = leg.file.store_path.hash();
    while !leg.rest.is_empty() {
        let f = leg.rest.remove(0);
        let theirs = match f.info {
            Some(i) => i,
            None => match f.source.narinfo(&hash).await {
                Ok(Some(i)) => i,
                _ => continue,
            },
        };
        if theirs.nar_hash != leg.file.nar_hash
            || theirs.file_hash != leg.file.file_hash
            || theirs.file_size != leg.file.file_size
        {
            continue;
        }
        let Ok(Some(stream)) = f.source.file(&theirs).await else {
            continue;
        };
        leg.stream = skip(stream, at);
        leg.id = f.id;
        return Some(f.source.name().to_owned());
    }
    None
}

/// `stream` without its first `n` bytes.
fn skip(stream: ByteStream, n: u64) -> ByteStream {
    stream
        .scan(n, |left, piece| {
            let out = match piece {
                Ok(b) if *left >= b.len() as u64 => {
                    *left -= b.len() as u64;
                    Ok(Bytes::new())
                }
                Ok(b) => {
                    let cut = std::mem::take(left) as usize;
                    Ok(b.slice(cut..))
                }
                Err(e) => Err(e),
            };
            futures::future::ready(Some(out))
        })
        .boxed()
}

/// Sends a piece to the client, if it is still there, and counts it.
async fn send(
    client: &mut Option<mpsc::Sender<std::io::Result<Bytes>>>,
    piece: Bytes,
    scale: f64,
    metrics: &Metrics,
    upstream: &str,
) {
    let Some(tx) = client else { return };
    let n = (piece.len() as f64 * scale) as u64;
    if tx.send(Ok(piece)).await.is_ok() {
        metrics.served(SourceKind::Upstream.as_str(), n);
        metrics.served_upstream(upstream, n);
    } else {
        *client = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codings_follow_accept_encoding() {
        // No header: any coding (RFC 9110, 12.5.3); Nix sends none.
        assert!(Codings::from_header(None).allow("zstd"));
        assert!(Codings::from_header(None).allow("xz"));
        let listed = Codings::from_header(Some("gzip, ZSTD;q=0.5"));
        assert!(listed.allow("zstd"));
        assert!(!listed.allow("xz"));
        assert!(!Codings::from_header(Some("identity")).allow("zstd"));
        assert!(!Codings::from_header(Some("zstd;q=0")).allow("zstd"));
        assert!(!Codings::from_header(Some("zstd; q=0.000")).allow("zstd"));
        assert!(Codings::from_header(Some("zstd;q=0.001")).allow("zstd"));
        assert!(Codings::from_header(Some("*")).allow("xz"));
        assert!(!Codings::None.allow("zstd"));
        assert!(listed.lists("zstd"));
        assert!(!Codings::Any.lists("zstd"), "on-the-fly zstd only when named");
        assert!(!Codings::from_header(Some("*")).lists("zstd"));
    }

    proptest! {
        #[test]
        fn any_accept_encoding_parses_and_a_plainly_listed_coding_is_allowed(
            header in "[ -~]{0,64}",
            coding in "[a-z]{1,8}",
        ) {
            let _ = Codings::from_header(Some(&header)).allow("zstd");
            let with = format!("{header},{coding}");
            prop_assert!(Codings::from_header(Some(&with)).allow(&coding));
        }
    }
}
