//! Writing one NAR into the store: chunk, hash, write chunk files, and on
//! [`Ingest::finish`] verify it against its narinfo ([`NarCheck`]: NarSize,
//! NarHash, content address), sync, and commit.

use nixswarm_protocol::{ChunkId, ChunkManifest, ChunkRef, NarCheck, NarInfo};

use std::sync::Arc;

use super::chunker::{Chunker, Known};
use super::meta::PathRecord;
use super::{ChunkStore, Result, StoreError, now};

/// Where the chunks end: found by content-defined chunking, or known from
/// a manifest the chunks were checked against.
#[derive(Debug)]
enum Cut {
    Chunker(Chunker),
    Known(Known),
}

/// A NAR being written. Dropping it without [`Ingest::finish`] discards it.
#[derive(Debug)]
pub struct Ingest {
    store: ChunkStore,
    narinfo: NarInfo,
    cut: Cut,
    check: NarCheck,
    chunks: Vec<ChunkRef>,
    /// Chunks this ingest holds pending (never deleted while it runs).
    pending: Vec<ChunkId>,
    reserved: u64,
}

impl Ingest {
    pub(super) fn new(store: ChunkStore, narinfo: NarInfo) -> Self {
        Self::with(store, narinfo, Cut::Chunker(Chunker::default()))
    }

    /// A NAR whose chunks were checked against `manifest`'s ids as they
    /// arrived (from peers): stored as those chunks, without chunking or
    /// hashing them again. The caller has checked that the manifest is
    /// this narinfo's.
    pub(super) fn known(store: ChunkStore, narinfo: NarInfo, manifest: Arc<ChunkManifest>) -> Self {
        Self::with(store, narinfo, Cut::Known(Known::new(manifest)))
    }

    fn with(store: ChunkStore, narinfo: NarInfo, cut: Cut) -> Self {
        let reserved = narinfo.nar_size;
        let check = NarCheck::new(&narinfo);
        Self {
            store,
            narinfo,
            cut,
            check,
            chunks: Vec::new(),
            pending: Vec::new(),
            reserved,
        }
    }

    /// Adds the next bytes of the NAR.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if let Err(source) = self.check.update(data) {
            return Err(StoreError::Mismatch {
                path: self.narinfo.store_path.to_string(),
                source,
            });
        }
        let Self {
            cut,
            store,
            chunks,
            pending,
            ..
        } = self;
        match cut {
            Cut::Chunker(c) => c.push(data, |c| store_chunk(store, chunks, pending, None, c)),
            Cut::Known(k) => k.push(data, |id, c| store_chunk(store, chunks, pending, Some(id), c)),
        }
    }

    /// Verifies the NAR and makes the path visible.
    pub fn finish(mut self) -> Result<()> {
        let path = self.narinfo.store_path.to_string();
        let Self {
            cut,
            store,
            chunks,
            pending,
            ..
        } = &mut self;
        match cut {
            Cut::Chunker(c) => c.finish(|c| store_chunk(store, chunks, pending, None, c))?,
            // Incomplete: the NAR's size check below says how.
            Cut::Known(_) => {}
        }
        let size = self.check.size();
        let check = std::mem::replace(&mut self.check, NarCheck::new(&self.narinfo));
        let actual = check.finish().map_err(|source| StoreError::Mismatch { path, source })?;
        let manifest = ChunkManifest::new(actual, size, std::mem::take(&mut self.chunks))
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

fn store_chunk(
    store: &ChunkStore,
    chunks: &mut Vec<ChunkRef>,
    pending: &mut Vec<ChunkId>,
    known: Option<ChunkId>,
    data: &[u8],
) -> Result<()> {
    let id = known.unwrap_or_else(|| ChunkId(*blake3::hash(data).as_bytes()));
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
