//! Donor mode: serving the signed paths installed in a Nix store straight
//! from its files, with no second copy.
//!
//! - [`nixdb`] reads the Nix database read-only.
//! - [`layout`] records where each NAR byte lies, so a chunk is rebuilt by
//!   seeking.
//! - [`index`] keeps, per path, its narinfo, manifest and layout (redb).
//! - [`InstalledStore`] follows the database: new valid paths are checked
//!   (a trusted signature, no excluded name, files that hash to the
//!   recorded NarHash) and indexed at a bounded read rate; paths that
//!   disappear (garbage collection) are withdrawn.
//!
//! The privacy rule: a path is indexed, announced and served only if one of
//! its signatures verifies against a trusted key. Unsigned paths, paths
//! signed by other keys, and content-addressed paths added locally never
//! enter the index, so no request for them can be answered.

mod follow;
mod index;
pub mod layout;
pub mod nixdb;
mod pattern;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nixswarm_protocol::{ChunkId, ChunkManifest, PublicKey, StorePathHash};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use follow::narinfo_of;
pub use index::Indexed;
pub use nixdb::{NixDb, NixDbError, ValidPath};
pub use pattern::NamePattern;

use crate::store::StoreEvent;
use follow::Follower;
use index::Index;
use layout::Layout;

/// Errors of the installed-paths source.
#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    #[error(transparent)]
    NixDb(#[from] NixDbError),
    #[error("donor index: {0}")]
    Index(String),
}

/// Settings of the installed-paths source.
#[derive(Debug, Clone)]
pub struct InstalledOptions {
    /// The directory under which `nix/store` and `nix/var/nix/db` live.
    pub root: PathBuf,
    /// Keys (the share keys) one of whose signatures a path must carry to be shared.
    pub share_keys: Vec<PublicKey>,
    /// Store-path names never shared (`*` and `?` wildcards).
    pub exclude: Vec<NamePattern>,
    /// Most bytes read per second while indexing (`None`: unlimited).
    pub index_rate: Option<u64>,
    /// How often the Nix database is checked for changes.
    pub poll: Duration,
}

/// Counters for `nixswarm status`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct InstalledStats {
    /// Paths indexed and shared.
    pub paths_shared: u64,
    /// NAR bytes of those paths.
    pub bytes_indexed: u64,
    /// Valid paths waiting to be indexed.
    pub queued: u64,
    /// Valid paths never shared: no trusted signature, or an excluded name.
    pub not_shareable: u64,
    /// Paths whose files do not match the Nix database.
    pub rejected: u64,
}

#[derive(Debug)]
struct Inner {
    opts: InstalledOptions,
    store_dir: PathBuf,
    db: NixDb,
    index: Index,
    events: broadcast::Sender<StoreEvent>,
    layouts: Mutex<HashMap<String, Arc<(String, Layout)>>>,
    queued: AtomicU64,
    not_shareable: AtomicU64,
    rejected: AtomicU64,
}

/// The installed paths of one Nix store, indexed for serving.
#[derive(Debug, Clone)]
pub struct InstalledStore {
    inner: Arc<Inner>,
}

/// Layouts kept decoded in memory.
const LAYOUT_CACHE: usize = 256;

