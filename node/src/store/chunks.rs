//! Where chunk bytes live: pack files, `packs/<16 hex>.pack`, one per
//! ingest, each chunk at an offset the metadata records; a range no path
//! uses any more is given back to the filesystem (a punched hole) and a
//! pack with no live chunk is deleted. One file per NAR rather than one
//! per chunk: creating a file per 64 KiB cost this machine's ext4 up to
//! 1 ms each once earlier files had been deleted (see ARCHITECTURE.md).
//! Stores written before pack files keep their chunks in files of their
//! own, `chunks/<2 hex>/<64 hex>`, read and deleted as before.
//! Every read is checked against the chunk's size, and its BLAKE3 id
//! unless the caller samples.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use bytes::{Bytes, BytesMut};
use nixswarm_protocol::ChunkId;

use super::meta::Loc;
use super::{Result, StoreError};

/// The pack files, and the chunk files of older stores.
#[derive(Debug)]
pub struct ChunkDir {
    root: PathBuf,
    packs: PathBuf,
    files: PathBuf,
    /// The next pack's number (above every pack on disk at open).
    next: AtomicU64,
    syncs: Syncs,
    /// A filesystem that cannot punch holes was reported once.
    no_holes: AtomicBool,
}

/// A pack being written by one ingest: chunks appended in order.
#[derive(Debug)]
pub struct PackWriter {
    pub id: u64,
    file: fs::File,
    len: u64,
}

impl PackWriter {
    /// Appends a chunk; returns its offset. Not synced: call
    /// [`ChunkDir::sync`] before making it visible.
    pub fn append(&mut self, data: &[u8]) -> Result<u64> {
        let at = self.len;
        self.file
            .write_all(data)
            .map_err(io(format!("writing pack {:016x}", self.id)))?;
        self.len += data.len() as u64;
        Ok(at)
    }
}

/// Group commit for the pack directory's sync: a caller's new pack is
/// covered by any sync that starts after it asked, so ingests that finish
/// together share one.
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

fn pack_name(id: u64) -> String {
    format!("{id:016x}.pack")
}

impl ChunkDir {
    /// Opens the directory, creating it, and clears what an older version
    /// left in `tmp/`.
    pub fn open(dir: &Path) -> Result<Self> {
        let packs = dir.join("packs");
        fs::create_dir_all(&packs).map_err(io(format!("creating {}", packs.display())))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(format!("clearing {}", tmp.display())))?;
        }
        let this = Self {
            root: dir.to_owned(),
            files: dir.join("chunks"),
            packs,
            next: AtomicU64::new(0),
            syncs: Syncs::default(),
            no_holes: AtomicBool::new(false),
        };
        let next = this.list_packs()?.into_iter().max().map_or(1, |m| m + 1);
        this.next.store(next, Ordering::Relaxed);
        Ok(this)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pack_path(&self, pack: u64) -> PathBuf {
        self.packs.join(pack_name(pack))
    }

    /// Where an older store kept a chunk.
    pub fn file_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.files.join(&hex[..2]).join(hex)
    }

    /// A new, empty pack.
    pub fn create(&self) -> Result<PackWriter> {
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let path = self.pack_path(id);
            match fs::File::options().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(PackWriter { id, file, len: 0 }),
                // Left by another process on the same directory: skip it.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
            }
        }
    }

    /// Reads a chunk of `size` bytes from `loc`, checking its size, and its
    /// BLAKE3 hash if `hash`.
    pub fn read(&self, id: &ChunkId, size: u32, loc: Loc, hash: bool) -> Result<Bytes> {
        let data = match loc {
            Loc::File => {
                let path = self.file_path(id);
                match fs::read(&path) {
                    Ok(d) => Bytes::from(d),
                    Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::ChunkMissing(*id)),
                    Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
                }
            }
            Loc::Pack { pack, offset } => {
                let path = self.pack_path(pack);
                let file = match fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::ChunkMissing(*id)),
                    Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
                };
                let mut buf = BytesMut::zeroed(size as usize);
                match file.read_exact_at(&mut buf, offset) {
                    Ok(()) => buf.freeze(),
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Err(StoreError::ChunkCorrupt(*id)),
                    Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
                }
            }
        };
        if data.len() != size as usize || (hash && blake3::hash(&data).as_bytes() != &id.0) {
            return Err(StoreError::ChunkCorrupt(*id));
        }
        Ok(data)
    }

    /// Deletes a pack; a missing one is fine.
    pub fn delete_pack(&self, pack: u64) -> Result<()> {
        match fs::remove_file(self.pack_path(pack)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(format!("deleting pack {pack:016x}"))(e)),
            _ => Ok(()),
        }
    }

    /// Gives a range of a pack back to the filesystem. Best effort: where
    /// the filesystem cannot punch holes, the range stays until its pack
    /// goes (said once in the log).
    pub fn punch(&self, pack: u64, offset: u64, len: u64) {
        use std::os::fd::AsRawFd as _;
        let Ok(file) = fs::File::options().write(true).open(self.pack_path(pack)) else {
            return;
        };
        // SAFETY: `file` is an open descriptor for the duration of the call.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 && !self.no_holes.swap(true, Ordering::Relaxed) {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, "cannot give unused chunk space back to the filesystem; it stays until its pack file goes");
        }
    }

    /// Deletes a chunk file of an older store; a missing file is fine.
    pub fn delete_file(&self, id: &ChunkId) -> Result<()> {
        match fs::remove_file(self.file_path(id)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(format!("deleting chunk {id}"))(e)),
            _ => Ok(()),
        }
    }

    /// Every pack on disk.
    pub fn list_packs(&self) -> Result<Vec<u64>> {
        let entries = fs::read_dir(&self.packs).map_err(io(format!("listing {}", self.packs.display())))?;
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let hex = name.to_str()?.strip_suffix(".pack")?;
                u64::from_str_radix(hex, 16).ok()
            })
            .collect())
    }

    /// Every chunk file of an older store.
    pub fn list_files(&self) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        let Ok(subs) = fs::read_dir(&self.files) else {
            return Ok(out);
        };
        for sub in subs.flatten() {
            let Ok(entries) = fs::read_dir(sub.path()) else {
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

    /// Returns once `pack`'s bytes and its name are on disk: its data
    /// synced, and the directory by a sync of its own or one that started
    /// after it asked. (A `syncfs` here flushed everything else written to
    /// the filesystem too, Nix's own store included: 173 of them took
    /// 0.45 s in one Nix run of the 160-path cache.)
    pub fn sync(&self, pack: &PackWriter) -> Result<()> {
        pack.file
            .sync_data()
            .map_err(io(format!("syncing pack {:016x}", pack.id)))?;
        let root = &self.packs;
        self.syncs.sync_with(|| {
            let dir = fs::File::open(root).map_err(io(format!("opening {}", root.display())))?;
            dir.sync_all().map_err(io(format!("syncing {}", root.display())))
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
