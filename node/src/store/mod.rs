//! The chunk store: NARs cut into content-defined chunks, each stored once,
//! in the pack file of the ingest that first wrote it, with per-path
//! metadata (narinfo, manifest, access time) and each chunk's place in a
//! [`MetaDb`].
//!
//! Invariants:
//! - A path is visible only after all its chunks are on disk (synced) and
//!   the whole NAR matched the narinfo's NarHash and NarSize.
//! - Every chunk read is checked against its BLAKE3 id.
//! - Total chunk bytes plus space reserved by running ingests never exceed
//!   the quota; least-recently-used paths are evicted to make room, and a
//!   path being read is never evicted.
//! - The state lock is never held across a database commit or a sync, so
//!   reads of other paths go on while a large NAR makes room. Access times
//!   are kept in memory and written in batches; chunk syncs are shared by
//!   the ingests that finish together.
//! - An ingest writes every chunk of its NAR into its own pack, so what it
//!   commits never depends on another ingest or on a path being evicted
//!   meanwhile; a chunk some path has already is given back at the commit.
//!   A chunk's place is dropped in the same transaction that drops its
//!   last reference, before its space is given back.
//!
//! Everything here blocks; async code goes through [`AsyncStore`], the one
//! place where the store meets the runtime.

pub(crate) mod chunker;
mod chunks;
mod facade;
mod ingest;
mod mem_meta;
mod meta;
mod pins;
mod reader;
mod redb_meta;
mod space;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nixswarm_protocol::{ChunkId, ChunkManifest, NarInfo, StorePathHash};
use thiserror::Error;

/// The BLAKE3 id of chunk bytes.
pub(crate) fn chunk_id(data: &[u8]) -> ChunkId {
    ChunkId(*blake3::hash(data).as_bytes())
}

pub use chunker::{AVG as CHUNK_AVG, MAX as CHUNK_MAX, MIN as CHUNK_MIN};
pub use facade::AsyncStore;
pub use ingest::Ingest;
pub use mem_meta::MemMeta;
pub use meta::{Freed, Inserted, Loc, MetaDb, PathRecord, Written};
pub use reader::NarReader;
pub use redb_meta::RedbMeta;
pub use space::FsSpace;
pub use writer::{Committed, Decode, IngestWriter};

use chunks::ChunkDir;

/// Errors of the chunk store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("metadata database: {0}")]
    Database(String),
    #[error("the store database {0} is in use by another nixswarm process")]
    Locked(PathBuf),
    #[error("chunk {0} is missing from the store")]
    ChunkMissing(ChunkId),
    #[error("chunk {0} is corrupt on disk (BLAKE3 or size mismatch)")]
    ChunkCorrupt(ChunkId),
    /// The NAR does not match its narinfo (size, NarHash or content address).
    #[error("NAR of {path} does not match its narinfo")]
    Mismatch {
        path: String,
        #[source]
        source: nixswarm_protocol::NarCheckError,
    },
    #[error("no room for {needed} bytes within the {quota}-byte quota (everything else is in use)")]
    QuotaFull { needed: u64, quota: u64 },
    #[error(
        "no room for {needed} bytes on the disk: {keep_free} bytes must stay free, and nothing left can be evicted"
    )]
    DiskFull { needed: u64, keep_free: u64 },
    #[error("stored narinfo of {0} is unreadable: {1}")]
    BadNarInfo(String, String),
    #[error("a store task failed: {0}")]
    Task(String),
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most bytes of chunk data to keep.
    pub quota: u64,
    /// Bytes to leave free on the store's filesystem, whatever else fills
    /// it: least recently used paths are evicted to keep them (0: no
    /// check).
    pub keep_free: u64,
}

impl StoreOptions {
    /// A quota, and no free-space check.
    pub fn with_quota(quota: u64) -> Self {
        Self { quota, keep_free: 0 }
    }
}

/// Sizes and counts, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub paths: u64,
    pub bytes: u64,
    pub quota: u64,
}

#[derive(Debug)]
struct State {
    /// Paths never evicted.
    pins: pins::Pins,
    /// Paths being read, with reader counts: never evicted.
    in_use: HashMap<StorePathHash, usize>,
    /// Packs being written by running ingests: never swept.
    writing: HashSet<u64>,
    /// Bytes reserved by running ingests.
    reserved: u64,
    /// Paths being evicted or removed: not opened any more.
    evicting: HashSet<StorePathHash>,
    /// Access times not yet written (see [`ChunkStore::flush_touches`]).
    touched: HashMap<StorePathHash, u64>,
}