impl InstalledStore {
    /// Opens the index at `index_path` for the store under `opts.root`.
    pub fn open(index_path: &Path, opts: InstalledOptions) -> Result<Self, InstalledError> {
        let index = Index::open(index_path)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                store_dir: opts.root.join("nix/store"),
                db: NixDb::under(&opts.root),
                opts,
                index,
                events,
                layouts: Mutex::default(),
                queued: AtomicU64::new(0),
                not_shareable: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        })
    }

    /// Changes to the set of shared paths.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    /// Every shared path.
    pub fn list(&self) -> Result<Vec<StorePathHash>, InstalledError> {
        Ok(self
            .inner
            .index
            .list()?
            .into_iter()
            .filter_map(|(h, _)| h.parse().ok())
            .collect())
    }

    /// Counters.
    pub fn stats(&self) -> Result<InstalledStats, InstalledError> {
        let (paths, bytes) = self.inner.index.stats()?;
        Ok(InstalledStats {
            paths_shared: paths,
            bytes_indexed: bytes,
            queued: self.inner.queued.load(Ordering::Relaxed),
            not_shareable: self.inner.not_shareable.load(Ordering::Relaxed),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
        })
    }

    /// The narinfo and manifest of a shared path whose files are still there.
    pub fn path_info(&self, hash: &StorePathHash) -> Result<Option<(String, ChunkManifest)>, InstalledError> {
        let Some(rec) = self.inner.index.get(hash.as_str())? else {
            return Ok(None);
        };
        if std::fs::symlink_metadata(self.inner.store_dir.join(&rec.base_name)).is_err() {
            return Ok(None); // collected; the next sync withdraws it
        }
        Ok(Some((rec.narinfo, rec.manifest)))
    }

    /// True if the path is shared.
    pub fn contains(&self, hash: &StorePathHash) -> Result<bool, InstalledError> {
        self.inner.index.contains(hash.as_str())
    }

    fn layout(&self, hash: &str) -> Result<Option<Arc<(String, Layout)>>, InstalledError> {
        let mut cache = self
            .inner
            .layouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = cache.get(hash) {
            return Ok(Some(l.clone()));
        }
        drop(cache);
        let Some(rec) = self.inner.index.get(hash)? else {
            return Ok(None);
        };
        let l = Arc::new((rec.base_name.clone(), rec.layout()?));
        cache = self
            .inner
            .layouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= LAYOUT_CACHE {
            cache.clear();
        }
        cache.insert(hash.to_owned(), l.clone());
        Ok(Some(l))
    }

    /// A chunk rebuilt from the store's files and verified against its id.
    /// A path whose files no longer match is dropped from the index.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, InstalledError> {
        for (hash, off, size) in self.inner.index.chunk_locations(id)? {
            let Some(l) = self.layout(&hash)? else { continue };
            let (base, layout) = &*l;
            match layout.read(&self.inner.store_dir.join(base), off, u64::from(size)) {
                Ok(data) if crate::store::chunk_id(&data) == *id => return Ok(Some(Bytes::from(data))),
                Ok(_) => self.drop_path(&hash, "its files changed after they were indexed"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.drop_path(&hash, ""),
                Err(e) => self.drop_path(&hash, &format!("reading its files failed: {e}")),
            }
        }
        Ok(None)
    }

    /// Withdraws a path; with a reason, it is not indexed again until Nix
    /// registers it anew.
    fn drop_path(&self, hash: &str, reason: &str) {
        self.inner
            .layouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(hash);
        let r = if reason.is_empty() {
            self.inner.index.remove(hash).map(|_| ())
        } else {
            tracing::warn!(path = hash, reason, "no longer sharing an installed path");
            self.inner.rejected.fetch_add(1, Ordering::Relaxed);
            self.inner.index.reject(hash, None, reason)
        };
        if let Err(e) = r {
            tracing::warn!(path = hash, error = %e, "cannot update the donor index");
        }
        if let Ok(h) = hash.parse() {
            let _ = self.inner.events.send(StoreEvent::Removed(h));
        }
    }

    /// Follows the Nix database until `cancel` fires: a blocking loop, run
    /// it on its own thread.
    pub fn follow(&self, cancel: &CancellationToken) {
        let mut follower = Follower::new(self.clone());
        while !cancel.is_cancelled() {
            if let Err(e) = follower.sync(cancel) {
                tracing::warn!(error = %e, "cannot follow the Nix store");
            }
            let until = Instant::now() + self.inner.opts.poll;
            while Instant::now() < until && !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50).min(self.inner.opts.poll));
            }
        }
    }

    /// One pass over the database (for tests and the first start): returns
    /// once every valid, shareable path is indexed.
    pub fn sync_once(&self) -> Result<(), InstalledError> {
        Follower::new(self.clone()).sync(&CancellationToken::new())
    }
}
