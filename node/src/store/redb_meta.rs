//! The on-disk [`MetaDb`], in redb (chosen over sled on measurements: see
//! ARCHITECTURE.md).

use std::path::Path;

use nixswarm_protocol::{ChunkId, ChunkManifest};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::meta::{MetaDb, PathRecord, distinct_chunks};
use super::{Result, StoreError};

const NARINFO: TableDefinition<&str, &str> = TableDefinition::new("narinfo");
const MANIFEST: TableDefinition<&str, &[u8]> = TableDefinition::new("manifest");
const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");
const LRU: TableDefinition<(u64, &str), ()> = TableDefinition::new("lru");
/// chunk id -> (references, size)
const CHUNKS: TableDefinition<[u8; 32], (u32, u32)> = TableDefinition::new("chunks");
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
            tx.open_table(COUNTERS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Self { db })
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

    fn insert(&self, hash: &str, record: &PathRecord, now: u64) -> Result<bool> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut narinfo = tx.open_table(NARINFO).map_err(db_err)?;
            if narinfo.get(hash).map_err(db_err)?.is_some() {
                return Ok(false);
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
            let mut added = 0u64;
            for (id, size) in distinct_chunks(&record.manifest) {
                let refs = chunks.get(id.0).map_err(db_err)?.map_or(0, |v| v.value().0);
                if refs == 0 {
                    added += u64::from(size);
                }
                chunks.insert(id.0, (refs + 1, size)).map_err(db_err)?;
            }
            let mut counters = tx.open_table(COUNTERS).map_err(db_err)?;
            add(&mut counters, TOTAL_BYTES, added as i64)?;
            add(&mut counters, PATHS, 1)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    fn remove(&self, hash: &str) -> Result<Vec<ChunkId>> {
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
            let mut dropped = 0u64;
            if let Some(Ok(manifest)) = manifest {
                for (id, size) in distinct_chunks(&manifest) {
                    let refs = chunks.get(id.0).map_err(db_err)?.map_or(0, |v| v.value().0);
                    if refs <= 1 {
                        chunks.remove(id.0).map_err(db_err)?;
                        if refs == 1 {
                            dropped += u64::from(size);
                            freed.push(id);
                        }
                    } else {
                        chunks.insert(id.0, (refs - 1, size)).map_err(db_err)?;
                    }
                }
            }
            let mut counters = tx.open_table(COUNTERS).map_err(db_err)?;
            add(&mut counters, TOTAL_BYTES, -(dropped as i64))?;
            add(&mut counters, PATHS, -1)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(freed)
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
        RedbMeta::open(&path).unwrap().insert("h", &rec, 5).unwrap();
        let db = RedbMeta::open(&path).unwrap();
        assert_eq!(db.get("h").unwrap(), Some(rec));
        assert_eq!(db.path_count().unwrap(), 1);
    }
}
