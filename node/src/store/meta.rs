//! The metadata database behind the chunk store, as a small trait.
//!
//! It holds, per store path, the narinfo text, the chunk manifest and the
//! last access time (for LRU eviction); per chunk, how many stored paths use
//! it, its size and where its bytes are; per pack file, how many chunks
//! there are live; and the total size of all chunks. Chunk bytes live in
//! files, never here.
//!
//! Backends: [`crate::store::RedbMeta`] (on disk, the default) and
//! [`crate::store::MemMeta`] (in memory). [`conformance`] is the one test
//! body both must pass.

use std::collections::HashMap;

use nixswarm_protocol::{ChunkId, ChunkManifest};

use super::Result;

/// Where a chunk's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// A file of its own, `chunks/<2 hex>/<64 hex>` (written by versions
    /// before pack files; read and deleted, never written now).
    File,
    /// In pack file `pack`, at `offset`.
    Pack { pack: u64, offset: u64 },
}

/// What one ingest wrote: its pack file, and where in it each distinct
/// chunk of its NAR is.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub pack: u64,
    pub at: HashMap<ChunkId, u64>,
}

/// What a commit leaves to the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inserted {
    /// The path was new (false: stored already, nothing changed).
    pub stored: bool,
    /// Some chunk now lives in the ingest's pack (false: delete it).
    pub pack_used: bool,
    /// (offset, size) of chunks in the pack that another path's copy
    /// serves: space to give back.
    pub dead: Vec<(u64, u32)>,
}

/// Space a removal freed: chunk bytes no stored path references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Freed {
    /// A chunk's own file.
    File(ChunkId),
    /// A chunk's range in a pack that other chunks keep.
    Range { pack: u64, offset: u64, size: u32 },
    /// A whole pack, none of whose chunks is live.
    Pack(u64),
}

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
    /// manifest; a chunk no path had yet is located where `written` says
    /// (it must say). Changes nothing if the path was already stored.
    fn insert(&self, hash: &str, record: &PathRecord, now: u64, written: &Written) -> Result<Inserted>;
    /// Removes a path and drops its chunk references. Returns the space of
    /// the chunks no path references any more.
    fn remove(&self, hash: &str) -> Result<Vec<Freed>>;
    /// The size and place of a chunk some stored path references.
    fn chunk_loc(&self, id: &ChunkId) -> Result<Option<(u32, Loc)>>;
    /// Every pack holding a live chunk.
    fn packs(&self) -> Result<Vec<u64>>;
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

/// The error for a new chunk an ingest did not place.
pub(crate) fn no_place(id: &ChunkId) -> super::StoreError {
    super::StoreError::Database(format!("chunk {id} is new to the store but was not written"))
}

