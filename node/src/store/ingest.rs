//! Writing one NAR into the store: chunk, hash, append each distinct chunk
//! to the ingest's own pack, and on [`Ingest::finish`] verify it against
//! its narinfo ([`NarCheck`]: NarSize, NarHash, content address), sync,
//! and commit.

use nixswarm_protocol::{ChunkId, ChunkManifest, ChunkRef, NarCheck, NarInfo};

use std::sync::Arc;

use super::chunker::{Chunker, Known};
use super::chunks::PackWriter;
use super::meta::{PathRecord, Written};
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
    out: Out,
    /// The pack is the store's now (committed), not this ingest's to delete.
    committed: bool,
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
            out: Out::default(),
            committed: false,
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
        let Self { cut, store, out, .. } = self;
        match cut {
            Cut::Chunker(c) => c.push(data, |c| out.chunk(store, None, c)),
            Cut::Known(k) => k.push(data, |id, c| out.chunk(store, Some(id), c)),
        }
    }

    /// Verifies the NAR and makes the path visible.
    pub fn finish(mut self) -> Result<()> {
        let path = self.narinfo.store_path.to_string();
        let Self { cut, store, out, .. } = &mut self;
        match cut {
            Cut::Chunker(c) => c.finish(|c| out.chunk(store, None, c))?,
            // Incomplete: the NAR's size check below says how.
            Cut::Known(_) => {}
        }
        let size = self.check.size();
        let check = std::mem::replace(&mut self.check, NarCheck::new(&self.narinfo));
        let actual = check.finish().map_err(|source| StoreError::Mismatch { path, source })?;
        let manifest = ChunkManifest::new(actual, size, std::mem::take(&mut self.out.chunks))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        if let Some(pack) = &self.out.pack {
            self.store.inner.chunks.sync(pack)?;
        }
        let record = PathRecord {
            narinfo: self.narinfo.to_text(),
            manifest,
        };
        let hash = self.narinfo.store_path.hash();
        let done = self
            .store
            .inner
            .meta
            .insert(hash.as_str(), &record, now(), &self.out.written)?;
        // Unused, the pack is deleted on drop; chunks another path's copy
        // serves are given back.
        self.committed = done.pack_used;
        if let Some(pack) = self.out.pack.as_ref().filter(|_| done.pack_used) {
            for (offset, size) in done.dead {
                self.store.inner.chunks.punch(pack.id, offset, u64::from(size));
            }
        }
        if done.stored {
            self.store.notify(super::StoreEvent::Added(hash));
        }
        tracing::debug!(path = %self.narinfo.store_path, "stored");
        Ok(())
    }
}

/// Where an ingest's chunks went: the list, and the pack.
#[derive(Debug, Default)]
struct Out {
    chunks: Vec<ChunkRef>,
    /// The pack, once the first chunk is written.
    pack: Option<PackWriter>,
    /// Where each distinct chunk is in the pack.
    written: Written,
}

impl Out {
    /// The next chunk of the NAR (its id known already, or computed here):
    /// listed, and appended to the pack (made in `store` at the first)
    /// unless it is there already.
    fn chunk(&mut self, store: &ChunkStore, known: Option<ChunkId>, data: &[u8]) -> Result<()> {
        let id = known.unwrap_or_else(|| ChunkId(*blake3::hash(data).as_bytes()));
        self.chunks.push(ChunkRef {
            id,
            size: data.len() as u32,
        });
        if self.written.at.contains_key(&id) {
            return Ok(());
        }
        let pack = match &mut self.pack {
            Some(p) => p,
            None => {
                let p = store.create_pack()?;
                self.written.pack = p.id;
                self.pack.insert(p)
            }
        };
        let offset = pack.append(data)?;
        self.written.at.insert(id, offset);
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let pack = self.out.pack.as_ref().map(|p| p.id);
        // A pack no path uses is deleted before it stops being "written".
        if let Some(p) = pack.filter(|_| !self.committed) {
            let _ = self.store.inner.chunks.delete_pack(p);
        }
        self.store.release(self.reserved, pack);
    }
}
