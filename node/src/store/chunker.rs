//! Push-based content-defined chunking (FastCDC 2020) over a byte stream.
//!
//! Bytes arrive in arbitrary pieces; a chunk is emitted once the bytes that
//! decide its end are all present (FastCDC looks at most `MAX` bytes ahead),
//! so the cut points are exactly those of chunking the whole NAR at once.

use fastcdc::v2020::FastCDC;

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

#[cfg(test)]
mod tests {
    use super::*;
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
