//! Reading a stored NAR (or a byte range of it) chunk by chunk, each chunk
//! verified against its BLAKE3 id.

use std::sync::Arc;

use bytes::Bytes;
use nixswarm_protocol::ChunkManifest;

use super::{ChunkStore, InUse, Result, StoreError};

/// An iterator over the verified bytes of a NAR range. Blocking: run it on
/// a blocking thread.
#[derive(Debug)]
pub struct NarReader {
    store: ChunkStore,
    manifest: Arc<ChunkManifest>,
    next_chunk: usize,
    chunk_start: u64,
    start: u64,
    end: u64,
    _guard: Arc<InUse>,
}

impl NarReader {
    pub(super) fn new(
        store: ChunkStore,
        manifest: Arc<ChunkManifest>,
        start: u64,
        end: u64,
        guard: Arc<InUse>,
    ) -> Self {
        let end = end.min(manifest.nar_size);
        let start = start.min(end);
        // Skip whole chunks before `start`.
        let mut next_chunk = 0;
        let mut chunk_start = 0;
        for c in &manifest.chunks {
            if chunk_start + u64::from(c.size) > start {
                break;
            }
            chunk_start += u64::from(c.size);
            next_chunk += 1;
        }
        Self {
            store,
            manifest,
            next_chunk,
            chunk_start,
            start,
            end,
            _guard: guard,
        }
    }

    /// Bytes this reader will yield in total.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True if the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Iterator for NarReader {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.chunk_start >= self.end {
            return None;
        }
        let c = *self.manifest.chunks.get(self.next_chunk)?;
        let data = match self.store.read_chunk(&c.id) {
            Ok(Some(d)) if d.len() == c.size as usize => d,
            Ok(_) => {
                self.chunk_start = self.end;
                return Some(Err(StoreError::ChunkMissing(c.id)));
            }
            Err(e) => {
                self.chunk_start = self.end;
                return Some(Err(e));
            }
        };
        let from = self.start.saturating_sub(self.chunk_start) as usize;
        let to = ((self.end - self.chunk_start) as usize).min(data.len());
        self.chunk_start += u64::from(c.size);
        self.next_chunk += 1;
        Some(Ok(data.slice(from..to)))
    }
}
