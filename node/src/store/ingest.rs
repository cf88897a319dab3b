//! Writing one NAR into the store: chunk, hash, write chunk files, and on
//! [`Ingest::finish`] verify NarHash and NarSize, sync, and commit.

use nixswarm_protocol::{ChunkId, ChunkManifest, ChunkRef, NarInfo, Sha256Hash};
use sha2::{Digest, Sha256};

use super::chunker::Chunker;
use super::meta::PathRecord;
use super::{ChunkStore, Result, StoreError, now};

/// A NAR being written. Dropping it without [`Ingest::finish`] discards it.
#[derive(Debug)]
pub struct Ingest {
    store: ChunkStore,
    narinfo: NarInfo,
    chunker: Chunker,
    sha: Sha256,
    size: u64,
    chunks: Vec<ChunkRef>,
    /// Chunks this ingest holds pending (never deleted while it runs).
    pending: Vec<ChunkId>,
    reserved: u64,
}

impl Ingest {
    pub(super) fn new(store: ChunkStore, narinfo: NarInfo) -> Self {
        let reserved = narinfo.nar_size;
        Self {
            store,
            narinfo,
            chunker: Chunker::default(),
            sha: Sha256::new(),
            size: 0,
            chunks: Vec::new(),
            pending: Vec::new(),
            reserved,
        }
    }

    /// Adds the next bytes of the NAR.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        if self.size > self.narinfo.nar_size {
            return Err(StoreError::TooLong {
                path: self.narinfo.store_path.to_string(),
                expected: self.narinfo.nar_size,
            });
        }
        self.sha.update(data);
        let Self {
            chunker,
            store,
            chunks,
            pending,
            ..
        } = self;
        chunker.push(data, |c| store_chunk(store, chunks, pending, c))
    }

    /// Verifies the NAR and makes the path visible.
    pub fn finish(mut self) -> Result<()> {
        let path = self.narinfo.store_path.to_string();
        let Self {
            chunker,
            store,
            chunks,
            pending,
            ..
        } = &mut self;
        chunker.finish(|c| store_chunk(store, chunks, pending, c))?;
        if self.size != self.narinfo.nar_size {
            return Err(StoreError::WrongSize {
                path,
                actual: self.size,
                expected: self.narinfo.nar_size,
            });
        }
        let actual = Sha256Hash(std::mem::take(&mut self.sha).finalize().into());
        if actual != self.narinfo.nar_hash {
            return Err(StoreError::WrongHash {
                path,
                actual: actual.to_string(),
                expected: self.narinfo.nar_hash.to_string(),
            });
        }
        let manifest = ChunkManifest::new(actual, self.size, std::mem::take(&mut self.chunks))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        self.store.inner.chunks.sync()?;
        let record = PathRecord {
            narinfo: self.narinfo.to_text(),
            manifest,
        };
        let hash = self.narinfo.store_path.hash();
        if self.store.inner.meta.insert(hash.as_str(), &record, now())? {
            self.store.notify(super::StoreEvent::Added(hash));
        }
        tracing::debug!(path = %self.narinfo.store_path, "stored");
        Ok(())
    }
}

fn store_chunk(store: &ChunkStore, chunks: &mut Vec<ChunkRef>, pending: &mut Vec<ChunkId>, data: &[u8]) -> Result<()> {
    let id = ChunkId(*blake3::hash(data).as_bytes());
    chunks.push(ChunkRef {
        id,
        size: data.len() as u32,
    });
    *store.state().pending.entry(id).or_insert(0) += 1;
    pending.push(id);
    // Another ingest may be writing the same chunk right now; the rename is
    // atomic, so writing it again is harmless and never leaves it half there.
    if !store.inner.chunks.has(&id) {
        store.inner.chunks.write(&id, data)?;
    }
    Ok(())
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.store.release(self.reserved, &self.pending);
        // Chunks written for a NAR that never committed are orphans unless
        // another path uses them: remove those now.
        let state = self.store.state();
        for id in &self.pending {
            if !state.pending.contains_key(id) && self.store.inner.meta.chunk_refs(id).unwrap_or(1) == 0 {
                let _ = self.store.inner.chunks.delete(id);
            }
        }
    }
}
