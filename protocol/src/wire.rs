//! Messages of the transfer protocol between nodes, and the DHT key of a
//! store path.
//!
//! Every message is a tag byte followed by its fields; integers are
//! little-endian, byte strings and texts are u32-length-prefixed. Decoding
//! checks every length against the limits below before allocating.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::manifest::{ChunkId, ChunkManifest, MAX_CHUNK_SIZE, ManifestError};
use crate::store_path::StorePathHash;

/// Most chunk ids in one request.
pub const MAX_BATCH: usize = 32;
/// Largest encoded request.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest encoded response (a full batch of maximal chunks plus framing).
pub const MAX_RESPONSE: usize = MAX_BATCH * (MAX_CHUNK_SIZE as usize + 64) + 1024 * 1024;
/// Most store-path hashes in one [`Request::Have`].
pub const MAX_HAVE: usize = 256;
/// Largest narinfo text carried.
pub const MAX_NARINFO: usize = 64 * 1024;
/// Largest NAR whose chunks come with its path info
/// ([`Request::PathInline`]): a provider sends them only for a NAR of at
/// most this size, and of at most what the asker allows.
pub const MAX_INLINE: u32 = 256 * 1024;

/// The DHT key under which providers of a store path are announced:
/// sha256 of `nixswarm-path:<hash>` (32 bytes).
pub fn path_key(hash: &StorePathHash) -> [u8; 32] {
    Sha256::digest(format!("nixswarm-path:{hash}").as_bytes()).into()
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The signed narinfo and chunk manifest of a path.
    PathInfo { hash: StorePathHash },
    /// Chunk bytes by BLAKE3 id. `compress`: the asker takes chunks
    /// zstd-compressed where that makes them smaller (tag 2); without it
    /// (tag 4) it asks for them as stored, because on its link the
    /// sender's compressing costs more time than it saves.
    Chunks { ids: Vec<ChunkId>, compress: bool },
    /// Which of these paths the node would serve (one round trip for many
    /// paths, asked of connected peers before the DHT walk ends).
    Have { hashes: Vec<StorePathHash> },
    /// [`Request::PathInfo`], and the NAR's chunks with it if its NarSize
    /// is at most `max` (and [`MAX_INLINE`]): a small NAR in one round
    /// trip. `compress` as in [`Request::Chunks`] (tag 5 compressed, 6 as
    /// stored). Sent on `/nixswarm/transfer/2` streams only; a peer that
    /// speaks only version 1 is asked [`Request::PathInfo`]
    /// ([`Request::downgraded`]).
    PathInline {
        hash: StorePathHash,
        max: u32,
        compress: bool,
    },
}

impl Request {
    /// The request an older peer understands: the path info without chunks.
    pub fn downgraded(self) -> Self {
        match self {
            Self::PathInline { hash, .. } => Self::PathInfo { hash },
            other => other,
        }
    }
}

