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

mod index;
pub mod layout;
pub mod nixdb;
mod pattern;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nixswarm_protocol::narinfo::Trust;
use nixswarm_protocol::{ChunkId, ChunkManifest, ChunkRef, NarInfo, PublicKey, Sha256Hash, StorePath, StorePathHash};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use index::Indexed;
pub use nixdb::{NixDb, NixDbError, ValidPath};
pub use pattern::NamePattern;

use crate::store::StoreEvent;
use crate::store::chunker::Chunker;
use index::Index;
use layout::{Layout, Recorder};

/// Errors of the installed-paths source.
#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    #[error(transparent)]
    NixDb(#[from] NixDbError),
    #[error("donor index: {0}")]
    Index(String),
    #[error("{path}: {message}")]
    Path { path: String, message: String },
}

/// Settings of the installed-paths source.
#[derive(Debug, Clone)]
pub struct InstalledOptions {
    /// The directory under which `nix/store` and `nix/var/nix/db` live.
    pub root: PathBuf,
    /// Keys one of whose signatures a path must carry to be shared.
    pub trusted_keys: Vec<PublicKey>,
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
/// Paths read from the Nix database at once.
const DB_BATCH: usize = 512;

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

    /// The Nix database this store follows.
    pub fn nix_db(&self) -> &NixDb {
        &self.inner.db
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
            .filter_map(|(h, _, _)| h.parse().ok())
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
        Ok(self.inner.index.get(hash.as_str())?.is_some())
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
        let reg = self.inner.index.get(hash).ok().flatten().map(|r| r.registration_time);
        let r = if reason.is_empty() {
            self.inner.index.remove(hash).map(|_| ())
        } else {
            tracing::warn!(path = hash, reason, "no longer sharing an installed path");
            self.inner.rejected.fetch_add(1, Ordering::Relaxed);
            self.inner.index.reject(hash, reg.unwrap_or(0), reason)
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
        let mut follower = Follower {
            store: self.clone(),
            skipped: HashSet::new(),
            pacer: Pacer::new(self.inner.opts.index_rate),
            last_token: None,
        };
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
        Follower {
            store: self.clone(),
            skipped: HashSet::new(),
            pacer: Pacer::new(self.inner.opts.index_rate),
            last_token: None,
        }
        .sync(&CancellationToken::new())
    }
}

/// Keeps the average read rate under a limit.
struct Pacer {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Pacer {
    fn new(rate: Option<u64>) -> Self {
        Self {
            rate,
            start: Instant::now(),
            bytes: 0,
        }
    }

    fn take(&mut self, n: u64) {
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(self.start) > Duration::from_secs(2) && self.bytes == 0 {
            self.start = now;
        }
        self.bytes += n;
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_secs(1) {
            // Idle for a while: no burst to catch up.
            self.start = now;
            self.bytes = 0;
        }
    }
}

struct Follower {
    store: InstalledStore,
    /// Database ids looked at and not shareable (unsigned, excluded).
    skipped: HashSet<i64>,
    pacer: Pacer,
    last_token: Option<(std::time::SystemTime, u64, Option<std::time::SystemTime>, u64)>,
}

impl Follower {
    fn sync(&mut self, cancel: &CancellationToken) -> Result<(), InstalledError> {
        let inner = self.store.inner.clone();
        let token = inner.db.change_token();
        if token.is_some() && token == self.last_token {
            return Ok(());
        }
        let valid = inner.db.ids()?;
        // Withdraw what is gone (or was replaced under the same hash).
        let mut indexed_ids = HashSet::new();
        for (hash, id, _) in inner.index.list()? {
            let same = valid.get(&id).is_some_and(|p| base_hash(p) == Some(hash.as_str()));
            if same {
                indexed_ids.insert(id);
            } else {
                tracing::info!(path = %hash, "installed path is gone: withdrawing it");
                self.store.drop_path(&hash, "");
            }
        }
        self.skipped.retain(|id| valid.contains_key(id));
        let mut new: Vec<i64> = valid
            .keys()
            .filter(|id| !indexed_ids.contains(id) && !self.skipped.contains(id))
            .copied()
            .collect();
        new.sort_unstable();
        inner.queued.store(new.len() as u64, Ordering::Relaxed);
        for batch in new.chunks(DB_BATCH) {
            for p in inner.db.paths(batch)? {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                self.consider(p);
                inner.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
        inner.queued.store(0, Ordering::Relaxed);
        self.last_token = token;
        Ok(())
    }

    fn consider(&mut self, p: ValidPath) {
        let inner = self.store.inner.clone();
        let info = match narinfo_of(&p) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(path = %p.path, error = %e, "not sharing: unreadable database record");
                self.skip(p.id);
                return;
            }
        };
        if !matches!(info.trust(&inner.opts.trusted_keys), Some(Trust::Signed(_))) {
            self.skip(p.id);
            return;
        }
        if inner.opts.exclude.iter().any(|pat| pat.matches(info.store_path.name())) {
            tracing::debug!(path = %p.path, "not sharing: excluded by name");
            self.skip(p.id);
            return;
        }
        let hash = info.store_path.hash();
        if let Ok(Some((reg, _))) = inner.index.rejected(hash.as_str())
            && reg == p.registration_time
        {
            self.skip(p.id);
            return;
        }
        match self.index_path(&p, &info) {
            Ok(rec) => match inner.index.insert(hash.as_str(), &rec) {
                Ok(()) => {
                    tracing::debug!(path = %p.path, "indexed an installed path");
                    let _ = inner.events.send(StoreEvent::Added(hash));
                }
                Err(e) => tracing::warn!(path = %p.path, error = %e, "cannot record an indexed path"),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %p.path, "not sharing: its files are gone");
            }
            Err(e) => {
                tracing::warn!(path = %p.path, error = %e, "not sharing an installed path");
                inner.rejected.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = inner.index.reject(hash.as_str(), p.registration_time, &e.to_string()) {
                    tracing::warn!(path = %p.path, error = %e, "cannot record a rejected path");
                }
            }
        }
    }

