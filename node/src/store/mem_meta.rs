//! An in-memory [`MetaDb`]: for tests and throw-away nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use nixswarm_protocol::ChunkId;

use super::Result;
use super::meta::{MetaDb, PathRecord, distinct_chunks};

#[derive(Debug, Default)]
struct State {
    paths: HashMap<String, (PathRecord, u64)>,
    lru: BTreeSet<(u64, String)>,
    chunks: BTreeMap<ChunkId, (u32, u32)>,
    total: u64,
}

/// Metadata kept in memory only; lost when the process exits.
#[derive(Debug, Default)]
pub struct MemMeta(Mutex<State>);

impl MemMeta {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MetaDb for MemMeta {
    fn get(&self, hash: &str) -> Result<Option<PathRecord>> {
        Ok(self.state().paths.get(hash).map(|(r, _)| r.clone()))
    }

    fn narinfo(&self, hash: &str) -> Result<Option<String>> {
        Ok(self.state().paths.get(hash).map(|(r, _)| r.narinfo.clone()))
    }

    fn contains(&self, hash: &str) -> Result<bool> {
        Ok(self.state().paths.contains_key(hash))
    }

    fn insert(&self, hash: &str, record: &PathRecord, now: u64) -> Result<bool> {
        let mut s = self.state();
        if s.paths.contains_key(hash) {
            return Ok(false);
        }
        for (id, size) in distinct_chunks(&record.manifest) {
            let e = s.chunks.entry(id).or_insert((0, size));
            e.0 += 1;
            if e.0 == 1 {
                s.total += u64::from(size);
            }
        }
        s.paths.insert(hash.to_owned(), (record.clone(), now));
        s.lru.insert((now, hash.to_owned()));
        Ok(true)
    }

    fn remove(&self, hash: &str) -> Result<Vec<ChunkId>> {
        let mut s = self.state();
        let Some((record, access)) = s.paths.remove(hash) else {
            return Ok(Vec::new());
        };
        s.lru.remove(&(access, hash.to_owned()));
        let mut freed = Vec::new();
        for (id, size) in distinct_chunks(&record.manifest) {
            if let Some(e) = s.chunks.get_mut(&id) {
                e.0 -= 1;
                if e.0 == 0 {
                    s.chunks.remove(&id);
                    s.total -= u64::from(size);
                    freed.push(id);
                }
            }
        }
        Ok(freed)
    }

    fn touch(&self, accesses: &[(String, u64)]) -> Result<()> {
        let mut s = self.state();
        for (hash, now) in accesses {
            let Some(old) = s.paths.get_mut(hash).map(|e| std::mem::replace(&mut e.1, *now)) else {
                continue;
            };
            s.lru.remove(&(old, hash.clone()));
            s.lru.insert((*now, hash.clone()));
        }
        Ok(())
    }

    fn lru(&self, limit: usize) -> Result<Vec<String>> {
        Ok(self.state().lru.iter().take(limit).map(|(_, h)| h.clone()).collect())
    }

    fn chunk_refs(&self, id: &ChunkId) -> Result<u32> {
        Ok(self.state().chunks.get(id).map_or(0, |e| e.0))
    }

    fn chunk_size(&self, id: &ChunkId) -> Result<Option<u32>> {
        Ok(self.state().chunks.get(id).map(|e| e.1))
    }

    fn total_bytes(&self) -> Result<u64> {
        Ok(self.state().total)
    }

    fn path_count(&self) -> Result<u64> {
        Ok(self.state().paths.len() as u64)
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(self.state().paths.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::meta::conformance(&super::MemMeta::default());
    }
}