/// Drops the ranges of packs the same removal freed whole (the pack goes).
pub(crate) fn without_ranges_of_freed_packs(mut freed: Vec<Freed>) -> Vec<Freed> {
    let whole: std::collections::HashSet<u64> = freed
        .iter()
        .filter_map(|f| match f {
            Freed::Pack(p) => Some(*p),
            _ => None,
        })
        .collect();
    freed.retain(|f| !matches!(f, Freed::Range { pack, .. } if whole.contains(pack)));
    freed
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
    // Where an ingest wrote each distinct chunk, one after another.
    let wrote = |pack: u64, r: &PathRecord| {
        let mut at = HashMap::new();
        let mut end = 0u64;
        for (id, size) in distinct_chunks(&r.manifest) {
            at.insert(id, end);
            end += u64::from(size);
        }
        Written { pack, at }
    };
    let k = u64::from(K);
    let a = rec(vec![chunk(1, 1), chunk(2, 2), chunk(1, 1)]);
    let b = rec(vec![chunk(2, 2), chunk(3, 3)]);

    assert_eq!(db.get("a").unwrap(), None);
    assert!(!db.contains("a").unwrap());
    let first = db.insert("a", &a, 100, &wrote(10, &a)).unwrap();
    assert_eq!(
        first,
        Inserted {
            stored: true,
            pack_used: true,
            dead: vec![]
        }
    );
    let again = db.insert("a", &a, 101, &wrote(11, &a)).unwrap();
    assert!(!again.stored && !again.pack_used, "a second insert is a no-op");
    assert_eq!(db.get("a").unwrap(), Some(a.clone()));
    assert_eq!(db.narinfo("a").unwrap(), Some(a.narinfo.clone()));
    assert_eq!(db.narinfo("b").unwrap(), None);
    assert!(db.contains("a").unwrap());
    assert_eq!(
        db.chunk_refs(&ChunkId([1; 32])).unwrap(),
        1,
        "a chunk repeated in one NAR counts once"
    );
    assert_eq!(db.total_bytes().unwrap(), 3 * k);

    // b shares chunk 2, whose copy in b's pack is dead at once.
    let second = db.insert("b", &b, 200, &wrote(12, &b)).unwrap();
    assert_eq!(
        second,
        Inserted {
            stored: true,
            pack_used: true,
            dead: vec![(0, 2 * K)]
        }
    );
    assert_eq!(db.chunk_refs(&ChunkId([2; 32])).unwrap(), 2);
    assert_eq!(
        db.chunk_loc(&ChunkId([2; 32])).unwrap(),
        Some((2 * K, Loc::Pack { pack: 10, offset: k }))
    );
    assert_eq!(
        db.chunk_loc(&ChunkId([3; 32])).unwrap(),
        Some((
            3 * K,
            Loc::Pack {
                pack: 12,
                offset: 2 * k
            }
        ))
    );
    assert_eq!(db.chunk_loc(&ChunkId([9; 32])).unwrap(), None);
    let mut packs = db.packs().unwrap();
    packs.sort_unstable();
    assert_eq!(packs, vec![10, 12]);
    assert_eq!(db.total_bytes().unwrap(), 6 * k, "shared chunks are counted once");
    assert_eq!(db.path_count().unwrap(), 2);
    assert_eq!(db.lru(10).unwrap(), vec!["a".to_owned(), "b".to_owned()]);

    // A new chunk without a place is refused, and nothing changes.
    let c = rec(vec![chunk(4, 1)]);
    assert!(db.insert("c", &c, 250, &Written::default()).is_err());
    assert!(!db.contains("c").unwrap());
    assert_eq!(db.total_bytes().unwrap(), 6 * k);

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

    // Chunk 2 is still a's: b's pack, with chunk 3 alone live, goes whole.
    assert_eq!(db.remove("b").unwrap(), vec![Freed::Pack(12)]);
    assert_eq!(db.total_bytes().unwrap(), 3 * k);
    assert_eq!(db.lru(10).unwrap(), vec!["a".to_owned()]);
    assert_eq!(db.remove("b").unwrap(), Vec::<Freed>::new());

    // A pack kept by a chunk another path shares gives back a range.
    let d = rec(vec![chunk(5, 1), chunk(6, 2)]);
    let e = rec(vec![chunk(6, 2), chunk(7, 1)]);
    db.insert("d", &d, 600, &wrote(20, &d)).unwrap();
    db.insert("e", &e, 601, &wrote(21, &e)).unwrap();
    assert_eq!(
        db.remove("d").unwrap(),
        vec![Freed::Range {
            pack: 20,
            offset: 0,
            size: K
        }]
    );
    let mut freed = db.remove("e").unwrap();
    freed.sort_unstable();
    assert_eq!(freed, vec![Freed::Pack(20), Freed::Pack(21)]);

    assert_eq!(db.remove("a").unwrap(), vec![Freed::Pack(10)]);
    assert_eq!(db.total_bytes().unwrap(), 0);
    assert_eq!(db.path_count().unwrap(), 0);
    assert!(db.list().unwrap().is_empty());
    assert!(db.lru(10).unwrap().is_empty());
    assert!(db.packs().unwrap().is_empty());
}
