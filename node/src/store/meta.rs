//! The metadata database behind the chunk store, as a small trait.
//!
//! It holds, per store path, the narinfo text, the chunk manifest and the
//! last access time (for LRU eviction); per chunk, how many stored paths use
//! it and its size; and the total size of all chunks. Chunk bytes live in
//! files, never here.
//!
//! Backends: [`crate::store::RedbMeta`] (on disk, the default) and
//! [`crate::store::MemMeta`] (in memory). [`conformance`] is the one test
//! body both must pass.

use nixswarm_protocol::{ChunkId, ChunkManifest};

use super::Result;

/// What the store keeps about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRecord {
    /// The narinfo as received (signatures intact).
    pub narinfo: String,
    pub manifest: ChunkManifest,
}

/// A metadata backend. Each method is one atomic transaction.
pub trait MetaDb: Send + Sync + std::fmt::Debug + 'static {
    /// The record for a path hash, if stored.
    fn get(&self, hash: &str) -> Result<Option<PathRecord>>;
    /// The narinfo text alone (cheaper than [`MetaDb::get`]: no manifest).
    fn narinfo(&self, hash: &str) -> Result<Option<String>>;
    /// True if the path is stored (cheaper than [`MetaDb::get`]).
    fn contains(&self, hash: &str) -> Result<bool>;
    /// Stores a path and takes a reference on each distinct chunk of its
    /// manifest. Returns false (and changes nothing) if it was already stored.
    fn insert(&self, hash: &str, record: &PathRecord, now: u64) -> Result<bool>;
    /// Removes a path and drops its chunk references. Returns the chunks no
    /// path references any more (whose files may now be deleted).
    fn remove(&self, hash: &str) -> Result<Vec<ChunkId>>;
    /// Records accesses for LRU, in one transaction; hashes not stored are
    /// skipped. Need not be durable.
    fn touch(&self, accesses: &[(String, u64)]) -> Result<()>;
    /// Up to `limit` stored paths, least recently used first.
    fn lru(&self, limit: usize) -> Result<Vec<String>>;
    /// How many stored paths reference a chunk.
    fn chunk_refs(&self, id: &ChunkId) -> Result<u32>;
    /// The size of a chunk some stored path references.
    fn chunk_size(&self, id: &ChunkId) -> Result<Option<u32>>;
    /// Total bytes of all referenced chunks (each counted once).
    fn total_bytes(&self) -> Result<u64>;
    /// Number of stored paths.
    fn path_count(&self) -> Result<u64>;
    /// Every stored path hash.
    fn list(&self) -> Result<Vec<String>>;
}

/// Distinct chunks of a manifest with their sizes, in first-seen order.
pub(crate) fn distinct_chunks(m: &ChunkManifest) -> Vec<(ChunkId, u32)> {
    let mut seen = std::collections::HashSet::new();
    m.chunks
        .iter()
        .filter(|c| seen.insert(c.id))
        .map(|c| (c.id, c.size))
        .collect()
}

/// The conformance test every [`MetaDb`] backend must pass.
#[cfg(test)]
pub(crate) fn conformance(db: &dyn MetaDb) {
    use nixswarm_protocol::{ChunkRef, Sha256Hash};

    // Sizes in units of the smallest chunk a manifest allows.
    const K: u32 = nixswarm_protocol::manifest::MIN_CHUNK_SIZE;
    let chunk = |b: u8, units: u32| ChunkRef {
        id: ChunkId([b; 32]),
        size: units * K,
    };
    let rec = |chunks: Vec<ChunkRef>| {
        let size = chunks.iter().map(|c| u64::from(c.size)).sum();
        PathRecord {
            narinfo: format!("NarSize: {size}\n"),
            manifest: ChunkManifest::new(Sha256Hash([7; 32]), size, chunks).unwrap(),
        }
    };
    let a = rec(vec![chunk(1, 1), chunk(2, 2), chunk(1, 1)]);
    let b = rec(vec![chunk(2, 2), chunk(3, 3)]);

    assert_eq!(db.get("a").unwrap(), None);
    assert!(!db.contains("a").unwrap());
    assert!(db.insert("a", &a, 100).unwrap());
    assert!(!db.insert("a", &a, 101).unwrap(), "a second insert is a no-op");
    assert_eq!(db.get("a").unwrap(), Some(a.clone()));
    assert_eq!(db.narinfo("a").unwrap(), Some(a.narinfo.clone()));
    assert_eq!(db.narinfo("b").unwrap(), None);
    assert!(db.contains("a").unwrap());
    assert_eq!(
        db.chunk_refs(&ChunkId([1; 32])).unwrap(),
        1,
        "a chunk repeated in one NAR counts once"
    );
    assert_eq!(db.total_bytes().unwrap(), 3 * u64::from(K));

    assert!(db.insert("b", &b, 200).unwrap());
    assert_eq!(db.chunk_refs(&ChunkId([2; 32])).unwrap(), 2);
    assert_eq!(
        db.total_bytes().unwrap(),
        6 * u64::from(K),
        "shared chunks are counted once"
    );
    assert_eq!(db.path_count().unwrap(), 2);
    assert_eq!(db.lru(10).unwrap(), vec!["a".to_owned(), "b".to_owned()]);

    db.touch(&[("a".into(), 300)]).unwrap();
    assert_eq!(db.lru(10).unwrap(), vec!["b".to_owned(), "a".to_owned()]);
    assert_eq!(db.lru(1).unwrap(), vec!["b".to_owned()]);
    db.touch(&[("missing".into(), 400)]).unwrap();
    assert_eq!(db.path_count().unwrap(), 2, "touching a missing path stores nothing");
    db.touch(&[("b".into(), 500), ("missing".into(), 501), ("a".into(), 502)])
        .unwrap();
    assert_eq!(
        db.lru(10).unwrap(),
        vec!["b".to_owned(), "a".to_owned()],
        "a batch, in order"
    );

    let mut freed = db.remove("b").unwrap();
    freed.sort();
    assert_eq!(freed, vec![ChunkId([3; 32])], "chunk 2 is still used by a");
    assert_eq!(db.total_bytes().unwrap(), 3 * u64::from(K));
    assert_eq!(db.lru(10).unwrap(), vec!["a".to_owned()]);
    assert_eq!(db.remove("b").unwrap(), Vec::<ChunkId>::new());

    let mut freed = db.remove("a").unwrap();
    freed.sort();
    assert_eq!(freed, vec![ChunkId([1; 32]), ChunkId([2; 32])]);
    assert_eq!(db.total_bytes().unwrap(), 0);
    assert_eq!(db.path_count().unwrap(), 0);
    assert!(db.list().unwrap().is_empty());
    assert!(db.lru(10).unwrap().is_empty());
}
