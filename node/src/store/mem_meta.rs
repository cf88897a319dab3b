//! An in-memory [`MetaDb`]: for tests and throw-away nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use nixswarm_protocol::ChunkId;

use super::Result;
use super::meta::{
    Freed, Inserted, Loc, MetaDb, PathRecord, Written, distinct_chunks, no_place, without_ranges_of_freed_packs,
};

#[derive(Debug, Default)]
struct State {
    paths: HashMap<String, (PathRecord, u64)>,
    lru: BTreeSet<(u64, String)>,
    /// (references, size, place)
    chunks: BTreeMap<ChunkId, (u32, u32, Loc)>,
    /// Live chunks per pack.
    packs: HashMap<u64, u32>,
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

    fn insert(&self, hash: &str, record: &PathRecord, now: u64, written: &Written) -> Result<Inserted> {
        let mut s = self.state();
        if s.paths.contains_key(hash) {
            return Ok(Inserted::default());
        }
        let distinct = distinct_chunks(&record.manifest);
        if let Some((id, _)) = distinct
            .iter()
            .find(|(id, _)| !s.chunks.contains_key(id) && !written.at.contains_key(id))
        {
            return Err(no_place(id));
        }
        let mut out = Inserted {
            stored: true,
            ..Inserted::default()
        };
        for (id, size) in distinct {
            let ours = written.at.get(&id).copied();
            if let Some(e) = s.chunks.get_mut(&id) {
                e.0 += 1;
                out.dead.extend(ours.map(|o| (o, size)));
                continue;
            }
            let offset = ours.ok_or_else(|| no_place(&id))?;
            let loc = Loc::Pack {
                pack: written.pack,
                offset,
            };
            s.chunks.insert(id, (1, size, loc));
            s.total += u64::from(size);
            *s.packs.entry(written.pack).or_insert(0) += 1;
            out.pack_used = true;
        }
        s.paths.insert(hash.to_owned(), (record.clone(), now));
        s.lru.insert((now, hash.to_owned()));
        Ok(out)
    }

    fn remove(&self, hash: &str) -> Result<Vec<Freed>> {
        let mut s = self.state();
        let Some((record, access)) = s.paths.remove(hash) else {
            return Ok(Vec::new());
        };
        s.lru.remove(&(access, hash.to_owned()));
        let mut freed = Vec::new();
        for (id, size) in distinct_chunks(&record.manifest) {
            let Some(e) = s.chunks.get_mut(&id) else {
                continue;
            };
            e.0 -= 1;
            if e.0 > 0 {
                continue;
            }
            let loc = e.2;
            s.chunks.remove(&id);
            s.total -= u64::from(size);
            match loc {
                Loc::File => freed.push(Freed::File(id)),
                Loc::Pack { pack, offset } => {
                    let live = s.packs.entry(pack).or_insert(1);
                    *live -= 1;
                    if *live == 0 {
                        s.packs.remove(&pack);
                        freed.push(Freed::Pack(pack));
                    } else {
                        freed.push(Freed::Range { pack, offset, size });
                    }
                }
            }
        }
        Ok(without_ranges_of_freed_packs(freed))
    }

    fn chunk_loc(&self, id: &ChunkId) -> Result<Option<(u32, Loc)>> {
        Ok(self.state().chunks.get(id).map(|e| (e.1, e.2)))
    }

    fn packs(&self) -> Result<Vec<u64>> {
        Ok(self.state().packs.keys().copied().collect())
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
