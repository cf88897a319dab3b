//! Ed25519 signatures over narinfo fingerprints, with keys in Nix's
//! `name:base64` form (as `nix-store --generate-binary-cache-key` writes them).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use thiserror::Error;

use crate::hash::Sha256Hash;
use crate::store_path::StorePath;

/// Why a key or signature string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("{what} {text:?} is not of the form NAME:BASE64")]
    MissingName { what: &'static str, text: String },
    #[error("{what} named {name:?} is not valid base64")]
    BadBase64 { what: &'static str, name: String },
    #[error("{what} named {name:?} has {actual} bytes, expected {expected}")]
    BadLength {
        what: &'static str,
        name: String,
        actual: usize,
        expected: usize,
    },
    #[error("public key named {0:?} is not a valid ed25519 point")]
    BadPoint(String),
}

fn split_named<const N: usize>(what: &'static str, s: &str) -> Result<(String, [u8; N]), KeyError> {
    let (name, b64) = s
        .trim()
        .split_once(':')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| KeyError::MissingName {
            what,
            text: s.to_owned(),
        })?;
    let bytes = STANDARD.decode(b64).map_err(|_| KeyError::BadBase64 {
        what,
        name: name.to_owned(),
    })?;
    let actual = bytes.len();
    let arr = <[u8; N]>::try_from(bytes).map_err(|_| KeyError::BadLength {
        what,
        name: name.to_owned(),
        actual,
        expected: N,
    })?;
    Ok((name.to_owned(), arr))
}

/// The text Nix signs: `1;<path>;<NarHash>;<NarSize>;<refs>`, references as
/// full paths, sorted, comma-joined, and the hash in nixbase32.
pub fn fingerprint(path: &StorePath, nar_hash: &Sha256Hash, nar_size: u64, references: &[StorePath]) -> String {
    let mut refs: Vec<String> = references.iter().map(ToString::to_string).collect();
    refs.sort();
    refs.dedup();
    format!("1;{path};{nar_hash};{nar_size};{}", refs.join(","))
}

/// A `Sig:` value: the signing key's name and 64 signature bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    key_name: String,
    bytes: [u8; 64],
}

impl Signature {
    /// The name of the key that made it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
}

impl FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (key_name, bytes) = split_named::<64>("signature", s)?;
        Ok(Self { key_name, bytes })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, STANDARD.encode(self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// A trusted public key, `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// The key's name (the part before the colon).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if `sig` is by this key (same name) and verifies over `fingerprint`.
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        sig.key_name == self.name
            && self
                .key
                .verify(
                    fingerprint.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&sig.bytes),
                )
                .is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_named::<32>("public key", s)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPoint(name.clone()))?;
        Ok(Self { name, key })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A secret key, `name:base64(seed ++ public)` (64 bytes), as Nix writes it.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// A key from a 32-byte seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Signs a fingerprint.
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_named::<64>("secret key", s)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[..32]);
        Ok(Self::from_seed(&name, &seed))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert!(matches!(
            "nocolon".parse::<PublicKey>(),
            Err(KeyError::MissingName { .. })
        ));
        assert!(matches!(":abc".parse::<PublicKey>(), Err(KeyError::MissingName { .. })));
        assert!(matches!("k:!!!".parse::<PublicKey>(), Err(KeyError::BadBase64 { .. })));
        assert!(matches!(
            "k:AAAA".parse::<PublicKey>(),
            Err(KeyError::BadLength { actual: 3, .. })
        ));
        assert!(matches!(
            "k:AAAA".parse::<Signature>(),
            Err(KeyError::BadLength { expected: 64, .. })
        ));
    }

    proptest! {
        #[test]
        fn sign_verify_round_trip(seed in any::<[u8; 32]>(), other in any::<[u8; 32]>(), msg in "\\PC{0,100}") {
            let sk = SecretKey::from_seed("k-1", &seed);
            let pk = sk.public_key();
            let sig = sk.sign(&msg);
            prop_assert!(pk.verify(&msg, &sig));
            let altered = msg.clone() + "x";
            prop_assert!(!pk.verify(&altered, &sig));
            prop_assert_eq!(pk.to_string().parse::<PublicKey>().unwrap(), pk.clone());
            prop_assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig.clone());
            if other != seed {
                let wrong = SecretKey::from_seed("k-1", &other).public_key();
                prop_assert!(!wrong.verify(&msg, &sig));
            }
            let renamed: PublicKey = pk.to_string().replacen("k-1", "k-2", 1).parse().unwrap();
            prop_assert!(!renamed.verify(&msg, &sig));
        }
    }
}
