//! The on-disk [`MetaDb`], in redb (chosen over sled on measurements: see
//! ARCHITECTURE.md).

use std::path::Path;

use nixswarm_protocol::{ChunkId, ChunkManifest};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::meta::{
    Freed, Inserted, Loc, MetaDb, PathRecord, Written, distinct_chunks, no_place, without_ranges_of_freed_packs,
};
use super::{Result, StoreError};

const NARINFO: TableDefinition<&str, &str> = TableDefinition::new("narinfo");
const MANIFEST: TableDefinition<&str, &[u8]> = TableDefinition::new("manifest");
const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");
const LRU: TableDefinition<(u64, &str), ()> = TableDefinition::new("lru");
/// chunk id -> (references, size)
const CHUNKS: TableDefinition<[u8; 32], (u32, u32)> = TableDefinition::new("chunks");
/// chunk id -> (pack, offset); a chunk without an entry has a file of its
/// own (written before pack files).
const LOCS: TableDefinition<[u8; 32], (u64, u64)> = TableDefinition::new("chunk_locs");
/// pack -> live chunks in it
const PACKS: TableDefinition<u64, u32> = TableDefinition::new("packs");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const TOTAL_BYTES: &str = "total_bytes";
const PATHS: &str = "paths";

/// Metadata in a redb file.
#[derive(Debug)]
pub struct RedbMeta {
    db: Database,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(e.into().to_string())
}

