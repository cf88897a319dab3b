//! The follower: keeps the donor index in step with the Nix database.
//! New valid paths are checked (trusted signature, no excluded name) and
//! indexed at a bounded read rate, committed in batches; paths that are no
//! longer valid are withdrawn.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the indexing of installed paths logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

use nixswarm_protocol::narinfo::Trust;
use nixswarm_protocol::{ChunkManifest, ChunkRef, NarInfo, Sha256Hash, StorePath};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::layout::Recorder;
use super::{Indexed, InstalledError, InstalledStore, ValidPath};
use crate::store::StoreEvent;
use crate::store::chunker::Chunker;

/// Paths read from the Nix database at once.
const DB_BATCH: usize = 512;
/// Indexed paths are committed (and announced) together, up to this many...
const BATCH_PATHS: usize = 256;
/// ...or this many NAR bytes...
const BATCH_BYTES: u64 = 256 << 20;
/// ...or after this long.
const BATCH_TIME: Duration = Duration::from_secs(1);

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

pub(super) struct Follower {
    store: InstalledStore,
    /// Database ids looked at and not shareable (unsigned, excluded), with
    /// the hash of their signatures then: new signatures mean a new look.
    skipped: HashMap<i64, u64>,
    pacer: Pacer,
    last_token: Option<(std::time::SystemTime, u64, Option<std::time::SystemTime>, u64)>,
    /// Indexed paths not committed yet.
    batch: Vec<(String, Indexed)>,
    batch_bytes: u64,
    batch_started: Instant,
}

impl Follower {
    pub(super) fn new(store: InstalledStore) -> Self {
        Self {
            pacer: Pacer::new(store.inner.opts.index_rate),
            store,
            skipped: HashMap::new(),
            last_token: None,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_started: Instant::now(),
        }
    }

    pub(super) fn sync(&mut self, cancel: &CancellationToken) -> Result<(), InstalledError> {
        let inner = self.store.inner.clone();
        let token = inner.db.change_token();
        if token.is_some() && token == self.last_token {
            return Ok(());
        }
        let valid = inner.db.ids()?;
        // Withdraw what is gone (or was replaced under the same hash).
        let mut indexed_ids = HashSet::new();
        for (hash, id) in inner.index.list()? {
            let same = valid.get(&id).is_some_and(|(p, _)| base_hash(p) == Some(hash.as_str()));
            if same {
                indexed_ids.insert(id);
            } else {
                tracing::info!(path = %hash, "installed path is gone: withdrawing it");
                self.store.drop_path(&hash, "");
            }
        }
        self.skipped
            .retain(|id, sigs| valid.get(id).is_some_and(|(_, now)| now == sigs));
        inner.not_shareable.store(self.skipped.len() as u64, Ordering::Relaxed);
        let mut new: Vec<i64> = valid
            .keys()
            .filter(|id| !indexed_ids.contains(id) && !self.skipped.contains_key(id))
            .copied()
            .collect();
        new.sort_unstable();
        inner.queued.store(new.len() as u64, Ordering::Relaxed);
        // Progress for whoever watches the log (the first indexing of a
        // large store takes a while): a line at the start, one every
        // PROGRESS_EVERY, one at the end.
        let total = new.len();
        let started = std::time::Instant::now();
        let mut said = started;
        if total > 0 {
            tracing::info!(paths = total, "indexing installed paths");
        }
        for (done, batch) in new.chunks(DB_BATCH).enumerate() {
            for p in inner.db.paths(batch)? {
                if cancel.is_cancelled() {
                    self.commit();
                    return Ok(());
                }
                self.consider(p);
                inner.queued.fetch_sub(1, Ordering::Relaxed);
            }
            if said.elapsed() >= PROGRESS_EVERY {
                said = std::time::Instant::now();
                let done = ((done + 1) * DB_BATCH).min(total);
                tracing::info!(done, of = total, "indexing installed paths");
            }
        }
        self.commit();
        inner.queued.store(0, Ordering::Relaxed);
        if total > 0 {
            tracing::info!(
                paths = total,
                secs = started.elapsed().as_secs(),
                "installed paths indexed"
            );
        }
        self.last_token = token;
        Ok(())
    }

    fn consider(&mut self, p: ValidPath) {
        let inner = self.store.inner.clone();
        let info = match narinfo_of(&p) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(path = %p.path, error = %e, "not sharing: unreadable database record");
                self.skip(&p);
                return;
            }
        };
        if !matches!(info.trust(&inner.opts.share_keys), Some(Trust::Signed(_))) {
            self.skip(&p);
            return;
        }
        if inner.opts.exclude.iter().any(|pat| pat.matches(info.store_path.name())) {
            tracing::debug!(path = %p.path, "not sharing: excluded by name");
            self.skip(&p);
            return;
        }
        let hash = info.store_path.hash();
        if let Ok(Some((reg, _))) = inner.index.rejected(hash.as_str())
            && reg == p.registration_time
        {
            self.skip(&p);
            return;
        }
        match self.index_path(&p, &info) {
            Ok(rec) => {
                self.batch_bytes += rec.manifest.nar_size;
                self.batch.push((hash.to_string(), rec));
                if self.batch.len() >= BATCH_PATHS
                    || self.batch_bytes >= BATCH_BYTES
                    || self.batch_started.elapsed() >= BATCH_TIME
                {
                    self.commit();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %p.path, "not sharing: its files are gone");
            }
            Err(e) => {
                tracing::warn!(path = %p.path, error = %e, "not sharing an installed path");
                inner.rejected.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = inner
                    .index
                    .reject(hash.as_str(), Some(p.registration_time), &e.to_string())
                {
                    tracing::warn!(path = %p.path, error = %e, "cannot record a rejected path");
                }
            }
        }
    }

    /// Commits the indexed paths of the batch in one transaction, then
    /// announces them.
    fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.batch_started = Instant::now();
        if batch.is_empty() {
            return;
        }
        let inner = &self.store.inner;
        match inner.index.insert(&batch) {
            Ok(()) => {
                tracing::debug!(paths = batch.len(), "indexed installed paths");
                for (h, _) in &batch {
                    if let Ok(h) = h.parse() {
                        let _ = inner.events.send(StoreEvent::Added(h));
                    }
                }
            }
            Err(e) => tracing::warn!(paths = batch.len(), error = %e, "cannot record indexed paths"),
        }
    }

    fn skip(&mut self, p: &ValidPath) {
        self.skipped.insert(p.id, p.sigs_hash);
        let n = self.skipped.len() as u64;
        self.store.inner.not_shareable.store(n, Ordering::Relaxed);
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
    let sp = |s: &str| s.parse::<StorePath>().map_err(|e| e.to_string());
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
