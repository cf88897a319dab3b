//! Answering transfer requests from other nodes out of the shared shelves:
//! bounded concurrency overall and per peer, the upload limit, and zstd on
//! the wire where it helps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use nixswarm_protocol::wire::{MAX_BATCH, MAX_HAVE, MAX_INLINE, Request, Response, WireChunk};
use std::time::Duration;

use bytes::Bytes;
use nixswarm_protocol::manifest::MAX_CHUNK_SIZE;
use nixswarm_protocol::{ChunkId, ChunkManifest, StorePathHash};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::actor::{Command, Inbound};
use super::in_flight::{MAX_HAVE_PER_PEER, MAX_LOOKUPS_PER_PEER, MAX_PER_PEER};
use super::liar::Liar;
use super::{NodeHandle, RateLimiter};
use crate::shelf::Shelves;

/// Requests answered at once, in total: more than one peer may take
/// (`MAX_PER_PEER` + `MAX_LOOKUPS_PER_PEER` + `MAX_HAVE_PER_PEER`).
const MAX_CONCURRENT: usize = 64;

/// The kinds of request counted per peer, each with its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// May carry chunks: the upload.
    Chunks,
    Lookup,
    Have,
}

impl Kind {
    fn of(request: &Request) -> Self {
        match request {
            Request::Chunks { .. } | Request::PathInline { max: 1.., .. } => Self::Chunks,
            Request::PathInfo { .. } | Request::PathInline { .. } => Self::Lookup,
            Request::Have { .. } => Self::Have,
        }
    }

    fn limit(self) -> usize {
        match self {
            Self::Chunks => MAX_PER_PEER,
            Self::Lookup => MAX_LOOKUPS_PER_PEER,
            Self::Have => MAX_HAVE_PER_PEER,
        }
    }
}

/// Builds the answer to one request (blocking: reads the shelves). `liar`
/// is honest except in test builds (feature `test-hooks`) that make this
/// node lie, to test that fetchers catch it.
pub fn answer(store: &Shelves, request: &Request, liar: &Liar) -> Response {
    match request {
        Request::PathInfo { hash } => match path_info(store, hash, liar) {
            Some((narinfo, manifest)) => Response::PathInfo { narinfo, manifest },
            None => Response::NotFound,
        },
        Request::PathInline { hash, max, compress } => {
            let Some((narinfo, manifest)) = path_info(store, hash, liar) else {
                return Response::NotFound;
            };
            if manifest.nar_size > u64::from((*max).min(MAX_INLINE)) {
                return Response::PathInfo { narinfo, manifest };
            }
            let ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
            let chunks = read_chunks(store, &ids, *compress, liar);
            Response::PathInline {
                narinfo,
                manifest,
                chunks,
            }
        }
        Request::Have { hashes } => Response::Have {
            have: hashes
                .iter()
                .take(MAX_HAVE)
                .map(|h| liar.claims_everything() || store.contains(h).unwrap_or(false))
                .collect(),
        },
        Request::Chunks { ids, compress } => Response::Chunks {
            chunks: read_chunks(store, ids, *compress, liar),
        },
    }
}

fn path_info(store: &Shelves, hash: &StorePathHash, liar: &Liar) -> Option<(String, ChunkManifest)> {
    if liar.claims_everything() {
        return None;
    }
    match store.path_info(hash) {
        Ok(Some((narinfo, manifest))) => Some((narinfo, liar.manifest(store, manifest))),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(%hash, error = %e, "cannot read a stored path for a peer");
            None
        }
    }
}

