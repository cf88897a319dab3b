//! Pure nixswarm protocol types: everything two nodes, a gateway and the Nix
//! client must agree on, with no I/O, no async and no networking.
//!
//! - [`nixbase32`]: Nix's base-32 encoding.
//! - [`hash`]: sha256 hashes in Nix's textual forms.
//! - [`store_path`]: store paths and their 32-character hash part.
//! - [`narinfo`]: `.narinfo` parse/print and the trust decision.
//! - [`signature`]: ed25519 keys and signatures over narinfo fingerprints.
//! - [`content_address`]: `CA:` values and the store path they imply.
//! - [`cache_info`] parses and prints `nix-cache-info`.
//! - [`manifest`]: chunk manifests (BLAKE3-named content-defined chunks).
//! - [`nar_check`]: a NAR checked against its narinfo (size, hash, content address).
//! - [`wire`]: transfer-protocol messages and the DHT key of a path.

pub mod cache_info;
pub mod content_address;
pub mod hash;
pub mod ip;
pub mod manifest;
pub mod nar_check;
pub mod narinfo;
pub mod nixbase32;
pub mod signature;
pub mod store_path;
pub mod wire;

pub use cache_info::CacheInfo;
pub use content_address::ContentAddress;
pub use hash::Sha256Hash;
pub use manifest::{ChunkId, ChunkManifest, ChunkRef, ManifestError};
pub use nar_check::{NarCheck, NarCheckError};
pub use narinfo::{NarInfo, NarInfoError, NarInfoErrorKind, Trust};
pub use signature::{PublicKey, SecretKey, Signature, fingerprint};
pub use store_path::{StorePath, StorePathHash};

/// The public key of cache.nixos.org, the default trusted key.
pub const CACHE_NIXOS_ORG_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
