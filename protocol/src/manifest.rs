//! Chunk manifests: the list of content-defined chunks a NAR is cut into,
//! each named by the BLAKE3 hash of its (uncompressed) bytes.
//!
//! Binary encoding (all integers little-endian):
//! `b"NSM1"`, NarHash (32 bytes), NarSize (u64), chunk count (u32), then per
//! chunk its BLAKE3 id (32 bytes) and size (u32).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::hash::Sha256Hash;

/// The smallest chunk a manifest may name, but for its last: FastCDC's
/// minimum as nixswarm's chunker uses it (16/64/256 KiB min/avg/max). A
/// lower bound keeps a hostile manifest from turning a NAR into one round
/// trip per byte.
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// The largest chunk a manifest may name: the chunker's maximum.
pub const MAX_CHUNK_SIZE: u32 = 256 * 1024;
/// The most chunks a manifest may list (a 256 GiB NAR at 64 KiB).
pub const MAX_CHUNKS: u32 = 1 << 22;
const MAGIC: &[u8; 4] = b"NSM1";
const HEADER: usize = 4 + 32 + 8 + 4;
const ENTRY: usize = 32 + 4;

/// A chunk's identity: the BLAKE3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Lowercase hex, as used for file names.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl FromStr for ChunkId {
    type Err = ManifestError;
    fn from_str(s: &str) -> Result<Self, ManifestError> {
        let bad = || ManifestError::BadChunkId(s.chars().take(80).collect());
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = s
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)?;
        }
        Ok(Self(out))
    }
}

/// One entry of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub size: u32,
}

/// Why a manifest is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, too short for its header")]
    Truncated(usize),
    #[error("manifest does not start with the NSM1 magic")]
    BadMagic,
    #[error("manifest lists {0} chunks, more than the limit of {MAX_CHUNKS}")]
    TooManyChunks(u32),
    #[error("manifest is {actual} bytes, but its {count} chunks need {expected}")]
    WrongLength { count: u32, actual: usize, expected: usize },
    #[error(
        "manifest chunk {index} has size {size}, outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} (the last chunk: 1..={MAX_CHUNK_SIZE})"
    )]
    BadChunkSize { index: usize, size: u32 },
    #[error("manifest chunks add up to {sum} bytes, but NarSize is {nar_size}")]
    SizeMismatch { sum: u64, nar_size: u64 },
    #[error("{0:?} is not a 64-character hex chunk id")]
    BadChunkId(String),
}

/// The chunks of one NAR, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkManifest {
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub chunks: Vec<ChunkRef>,
}

impl ChunkManifest {
    /// Whether this is a manifest of `info`'s NAR: the same NarHash and
    /// NarSize (its chunks are checked against their ids as they come).
    pub fn check_against(&self, info: &crate::NarInfo) -> Result<(), crate::NarCheckError> {
        use crate::NarCheckError::{WrongHash, WrongSize};
        if self.nar_hash != info.nar_hash {
            return Err(WrongHash {
                actual: self.nar_hash,
                expected: info.nar_hash,
            });
        }
        if self.nar_size != info.nar_size {
            return Err(WrongSize {
                actual: self.nar_size,
                expected: info.nar_size,
            });
        }
        Ok(())
    }