/// The chunks of `ids` this node has, each at most once, at most
/// [`MAX_BATCH`]: a request repeating one id would otherwise ask for
/// MAX_BATCH copies of the largest chunk.
fn read_chunks(store: &Shelves, ids: &[ChunkId], compress: bool, liar: &Liar) -> Vec<WireChunk> {
    let mut chunks = Vec::with_capacity(ids.len().min(MAX_BATCH));
    let mut seen = std::collections::HashSet::new();
    for id in ids.iter().filter(|id| seen.insert(**id)).take(MAX_BATCH) {
        if !liar.is_honest() {
            chunks.extend(liar.chunk(store, id).map(|d| to_wire(*id, Bytes::from(d), compress)));
            continue;
        }
        match store.read_chunk(id) {
            Ok(Some(data)) => chunks.push(to_wire(*id, data, compress)),
            Ok(None) => {}
            Err(e) => tracing::warn!(chunk = %id, error = %e, "cannot read a chunk for a peer"),
        }
    }
    chunks
}

thread_local! {
    /// One zstd context per blocking thread: creating one per chunk cost
    /// ~3% of a single-peer transfer's CPU.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(1).ok());
}

/// A chunk as the request asked: zstd-compressed where that makes it
/// smaller, if `compress`; as stored otherwise.
fn to_wire(id: ChunkId, data: Bytes, compress: bool) -> WireChunk {
    if compress {
        let z = ZSTD.with(|z| match z.borrow_mut().as_mut() {
            Some(c) => c.compress(&data),
            None => zstd::bulk::compress(&data, 1),
        });
        if let Ok(c) = z
            && c.len() + 64 < data.len()
        {
            return WireChunk {
                id,
                compressed: true,
                data: Bytes::from(c),
            };
        }
    }
    WireChunk {
        id,
        compressed: false,
        data,
    }
}

/// Bytes an answer holds in memory, roughly.
fn held_len(r: &Response) -> usize {
    match r {
        Response::Chunks { chunks } => chunks.iter().map(|c| c.data.len() + 64).sum(),
        Response::PathInfo { narinfo, manifest } => narinfo.len() + manifest.chunks.len() * 40,
        Response::PathInline {
            narinfo,
            manifest,
            chunks,
        } => narinfo.len() + manifest.chunks.len() * 40 + chunks.iter().map(|c| c.data.len() + 64).sum::<usize>(),
        Response::Have { have } => have.len(),
        _ => 0,
    }
}

fn wire_len(r: &Response) -> u64 {
    match r {
        Response::Chunks { chunks } | Response::PathInline { chunks, .. } => {
            chunks.iter().map(|c| c.data.len() as u64).sum()
        }
        _ => 0,
    }
}

/// Bytes of answers held at once (being built, waiting for the upload
/// limit, or being written to a peer that may never read them), in all.
pub const MAX_BYTES_HELD: usize = 64 << 20;
/// The byte budget's unit.
const UNIT: usize = 64 << 10;
/// How long an answer may take to be written before its budget is freed
/// anyway (request-response fails the stream after its own timeout).
const WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// Budget units for `bytes` (never more than the whole budget).
fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).clamp(1, MAX_BYTES_HELD / UNIT)
}

/// The most an answer to `request` can take: chunk answers are bounded by
/// the distinct ids asked; path answers are taken as small until built.
fn estimate(request: &Request) -> usize {
    match request {
        Request::Chunks { ids, .. } => {
            let distinct: std::collections::HashSet<_> = ids.iter().take(MAX_BATCH).collect();
            distinct.len() * (MAX_CHUNK_SIZE as usize + 64)
        }
        Request::PathInline { max, .. } => UNIT + (*max).min(MAX_INLINE) as usize,
        Request::PathInfo { .. } | Request::Have { .. } => UNIT,
    }
}

