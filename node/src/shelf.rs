//! What a node offers its peers: the paths it announces on the DHT and the
//! narinfos, manifests and chunks it answers with. Two kinds: the chunk
//! store (cache mode: what this machine fetched) and the installed paths of
//! a Nix store (donor mode). [`Shelves`] puts several together.

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use nixswarm_protocol::{ChunkId, ChunkManifest, StorePathHash};
use tokio::sync::broadcast;

use crate::installed::InstalledStore;
use crate::share::SharePolicy;
use crate::store::{ChunkStore, StoreEvent};

/// A failure reading a shelf (logged by the server; peers see "not found").
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ShelfError(pub String);

/// A source of shared paths.
pub trait Shelf: Send + Sync + Debug {
    /// The signed narinfo text and the chunk manifest of a shared path.
    fn path_info(&self, hash: &StorePathHash) -> Result<Option<(String, ChunkManifest)>, ShelfError>;
    /// A chunk, verified against its id.
    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, ShelfError>;
    /// True if the path is shared.
    fn contains(&self, hash: &StorePathHash) -> Result<bool, ShelfError>;
    /// Every shared path.
    fn list(&self) -> Result<Vec<StorePathHash>, ShelfError>;
    /// Paths added and removed from now on.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;
}

fn e(x: impl std::fmt::Display) -> ShelfError {
    ShelfError(x.to_string())
}

impl Shelf for ChunkStore {
    fn path_info(&self, hash: &StorePathHash) -> Result<Option<(String, ChunkManifest)>, ShelfError> {
        Ok(self.record(hash).map_err(e)?.map(|r| (r.narinfo, r.manifest)))
    }
    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, ShelfError> {
        ChunkStore::read_chunk_for_peer(self, id).map_err(e)
    }
    fn contains(&self, hash: &StorePathHash) -> Result<bool, ShelfError> {
        ChunkStore::contains(self, hash).map_err(e)
    }
    fn list(&self) -> Result<Vec<StorePathHash>, ShelfError> {
        ChunkStore::list(self).map_err(e)
    }
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        ChunkStore::subscribe(self)
    }
}

impl Shelf for InstalledStore {
    fn path_info(&self, hash: &StorePathHash) -> Result<Option<(String, ChunkManifest)>, ShelfError> {
        InstalledStore::path_info(self, hash).map_err(e)
    }
    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, ShelfError> {
        InstalledStore::read_chunk(self, id).map_err(e)
    }
    fn contains(&self, hash: &StorePathHash) -> Result<bool, ShelfError> {
        InstalledStore::contains(self, hash).map_err(e)
    }
    fn list(&self) -> Result<Vec<StorePathHash>, ShelfError> {
        InstalledStore::list(self).map_err(e)
    }
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        InstalledStore::subscribe(self)
    }
}

/// Several shelves, asked in order, seen through the [`SharePolicy`]: a
/// path its policy does not share is neither listed, nor contained, nor
/// answered, and the narinfos carry only the share keys' signatures.
/// Default: the node shares nothing.
#[derive(Debug, Clone)]
pub struct Shelves(Arc<Vec<Arc<dyn Shelf>>>, Arc<SharePolicy>);

impl Default for Shelves {
    fn default() -> Self {
        Self::new(Vec::new(), SharePolicy::nothing())
    }
}

impl Shelves {
    /// Shelves asked in the given order, shared as `policy` says.
    pub fn new(shelves: Vec<Arc<dyn Shelf>>, policy: SharePolicy) -> Self {
        Self(Arc::new(shelves), Arc::new(policy))
    }

    /// One chunk store, shared as `policy` says.
    pub fn store(store: ChunkStore, policy: SharePolicy) -> Self {
        Self::new(vec![Arc::new(store)], policy)
    }

    /// The first shelf's answer that has one; an error only if none answered
    /// and some failed.
    fn first<T>(&self, ask: impl Fn(&dyn Shelf) -> Result<Option<T>, ShelfError>) -> Result<Option<T>, ShelfError> {
        let mut last = None;
        for s in self.0.iter() {
            match ask(s.as_ref()) {
                Ok(Some(x)) => return Ok(Some(x)),
                Ok(None) => {}
                Err(err) => last = Some(err),
            }
        }
        last.map_or(Ok(None), Err)
    }

    /// [`Shelf::path_info`] from the first shelf that has the path, if it
    /// may be shared, with only the share keys' signatures.
    pub fn path_info(&self, hash: &StorePathHash) -> Result<Option<(String, ChunkManifest)>, ShelfError> {
        self.first(|s| {
            Ok(s.path_info(hash)?
                .and_then(|(text, m)| self.1.outgoing(&text).map(|t| (t, m))))
        })
    }

    /// [`Shelf::read_chunk`] from the first shelf that has the chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, ShelfError> {
        self.first(|s| s.read_chunk(id))
    }

    /// True if any shelf holds the path and it may be shared.
    pub fn contains(&self, hash: &StorePathHash) -> Result<bool, ShelfError> {
        for s in self.0.iter() {
            if s.contains(hash)? && self.path_info(hash)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every shared path, once (each checked against the policy; the
    /// decisions are remembered, so a re-announce costs a read per path).
    pub fn list(&self) -> Result<Vec<StorePathHash>, ShelfError> {
        let mut all = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in self.0.iter() {
            for h in s.list()? {
                if seen.insert(h) && self.path_info(&h)?.is_some() {
                    all.push(h);
                }
            }
        }
        Ok(all)
    }

    /// Every change on every shelf, as one stream. `None` items mean some
    /// were missed (the listener should resynchronise with [`Shelf::list`]).
    pub fn events(&self) -> BoxStream<'static, Option<StoreEvent>> {
        let streams = self.0.iter().map(|s| {
            futures::stream::unfold(s.subscribe(), |mut rx| async move {
                match rx.recv().await {
                    Ok(ev) => Some((Some(ev), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            })
            .boxed()
        });
        futures::stream::select_all(streams).boxed()
    }
}

/// The conformance test every [`Shelf`] passes. `shelf` must share exactly
/// one path, `held`, whose NAR is `nar`; `absent` is shared by no one.
#[cfg(test)]
pub(crate) fn conformance(shelf: &dyn Shelf, held: &StorePathHash, nar: &[u8], absent: &StorePathHash) {
    use nixswarm_protocol::NarInfo;
    let (text, manifest) = shelf.path_info(held).unwrap().expect("the held path is shared");
    let info = NarInfo::parse(&text).expect("a parsable narinfo");
    assert_eq!(info.store_path.hash(), *held);
    assert_eq!(manifest.nar_size, nar.len() as u64);
    assert_eq!(manifest.nar_hash, nixswarm_protocol::Sha256Hash::digest(nar));
    let mut rebuilt = Vec::new();
    for c in &manifest.chunks {
        let data = shelf.read_chunk(&c.id).unwrap().expect("every chunk is served");
        assert_eq!(crate::store::chunk_id(&data), c.id);
        rebuilt.extend_from_slice(&data);
    }
    assert_eq!(rebuilt, nar, "the chunks make up the NAR");
    assert!(shelf.contains(held).unwrap());
    assert_eq!(shelf.list().unwrap(), vec![*held]);
    assert!(shelf.path_info(absent).unwrap().is_none());
    assert!(!shelf.contains(absent).unwrap());
    assert!(shelf.read_chunk(&ChunkId([0xab; 32])).unwrap().is_none());
}
