//! Chunks that came with a path's lookup: a small NAR in one round trip
//! ([`Request::PathInline`](nixswarm_protocol::wire::Request::PathInline)).
//! They are checked against the manifest when they arrive, held until the
//! path's first transfer takes them, and bounded in all by one budget per
//! fetcher ([`INLINE_HELD`]): a lookup asks for them only while the budget
//! has room for a whole answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use nixswarm_protocol::wire::{MAX_INLINE, WireChunk};
use nixswarm_protocol::{ChunkId, ChunkManifest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::schedule::check_chunks;

/// Bytes of chunks that came with lookups, held at once by one fetcher.
pub const INLINE_HELD: usize = 32 << 20;
/// The budget's unit.
const UNIT: usize = 1024;
/// How long chunks no transfer took are held: a client asks for a NAR
/// soon after its narinfo, or never.
pub const INLINE_KEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// The budget of a fetcher's inline chunks.
#[derive(Debug, Clone)]
pub struct InlineBudget(Arc<Semaphore>);

impl Default for InlineBudget {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(INLINE_HELD / UNIT)))
    }
}

impl InlineBudget {
    /// The largest NAR a lookup may ask to come with its answer now:
    /// [`MAX_INLINE`] while the budget has room for it, else 0.
    pub fn room(&self) -> u32 {
        if self.0.available_permits() >= MAX_INLINE as usize / UNIT {
            MAX_INLINE
        } else {
            0
        }
    }

    /// Checks the chunks a provider sent with `manifest` (blocking: zstd
    /// and BLAKE3): each must be one of the manifest's, at its size and
    /// hash, or the provider lied. What checked out is held against the
    /// budget; `None` if they were none, or there is no room.
    pub fn accept(&self, manifest: &ChunkManifest, got: Vec<WireChunk>) -> Result<Option<Inline>, &'static str> {
        if got.is_empty() {
            return Ok(None);
        }
        let ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
        let size_of = |id: &ChunkId| manifest.chunks.iter().find(|c| c.id == *id).map(|c| c.size);
        let chunks: HashMap<ChunkId, Bytes> = check_chunks(&ids, size_of, got)?.into_iter().collect();
        let bytes: usize = chunks.values().map(Bytes::len).sum();
        let Ok(permit) = self.0.clone().try_acquire_many_owned(bytes.div_ceil(UNIT) as u32) else {
            return Ok(None);
        };
        Ok(Some(Inline {
            held: Mutex::new(Some(InlineChunks {
                chunks,
                _permit: permit,
            })),
        }))
    }
}

/// A path's inline chunks, until a transfer takes them.
#[derive(Debug)]
pub struct Inline {
    held: Mutex<Option<InlineChunks>>,
}

impl Inline {
    /// Lets the chunks go after `keep` if no transfer took them (on the
    /// current runtime), so the budget does not stay spent.
    pub fn expire_after(self: &Arc<Self>, keep: std::time::Duration) {
        let inline = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            if let Some(i) = inline.upgrade() {
                drop(i.take());
            }
        });
    }

    /// The chunks, for the first transfer that asks (later ones fetch).
    pub fn take(&self) -> Option<InlineChunks> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// NAR bytes held (0 once taken).
    pub fn bytes(&self) -> u64 {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, InlineChunks::bytes)
    }
}

/// Checked chunks held against the budget while they live.
#[derive(Debug)]
pub struct InlineChunks {
    chunks: HashMap<ChunkId, Bytes>,
    _permit: OwnedSemaphorePermit,
}

impl InlineChunks {
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.chunks.get(id).cloned()
    }

    pub fn has(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    /// NAR bytes held.
    pub fn bytes(&self) -> u64 {
        self.chunks.values().map(|b| b.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use nixswarm_protocol::{ChunkRef, Sha256Hash};

    use super::*;

    fn chunk(fill: u8, size: usize) -> (ChunkRef, WireChunk) {
        let data = Bytes::from(vec![fill; size]);
        let id = ChunkId(*blake3::hash(&data).as_bytes());
        let r = ChunkRef { id, size: size as u32 };
        (
            r,
            WireChunk {
                id,
                compressed: false,
                data,
            },
        )
    }

    fn manifest(refs: Vec<ChunkRef>) -> ChunkManifest {
        let size = refs.iter().map(|c| u64::from(c.size)).sum();
        ChunkManifest::new(Sha256Hash([0; 32]), size, refs).expect("valid manifest")
    }

    #[test]
    fn checked_chunks_are_held_against_the_budget_until_taken() {
        let budget = InlineBudget::default();
        let (a, wa) = chunk(1, 20_000);
        let (b, wb) = chunk(2, 3_000);
        let m = manifest(vec![a, b]);
        let inline = budget.accept(&m, vec![wa.clone(), wb]).unwrap().expect("room");
        assert_eq!(inline.bytes(), 23_000);
        assert_eq!(budget.0.available_permits(), INLINE_HELD / UNIT - 23);
        let taken = inline.take().expect("the first transfer takes them");
        assert!(inline.take().is_none(), "the second fetches");
        assert_eq!(taken.get(&a.id), Some(wa.data));
        drop(taken);
        assert_eq!(budget.0.available_permits(), INLINE_HELD / UNIT, "given back");
    }

    #[test]
    fn a_chunk_that_is_not_the_manifests_is_a_lie() {
        let budget = InlineBudget::default();
        let (a, _) = chunk(1, 20_000);
        let (_, other) = chunk(3, 20_000);
        let m = manifest(vec![a]);
        assert!(budget.accept(&m, vec![other]).is_err());
        let (_, mut forged) = chunk(1, 20_000);
        forged.data = Bytes::from(vec![9; 20_000]);
        assert!(
            budget.accept(&m, vec![forged]).is_err(),
            "wrong bytes under the right id"
        );
        assert_eq!(budget.0.available_permits(), INLINE_HELD / UNIT);
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_no_transfer_took_are_let_go() {
        let budget = InlineBudget::default();
        let (a, wa) = chunk(1, 20_000);
        let m = manifest(vec![a]);
        let inline = Arc::new(budget.accept(&m, vec![wa]).unwrap().expect("room"));
        inline.expire_after(INLINE_KEEP);
        tokio::time::sleep(INLINE_KEEP / 2).await;
        assert_eq!(inline.bytes(), 20_000, "held a while");
        tokio::time::sleep(INLINE_KEEP).await;
        assert_eq!(inline.bytes(), 0, "then let go");
        assert_eq!(budget.0.available_permits(), INLINE_HELD / UNIT, "the budget is back");
    }

    #[test]
    fn with_the_budget_spent_nothing_is_asked_or_held() {
        let budget = InlineBudget::default();
        let (a, wa) = chunk(1, 20_000);
        let m = manifest(vec![a]);
        let _all = budget
            .0
            .clone()
            .try_acquire_many_owned((INLINE_HELD / UNIT - 10) as u32)
            .unwrap();
        assert_eq!(budget.room(), 0);
        assert!(budget.accept(&m, vec![wa]).unwrap().is_none(), "no room: dropped");
    }
}