impl RedbMeta {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_owned()),
            e => db_err(e),
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(NARINFO).map_err(db_err)?;
            tx.open_table(MANIFEST).map_err(db_err)?;
            tx.open_table(ACCESS).map_err(db_err)?;
            tx.open_table(LRU).map_err(db_err)?;
            tx.open_table(CHUNKS).map_err(db_err)?;
            tx.open_table(LOCS).map_err(db_err)?;
            tx.open_table(PACKS).map_err(db_err)?;
            tx.open_table(COUNTERS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// Forgets every chunk's place, as in a store written before pack
    /// files (each chunk then reads as a file of its own).
    #[cfg(test)]
    pub(crate) fn forget_places(&self) {
        let tx = self.db.begin_write().unwrap();
        tx.delete_table(LOCS).unwrap();
        tx.delete_table(PACKS).unwrap();
        tx.open_table(LOCS).unwrap();
        tx.open_table(PACKS).unwrap();
        tx.commit().unwrap();
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(COUNTERS).map_err(db_err)?;
        Ok(t.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
    }
}

fn add(t: &mut redb::Table<&str, u64>, name: &str, delta: i64) -> Result<()> {
    let cur = t.get(name).map_err(db_err)?.map_or(0, |v| v.value());
    t.insert(name, cur.saturating_add_signed(delta)).map_err(db_err)?;
    Ok(())
}

impl MetaDb for RedbMeta {
    fn get(&self, hash: &str) -> Result<Option<PathRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let narinfo = tx.open_table(NARINFO).map_err(db_err)?;
        let Some(text) = narinfo.get(hash).map_err(db_err)? else {
            return Ok(None);
        };
        let manifests = tx.open_table(MANIFEST).map_err(db_err)?;
        let bytes = manifests
            .get(hash)
            .map_err(db_err)?
            .ok_or_else(|| StoreError::Database(format!("path {hash} has a narinfo but no manifest")))?;
        let manifest =
            ChunkManifest::decode(bytes.value()).map_err(|e| StoreError::Database(format!("{hash}: {e}")))?;
        Ok(Some(PathRecord {
            narinfo: text.value().to_owned(),
            manifest,
        }))
    }

    fn narinfo(&self, hash: &str) -> Result<Option<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(NARINFO).map_err(db_err)?;
        Ok(t.get(hash).map_err(db_err)?.map(|v| v.value().to_owned()))
    }

    fn contains(&self, hash: &str) -> Result<bool> {
        let tx = self.db.begin_read().map_err(db_err)?;
        Ok(tx
            .open_table(NARINFO)
            .map_err(db_err)?
            .get(hash)
            .map_err(db_err)?
            .is_some())
    }

    fn insert(&self, hash: &str, record: &PathRecord, now: u64, written: &Written) -> Result<Inserted> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut out = Inserted {
            stored: true,
            ..Inserted::default()
        };
        {
            let mut narinfo = tx.open_table(NARINFO).map_err(db_err)?;
            if narinfo.get(hash).map_err(db_err)?.is_some() {
                return Ok(Inserted::default());
            }
            narinfo.insert(hash, record.narinfo.as_str()).map_err(db_err)?;
            let mut manifests = tx.open_table(MANIFEST).map_err(db_err)?;
            manifests
                .insert(hash, record.manifest.encode().as_slice())
                .map_err(db_err)?;
            tx.open_table(ACCESS)
                .map_err(db_err)?
                .insert(hash, now)
                .map_err(db_err)?;
            tx.open_table(LRU)
                .map_err(db_err)?
                .insert((now, hash), ())
                .map_err(db_err)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(db_err)?;
            let mut locs = tx.open_table(LOCS).map_err(db_err)?;
            let mut added = 0u64;
            let mut placed = 0u32;
            for (id, size) in distinct_chunks(&record.manifest) {
                let refs = chunks.get(id.0).map_err(db_err)?.map_or(0, |v| v.value().0);
                let ours = written.at.get(&id).copied();
                if refs > 0 {
                    out.dead.extend(ours.map(|o| (o, size)));
                } else {
                    // An error drops the transaction: nothing changes.
                    let offset = ours.ok_or_else(|| no_place(&id))?;
                    locs.insert(id.0, (written.pack, offset)).map_err(db_err)?;
                    added += u64::from(size);
                    placed += 1;
                }
                chunks.insert(id.0, (refs + 1, size)).map_err(db_err)?;
            }
            if placed > 0 {
                let mut packs = tx.open_table(PACKS).map_err(db_err)?;
                let live = packs.get(written.pack).map_err(db_err)?.map_or(0, |v| v.value());
                packs.insert(written.pack, live + placed).map_err(db_err)?;
                out.pack_used = true;
            }
            let mut counters = tx.open_table(COUNTERS).map_err(db_err)?;
            add(&mut counters, TOTAL_BYTES, added as i64)?;
            add(&mut counters, PATHS, 1)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    fn remove(&self, hash: &str) -> Result<Vec<Freed>> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut freed = Vec::new();
        {
            let mut narinfo = tx.open_table(NARINFO).map_err(db_err)?;
            if narinfo.remove(hash).map_err(db_err)?.is_none() {
                return Ok(freed);
            }
            let manifest = tx
                .open_table(MANIFEST)
                .map_err(db_err)?
                .remove(hash)
                .map_err(db_err)?
                .map(|v| ChunkManifest::decode(v.value()));
            let access = tx
                .open_table(ACCESS)
                .map_err(db_err)?
                .remove(hash)
                .map_err(db_err)?
                .map(|v| v.value());
            if let Some(at) = access {
                tx.open_table(LRU).map_err(db_err)?.remove((at, hash)).map_err(db_err)?;
            }
            let mut chunks = tx.open_table(CHUNKS).map_err(db_err)?;
            let mut locs = tx.open_table(LOCS).map_err(db_err)?;
            let mut packs = tx.open_table(PACKS).map_err(db_err)?;
            let mut dropped = 0u64;
            if let Some(Ok(manifest)) = manifest {
                for (id, size) in distinct_chunks(&manifest) {
                    let refs = chunks.get(id.0).map_err(db_err)?.map_or(0, |v| v.value().0);
                    if refs > 1 {
                        chunks.insert(id.0, (refs - 1, size)).map_err(db_err)?;
                        continue;
                    }
                    chunks.remove(id.0).map_err(db_err)?;
                    let loc = locs.remove(id.0).map_err(db_err)?.map(|v| v.value());
                    if refs == 0 {
                        continue;
                    }
                    dropped += u64::from(size);
                    let Some((pack, offset)) = loc else {
                        freed.push(Freed::File(id));
                        continue;
                    };
                    let live = packs.get(pack).map_err(db_err)?.map_or(1, |v| v.value());
                    if live <= 1 {
                        packs.remove(pack).map_err(db_err)?;
                        freed.push(Freed::Pack(pack));
                    } else {
                        packs.insert(pack, live - 1).map_err(db_err)?;
                        freed.push(Freed::Range { pack, offset, size });
                    }
                }
            }
            let mut counters = tx.open_table(COUNTERS).map_err(db_err)?;
            add(&mut counters, TOTAL_BYTES, -(dropped as i64))?;
            add(&mut counters, PATHS, -1)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(without_ranges_of_freed_packs(freed))
    }

    fn chunk_loc(&self, id: &ChunkId) -> Result<Option<(u32, Loc)>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let chunks = tx.open_table(CHUNKS).map_err(db_err)?;
        let Some(size) = chunks.get(id.0).map_err(db_err)?.map(|v| v.value().1) else {
            return Ok(None);
        };
        let locs = tx.open_table(LOCS).map_err(db_err)?;
        let loc = locs.get(id.0).map_err(db_err)?.map_or(Loc::File, |v| {
            let (pack, offset) = v.value();
            Loc::Pack { pack, offset }
        });
        Ok(Some((size, loc)))
    }

    fn packs(&self) -> Result<Vec<u64>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PACKS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            out.push(entry.map_err(db_err)?.0.value());
        }
        Ok(out)
    }

    fn touch(&self, accesses: &[(String, u64)]) -> Result<()> {
        if accesses.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(db_err)?;
        // Access times steer eviction only; losing the last few on a crash is harmless.
        tx.set_durability(Durability::None).map_err(db_err)?;
        {
            let mut access = tx.open_table(ACCESS).map_err(db_err)?;
            let mut lru = tx.open_table(LRU).map_err(db_err)?;
            for (hash, now) in accesses {
                let hash = hash.as_str();
                let Some(old) = access.get(hash).map_err(db_err)?.map(|v| v.value()) else {
                    continue;
                };
                access.insert(hash, *now).map_err(db_err)?;
                lru.remove((old, hash)).map_err(db_err)?;
                lru.insert((*now, hash), ()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    fn lru(&self, limit: usize) -> Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let lru = tx.open_table(LRU).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in lru.iter().map_err(db_err)?.take(limit) {
            let (k, _) = entry.map_err(db_err)?;
            out.push(k.value().1.to_owned());
        }
        Ok(out)
    }

    fn chunk_refs(&self, id: &ChunkId) -> Result<u32> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let chunks = tx.open_table(CHUNKS).map_err(db_err)?;
        Ok(chunks.get(id.0).map_err(db_err)?.map_or(0, |v| v.value().0))
    }

    fn chunk_size(&self, id: &ChunkId) -> Result<Option<u32>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let chunks = tx.open_table(CHUNKS).map_err(db_err)?;
        Ok(chunks.get(id.0).map_err(db_err)?.map(|v| v.value().1))
    }

    fn total_bytes(&self) -> Result<u64> {
        self.counter(TOTAL_BYTES)
    }

    fn path_count(&self) -> Result<u64> {
        self.counter(PATHS)
    }

    fn list(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(NARINFO).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            out.push(entry.map_err(db_err)?.0.value().to_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        super::super::meta::conformance(&RedbMeta::open(&dir.path().join("meta.redb")).unwrap());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let rec = PathRecord {
            narinfo: "x\n".into(),
            manifest: ChunkManifest::new(nixswarm_protocol::Sha256Hash([1; 32]), 0, vec![]).unwrap(),
        };
        RedbMeta::open(&path)
            .unwrap()
            .insert("h", &rec, 5, &Written::default())
            .unwrap();
        let db = RedbMeta::open(&path).unwrap();
        assert_eq!(db.get("h").unwrap(), Some(rec));
        assert_eq!(db.path_count().unwrap(), 1);
    }

    #[test]
    fn a_chunk_from_before_pack_files_is_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = RedbMeta::open(&dir.path().join("meta.redb")).unwrap();
        let size = nixswarm_protocol::manifest::MIN_CHUNK_SIZE;
        let id = ChunkId([3; 32]);
        let manifest = ChunkManifest::new(
            nixswarm_protocol::Sha256Hash([1; 32]),
            u64::from(size),
            vec![nixswarm_protocol::ChunkRef { id, size }],
        )
        .unwrap();
        // The rows an earlier version wrote: no place for the chunk.
        let tx = db.db.begin_write().unwrap();
        {
            tx.open_table(NARINFO).unwrap().insert("old", "x\n").unwrap();
            let m = manifest.encode();
            tx.open_table(MANIFEST).unwrap().insert("old", m.as_slice()).unwrap();
            tx.open_table(ACCESS).unwrap().insert("old", 1).unwrap();
            tx.open_table(LRU).unwrap().insert((1, "old"), ()).unwrap();
            tx.open_table(CHUNKS).unwrap().insert(id.0, (1, size)).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(db.chunk_loc(&id).unwrap(), Some((size, Loc::File)));
        assert_eq!(db.remove("old").unwrap(), vec![Freed::File(id)]);
    }
}