pub(super) async fn run(
    handle: NodeHandle,
    store: Shelves,
    mut inbound: mpsc::Receiver<Inbound>,
    limiter: Arc<RateLimiter>,
    liar: Arc<Liar>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let budget = Arc::new(Semaphore::new(MAX_BYTES_HELD / UNIT));
    let per_peer: Arc<Mutex<HashMap<(PeerId, Kind), usize>>> = Arc::default();
    loop {
        let inb = tokio::select! {
            () = cancel.cancelled() => return,
            i = inbound.recv() => match i { Some(i) => i, None => return },
        };
        #[cfg(feature = "test-hooks")]
        handle.stats.heard(&inb.request);
        if liar.is_silent() {
            liar.park(inb.channel);
            continue;
        }
        // Every kind of request is limited per peer, so that no peer's
        // requests (cheap lookups included) take every slot.
        let kind = Kind::of(&inb.request);
        let busy = {
            let mut m = per_peer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = m.entry((inb.peer, kind)).or_insert(0);
            if *n >= kind.limit() {
                true
            } else {
                *n += 1;
                false
            }
        };
        if busy {
            let _ = handle
                .tx
                .send(Command::Respond {
                    channel: inb.channel,
                    response: Response::Busy,
                    written: None,
                })
                .await;
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (handle, store, limiter, per_peer, liar, budget) = (
            handle.clone(),
            store.clone(),
            limiter.clone(),
            per_peer.clone(),
            liar.clone(),
            budget.clone(),
        );
        tokio::spawn(async move {
            let Inbound {
                peer,
                id,
                request,
                channel,
            } = inb;
            // The answer's bytes are held until written: a peer that never
            // reads holds budget, not ever more memory.
            let want = units(estimate(&request));
            if let Ok(mut held) = budget.clone().acquire_many_owned(want as u32).await {
                let response = tokio::task::spawn_blocking(move || answer(&store, &request, &liar))
                    .await
                    .unwrap_or(Response::Busy);
                let need = units(held_len(&response));
                if need < want {
                    drop(held.split(want - need));
                } else if need > want
                    && let Ok(more) = budget.acquire_many_owned((need - want) as u32).await
                {
                    held.merge(more);
                }
                limiter.acquire(wire_len(&response)).await;
                let (tx, written) = oneshot::channel();
                let respond = Command::Respond {
                    channel,
                    response,
                    written: Some((id, tx)),
                };
                if handle.tx.send(respond).await.is_ok() {
                    let _ = tokio::time::timeout(WRITE_DEADLINE, written).await;
                }
                drop(held);
            }
            drop(slot);
            let mut m = per_peer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = m.get_mut(&(peer, kind)) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&(peer, kind));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{ChunkStore, StoreOptions};
    use nixswarm_protocol::{NarInfo, Sha256Hash, StorePath, StorePathHash};

    #[test]
    fn a_request_repeating_one_chunk_gets_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), StoreOptions::with_quota(1 << 30)).unwrap();
        let bytes = crate::store::tests::data(300_000, 5);
        let info = NarInfo {
            store_path: StorePath::new(StorePathHash::from_bytes(&[5; 20]), "p").unwrap(),
            url: "nar/p.nar".into(),
            compression: "none".into(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256Hash::digest(&bytes),
            nar_size: bytes.len() as u64,
            references: vec![],
            deriver: None,
            sigs: vec![],
            ca: None,
        };
        let key = nixswarm_protocol::SecretKey::from_seed("test-1", &[7; 32]);
        let mut info = info;
        info.sigs = vec![key.sign(&info.fingerprint())];
        let mut ingest = store.begin_ingest(info.clone()).unwrap();
        ingest.write(&bytes).unwrap();
        ingest.finish().unwrap();
        let shelves = Shelves::store(store.clone(), crate::SharePolicy::new(vec![key.public_key()], false));
        let (_, manifest) = shelves.path_info(&info.store_path.hash()).unwrap().unwrap();
        let id = manifest.chunks[0].id;
        let Response::Chunks { chunks } = answer(
            &shelves,
            &Request::Chunks {
                ids: vec![id; MAX_BATCH],
                compress: true,
            },
            &Liar::default(),
        ) else {
            panic!("not a chunk answer");
        };
        assert_eq!(chunks.len(), 1, "one copy, not {MAX_BATCH}");
        let Response::Have { have } = answer(
            &shelves,
            &Request::Have {
                hashes: vec![info.store_path.hash(), StorePathHash::from_bytes(&[6; 20])],
            },
            &Liar::default(),
        ) else {
            panic!("not a have answer");
        };
        assert_eq!(have, vec![true, false]);
    }
}
