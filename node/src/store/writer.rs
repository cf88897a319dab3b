//! Writing a NAR into the store behind its client: the pieces go through a
//! bounded queue to a thread of the ingest's own, which runs at the lowest
//! CPU priority when the NAR fits the queue ([`IngestWriter::start`]; a
//! larger NAR, and a prefetch, whose commit a NAR request may wait for,
//! keep normal priority: [`IngestWriter::spawn`]).
//!
//! On a machine whose cores are busy (Nix unpacking, the gateway verifying
//! the bytes it forwards), chunking, hashing and creating chunk files then
//! take only the CPU time nobody on the client's path wants: the client's
//! bytes never wait for the store while the queue has room (figures in
//! ARCHITECTURE.md, "The store writes behind the client").
//!
//! The thread is not one of tokio's blocking pool: Linux applies nice per
//! thread, an unprivileged thread cannot raise its priority again, and a
//! pooled thread would carry the low priority into unrelated work (a local
//! read that a client waits for).

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};

use nixswarm_protocol::NarInfo;

use super::{ChunkStore, Ingest, StoreError};

/// Bytes queued for one ingest. Most NARs fit whole, so the store never
/// slows their download. A larger one is paced by the store once it is
/// this far behind: what is fetched must be kept (that is how the swarm
/// fills up), and fetching it twice would spend donors' upload, the
/// swarm's scarcest resource. Counted in bytes, not pieces: an HTTP body
/// arrives in pieces of a few KiB, and a queue of pieces would pace the
/// download by the low-priority writer long before it held 32 MiB.
pub const QUEUE_BYTES: usize = 32 << 20;
/// Pieces queued for one ingest, whatever their size.
const QUEUE_PIECES: usize = 8192;

/// Writer threads running, in this process.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// The nice value of a writer thread: the lowest priority.
const NICE: libc::c_int = 19;

enum Msg {
    Data(Bytes),
    /// Commit; the answer says whether the NAR is now stored.
    Commit(Option<oneshot::Sender<Committed>>),
}

/// How writing a NAR ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Stored,
    /// The bytes did not match the narinfo (NarSize, NarHash, content
    /// address): whoever sent them is to blame.
    Mismatch,
    /// Not stored for another reason (the store has it, no room, a disk
    /// error, the writer stopped).
    Failed,
}

impl Committed {
    fn of(e: &StoreError) -> Self {
        match e {
            StoreError::Mismatch { .. } => Self::Mismatch,
            _ => Self::Failed,
        }
    }

    fn of_io(e: &std::io::Error) -> Self {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<StoreError>())
            .map_or(Self::Failed, Self::of)
    }
}

/// Turns the pieces written into NAR bytes (a decompressor): given the sink
/// for the NAR's bytes, returns the sink the pieces go to. Runs on the
/// writer thread.
pub type Decode = Box<dyn FnOnce(Box<dyn Write>) -> std::io::Result<Box<dyn Write>> + Send>;

