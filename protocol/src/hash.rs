//! sha256 hashes as Nix writes them: `sha256:<nixbase32>`, also accepted in
//! base16 and SRI (`sha256-<base64>`) form.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::nixbase32;

/// Why a hash string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("hash {0:?} does not name its algorithm (expected \"sha256:...\")")]
    MissingAlgorithm(String),
    #[error("unsupported hash algorithm {0:?} (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
    #[error("hash {0:?} is neither base16, nixbase32 nor base64 of 32 bytes")]
    BadEncoding(String),
}

/// A sha256 digest (NarHash, FileHash, a content address).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Hashes `data`.
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses the digest alone (no `sha256:` prefix) in base16, nixbase32 or base64.
    pub fn from_digest_str(s: &str) -> Result<Self, HashError> {
        let bytes = match s.len() {
            64 => (0..32)
                .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>(),
            52 => nixbase32::decode_exact(s, 32).ok(),
            44 => STANDARD.decode(s).ok(),
            _ => None,
        };
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Self)
            .ok_or_else(|| HashError::BadEncoding(s.to_owned()))
    }

    /// The digest in nixbase32, without prefix.
    pub fn to_nixbase32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    /// The digest in lowercase base16, without prefix.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl FromStr for Sha256Hash {
    type Err = HashError;

    /// Parses `sha256:<digest>` or SRI `sha256-<base64>`.
    fn from_str(s: &str) -> Result<Self, HashError> {
        let (algo, digest) = s
            .split_once(':')
            .or_else(|| s.split_once('-'))
            .ok_or_else(|| HashError::MissingAlgorithm(s.to_owned()))?;
        if algo != "sha256" {
            return Err(HashError::UnsupportedAlgorithm(algo.to_owned()));
        }
        Self::from_digest_str(digest)
    }
}

impl fmt::Display for Sha256Hash {
    /// Nix's canonical form: `sha256:<nixbase32>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nixbase32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_all_encodings_of_the_same_digest() {
        let h = Sha256Hash::digest(b"");
        let b32: Sha256Hash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
            .parse()
            .unwrap();
        let b16: Sha256Hash = format!("sha256:{}", h.to_hex()).parse().unwrap();
        let sri: Sha256Hash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".parse().unwrap();
        assert_eq!(h, b32);
        assert_eq!(h, b16);
        assert_eq!(h, sri);
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        assert!(matches!(
            "md5:abc".parse::<Sha256Hash>(),
            Err(HashError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "abc".parse::<Sha256Hash>(),
            Err(HashError::MissingAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:zz".parse::<Sha256Hash>(),
            Err(HashError::BadEncoding(_))
        ));
    }

    proptest! {
        #[test]
        fn display_round_trips(bytes in any::<[u8; 32]>()) {
            let h = Sha256Hash(bytes);
            prop_assert_eq!(h.to_string().parse::<Sha256Hash>().unwrap(), h);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Sha256Hash>();
        }
    }
}
