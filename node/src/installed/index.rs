//! The donor index (redb): per indexed path its narinfo, chunk manifest and
//! NAR layout; per chunk where it lies; and the paths refused because their
//! files do not match the Nix database. A path is written in one
//! transaction when its indexing finished, so a killed indexer leaves
//! nothing half-written and resumes with the paths not yet committed.

use std::path::Path;

use nixswarm_protocol::{ChunkId, ChunkManifest};
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};

use super::InstalledError;
use super::layout::Layout;

const PATHS: TableDefinition<&str, &[u8]> = TableDefinition::new("paths");
/// chunk id -> (path hash, NAR offset, size)
const CHUNKS: MultimapTableDefinition<[u8; 32], (&str, u64, u32)> = MultimapTableDefinition::new("chunks");
/// path hash -> (registration time, reason)
const REJECTED: TableDefinition<&str, (i64, &str)> = TableDefinition::new("rejected");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const BYTES: &str = "bytes";

/// One indexed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    pub db_id: i64,
    pub registration_time: i64,
    /// `<hash>-<name>`: the directory entry in the store.
    pub base_name: String,
    pub narinfo: String,
    pub manifest: ChunkManifest,
    pub layout: Vec<u8>,
}

impl Indexed {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.db_id.to_le_bytes());
        out.extend_from_slice(&self.registration_time.to_le_bytes());
        for part in [
            self.base_name.as_bytes(),
            self.narinfo.as_bytes(),
            &self.manifest.encode(),
            &self.layout,
        ] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut at = 16;
        let mut part = || {
            let n = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
            let p = b.get(at + 4..at + 4 + n)?;
            at += 4 + n;
            Some(p)
        };
        let base_name = String::from_utf8(part()?.to_vec()).ok()?;
        let narinfo = String::from_utf8(part()?.to_vec()).ok()?;
        let manifest = ChunkManifest::decode(part()?).ok()?;
        let layout = part()?.to_vec();
        Some(Self {
            db_id: i64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            registration_time: i64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
            base_name,
            narinfo,
            manifest,
            layout,
        })
    }

    /// The decoded layout.
    pub fn layout(&self) -> Result<Layout, InstalledError> {
        Layout::decode(&self.layout).map_err(|e| InstalledError::Index(e.to_string()))
    }
}

/// The index database.
#[derive(Debug)]
pub struct Index {
    db: Database,
}

fn err(e: impl Into<redb::Error>) -> InstalledError {
    InstalledError::Index(e.into().to_string())
}