    fn skip(&mut self, id: i64) {
        self.skipped.insert(id);
        self.store.inner.not_shareable.fetch_add(1, Ordering::Relaxed);
    }

    /// Serialises the path, checking it against the database's NarHash and
    /// NarSize, and records its chunks and layout.
    fn index_path(&mut self, p: &ValidPath, info: &NarInfo) -> io::Result<Indexed> {
        let inner = self.store.inner.clone();
        let base = info.store_path.base_name();
        let mut sha = Sha256::new();
        let mut size = 0u64;
        let mut chunker = Chunker::default();
        let mut chunks = Vec::new();
        let pacer = &mut self.pacer;
        let mut emit = |c: &[u8]| -> io::Result<()> {
            chunks.push(ChunkRef {
                id: crate::store::chunk_id(c),
                size: c.len() as u32,
            });
            Ok(())
        };
        let mut rec = Recorder::new(|b: &[u8]| {
            pacer.take(b.len() as u64);
            sha.update(b);
            size += b.len() as u64;
            chunker.push(b, &mut emit)
        });
        crate::nar::dump_to(&inner.store_dir.join(&base), &mut rec)?;
        let layout = rec.layout;
        chunker.finish(&mut emit)?;
        let got = Sha256Hash(sha.finalize().into());
        if got != info.nar_hash || size != info.nar_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "its files hash to sha256:{} ({size} bytes), not the recorded sha256:{} ({} bytes)",
                    got.to_nixbase32(),
                    info.nar_hash.to_nixbase32(),
                    info.nar_size
                ),
            ));
        }
        let manifest = ChunkManifest::new(got, size, chunks).map_err(io::Error::other)?;
        Ok(Indexed {
            db_id: p.id,
            registration_time: p.registration_time,
            base_name: base,
            narinfo: info.to_text(),
            manifest,
            layout: layout.encode(),
        })
    }
}

fn base_hash(path: &str) -> Option<&str> {
    path.rsplit('/').next().and_then(|b| b.get(..32))
}

/// The narinfo a peer gets for an installed path: the database's record,
/// uncompressed.
pub fn narinfo_of(p: &ValidPath) -> Result<NarInfo, String> {
    let sp = |s: &str| -> Result<StorePath, String> {
        let base = s.rsplit('/').next().unwrap_or(s);
        StorePath::from_base_name(base).map_err(|e| e.to_string())
    };
    let store_path = sp(&p.path)?;
    let digest = p.nar_hash.strip_prefix("sha256:").ok_or("NarHash is not sha256")?;
    let nar_hash = Sha256Hash::from_digest_str(digest).map_err(|e| e.to_string())?;
    Ok(NarInfo {
        url: format!("nar/{}-{}.nar", store_path.hash(), nar_hash.to_nixbase32()),
        store_path,
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash,
        nar_size: p.nar_size,
        references: p.references.iter().map(|r| sp(r)).collect::<Result<_, _>>()?,
        deriver: p.deriver.as_deref().map(sp).transpose()?,
        sigs: p.sigs.iter().filter_map(|s| s.parse().ok()).collect(),
        ca: p.ca.clone(),
    })
}
