//! Store paths: `/nix/store/<hash>-<name>`, and the 32-character hash part a
//! substituter is asked for (`GET /<hash>.narinfo`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::nixbase32;

/// The store directory every path in the public cache lives under.
pub const STORE_DIR: &str = "/nix/store";
/// Length of the hash part in characters.
pub const HASH_LEN: usize = 32;
const MAX_NAME_LEN: usize = 211;

/// Why a store path (or its hash part) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("store path {0:?} is not under {STORE_DIR}/")]
    NotInStore(String),
    #[error("store path hash {0:?} is not 32 nixbase32 characters")]
    BadHash(String),
    #[error("store path {0:?} has no '-' between hash and name")]
    MissingName(String),
    #[error("store path name {name:?} is invalid: {reason}")]
    BadName { name: String, reason: &'static str },
}

/// The hash part of a store path: 32 nixbase32 characters (20 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash([u8; HASH_LEN]);

impl StorePathHash {
    /// The hash as the 32-character string Nix prints.
    pub fn as_str(&self) -> &str {
        // Only ever built from validated nixbase32 (ASCII).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 20 bytes the characters encode.
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        if let Ok(v) = nixbase32::decode_exact(self.as_str(), 20) {
            out.copy_from_slice(&v);
        }
        out
    }

    /// Builds the hash part from its 20 bytes.
    pub fn from_bytes(bytes: &[u8; 20]) -> Self {
        let s = nixbase32::encode(bytes);
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(s.as_bytes());
        Self(out)
    }
}

impl FromStr for StorePathHash {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != HASH_LEN || nixbase32::decode_exact(s, 20).is_err() {
            return Err(StorePathError::BadHash(s.to_owned()));
        }
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(s.as_bytes());
        Ok(Self(out))
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathHash({})", self.as_str())
    }
}

/// A store path under [`STORE_DIR`]: hash part and name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: StorePathHash,
    name: String,
}

fn validate_name(name: &str) -> Result<(), StorePathError> {
    let bad = |reason| StorePathError::BadName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("longer than 211 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("starts with '.'"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+-._?=".contains(c);
    if !name.chars().all(allowed) {
        return Err(bad("contains a character outside [A-Za-z0-9+-._?=]"));
    }
    Ok(())
}

impl StorePath {
    /// Builds a store path from its parts, validating the name.
    pub fn new(hash: StorePathHash, name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        Ok(Self {
            hash,
            name: name.to_owned(),
        })
    }

    /// Parses the base name, `<hash>-<name>` (as in References and Deriver).
    pub fn from_base_name(s: &str) -> Result<Self, StorePathError> {
        let hash = s.get(..HASH_LEN).ok_or_else(|| StorePathError::BadHash(s.to_owned()))?;
        let hash: StorePathHash = hash.parse()?;
        let name = s
            .get(HASH_LEN..)
            .and_then(|rest| rest.strip_prefix('-'))
            .ok_or_else(|| StorePathError::MissingName(s.to_owned()))?;
        Self::new(hash, name)
    }

    /// The hash part.
    pub fn hash(&self) -> StorePathHash {
        self.hash
    }

    /// The name after the hash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    /// Parses a full path, `/nix/store/<hash>-<name>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(s.to_owned()))?;
        Self::from_base_name(base)
    }
}

impl fmt::Display for StorePath {
    /// The full path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_real_paths() {
        let p: StorePath = "/nix/store/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-b-dir".parse().unwrap();
        assert_eq!(p.hash().as_str(), "iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1");
        assert_eq!(p.name(), "b-dir");
        assert_eq!(p.to_string(), "/nix/store/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-b-dir");
        assert_eq!(StorePath::from_base_name(&p.base_name()).unwrap(), p);
    }

    #[test]
    fn rejects_invalid_paths() {
        let err = |s: &str| s.parse::<StorePath>().unwrap_err();
        assert!(matches!(
            err("/usr/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-x"),
            StorePathError::NotInStore(_)
        ));
        assert!(matches!(
            err("/nix/store/eqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-x"),
            StorePathError::BadHash(_)
        ));
        assert!(matches!(
            err("/nix/store/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1"),
            StorePathError::MissingName(_)
        ));
        assert!(matches!(
            err("/nix/store/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-a/b"),
            StorePathError::BadName { .. }
        ));
        assert!(matches!(
            err("/nix/store/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-../x"),
            StorePathError::BadName { .. }
        ));
        assert!(matches!(
            err("/nix/store/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-.x"),
            StorePathError::BadName { .. }
        ));
        assert!("../../etc/passwd00000000000000000".parse::<StorePathHash>().is_err());
    }

    proptest! {
        #[test]
        fn round_trip(bytes in any::<[u8; 20]>(), name in "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,40}") {
            let hash = StorePathHash::from_bytes(&bytes);
            prop_assert_eq!(hash.to_bytes(), bytes);
            let p = StorePath::new(hash, &name).unwrap();
            prop_assert_eq!(p.to_string().parse::<StorePath>().unwrap(), p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<StorePath>();
            let _ = StorePath::from_base_name(&s);
            let _ = s.parse::<StorePathHash>();
        }
    }
}
