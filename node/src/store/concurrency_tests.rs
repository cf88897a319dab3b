//! The store under concurrent use: local hits while a large NAR makes
//! room (shared syncs are tested in `chunks.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::tests::{data, hash, put, read_all};
use super::*;

/// A metadata backend whose removals take a second, as the commit and
/// unlinks of a path of a few GB can.
#[derive(Debug)]
struct SlowRemove {
    inner: MemMeta,
    removing: Arc<AtomicBool>,
}

impl MetaDb for SlowRemove {
    fn get(&self, hash: &str) -> Result<Option<PathRecord>> {
        self.inner.get(hash)
    }
    fn narinfo(&self, hash: &str) -> Result<Option<String>> {
        self.inner.narinfo(hash)
    }
    fn contains(&self, hash: &str) -> Result<bool> {
        self.inner.contains(hash)
    }
    fn insert(&self, hash: &str, record: &PathRecord, now: u64, written: &Written) -> Result<Inserted> {
        self.inner.insert(hash, record, now, written)
    }
    fn remove(&self, hash: &str) -> Result<Vec<Freed>> {
        self.removing.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(1));
        let r = self.inner.remove(hash);
        self.removing.store(false, Ordering::SeqCst);
        r
    }
    fn touch(&self, accesses: &[(String, u64)]) -> Result<()> {
        self.inner.touch(accesses)
    }
    fn lru(&self, limit: usize) -> Result<Vec<String>> {
        self.inner.lru(limit)
    }
    fn chunk_refs(&self, id: &ChunkId) -> Result<u32> {
        self.inner.chunk_refs(id)
    }
    fn chunk_size(&self, id: &ChunkId) -> Result<Option<u32>> {
        self.inner.chunk_size(id)
    }
    fn chunk_loc(&self, id: &ChunkId) -> Result<Option<(u32, Loc)>> {
        self.inner.chunk_loc(id)
    }
    fn packs(&self) -> Result<Vec<u64>> {
        self.inner.packs()
    }
    fn total_bytes(&self) -> Result<u64> {
        self.inner.total_bytes()
    }
    fn path_count(&self) -> Result<u64> {
        self.inner.path_count()
    }
    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }
}

#[test]
fn local_hits_go_on_while_a_large_nar_is_evicted_for() {
    let dir = tempfile::tempdir().unwrap();
    let removing = Arc::new(AtomicBool::new(false));
    let meta = SlowRemove {
        inner: MemMeta::default(),
        removing: removing.clone(),
    };
    let store = ChunkStore::open_with(dir.path(), Box::new(meta), StoreOptions::with_quota(1_000_000)).unwrap();
    let big = data(700_000, 1);
    let small = data(100_000, 2);
    put(&store, &big, 1).unwrap();
    put(&store, &small, 2).unwrap();
    // The small path was used last: the big one goes first.
    assert_eq!(read_all(&store, 2, 0, 100_000).unwrap(), small);

    let newcomer = data(500_000, 3);
    let evicting = {
        let store = store.clone();
        std::thread::spawn(move || put(&store, &newcomer, 3))
    };
    while !removing.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let hits = AtomicUsize::new(0);
    while removing.load(Ordering::SeqCst) {
        assert_eq!(read_all(&store, 2, 0, 100_000).unwrap(), small);
        if removing.load(Ordering::SeqCst) {
            hits.fetch_add(1, Ordering::Relaxed);
        }
    }
    evicting.join().unwrap().unwrap();
    let hits = hits.load(Ordering::Relaxed);
    eprintln!("{hits} local hits served during a one-second eviction");
    assert!(
        hits >= 3,
        "local hits waited for the eviction ({hits} served during it)"
    );
    assert!(!store.contains(&hash(1)).unwrap());
    assert!(store.contains(&hash(3)).unwrap());
    assert!(store.open_nar(&hash(1)).unwrap().is_none());
}

#[test]
fn a_path_being_evicted_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), StoreOptions::with_quota(1 << 30)).unwrap();
    let bytes = data(100_000, 4);
    put(&store, &bytes, 4).unwrap();
    store.state().evicting.insert(hash(4));
    assert!(
        store.open_nar(&hash(4)).unwrap().is_none(),
        "a miss, not a half-deleted path"
    );
    store.state().evicting.remove(&hash(4));
    assert!(store.open_nar(&hash(4)).unwrap().is_some());
}
