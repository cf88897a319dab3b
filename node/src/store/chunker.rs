//! Push-based content-defined chunking (FastCDC 2020) over a byte stream.
//!
//! Bytes arrive in arbitrary pieces; a chunk is emitted once the bytes that
//! decide its end are all present (FastCDC looks at most `MAX` bytes ahead),
//! so the cut points are exactly those of chunking the whole NAR at once.

use std::sync::Arc;

use fastcdc::v2020::FastCDC;
use nixswarm_protocol::{ChunkId, ChunkManifest};

/// Minimum chunk size (but for a NAR's last chunk): what manifests allow.
pub const MIN: u32 = nixswarm_protocol::manifest::MIN_CHUNK_SIZE;
/// Average chunk size.
pub const AVG: u32 = 64 * 1024;
/// Maximum chunk size: what manifests allow.
pub const MAX: u32 = nixswarm_protocol::manifest::MAX_CHUNK_SIZE;

/// Accumulates bytes and hands out complete chunks.
#[derive(Debug, Default)]
pub struct Chunker {
    buf: Vec<u8>,
}

impl Chunker {
    /// Adds bytes; calls `emit` for every chunk now complete.
    pub fn push<E>(&mut self, data: &[u8], emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 2 * MAX as usize {
            self.drain(false, emit)?;
        }
        Ok(())
    }

    /// Emits everything left: call once at the end of the stream.
    pub fn finish<E>(&mut self, emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        self.drain(true, emit)
    }

    fn drain<E>(&mut self, at_end: bool, mut emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let len = self.buf.len();
        let mut consumed = 0;
        for c in FastCDC::new(&self.buf, MIN, AVG, MAX) {
            if !at_end && c.offset + MAX as usize > len {
                break;
            }
            emit(&self.buf[c.offset..c.offset + c.length])?;
            consumed = c.offset + c.length;
        }
        self.buf.drain(..consumed);
        Ok(())
    }
}

/// Cuts a NAR where its manifest says its chunks end: a NAR fetched from
/// peers, whose chunks the fetcher checked against their BLAKE3 ids as they
/// arrived, is stored without chunking or hashing it again (the ids are the
/// manifest's; the store still checks the whole NAR against its narinfo,
/// and every read of a chunk checks its id).
#[derive(Debug)]
pub struct Known {
    manifest: Arc<ChunkManifest>,
    next: usize,
    buf: Vec<u8>,
}

impl Known {
    pub fn new(manifest: Arc<ChunkManifest>) -> Self {
        Self {
            manifest,
            next: 0,
            buf: Vec::new(),
        }
    }

    /// Adds bytes; calls `emit` for every chunk now complete. Bytes past
    /// the manifest's last chunk are left over (the NAR's size check fails).
    pub fn push<E>(&mut self, mut data: &[u8], mut emit: impl FnMut(ChunkId, &[u8]) -> Result<(), E>) -> Result<(), E> {
        while let Some(c) = self.manifest.chunks.get(self.next) {
            let want = c.size as usize - self.buf.len();
            if data.len() < want {
                break;
            }
            let (head, rest) = data.split_at(want);
            if self.buf.is_empty() {
                emit(c.id, head)?;
            } else {
                self.buf.extend_from_slice(head);
                emit(c.id, &self.buf)?;
                self.buf.clear();
            }
            self.next += 1;
            data = rest;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// True if every chunk of the manifest was emitted and nothing is left.
    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.next == self.manifest.chunks.len() && self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cuts_follow_the_manifest_whatever_the_pieces() {
        let data = pseudo_random(3 * MAX as usize, 7);
        let whole = chunk_all(&data, data.len());
        let refs = whole
            .iter()
            .map(|c| nixswarm_protocol::ChunkRef {
                id: ChunkId(*blake3::hash(c).as_bytes()),
                size: c.len() as u32,
            })
            .collect();
        let m = Arc::new(ChunkManifest::new(nixswarm_protocol::Sha256Hash([0; 32]), data.len() as u64, refs).unwrap());
        for piece in [1, 1000, MIN as usize, MAX as usize + 3, data.len()] {
            let mut k = Known::new(m.clone());
            let mut out: Vec<(ChunkId, Vec<u8>)> = Vec::new();
            for p in data.chunks(piece) {
                k.push(p, |id, c| {
                    out.push((id, c.to_vec()));
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            assert!(k.is_complete(), "piece {piece}");
            assert_eq!(
                out.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
                whole,
                "piece {piece}"
            );
            assert!(out.iter().zip(&m.chunks).all(|((id, _), r)| *id == r.id));
        }
        // Too many bytes: left over, not complete.
        let mut k = Known::new(m);
        let mut extra = data.clone();
        extra.push(0);
        k.push(&extra, |_, _| Ok::<(), ()>(())).unwrap();
        assert!(!k.is_complete());
    }
    use crate::store::tests::data as pseudo_random;
    use proptest::prelude::*;

    fn chunk_all(data: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut c = Chunker::default();
        for p in data.chunks(piece.max(1)) {
            c.push::<()>(p, |ch| {
                out.push(ch.to_vec());
                Ok(())
            })
            .unwrap();
        }
        c.finish::<()>(|ch| {
            out.push(ch.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn average_is_near_64k() {
        let data = pseudo_random(8 << 20, 42);
        let chunks = chunk_all(&data, 100_000);
        let avg = data.len() / chunks.len();
        assert!((32 * 1024..=128 * 1024).contains(&avg), "average {avg}");
        assert!(chunks.iter().all(|c| c.len() <= MAX as usize));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn cut_points_do_not_depend_on_how_bytes_arrive(len in 0usize..1_500_000, seed in any::<u64>(), piece in 1usize..300_000) {
            let data = pseudo_random(len, seed);
            let whole: Vec<Vec<u8>> = FastCDC::new(&data, MIN, AVG, MAX).map(|c| data[c.offset..c.offset + c.length].to_vec()).collect();
            let pieces = chunk_all(&data, piece);
            prop_assert_eq!(pieces.concat(), data);
            prop_assert_eq!(pieces, whole);
        }
    }
}
