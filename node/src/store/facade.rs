//! The one place where the blocking chunk store meets the async runtime.
//! Every call runs on tokio's blocking pool, so a database commit, a sync,
//! an eviction making room or a chunk read never holds a runtime worker
//! (with two workers, one such wait used to stop the gateway).

use bytes::Bytes;
use nixswarm_protocol::{ChunkId, ChunkManifest, NarInfo, StorePathHash};

use super::{ChunkStore, Ingest, NarHandle, Result, StoreError, StoreStats};

/// The chunk store for async code; cheap to clone.
#[derive(Debug, Clone)]
pub struct AsyncStore {
    store: ChunkStore,
}

impl From<ChunkStore> for AsyncStore {
    fn from(store: ChunkStore) -> Self {
        Self { store }
    }
}

impl AsyncStore {
    /// The blocking store, for code already on a blocking thread.
    pub fn blocking(&self) -> &ChunkStore {
        &self.store
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&ChunkStore) -> Result<T> + Send + 'static) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    pub async fn narinfo(&self, hash: StorePathHash) -> Result<Option<NarInfo>> {
        self.run(move |s| s.narinfo(&hash)).await
    }

    /// Opens a stored NAR (see [`ChunkStore::open_nar`]).
    pub async fn open_nar(&self, hash: StorePathHash) -> Result<Option<NarHandle>> {
        self.run(move |s| s.open_nar(&hash)).await
    }

    pub async fn contains(&self, hash: StorePathHash) -> Result<bool> {
        self.run(move |s| s.contains(&hash)).await
    }

    /// Starts an ingest; making room may evict paths.
    pub async fn begin_ingest(&self, narinfo: NarInfo) -> Result<Ingest> {
        self.run(move |s| s.begin_ingest(narinfo)).await
    }

    pub async fn begin_ingest_known(
        &self,
        narinfo: NarInfo,
        manifest: std::sync::Arc<ChunkManifest>,
    ) -> Result<Ingest> {
        self.run(move |s| s.begin_ingest_known(narinfo, manifest)).await
    }

    pub async fn remove(&self, hash: StorePathHash) -> Result<bool> {
        self.run(move |s| s.remove(&hash)).await
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        self.run(ChunkStore::stats).await
    }

    pub async fn list(&self) -> Result<Vec<StorePathHash>> {
        self.run(ChunkStore::list).await
    }

    /// Pins `hash` and its closure (the missing paths too: they are kept once
    /// they arrive); returns (held, missing).
    pub async fn pin_closure(&self, hash: StorePathHash) -> Result<(Vec<StorePathHash>, Vec<StorePathHash>)> {
        self.run(move |s| {
            let (held, missing) = s.closure(&hash)?;
            s.pin(&[held.as_slice(), missing.as_slice()].concat())?;
            Ok((held, missing))
        })
        .await
    }

    /// Unpins `hash` and its closure; returns the paths unpinned.
    pub async fn unpin_closure(&self, hash: StorePathHash) -> Result<Vec<StorePathHash>> {
        self.run(move |s| {
            let (held, missing) = s.closure(&hash)?;
            let all: Vec<_> = held.into_iter().chain(missing).collect();
            s.unpin(&all)?;
            Ok(all)
        })
        .await
    }

    /// One chunk a stored path references, verified.
    pub async fn read_chunk(&self, id: ChunkId) -> Result<Option<Bytes>> {
        self.run(move |s| s.read_chunk(&id)).await
    }

    /// Which of `ids` a stored path references, in one trip to the pool.
    pub async fn has_chunks(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>> {
        self.run(move |s| ids.iter().map(|id| s.has_chunk(id)).collect()).await
    }
}