    /// Builds a manifest, checking that the chunks add up to `nar_size`.
    pub fn new(nar_hash: Sha256Hash, nar_size: u64, chunks: Vec<ChunkRef>) -> Result<Self, ManifestError> {
        let m = Self {
            nar_hash,
            nar_size,
            chunks,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.chunks.len() > MAX_CHUNKS as usize {
            return Err(ManifestError::TooManyChunks(self.chunks.len() as u32));
        }
        let mut sum = 0u64;
        let last = self.chunks.len().saturating_sub(1);
        for (index, c) in self.chunks.iter().enumerate() {
            let min = if index == last { 1 } else { MIN_CHUNK_SIZE };
            if c.size < min || c.size > MAX_CHUNK_SIZE {
                return Err(ManifestError::BadChunkSize { index, size: c.size });
            }
            sum += u64::from(c.size);
        }
        if sum != self.nar_size {
            return Err(ManifestError::SizeMismatch {
                sum,
                nar_size: self.nar_size,
            });
        }
        Ok(())
    }

    /// The binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.nar_hash.0);
        out.extend_from_slice(&self.nar_size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.id.0);
            out.extend_from_slice(&c.size.to_le_bytes());
        }
        out
    }

    /// Decodes and validates the binary encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < HEADER {
            return Err(ManifestError::Truncated(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let arr = |r: std::ops::Range<usize>| -> [u8; 32] {
            let mut a = [0u8; 32];
            a[..r.len()].copy_from_slice(&bytes[r]);
            a
        };
        let nar_hash = Sha256Hash(arr(4..36));
        let nar_size = u64::from_le_bytes(arr(36..44)[..8].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(arr(44..48)[..4].try_into().unwrap_or_default());
        if count > MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks(count));
        }
        let expected = HEADER + ENTRY * count as usize;
        if bytes.len() != expected {
            return Err(ManifestError::WrongLength {
                count,
                actual: bytes.len(),
                expected,
            });
        }
        let chunks = bytes[HEADER..]
            .chunks_exact(ENTRY)
            .map(|e| {
                let mut id = [0u8; 32];
                id.copy_from_slice(&e[..32]);
                let size = u32::from_le_bytes([e[32], e[33], e[34], e[35]]);
                ChunkRef { id: ChunkId(id), size }
            })
            .collect();
        Self::new(nar_hash, nar_size, chunks)
    }

    /// Each chunk with the NAR offset it starts at.
    pub fn with_offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        self.chunks.iter().scan(0u64, |off, c| {
            let start = *off;
            *off += u64::from(c.size);
            Some((start, c))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any valid manifest (also the wire tests' path infos).
    pub(crate) fn arb_manifest() -> impl Strategy<Value = ChunkManifest> {
        (
            any::<[u8; 32]>(),
            proptest::collection::vec((any::<[u8; 32]>(), MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE), 0..50),
            1..=MAX_CHUNK_SIZE,
        )
            .prop_map(|(h, cs, last)| {
                let mut chunks: Vec<ChunkRef> = cs
                    .into_iter()
                    .map(|(id, size)| ChunkRef { id: ChunkId(id), size })
                    .collect();
                if let Some(c) = chunks.last_mut() {
                    c.size = last;
                }
                let nar_size = chunks.iter().map(|c| u64::from(c.size)).sum();
                ChunkManifest {
                    nar_hash: Sha256Hash(h),
                    nar_size,
                    chunks,
                }
            })
    }

    #[test]
    fn rejects_inconsistent_manifests() {
        let c = ChunkRef {
            id: ChunkId([1; 32]),
            size: 10,
        };
        assert_eq!(
            ChunkManifest::new(Sha256Hash([0; 32]), 11, vec![c]),
            Err(ManifestError::SizeMismatch { sum: 10, nar_size: 11 })
        );
        let zero = ChunkRef {
            id: ChunkId([1; 32]),
            size: 0,
        };
        assert!(matches!(
            ChunkManifest::new(Sha256Hash([0; 32]), 0, vec![zero]),
            Err(ManifestError::BadChunkSize { .. })
        ));
        // Tiny chunks (one round trip per byte) are refused, but for the last.
        let tiny = |n: usize| {
            vec![
                ChunkRef {
                    id: ChunkId([1; 32]),
                    size: 1
                };
                n
            ]
        };
        assert!(
            ChunkManifest::new(Sha256Hash([0; 32]), 1, tiny(1)).is_ok(),
            "a 1-byte NAR"
        );
        assert_eq!(
            ChunkManifest::new(Sha256Hash([0; 32]), 2, tiny(2)),
            Err(ManifestError::BadChunkSize { index: 0, size: 1 })
        );
        let big = ChunkRef {
            id: ChunkId([1; 32]),
            size: MAX_CHUNK_SIZE + 1,
        };
        assert!(ChunkManifest::new(Sha256Hash([0; 32]), u64::from(MAX_CHUNK_SIZE) + 1, vec![big]).is_err());
        assert_eq!(ChunkManifest::decode(b"NSM"), Err(ManifestError::Truncated(3)));
        let mut enc = ChunkManifest::new(Sha256Hash([0; 32]), 10, vec![c]).unwrap().encode();
        enc[0] = b'X';
        assert_eq!(ChunkManifest::decode(&enc), Err(ManifestError::BadMagic));
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_manifest()) {
            let enc = m.encode();
            prop_assert_eq!(ChunkManifest::decode(&enc).unwrap(), m.clone());
            let last = m.with_offsets().last().map(|(o, c)| o + u64::from(c.size)).unwrap_or(0);
            prop_assert_eq!(last, m.nar_size);
            for c in &m.chunks {
                prop_assert_eq!(c.id.to_hex().parse::<ChunkId>().unwrap(), c.id);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ChunkManifest::decode(&bytes);
        }

        #[test]
        fn truncation_is_detected(m in arb_manifest(), cut in 1usize..40) {
            let enc = m.encode();
            let cut = cut.min(enc.len());
            prop_assert!(ChunkManifest::decode(&enc[..enc.len() - cut]).is_err());
        }
    }
}
