//! How a node lies to its peers, for the tests that show fetchers catch it.
//! Only test builds (feature `test-hooks`) can configure anything but
//! [`Lie::Honest`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use libp2p::request_response::ResponseChannel;
use nixswarm_protocol::wire::Response;

use nixswarm_protocol::{ChunkId, ChunkManifest, ChunkRef};

use crate::shelf::Shelves;

/// What a lying node does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lie {
    #[default]
    Honest,
    /// Chunks with one byte changed (somewhere in the chunk, not always
    /// byte 0), under their real ids.
    Chunks,
    /// A manifest of its own: the same NarHash, NarSize and chunk sizes, but
    /// chunks with one byte changed, named by their own BLAKE3 ids, which it
    /// then serves. Every chunk verifies; only the whole NAR does not.
    Manifest,
    /// Claims paths and takes requests, but never answers one (each waits
    /// for the asker's request timeout).
    Silent,
    /// Says it holds every path it is asked about (`Have`), then answers
    /// every lookup "not found".
    FalseClaims,
}

/// A server's lie and what it needs to keep telling it.
#[derive(Debug, Default)]
pub struct Liar {
    lie: Lie,
    /// Fake chunk id to the real one it was made from.
    fakes: Mutex<HashMap<ChunkId, ChunkId>>,
    /// Requests a silent liar holds unanswered (the oldest are let go).
    parked: Mutex<VecDeque<ResponseChannel<Response>>>,
}

/// Requests a silent liar holds at once.
const MAX_PARKED: usize = 1024;

/// Changes one byte of `data`; where depends on the data.
fn alter(data: &mut [u8]) {
    if data.is_empty() {
        return;
    }
    let i = (usize::from(data[data.len() / 2]) * 7919 + data.len() / 3) % data.len();
    data[i] ^= 0x5a;
}

impl Liar {
    /// True if this server tells the truth.
    pub fn is_honest(&self) -> bool {
        self.lie == Lie::Honest
    }

    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub fn new(lie: Lie) -> Self {
        Self {
            lie,
            fakes: Mutex::default(),
            parked: Mutex::default(),
        }
    }

    /// True if this server claims every path and has none.
    pub fn claims_everything(&self) -> bool {
        self.lie == Lie::FalseClaims
    }

    /// True if this server answers nothing.
    pub fn is_silent(&self) -> bool {
        self.lie == Lie::Silent
    }

    /// Holds a request unanswered.
    pub fn park(&self, channel: ResponseChannel<Response>) {
        let mut p = self.parked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.len() >= MAX_PARKED {
            p.pop_front();
        }
        p.push_back(channel);
    }

    fn fakes(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, ChunkId>> {
        self.fakes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The manifest to send for a path.
    pub fn manifest(&self, store: &Shelves, real: ChunkManifest) -> ChunkManifest {
        if self.lie != Lie::Manifest {
            return real;
        }
        let mut chunks = Vec::with_capacity(real.chunks.len());
        for c in &real.chunks {
            let Ok(Some(data)) = store.read_chunk(&c.id) else {
                return real;
            };
            let mut data = data.to_vec();
            alter(&mut data);
            let fake = ChunkId(*blake3::hash(&data).as_bytes());
            self.fakes().insert(fake, c.id);
            chunks.push(ChunkRef { id: fake, size: c.size });
        }
        ChunkManifest::new(real.nar_hash, real.nar_size, chunks).unwrap_or(real)
    }

    /// The bytes to send for chunk `id`.
    pub fn chunk(&self, store: &Shelves, id: &ChunkId) -> Option<Vec<u8>> {
        let real = match self.lie {
            Lie::Manifest => self.fakes().get(id).copied(),
            _ => None,
        };
        let mut data = store.read_chunk(real.as_ref().unwrap_or(id)).ok()??.to_vec();
        if self.lie == Lie::Chunks || real.is_some() {
            alter(&mut data);
        }
        Some(data)
    }
}
