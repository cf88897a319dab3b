//! The nixswarm node: the chunk store that holds NARs as content-defined,
//! BLAKE3-named chunks, and the libp2p swarm that announces them on a
//! private Kademlia DHT and serves and fetches them as verified chunks.
//!
//! - [`store`]: [`ChunkStore`] (ingest, verified reads, LRU quota), behind the
//!   [`MetaDb`] trait with redb and in-memory backends.
//! - [`installed`]: donor mode, serving signed installed paths from a Nix
//!   store's own files.
//! - [`shelf`]: what a node serves and announces ([`Shelf`]).
//! - [`share`]: what may leave the machine ([`SharePolicy`]).
//! - [`nar`]: canonical NAR serialisation of a path on disk.
//! - [`p2p`]: [`Node`] (swarm task, server, announcer) and the
//!   [`p2p::Fetcher`] that stripes chunk downloads across providers.

pub mod installed;
pub mod nar;
pub mod p2p;
pub mod share;
pub mod shelf;
pub mod store;

pub use p2p::{Node, NodeConfig, NodeError, NodeHandle, NodeStatus};
pub use share::SharePolicy;
pub use shelf::{Shelf, ShelfError, Shelves};
pub use store::StoreEvent;
pub use store::{
    AsyncStore, ChunkStore, Committed, Decode, Ingest, IngestWriter, MemMeta, MetaDb, NarHandle, NarReader, RedbMeta,
    StoreError, StoreOptions, StoreStats,
};