impl Index {
    /// Opens (or creates) the index file.
    pub fn open(path: &Path) -> Result<Self, InstalledError> {
        let db = Database::builder()
            // Idle memory matters on donor machines: a small page cache.
            .set_cache_size(16 << 20)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    InstalledError::Index(format!("{} is in use by another nixswarm", path.display()))
                }
                e => err(e),
            })?;
        let tx = db.begin_write().map_err(err)?;
        {
            tx.open_table(PATHS).map_err(err)?;
            tx.open_multimap_table(CHUNKS).map_err(err)?;
            tx.open_table(REJECTED).map_err(err)?;
            tx.open_table(COUNTERS).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// An indexed path.
    pub fn get(&self, hash: &str) -> Result<Option<Indexed>, InstalledError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(PATHS).map_err(err)?;
        match t.get(hash).map_err(err)? {
            None => Ok(None),
            Some(v) => Indexed::decode(v.value())
                .map(Some)
                .ok_or_else(|| InstalledError::Index(format!("record of {hash} is corrupt"))),
        }
    }

    /// Records finished paths (replacing older records, clearing
    /// rejections), all in one transaction: all of them or none.
    pub fn insert(&self, recs: &[(String, Indexed)]) -> Result<(), InstalledError> {
        let tx = self.db.begin_write().map_err(err)?;
        for (hash, rec) in recs {
            let hash = hash.as_str();
            Self::remove_in(&tx, hash)?;
            let mut paths = tx.open_table(PATHS).map_err(err)?;
            paths.insert(hash, rec.encode().as_slice()).map_err(err)?;
            let mut chunks = tx.open_multimap_table(CHUNKS).map_err(err)?;
            for (off, c) in rec.manifest.with_offsets() {
                chunks.insert(c.id.0, (hash, off, c.size)).map_err(err)?;
            }
            tx.open_table(REJECTED).map_err(err)?.remove(hash).map_err(err)?;
            let mut counters = tx.open_table(COUNTERS).map_err(err)?;
            let cur = counters.get(BYTES).map_err(err)?.map_or(0, |v| v.value());
            counters.insert(BYTES, cur + rec.manifest.nar_size).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Removes a path's record and chunk locations; returns the record.
    fn remove_in(tx: &redb::WriteTransaction, hash: &str) -> Result<Option<Indexed>, InstalledError> {
        let mut paths = tx.open_table(PATHS).map_err(err)?;
        let Some(old) = paths
            .remove(hash)
            .map_err(err)?
            .and_then(|v| Indexed::decode(v.value()))
        else {
            return Ok(None);
        };
        let mut chunks = tx.open_multimap_table(CHUNKS).map_err(err)?;
        for (off, c) in old.manifest.with_offsets() {
            chunks.remove(c.id.0, (hash, off, c.size)).map_err(err)?;
        }
        let mut counters = tx.open_table(COUNTERS).map_err(err)?;
        let cur = counters.get(BYTES).map_err(err)?.map_or(0, |v| v.value());
        counters
            .insert(BYTES, cur.saturating_sub(old.manifest.nar_size))
            .map_err(err)?;
        Ok(Some(old))
    }

    /// Forgets a path. True if it was indexed.
    pub fn remove(&self, hash: &str) -> Result<bool, InstalledError> {
        let tx = self.db.begin_write().map_err(err)?;
        let removed = Self::remove_in(&tx, hash)?.is_some();
        tx.commit().map_err(err)?;
        Ok(removed)
    }

    /// True if the path is indexed (without decoding its record).
    pub fn contains(&self, hash: &str) -> Result<bool, InstalledError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(PATHS).map_err(err)?;
        Ok(t.get(hash).map_err(err)?.is_some())
    }

    /// Where a chunk lies: (path hash, NAR offset, size) in every path that has it.
    pub fn chunk_locations(&self, id: &ChunkId) -> Result<Vec<(String, u64, u32)>, InstalledError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_multimap_table(CHUNKS).map_err(err)?;
        let mut out = Vec::new();
        for v in t.get(id.0).map_err(err)? {
            let v = v.map_err(err)?;
            let (h, off, size) = v.value();
            out.push((h.to_owned(), off, size));
        }
        Ok(out)
    }

    /// Every indexed path: (hash, Nix database id).
    pub fn list(&self) -> Result<Vec<(String, i64)>, InstalledError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(PATHS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            // The id leads the record: no need to decode the rest.
            let id = v
                .value()
                .get(..8)
                .and_then(|s| s.try_into().ok())
                .map_or(0, i64::from_le_bytes);
            out.push((k.value().to_owned(), id));
        }
        Ok(out)
    }

    /// Records that a path's files do not match the database, for the
    /// given registration, or (`None`) for that of its indexed record.
    pub fn reject(&self, hash: &str, registration_time: Option<i64>, reason: &str) -> Result<(), InstalledError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let old = Self::remove_in(&tx, hash)?;
            let reg = registration_time.or(old.map(|o| o.registration_time)).unwrap_or(0);
            let mut t = tx.open_table(REJECTED).map_err(err)?;
            t.insert(hash, (reg, reason)).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// A rejection: (registration time it applies to, reason).
    pub fn rejected(&self, hash: &str) -> Result<Option<(i64, String)>, InstalledError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(REJECTED).map_err(err)?;
        Ok(t.get(hash).map_err(err)?.map(|v| {
            let (r, why) = v.value();
            (r, why.to_owned())
        }))
    }

    /// Paths indexed, and the bytes of their NARs.
    pub fn stats(&self) -> Result<(u64, u64), InstalledError> {
        let tx = self.db.begin_read().map_err(err)?;
        let paths = tx.open_table(PATHS).map_err(err)?.len().map_err(err)?;
        let bytes = tx
            .open_table(COUNTERS)
            .map_err(err)?
            .get(BYTES)
            .map_err(err)?
            .map_or(0, |v| v.value());
        Ok((paths, bytes))
    }
}
