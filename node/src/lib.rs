//! The nixswarm node. Today: the chunk store that holds NARs as
//! content-defined, BLAKE3-named chunks. Next: the libp2p swarm that
//! announces and serves them.
//!
//! - [`store`]: [`ChunkStore`] (ingest, verified reads, LRU quota), behind the
//!   [`MetaDb`] trait with redb and in-memory backends.

pub mod store;

pub use store::{
    ChunkStore, Ingest, MemMeta, MetaDb, NarHandle, NarReader, RedbMeta, StoreError, StoreOptions,
    StoreStats,
};
