//! Chunk files: `chunks/<2 hex>/<64 hex>`, each holding one chunk's bytes,
//! written to `tmp/` first and renamed into place, verified on every read.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use bytes::Bytes;
use nixswarm_protocol::ChunkId;

use super::{Result, StoreError};

/// The directory of chunk files.
#[derive(Debug)]
pub struct ChunkDir {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
    syncs: Syncs,
}

/// Group commit for `syncfs`: a caller's writes are covered by any sync
/// that starts after it asked, so ingests that finish together share one.
#[derive(Debug, Default)]
struct Syncs {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Requests so far (each caller takes the next number).
    asked: u64,
    /// Every request up to this one is on disk.
    covered: u64,
    /// A sync is running.
    running: bool,
    /// Syncs run (tests and status).
    runs: u64,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

impl ChunkDir {
    /// Opens the directory, creating it, and clears leftovers in `tmp/`.
    pub fn open(dir: &Path) -> Result<Self> {
        let root = dir.join("chunks");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(format!("clearing {}", tmp.display())))?;
        }
        fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        Ok(Self {
            root,
            tmp,
            counter: AtomicU64::new(0),
            syncs: Syncs::default(),
        })
    }

    /// Where a chunk's file is.
    /// The directory the chunk files live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// True if the chunk's file exists.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.path(id).exists()
    }

    /// Writes a chunk (whose id the caller computed from `data`). Not synced:
    /// call [`ChunkDir::sync`] before making it visible.
    pub fn write(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        let dest = self.path(id);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        f.write_all(data).map_err(io(format!("writing {}", tmp.display())))?;
        drop(f);
        let parent = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        fs::rename(&tmp, &dest).map_err(io(format!("renaming to {}", dest.display())))
    }

    /// Reads a chunk and checks its BLAKE3 hash and size.
    pub fn read(&self, id: &ChunkId, size: u32) -> Result<Bytes> {
        self.read_checked(id, size, true)
    }

    /// Reads a chunk and checks its size, and its BLAKE3 hash if `hash`.
    pub fn read_checked(&self, id: &ChunkId, size: u32, hash: bool) -> Result<Bytes> {
        let path = self.path(id);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::ChunkMissing(*id)),
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        if data.len() != size as usize || (hash && blake3::hash(&data).as_bytes() != &id.0) {
            return Err(StoreError::ChunkCorrupt(*id));
        }
        Ok(Bytes::from(data))
    }

    /// Deletes a chunk's file; a missing file is fine.
    pub fn delete(&self, id: &ChunkId) -> Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(format!("deleting chunk {id}"))(e)),
            _ => Ok(()),
        }
    }

    /// Every chunk file present (for the orphan sweep).
    pub fn list(&self) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        for sub in fs::read_dir(&self.root).map_err(io(format!("listing {}", self.root.display())))? {
            let sub = sub.map_err(io("listing chunks"))?.path();
            let Ok(entries) = fs::read_dir(&sub) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Returns once everything this thread wrote so far is on disk: either
    /// a `syncfs` of its own, or one that started after it asked.
    pub fn sync(&self) -> Result<()> {
        let root = &self.root;
        self.syncs.sync_with(|| {
            let dir = fs::File::open(root).map_err(io(format!("opening {}", root.display())))?;
            syncfs(&dir).map_err(io("syncing the chunk store's filesystem"))
        })
    }

    /// Syncs run so far.
    pub fn sync_runs(&self) -> u64 {
        self.syncs
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .runs
    }
}

impl Syncs {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `flush` unless a run that started after this call covers it.
    fn sync_with(&self, flush: impl Fn() -> Result<()>) -> Result<()> {
        let mut s = self.lock();
        s.asked += 1;
        let mine = s.asked;
        loop {
            if s.covered >= mine {
                return Ok(());
            }
            if !s.running {
                s.running = true;
                let upto = s.asked;
                drop(s);
                let r = flush();
                s = self.lock();
                s.running = false;
                s.runs += 1;
                if r.is_ok() {
                    s.covered = s.covered.max(upto);
                }
                self.done.notify_all();
                // On failure the waiters try a flush of their own.
                r?;
                continue;
            }
            s = self.done.wait(s).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

fn syncfs(f: &fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    let r = unsafe { libc::syncfs(f.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn callers_that_ask_during_a_sync_share_the_next_one() {
        let syncs = Arc::new(Syncs::default());
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        // The first sync blocks until released.
        let first = {
            let syncs = syncs.clone();
            std::thread::spawn(move || {
                syncs.sync_with(|| {
                    gate.lock().unwrap().recv().unwrap();
                    Ok(())
                })
            })
        };
        while !syncs.lock().running {
            std::thread::yield_now();
        }
        // Three more ask while it runs: its flush may predate their writes.
        let later: Vec<_> = (0..3)
            .map(|_| {
                let syncs = syncs.clone();
                std::thread::spawn(move || syncs.sync_with(|| Ok(())))
            })
            .collect();
        while syncs.lock().asked < 4 {
            std::thread::yield_now();
        }
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        for t in later {
            t.join().unwrap().unwrap();
        }
        assert_eq!(syncs.lock().runs, 2, "one sync for the three that waited");
    }

    #[test]
    fn a_failed_sync_fails_its_caller_and_the_next_tries_again() {
        let syncs = Syncs::default();
        let failing = || {
            Err(StoreError::Io {
                context: "test".into(),
                source: std::io::Error::other("disk gone"),
            })
        };
        assert!(syncs.sync_with(failing).is_err());
        assert!(syncs.sync_with(|| Ok(())).is_ok());
        assert_eq!(syncs.lock().runs, 2);
    }
}