/// The NAR bytes' end of the writer: the ingest, shared with the thread
/// that finishes it once the decoder is gone.
struct Sink(Rc<RefCell<Ingest>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sending end of a NAR being written behind its client. Dropping it
/// without [`IngestWriter::commit`] discards what was written.
#[derive(Debug)]
pub struct IngestWriter {
    tx: mpsc::Sender<Msg>,
    /// Room left in the queue, in bytes.
    room: Arc<Semaphore>,
}

impl IngestWriter {
    /// Starts a writer thread for `ingest` at normal priority, for a NAR
    /// someone waits to see stored (a prefetch that Nix may join); `path`
    /// names it in logs. `None` if no thread could be started (the NAR is
    /// then not kept).
    pub fn spawn(ingest: Ingest, path: String) -> Option<Self> {
        Self::spawn_with(move || Some(ingest), path, None, false)
    }

    /// Starts writing `narinfo`'s NAR into `store` behind its client: the
    /// writer thread checks that the store lacks it and makes room for it
    /// (which may evict paths), so the client waits for none of that. The
    /// pieces are the NAR's, or a compressed file of it that `decode`
    /// turns into the NAR's bytes on the writer thread. If the store has
    /// the path or no room, the writer stops and [`IngestWriter::write`]
    /// returns false.
    ///
    /// The thread runs at the lowest priority when the pieces fit in the
    /// queue (the client then never waits for it). A larger NAR's client
    /// waits for the store once the queue is full, and a writer at the
    /// lowest priority then got almost no CPU while the transfer kept both
    /// cores busy, so it runs at normal priority.
    pub fn start(store: ChunkStore, narinfo: NarInfo, decode: Option<Decode>) -> Option<Self> {
        let path = narinfo.store_path.to_string();
        let pieces = match decode {
            Some(_) => narinfo.file_size.unwrap_or(narinfo.nar_size),
            None => narinfo.nar_size,
        };
        let behind = pieces <= QUEUE_BYTES as u64;
        let begin = move || {
            let hash = narinfo.store_path.hash();
            let began = match store.contains(&hash) {
                Ok(true) => return None,
                Ok(false) => store.begin_ingest(narinfo),
                Err(e) => Err(e),
            };
            began
                .inspect_err(|e| tracing::info!(%hash, error = %e, "serving without storing"))
                .ok()
        };
        Self::spawn_with(begin, path, decode, behind)
    }

    fn spawn_with(
        begin: impl FnOnce() -> Option<Ingest> + Send + 'static,
        path: String,
        decode: Option<Decode>,
        behind: bool,
    ) -> Option<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_PIECES);
        let room = Arc::new(Semaphore::new(QUEUE_BYTES));
        let freed = room.clone();
        let body = move || {
            if behind {
                lower_priority();
            }
            if let Some(ingest) = begin() {
                write_all(ingest, &path, decode, rx, &freed);
            }
            // A sender waiting for room learns the writer has stopped.
            freed.close();
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        };
        RUNNING.fetch_add(1, Ordering::SeqCst);
        match std::thread::Builder::new().name("nixswarm-ingest".into()).spawn(body) {
            Ok(_) => Some(Self { tx, room }),
            Err(e) => {
                RUNNING.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "not storing a NAR: cannot start its writer thread");
                None
            }
        }
    }

    /// Writer threads still running in this process (a stopping gateway
    /// waits for them: their NARs were served and should be kept).
    pub fn running() -> usize {
        RUNNING.load(Ordering::SeqCst)
    }

    /// Queues the next piece; waits while the queue is full. False if the
    /// writer has stopped (a failed write: the NAR will not be kept;
    /// [`Self::commit`] then says why).
    pub async fn write(&self, piece: Bytes) -> bool {
        let Ok(permit) = self.room.acquire_many(permits(piece.len())).await else {
            return false;
        };
        permit.forget(); // given back by the writer thread
        self.tx.send(Msg::Data(piece)).await.is_ok()
    }

    /// Commits once everything queued is written, without waiting.
    pub async fn commit_detached(self) {
        let _ = self.tx.send(Msg::Commit(None)).await;
    }

    /// Commits once everything queued is written, and waits: whether the
    /// NAR is now stored, and if not, whether its bytes were wrong.
    pub async fn commit(self) -> Committed {
        let (reply, stored) = oneshot::channel();
        if self.tx.send(Msg::Commit(Some(reply))).await.is_err() {
            return Committed::Failed;
        }
        stored.await.unwrap_or(Committed::Failed)
    }
}

/// The writer thread: pieces into the ingest (through `decode`), then the
/// commit, or nothing if the queue closes first.
fn write_all(ingest: Ingest, path: &str, decode: Option<Decode>, mut rx: mpsc::Receiver<Msg>, room: &Semaphore) {
    let ingest = Rc::new(RefCell::new(ingest));
    let sink: Box<dyn Write> = Box::new(Sink(ingest.clone()));
    let decoded = match decode {
        Some(d) => d(sink),
        None => Ok(sink),
    };
    let mut sink = match decoded {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%path, error = %e, "not storing: cannot start the decoder");
            return;
        }
    };
    // Once a write fails, the rest is drained unwritten (the sender's
    // next write learns it) and a commit is told why.
    let mut failed = None;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(b) => {
                let written = if failed.is_none() { sink.write_all(&b) } else { Ok(()) };
                room.add_permits(permits(b.len()) as usize);
                if let Err(e) = written {
                    tracing::warn!(%path, error = %e, "not storing: write failed");
                    failed = Some(Committed::of_io(&e));
                    room.close();
                }
            }
            Msg::Commit(reply) => {
                let result = match failed {
                    Some(verdict) => verdict,
                    None => commit(sink, ingest, path),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                return;
            }
        }
    }
}

/// Flushes the decoder and finishes the ingest.
fn commit(mut sink: Box<dyn Write>, ingest: Rc<RefCell<Ingest>>, path: &str) -> Committed {
    let flushed = sink.flush();
    drop(sink);
    match (flushed, Rc::try_unwrap(ingest)) {
        (Ok(()), Ok(ingest)) => match ingest.into_inner().finish() {
            Ok(()) => Committed::Stored,
            Err(e) => {
                tracing::warn!(%path, error = %e, "not storing: commit failed");
                Committed::of(&e)
            }
        },
        (Err(e), _) => {
            tracing::warn!(%path, error = %e, "not storing: write failed");
            Committed::of_io(&e)
        }
        (Ok(()), Err(_)) => Committed::Failed,
    }
}

/// The queue room a piece takes (a piece larger than the queue takes it all).
fn permits(len: usize) -> u32 {
    len.min(QUEUE_BYTES) as u32
}