/// One chunk on the wire, zstd-compressed when that made it smaller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireChunk {
    pub id: ChunkId,
    pub compressed: bool,
    pub data: Bytes,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    PathInfo {
        narinfo: String,
        manifest: ChunkManifest,
    },
    /// The node does not hold (or will not serve) the path.
    NotFound,
    /// The chunks it has, in request order; ids it lacks are left out.
    Chunks {
        chunks: Vec<WireChunk>,
    },
    /// The node refuses for now (too many requests, shutting down).
    Busy,
    /// One flag per hash of a [`Request::Have`], in request order.
    Have {
        have: Vec<bool>,
    },
    /// The answer to [`Request::PathInline`] for a NAR small enough: the
    /// path info and every distinct chunk of the manifest, in its order.
    PathInline {
        narinfo: String,
        manifest: ChunkManifest,
        chunks: Vec<WireChunk>,
    },
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("message is truncated (needed {needed} more bytes at offset {at})")]
    Truncated { at: usize, needed: usize },
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("{what} is {len}, over the limit of {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
    #[error("store path hash is invalid")]
    BadHash,
    #[error("have flags set past the end of the list")]
    BadBits,
    #[error("narinfo text is not UTF-8")]
    BadText,
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let rest = self.buf.len() - self.at;
        if n > rest {
            return Err(WireError::Truncated {
                at: self.at,
                needed: n - rest,
            });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::TooLarge { what, len, max });
        }
        self.take(len)
    }
    /// A count of items, checked against `max` before anything is allocated.
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::TooLarge { what, len, max });
        }
        Ok(len)
    }

    fn hash(&mut self) -> Result<StorePathHash, WireError> {
        let h = std::str::from_utf8(self.take(32)?).map_err(|_| WireError::BadHash)?;
        h.parse().map_err(|_| WireError::BadHash)
    }

    fn id(&mut self) -> Result<ChunkId, WireError> {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.take(32)?);
        Ok(ChunkId(id))
    }
    fn path_info(&mut self) -> Result<(String, ChunkManifest), WireError> {
        let text = self.bytes("narinfo", MAX_NARINFO)?;
        let narinfo = std::str::from_utf8(text).map_err(|_| WireError::BadText)?.to_owned();
        let manifest = ChunkManifest::decode(self.bytes("manifest", MAX_RESPONSE)?)?;
        Ok((narinfo, manifest))
    }

    /// A list of chunks; their data are slices of `shared` if given (the
    /// buffer being read), copies otherwise.
    fn chunks(&mut self, shared: Option<&Bytes>) -> Result<Vec<WireChunk>, WireError> {
        let n = self.count("chunk batch", MAX_BATCH)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.id()?;
            let compressed = self.u8()? != 0;
            let data = self.bytes("chunk", MAX_CHUNK_SIZE as usize + 1024)?;
            let data = match shared {
                Some(b) => b.slice(self.at - data.len()..self.at),
                None => Bytes::copy_from_slice(data),
            };
            chunks.push(WireChunk { id, compressed, data });
        }
        Ok(chunks)
    }

    fn finish(self) -> Result<(), WireError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_chunks(out: &mut Vec<u8>, chunks: &[WireChunk]) {
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&c.id.0);
        out.push(u8::from(c.compressed));
        put_bytes(out, &c.data);
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::PathInfo { hash } => {
                out.push(1);
                out.extend_from_slice(hash.as_str().as_bytes());
            }
            Self::Chunks { ids, compress } => {
                out.push(if *compress { 2 } else { 4 });
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                for id in ids {
                    out.extend_from_slice(&id.0);
                }
            }
            Self::Have { hashes } => {
                out.push(3);
                out.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
                for h in hashes {
                    out.extend_from_slice(h.as_str().as_bytes());
                }
            }
            Self::PathInline { hash, max, compress } => {
                out.push(if *compress { 5 } else { 6 });
                out.extend_from_slice(hash.as_str().as_bytes());
                out.extend_from_slice(&max.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { buf, at: 0 };
        let msg = match r.u8()? {
            1 => Self::PathInfo { hash: r.hash()? },
            tag @ (2 | 4) => {
                let n = r.count("chunk batch", MAX_BATCH)?;
                Self::Chunks {
                    ids: (0..n).map(|_| r.id()).collect::<Result<_, _>>()?,
                    compress: tag == 2,
                }
            }
            3 => {
                let n = r.count("have list", MAX_HAVE)?;
                Self::Have {
                    hashes: (0..n).map(|_| r.hash()).collect::<Result<_, _>>()?,
                }
            }
            tag @ (5 | 6) => Self::PathInline {
                hash: r.hash()?,
                max: r.u32()?,
                compress: tag == 5,
            },
            t => return Err(WireError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::PathInfo { narinfo, manifest } => {
                out.push(1);
                put_bytes(&mut out, narinfo.as_bytes());
                put_bytes(&mut out, &manifest.encode());
            }
            Self::NotFound => out.push(2),
            Self::Chunks { chunks } => {
                out.push(3);
                put_chunks(&mut out, chunks);
            }
            Self::Busy => out.push(4),
            Self::Have { have } => {
                out.push(5);
                out.extend_from_slice(&(have.len() as u32).to_le_bytes());
                let mut bits = vec![0u8; have.len().div_ceil(8)];
                for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
                    bits[i / 8] |= 1 << (i % 8);
                }
                out.extend_from_slice(&bits);
            }
            Self::PathInline {
                narinfo,
                manifest,
                chunks,
            } => {
                out.push(6);
                put_bytes(&mut out, narinfo.as_bytes());
                put_bytes(&mut out, &manifest.encode());
                put_chunks(&mut out, chunks);
            }
        }
        out
    }

    /// The encoding in pieces whose concatenation is [`Response::encode`]:
    /// chunk data is not copied into one buffer (the stream copies it
    /// anyway as it frames and encrypts).
    pub fn encode_parts(&self) -> Vec<Bytes> {
        let (mut head, chunks) = match self {
            Self::Chunks { chunks } => (vec![3], chunks),
            Self::PathInline {
                narinfo,
                manifest,
                chunks,
            } => {
                let mut head = vec![6];
                put_bytes(&mut head, narinfo.as_bytes());
                put_bytes(&mut head, &manifest.encode());
                (head, chunks)
            }
            _ => return vec![Bytes::from(self.encode())],
        };
        let mut parts = Vec::with_capacity(2 * chunks.len() + 1);
        head.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for c in chunks {
            head.extend_from_slice(&c.id.0);
            head.push(u8::from(c.compressed));
            head.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
            parts.push(Bytes::from(std::mem::take(&mut head)));
            parts.push(c.data.clone());
        }
        if !head.is_empty() {
            parts.push(Bytes::from(head));
        }
        parts
    }

    /// Decodes a response, copying chunk data out of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        Self::decode_from(buf, None)
    }

    /// Decodes a response whose chunk data are slices of `buf` (no copy).
    pub fn decode_shared(buf: &Bytes) -> Result<Self, WireError> {
        Self::decode_from(buf, Some(buf))
    }

    fn decode_from(buf: &[u8], shared: Option<&Bytes>) -> Result<Self, WireError> {
        let mut r = Reader { buf, at: 0 };
        let msg = match r.u8()? {
            1 => {
                let (narinfo, manifest) = r.path_info()?;
                Self::PathInfo { narinfo, manifest }
            }
            2 => Self::NotFound,
            3 => Self::Chunks {
                chunks: r.chunks(shared)?,
            },
            4 => Self::Busy,
            5 => {
                let n = r.count("have list", MAX_HAVE)?;
                let bits = r.take(n.div_ceil(8))?;
                // Bits past the count must be zero: one encoding per answer.
                if n % 8 != 0 && bits[n / 8] >> (n % 8) != 0 {
                    return Err(WireError::BadBits);
                }
                Self::Have {
                    have: (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect(),
                }
            }
            6 => {
                let (narinfo, manifest) = r.path_info()?;
                Self::PathInline {
                    narinfo,
                    manifest,
                    chunks: r.chunks(shared)?,
                }
            }
            t => return Err(WireError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            any::<[u8; 20]>().prop_map(|b| Request::PathInfo {
                hash: StorePathHash::from_bytes(&b)
            }),
            (
                proptest::collection::vec(any::<[u8; 32]>(), 0..=MAX_BATCH),
                any::<bool>()
            )
                .prop_map(|(ids, compress)| {
                    Request::Chunks {
                        ids: ids.into_iter().map(ChunkId).collect(),
                        compress,
                    }
                }),
            proptest::collection::vec(any::<[u8; 20]>(), 0..=MAX_HAVE).prop_map(|hs| Request::Have {
                hashes: hs.iter().map(StorePathHash::from_bytes).collect()
            }),
            (any::<[u8; 20]>(), any::<u32>(), any::<bool>()).prop_map(|(b, max, compress)| Request::PathInline {
                hash: StorePathHash::from_bytes(&b),
                max,
                compress
            }),
        ]
    }

    fn arb_path_info() -> impl Strategy<Value = (String, ChunkManifest)> {
        ("\\PC{0,200}", crate::manifest::tests::arb_manifest())
    }

    fn arb_chunks() -> impl Strategy<Value = Vec<WireChunk>> {
        proptest::collection::vec(
            (
                any::<[u8; 32]>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..300),
            ),
            0..8,
        )
        .prop_map(|cs| {
            cs.into_iter()
                .map(|(id, compressed, data)| WireChunk {
                    id: ChunkId(id),
                    compressed,
                    data: data.into(),
                })
                .collect()
        })
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::NotFound),
            Just(Response::Busy),
            proptest::collection::vec(any::<bool>(), 0..=MAX_HAVE).prop_map(|have| Response::Have { have }),
            arb_path_info().prop_map(|(narinfo, manifest)| Response::PathInfo { narinfo, manifest }),
            arb_chunks().prop_map(|chunks| Response::Chunks { chunks }),
            (arb_path_info(), arb_chunks()).prop_map(|((narinfo, manifest), chunks)| Response::PathInline {
                narinfo,
                manifest,
                chunks
            }),
        ]
    }

    #[test]
    fn limits_are_enforced_before_allocating() {
        let mut big = vec![2u8];
        big.extend_from_slice(&(MAX_BATCH as u32 + 1).to_le_bytes());
        assert!(matches!(Request::decode(&big), Err(WireError::TooLarge { .. })));
        let mut huge = vec![1u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Response::decode(&huge), Err(WireError::TooLarge { .. })));
        assert_eq!(Request::decode(&[9]), Err(WireError::UnknownTag(9)));
        assert_eq!(Response::decode(&[2, 0]), Err(WireError::Trailing(1)));
        let mut many = vec![3u8];
        many.extend_from_slice(&(MAX_HAVE as u32 + 1).to_le_bytes());
        assert!(matches!(Request::decode(&many), Err(WireError::TooLarge { .. })));
        // Three flags, with a bit set past the third.
        assert_eq!(Response::decode(&[5, 3, 0, 0, 0, 0b1001]), Err(WireError::BadBits));
    }

    #[test]
    fn path_keys_differ_per_path() {
        let a = StorePathHash::from_bytes(&[1; 20]);
        let b = StorePathHash::from_bytes(&[2; 20]);
        assert_ne!(path_key(&a), path_key(&b));
        assert_eq!(path_key(&a), path_key(&a));
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in arb_request()) {
            prop_assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn responses_round_trip(r in arb_response()) {
            prop_assert_eq!(Response::decode(&r.encode()).unwrap(), r.clone());
            let parts: Vec<u8> = r.encode_parts().concat();
            prop_assert_eq!(&parts, &r.encode(), "the parts make the encoding");
            prop_assert_eq!(Response::decode_shared(&Bytes::from(parts)).unwrap(), r);
        }

        #[test]
        fn truncated_messages_are_rejected(r in arb_response(), cut in 1usize..50) {
            let enc = r.encode();
            let cut = cut.min(enc.len());
            prop_assert!(Response::decode(&enc[..enc.len() - cut]).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }
}