/// Access times kept in memory before they are written in one transaction.
const MAX_TOUCHED: usize = 1024;

/// A change to the set of stored paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEvent {
    Added(StorePathHash),
    Removed(StorePathHash),
}

#[derive(Debug)]
struct Inner {
    events: tokio::sync::broadcast::Sender<StoreEvent>,
    meta: Box<dyn MetaDb>,
    chunks: ChunkDir,
    quota: u64,
    keep_free: u64,
    state: Mutex<State>,
    /// Chunks read for peers (every [`PEER_READS_HASHED`]th is hashed).
    peer_reads: std::sync::atomic::AtomicU64,
}

/// One chunk read for a peer in this many is checked against its BLAKE3 id.
pub const PEER_READS_HASHED: u64 = 8;

/// A handle to the chunk store; cheap to clone, safe to share.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl ChunkStore {
    /// Opens the store in `dir` with the redb backend (`dir/meta.redb`).
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let meta = RedbMeta::open(&dir.join("meta.redb"))?;
        Self::open_with(dir, Box::new(meta), options)
    }

    /// Opens the store in `dir` with the given metadata backend.
    pub fn open_with(dir: &Path, meta: Box<dyn MetaDb>, options: StoreOptions) -> Result<Self> {
        let chunks = ChunkDir::open(dir)?;
        let store = Self {
            inner: Arc::new(Inner {
                events: tokio::sync::broadcast::channel(4096).0,
                meta,
                chunks,
                quota: options.quota,
                keep_free: options.keep_free,
                state: Mutex::new(State {
                    pins: pins::Pins::load(dir)?,
                    in_use: HashMap::new(),
                    writing: HashSet::new(),
                    reserved: 0,
                    evicting: HashSet::new(),
                    touched: HashMap::new(),
                }),
                peer_reads: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        Ok(store)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stored narinfo of a path, as received.
    pub fn narinfo(&self, hash: &StorePathHash) -> Result<Option<NarInfo>> {
        let Some(text) = self.inner.meta.narinfo(hash.as_str())? else {
            return Ok(None);
        };
        NarInfo::parse(&text)
            .map(Some)
            .map_err(|e| StoreError::BadNarInfo(hash.to_string(), e.to_string()))
    }

    /// Changes to the stored paths from now on. A receiver that falls more
    /// than 4,096 events behind is told it lagged.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    pub(crate) fn notify(&self, ev: StoreEvent) {
        let _ = self.inner.events.send(ev);
    }

    /// The narinfo text and manifest of a stored path (for serving peers).
    pub fn record(&self, hash: &StorePathHash) -> Result<Option<PathRecord>> {
        self.inner.meta.get(hash.as_str())
    }

    /// True if a stored path references this chunk.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.inner.meta.chunk_size(id)?.is_some())
    }

    /// Reads one chunk that a stored path references, verified.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Option<bytes::Bytes>> {
        self.read_chunk_checked(id, true)
    }

    /// Reads one chunk for a peer: its size always checked, its BLAKE3
    /// hash on one read in [`PEER_READS_HASHED`]. The peer checks every
    /// chunk against its id anyway; hashing here too only finds a chunk
    /// the disk corrupted before the peer does, and cost a fifth of the
    /// sender's CPU per byte. A corrupt chunk sent unhashed costs this
    /// node the peer's trust for a while (a peer bans after two).
    pub fn read_chunk_for_peer(&self, id: &ChunkId) -> Result<Option<bytes::Bytes>> {
        let n = self.inner.peer_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.read_chunk_checked(id, n.is_multiple_of(PEER_READS_HASHED))
    }

    /// Reads one chunk a stored path references, its size checked, and its
    /// BLAKE3 hash if `hash`.
    ///
    /// A chunk freed while it is read may read as a punched hole: where
    /// that is not caught by its hash, a second look at its place is.
    fn read_chunk_checked(&self, id: &ChunkId, hash: bool) -> Result<Option<bytes::Bytes>> {
        let Some((size, loc)) = self.inner.meta.chunk_loc(id)? else {
            return Ok(None);
        };
        let data = self.inner.chunks.read(id, size, loc, hash);
        if (!hash || data.is_err()) && self.inner.meta.chunk_loc(id)? != Some((size, loc)) {
            return Ok(None);
        }
        data.map(Some)
    }

    /// True if the path is stored.
    pub fn contains(&self, hash: &StorePathHash) -> Result<bool> {
        self.inner.meta.contains(hash.as_str())
    }

    /// Opens a stored NAR for reading. The path cannot be evicted while the
    /// returned handle (or a reader made from it) lives.
    pub fn open_nar(&self, hash: &StorePathHash) -> Result<Option<NarHandle>> {
        let Some(guard) = InUse::new(self.clone(), *hash) else {
            return Ok(None); // being evicted
        };
        let Some(rec) = self.inner.meta.get(hash.as_str())? else {
            return Ok(None);
        };
        // No write on a hit: the access time is written later, with others.
        let full = {
            let mut state = self.state();
            state.touched.insert(*hash, now());
            state.touched.len() >= MAX_TOUCHED
        };
        if full {
            self.flush_touches();
        }
        let narinfo =
            NarInfo::parse(&rec.narinfo).map_err(|e| StoreError::BadNarInfo(hash.to_string(), e.to_string()))?;
        Ok(Some(NarHandle {
            narinfo,
            manifest: Arc::new(rec.manifest),
            guard: Arc::new(guard),
        }))
    }

    /// Starts storing the NAR of `narinfo`. Returns [`StoreError::QuotaFull`]
    /// if no room can be made.
    pub fn begin_ingest(&self, narinfo: NarInfo) -> Result<Ingest> {
        self.reserve(narinfo.nar_size)?;
        Ok(Ingest::new(self.clone(), narinfo))
    }

    /// Like [`Self::begin_ingest`], for a NAR whose chunks arrive checked
    /// against `manifest` (from peers): they are stored as they are, not
    /// chunked and hashed again. The manifest must be the narinfo's.
    pub fn begin_ingest_known(&self, narinfo: NarInfo, manifest: Arc<ChunkManifest>) -> Result<Ingest> {
        if let Err(source) = manifest.check_against(&narinfo) {
            let path = narinfo.store_path.to_string();
            return Err(StoreError::Mismatch { path, source });
        }
        self.reserve(narinfo.nar_size)?;
        Ok(Ingest::known(self.clone(), narinfo, manifest))
    }

    /// Removes a path; its chunks go when no other path uses them.
    pub fn remove(&self, hash: &StorePathHash) -> Result<bool> {
        self.state().evicting.insert(*hash);
        let r = self.evict(hash);
        self.state().evicting.remove(hash);
        r
    }

    /// Writes the access times kept in memory, in one transaction. Best
    /// effort: a failure (a full disk) only perturbs the eviction order.
    pub fn flush_touches(&self) {
        let batch: Vec<(String, u64)> = std::mem::take(&mut self.state().touched)
            .into_iter()
            .map(|(h, t)| (h.to_string(), t))
            .collect();
        if let Err(e) = self.inner.meta.touch(&batch) {
            tracing::warn!(paths = batch.len(), error = %e, "cannot record access times");
        }
    }

    /// Every stored path hash.
    pub fn list(&self) -> Result<Vec<StorePathHash>> {
        Ok(self.inner.meta.list()?.iter().filter_map(|h| h.parse().ok()).collect())
    }

    /// Chunk-store syncs run so far (ingests that finish together share one).
    pub fn sync_runs(&self) -> u64 {
        self.inner.chunks.sync_runs()
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<StoreStats> {
        Ok(StoreStats {
            paths: self.inner.meta.path_count()?,
            bytes: self.inner.meta.total_bytes()?,
            quota: self.inner.quota,
        })
    }

    /// Deletes pack files no stored path uses and no ingest is writing
    /// (left by a crash between writing chunks and committing), and chunk
    /// files of an older store no path references. Returns how many went.
    pub fn sweep_orphans(&self) -> Result<usize> {
        let mut removed = 0;
        let live: HashSet<u64> = self.inner.meta.packs()?.into_iter().collect();
        for pack in self.inner.chunks.list_packs()? {
            if !live.contains(&pack) && !self.state().writing.contains(&pack) {
                // Committed since the list was read?
                if self.inner.meta.packs()?.contains(&pack) {
                    continue;
                }
                self.inner.chunks.delete_pack(pack)?;
                removed += 1;
            }
        }
        // A chunk file never gains a reference again once it has none:
        // new chunks go into packs.
        for id in self.inner.chunks.list_files()? {
            if self.inner.meta.chunk_refs(&id)? == 0 {
                self.inner.chunks.delete_file(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Gives back the space a removal or a commit freed.
    fn free(&self, freed: &[Freed]) -> Result<()> {
        for f in freed {
            match *f {
                Freed::File(id) => self.inner.chunks.delete_file(&id)?,
                Freed::Pack(pack) => self.inner.chunks.delete_pack(pack)?,
                Freed::Range { pack, offset, size } => self.inner.chunks.punch(pack, offset, u64::from(size)),
            }
        }
        Ok(())
    }

    /// Removes a path the caller marked `evicting`; false if it was not
    /// stored. The database commit and the space given back run without
    /// the state lock.
    fn evict(&self, hash: &StorePathHash) -> Result<bool> {
        let existed = self.inner.meta.contains(hash.as_str())?;
        let freed = self.inner.meta.remove(hash.as_str())?;
        self.free(&freed)?;
        // After the removal: a listener that looks finds it gone.
        if existed {
            self.notify(StoreEvent::Removed(*hash));
        }
        Ok(existed)
    }

    /// Whether `needed` more bytes, beyond those `reserved` already, leave
    /// `keep_free` bytes free on the disk (what is reserved may not be
    /// written yet, so it counts as still to come).
    fn disk_has_room(&self, reserved: u64, needed: u64) -> bool {
        let keep = self.inner.keep_free;
        if keep == 0 {
            return true;
        }
        match FsSpace::of(self.inner.chunks.root()) {
            Ok(fs) => fs.available >= keep.saturating_add(reserved).saturating_add(needed),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's free space");
                true
            }
        }
    }

    /// Evicts least-recently-used paths until `needed` more bytes fit, in
    /// the quota and on the disk, then reserves them.
    fn reserve(&self, needed: u64) -> Result<()> {
        let quota = self.inner.quota;
        let mut disk_short = false;
        let full = |disk: bool| {
            if disk {
                StoreError::DiskFull {
                    needed,
                    keep_free: self.inner.keep_free,
                }
            } else {
                StoreError::QuotaFull { needed, quota }
            }
        };
        if needed > quota {
            return Err(full(false));
        }
        // The eviction order sees the latest hits.
        self.flush_touches();
        loop {
            let victim = {
                let mut state = self.state();
                let used = self.inner.meta.total_bytes()? + state.reserved;
                if used + needed <= quota {
                    disk_short = !self.disk_has_room(state.reserved, needed);
                    if !disk_short {
                        state.reserved += needed;
                        return Ok(());
                    }
                }
                let skip = state.in_use.len() + state.pins.set.len() + state.evicting.len() + 1;
                let victim: StorePathHash = self
                    .inner
                    .meta
                    .lru(skip)?
                    .into_iter()
                    .filter_map(|h| h.parse().ok())
                    .find(|h| {
                        !state.in_use.contains_key(h) && !state.pins.set.contains(h) && !state.evicting.contains(h)
                    })
                    .ok_or_else(|| full(disk_short))?;
                state.evicting.insert(victim);
                victim
            };
            tracing::debug!(path = %victim, "evicting least recently used path");
            let r = self.evict(&victim);
            self.state().evicting.remove(&victim);
            r?;
        }
    }

    fn release(&self, reserved: u64, pack: Option<u64>) {
        let mut state = self.state();
        state.reserved = state.reserved.saturating_sub(reserved);
        if let Some(p) = pack {
            state.writing.remove(&p);
        }
    }

    /// A new pack for an ingest, registered as being written under the
    /// state lock as its file is created, so a sweep never sees the file
    /// unregistered.
    fn create_pack(&self) -> Result<chunks::PackWriter> {
        let mut state = self.state();
        let w = self.inner.chunks.create()?;
        state.writing.insert(w.id);
        Ok(w)
    }
}

/// Keeps a path from being evicted while it is read.
#[derive(Debug)]
struct InUse {
    store: ChunkStore,
    hash: StorePathHash,
}

impl InUse {
    /// `None` if the path is being evicted.
    fn new(store: ChunkStore, hash: StorePathHash) -> Option<Self> {
        {
            let mut state = store.state();
            if state.evicting.contains(&hash) {
                return None;
            }
            *state.in_use.entry(hash).or_insert(0) += 1;
        }
        Some(Self { store, hash })
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut state = self.store.state();
        if let Some(n) = state.in_use.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                state.in_use.remove(&self.hash);
            }
        }
    }
}

/// A stored NAR, open for reading.
#[derive(Debug, Clone)]
pub struct NarHandle {
    pub narinfo: NarInfo,
    pub manifest: Arc<ChunkManifest>,
    guard: Arc<InUse>,
}

impl NarHandle {
    /// A reader over bytes `start..end` of the NAR (clamped to its size).
    pub fn reader(&self, start: u64, end: u64) -> NarReader {
        NarReader::new(
            self.guard.store.clone(),
            self.manifest.clone(),
            start,
            end,
            self.guard.clone(),
        )
    }
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
pub(crate) mod tests;