/// Moves the calling thread to the lowest CPU priority (Linux: per thread).
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; PRIO_PROCESS with a
    // thread id changes only that thread.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "ingest writer keeps normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread.
    fn nice() -> libc::c_int {
        // SAFETY: as in `lower_priority`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[tokio::test]
    async fn a_committed_nar_is_stored_and_a_dropped_one_is_not() {
        use crate::store::tests::{data, hash, info_for, open, read_all};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64 << 20);
        let bytes = data(700_000, 1);
        for (n, commit) in [(1u8, true), (2, false)] {
            let ingest = store.begin_ingest(info_for(&bytes, n)).unwrap();
            let w = IngestWriter::spawn(ingest, format!("p{n}")).unwrap();
            for piece in bytes.chunks(65_536) {
                assert!(w.write(Bytes::copy_from_slice(piece)).await);
            }
            if commit {
                assert_eq!(w.commit().await, Committed::Stored);
            } else {
                drop(w);
            }
        }
        assert_eq!(read_all(&store, 1, 0, bytes.len() as u64).unwrap(), bytes);
        assert!(!store.contains(&hash(2)).unwrap());
    }

    #[tokio::test]
    async fn a_nar_that_fails_its_check_is_not_stored() {
        use crate::store::tests::{data, hash, info_for, open};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64 << 20);
        let bytes = data(100_000, 2);
        let ingest = store.begin_ingest(info_for(&bytes, 3)).unwrap();
        let w = IngestWriter::spawn(ingest, "p3".into()).unwrap();
        assert!(w.write(Bytes::from(data(100_000, 3))).await);
        assert_eq!(w.commit().await, Committed::Mismatch);
        assert!(!store.contains(&hash(3)).unwrap());
        // Too long: the writer stops taking pieces, and the commit says why.
        let ingest = store.begin_ingest(info_for(&bytes, 6)).unwrap();
        let w = IngestWriter::spawn(ingest, "p6".into()).unwrap();
        let mut refused = false;
        for _ in 0..50 {
            if !w.write(Bytes::from(data(100_000, 6))).await {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "a writer that failed takes no more pieces");
        assert_eq!(w.commit().await, Committed::Mismatch);
        assert!(!store.contains(&hash(6)).unwrap());
    }

    #[tokio::test]
    async fn a_nar_with_a_known_manifest_is_stored_as_its_chunks() {
        use crate::store::tests::{data, hash, info_for, open, read_all};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64 << 20);
        let bytes = data(900_000, 7);
        // The manifest another node made of the same NAR.
        let other = open(&dir.path().join("other"), 64 << 20);
        let mut i = other.begin_ingest(info_for(&bytes, 7)).unwrap();
        i.write(&bytes).unwrap();
        i.finish().unwrap();
        let manifest = other.open_nar(&hash(7)).unwrap().unwrap().manifest;
        // A manifest of another NAR is refused at once.
        assert!(matches!(
            store.begin_ingest_known(info_for(&data(10, 8), 8), manifest.clone()),
            Err(StoreError::Mismatch { .. })
        ));
        let ingest = store.begin_ingest_known(info_for(&bytes, 7), manifest.clone()).unwrap();
        let w = IngestWriter::spawn(ingest, "p7".into()).unwrap();
        for piece in bytes.chunks(50_000) {
            assert!(w.write(Bytes::copy_from_slice(piece)).await);
        }
        assert_eq!(w.commit().await, Committed::Stored);
        assert_eq!(read_all(&store, 7, 0, bytes.len() as u64).unwrap(), bytes);
        assert_eq!(
            store.open_nar(&hash(7)).unwrap().unwrap().manifest.chunks,
            manifest.chunks
        );
    }

    #[tokio::test]
    async fn a_compressed_nar_is_decoded_on_the_writer_thread() {
        use crate::store::tests::{data, hash, info_for, open, read_all};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64 << 20);
        let bytes = data(300_000, 4);
        let z = zstd::encode_all(&bytes[..], 3).unwrap();
        // Whole, then cut short: only the whole one is stored.
        for (n, file) in [(4u8, &z[..]), (5, &z[..z.len() / 2])] {
            let decode: Decode = Box::new(|sink| Ok(Box::new(zstd::stream::write::Decoder::new(sink)?)));
            let w = IngestWriter::start(store.clone(), info_for(&bytes, n), Some(decode)).unwrap();
            for piece in file.chunks(1000) {
                assert!(w.write(Bytes::copy_from_slice(piece)).await);
            }
            assert_eq!(w.commit().await == Committed::Stored, n == 4);
        }
        assert_eq!(read_all(&store, 4, 0, bytes.len() as u64).unwrap(), bytes);
        assert!(!store.contains(&hash(5)).unwrap());
    }

    #[test]
    fn the_writer_thread_runs_at_the_lowest_priority_and_only_it() {
        let before = nice();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            lower_priority();
            tx.send(nice()).unwrap();
        });
        assert_eq!(rx.recv().unwrap(), NICE);
        assert_eq!(nice(), before, "the caller's own priority must not change");
    }
}
