//! Peers as a [`Source`]: narinfo lookups on the DHT, NARs striped across
//! providers by the node's fetcher. If every peer fails mid-transfer, the
//! rest of the NAR comes from the fallback sources (the upstreams), skipping
//! the bytes already sent, so the client's download does not fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::BoxFuture;
use nixswarm_node::p2p::{Fetcher, PeerPath};
use nixswarm_protocol::{NarInfo, StorePathHash};

use crate::source::{ByteStream, Source, SourceError, SourceKind};

/// How long a lookup result is reused for the NAR request that follows.
const REMEMBER: Duration = Duration::from_secs(300);

/// The swarm, seen as a source.
#[derive(Debug)]
pub struct PeerSource {
    fetcher: Fetcher,
    found: Mutex<HashMap<StorePathHash, (Instant, PeerPath)>>,
    fallback: Vec<Arc<dyn Source>>,
}

impl PeerSource {
    /// `fallback` finishes transfers every peer gave up on.
    pub fn new(fetcher: Fetcher, fallback: Vec<Arc<dyn Source>>) -> Self {
        Self {
            fetcher,
            found: Mutex::default(),
            fallback,
        }
    }

    fn remembered(&self, hash: &StorePathHash) -> Option<PeerPath> {
        let mut found = self.found.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        found.retain(|_, (at, _)| at.elapsed() < REMEMBER);
        found.get(hash).map(|(_, p)| p.clone())
    }
}

impl Source for PeerSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Peer
    }

    fn name(&self) -> &str {
        "peers"
    }

    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        Box::pin(async move {
            let Some(path) = self.fetcher.lookup(hash).await else {
                return Ok(None);
            };
            let info = path.info.clone();
            self.found
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(*hash, (Instant::now(), path));
            Ok(Some(info))
        })
    }

    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async move {
            let hash = info.store_path.hash();
            let path = match self.remembered(&hash) {
                Some(p) if p.info.nar_hash == info.nar_hash => p,
                _ => match self.fetcher.lookup(&hash).await {
                    Some(p) if p.info.nar_hash == info.nar_hash => p,
                    _ => return Ok(None),
                },
            };
            let peers = self.fetcher.stream(path);
            Ok(Some(with_fallback(peers, info.clone(), self.fallback.clone())))
        })
    }

    fn rejected(&self, info: &NarInfo, wrong_nar: bool) -> bool {
        let hash = info.store_path.hash();
        let path = self
            .found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&hash);
        if wrong_nar && let Some((_, path)) = path {
            // Their chunks matched their manifest, but the NAR did not match
            // the signed NarHash: every provider of that manifest lied.
            for peer in path.providers {
                self.fetcher
                    .penalise(peer, "served a manifest that does not add up to the NarHash");
            }
        }
        // The next request looks the path up afresh, without the banned peers.
        true
    }
}

/// Forwards `primary`; if it fails, continues from the first fallback
/// source that has the same NAR, skipping what was already forwarded.
fn with_fallback(primary: ByteStream, info: NarInfo, fallback: Vec<Arc<dyn Source>>) -> ByteStream {
    struct St {
        cur: ByteStream,
        sent: u64,
        info: NarInfo,
        fallback: std::vec::IntoIter<Arc<dyn Source>>,
        skip: u64,
    }
    let st = St {
        cur: primary,
        sent: 0,
        info,
        fallback: fallback.into_iter(),
        skip: 0,
    };
    futures::stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        loop {
            match st.cur.next().await {
                Some(Ok(mut b)) => {
                    if st.skip > 0 {
                        let n = st.skip.min(b.len() as u64);
                        st.skip -= n;
                        b = b.slice(n as usize..);
                        if b.is_empty() {
                            continue;
                        }
                    }
                    st.sent += b.len() as u64;
                    return Some((Ok(b), Some(st)));
                }
                None => return None,
                Some(Err(e)) => {
                    tracing::warn!(path = %st.info.store_path, error = %e, sent = st.sent, "peers failed; continuing from an upstream");
                    let mut next = None;
                    for src in st.fallback.by_ref() {
                        let hash = st.info.store_path.hash();
                        let Ok(Some(theirs)) = src.narinfo(&hash).await else { continue };
                        if theirs.nar_hash != st.info.nar_hash {
                            continue;
                        }
                        if let Ok(Some(s)) = src.nar(&theirs).await {
                            next = Some(s);
                            break;
                        }
                    }
                    match next {
                        Some(s) => {
                            st.cur = s;
                            st.skip = st.sent;
                        }
                        None => return Some((Err(e), None)),
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use nixswarm_protocol::{Sha256Hash, StorePath};

    #[derive(Debug)]
    struct Whole(NarInfo, Vec<u8>);

    impl Source for Whole {
        fn kind(&self) -> SourceKind {
            SourceKind::Upstream
        }
        fn name(&self) -> &str {
            "whole"
        }
        fn narinfo<'a>(&'a self, _: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
            Box::pin(async move { Ok(Some(self.0.clone())) })
        }
        fn nar<'a>(&'a self, _: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
            let pieces: Vec<std::io::Result<Bytes>> =
                self.1.chunks(7000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            Box::pin(async move { Ok(Some(futures::stream::iter(pieces).boxed())) })
        }
    }

    fn info(nar: &[u8]) -> NarInfo {
        NarInfo {
            store_path: StorePath::new(StorePathHash::from_bytes(&[3; 20]), "x").unwrap(),
            url: "nar/x.nar".into(),
            compression: "none".into(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256Hash::digest(nar),
            nar_size: nar.len() as u64,
            references: vec![],
            deriver: None,
            sigs: vec![],
            ca: None,
        }
    }

    async fn collect(mut s: ByteStream) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(p) = s.next().await {
            out.extend_from_slice(&p.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn failing_after(nar: &[u8], n: usize) -> ByteStream {
        let mut pieces: Vec<std::io::Result<Bytes>> =
            nar[..n].chunks(5000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        pieces.push(Err(std::io::Error::other("every peer failed")));
        futures::stream::iter(pieces).boxed()
    }

    #[tokio::test]
    async fn when_every_peer_fails_the_rest_comes_from_an_upstream() {
        let nar: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let i = info(&nar);
        for cut in [0, 1, 4999, 5000, 63_001, 99_999] {
            let up: Arc<dyn Source> = Arc::new(Whole(i.clone(), nar.clone()));
            let got = collect(with_fallback(failing_after(&nar, cut), i.clone(), vec![up]))
                .await
                .unwrap();
            assert_eq!(got, nar, "peers failed after {cut} bytes");
        }
        // A fallback with another NAR for the path is not used; with none left the error stands.
        let mut other = nar.clone();
        other[0] ^= 1;
        let wrong: Arc<dyn Source> = Arc::new(Whole(info(&other), other));
        let r = collect(with_fallback(failing_after(&nar, 10), i, vec![wrong])).await;
        assert!(r.unwrap_err().contains("every peer failed"));
    }
}
