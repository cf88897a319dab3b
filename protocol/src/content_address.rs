//! Content addresses (`CA:` in a narinfo) and the store path they imply.
//!
//! Nix accepts an unsigned narinfo when its path is content-addressed: the
//! store path is recomputed from the `CA` field, the name and the references,
//! and must equal `StorePath` (Nix 2.8, `ValidPathInfo::isContentAddressed`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::hash::{HashError, Sha256Hash};
use crate::store_path::{STORE_DIR, StorePath, StorePathHash};

/// Why a `CA:` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentAddressError {
    #[error("content address {0:?} is not text:..., fixed:... or fixed:r:...")]
    UnknownMethod(String),
    #[error("content address hash: {0}")]
    Hash(#[from] HashError),
}

/// How a content-addressed path was ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentAddress {
    /// `text:sha256:...` (`builtins.toFile`, derivations).
    Text(Sha256Hash),
    /// `fixed:sha256:...`: the hash of a single flat file.
    Flat(Sha256Hash),
    /// `fixed:r:sha256:...`: the hash of the NAR serialisation.
    Recursive(Sha256Hash),
}

impl FromStr for ContentAddress {
    type Err = ContentAddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(h) = s.strip_prefix("text:") {
            Ok(Self::Text(h.parse()?))
        } else if let Some(h) = s.strip_prefix("fixed:r:") {
            Ok(Self::Recursive(h.parse()?))
        } else if let Some(h) = s.strip_prefix("fixed:") {
            Ok(Self::Flat(h.parse()?))
        } else {
            Err(ContentAddressError::UnknownMethod(s.to_owned()))
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(h) => write!(f, "text:{h}"),
            Self::Flat(h) => write!(f, "fixed:{h}"),
            Self::Recursive(h) => write!(f, "fixed:r:{h}"),
        }
    }
}

fn make_store_path(kind: &str, hash_hex_prefixed: &str, name: &str) -> String {
    let s = format!("{kind}:{hash_hex_prefixed}:{STORE_DIR}:{name}");
    let digest: [u8; 32] = Sha256::digest(s.as_bytes()).into();
    let mut compressed = [0u8; 20];
    for (i, b) in digest.iter().enumerate() {
        compressed[i % 20] ^= b;
    }
    StorePathHash::from_bytes(&compressed).to_string()
}

fn make_type(kind: &str, references: &[&StorePath], self_reference: bool) -> String {
    let mut refs: Vec<String> = references.iter().map(ToString::to_string).collect();
    refs.sort();
    refs.dedup();
    let mut t = kind.to_owned();
    for r in refs {
        t.push(':');
        t.push_str(&r);
    }
    if self_reference {
        t.push_str(":self");
    }
    t
}

impl ContentAddress {
    /// The hash part of the store path this content address implies for a
    /// path called `name` with the given references (which may include the
    /// path itself, as a self-reference). `None` where Nix forbids the
    /// combination (references on a flat fixed-output path).
    pub fn implied_hash(&self, name: &str, path: &StorePath, references: &[StorePath]) -> Option<String> {
        let self_ref = references.iter().any(|r| r == path);
        let others: Vec<&StorePath> = references.iter().filter(|r| *r != path).collect();
        let hex = |h: &Sha256Hash| format!("sha256:{}", h.to_hex());
        match self {
            Self::Text(h) if !self_ref => Some(make_store_path(&make_type("text", &others, false), &hex(h), name)),
            Self::Text(_) => None,
            Self::Recursive(h) => Some(make_store_path(&make_type("source", &others, self_ref), &hex(h), name)),
            Self::Flat(h) if references.is_empty() => {
                let inner = Sha256Hash::digest(format!("fixed:out:{}:", hex(h)).as_bytes());
                Some(make_store_path("output:out", &hex(&inner), name))
            }
            Self::Flat(_) => None,
        }
    }

    /// True if `path` is exactly the path this content address implies.
    pub fn matches(&self, path: &StorePath, references: &[StorePath]) -> bool {
        self.implied_hash(path.name(), path, references).as_deref() == Some(path.hash().as_str())
    }
}
