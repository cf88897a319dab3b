//! Nix's base-32 encoding ("nixbase32").
//!
//! Nix writes hashes in base 32 with its own alphabet (no `e`, `o`, `u`, `t`)
//! and, unlike RFC 4648, starts from the *last* 5-bit group. A 20-byte store
//! path hash becomes 32 characters, a 32-byte sha256 becomes 52.

use thiserror::Error;

/// The 32 characters Nix uses, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a nixbase32 string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A character outside [`ALPHABET`].
    #[error("invalid nixbase32 character {character:?} at position {position}")]
    InvalidCharacter { character: char, position: usize },
    /// The string length is not the encoded length of `expected` bytes.
    #[error("nixbase32 string has length {actual}, expected {expected} characters")]
    InvalidLength { actual: usize, expected: usize },
    /// The leading character carries bits beyond the decoded length.
    #[error("nixbase32 string has non-zero padding bits")]
    NonZeroPadding,
}

/// The length of the nixbase32 encoding of `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// Encodes bytes as nixbase32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = u16::from(bytes[i]) >> j;
        let high = bytes.get(i + 1).map_or(0, |&next| u16::from(next) << (8 - j));
        out.push(char::from(ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    out
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|d| d as u8)
}

/// Decodes a nixbase32 string into exactly `len` bytes.
pub fn decode_exact(s: &str, len: usize) -> Result<Vec<u8>, DecodeError> {
    let expected = encoded_len(len);
    if s.len() != expected {
        return Err(DecodeError::InvalidLength {
            actual: s.len(),
            expected,
        });
    }
    let mut out = vec![0u8; len];
    for (position, &c) in s.as_bytes().iter().enumerate() {
        let d = digit(c).ok_or(DecodeError::InvalidCharacter {
            character: char::from(c),
            position,
        })?;
        let n = expected - 1 - position;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= d << j;
        let carry = u16::from(d) >> (8 - j);
        if let Some(next) = out.get_mut(i + 1) {
            *next |= carry as u8;
        } else if carry != 0 {
            return Err(DecodeError::NonZeroPadding);
        }
    }
    Ok(out)
}

/// Decodes a nixbase32 string of any valid length.
pub fn decode(s: &str) -> Result<Vec<u8>, DecodeError> {
    let len = s.len() * 5 / 8;
    decode_exact(s, len)
}

/// True if every character of `s` is in the nixbase32 alphabet.
pub fn is_valid(s: &str) -> bool {
    s.bytes().all(|c| digit(c).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // sha256("") as Nix prints it (`nix hash to-base32`).
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(encode(&bytes), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            decode_exact("0e", 1),
            Err(DecodeError::InvalidCharacter {
                character: 'e',
                position: 1
            })
        );
        assert_eq!(
            decode_exact("000", 1),
            Err(DecodeError::InvalidLength { actual: 3, expected: 2 })
        );
        // "z0" would need 10 bits for an 8-bit value.
        assert_eq!(decode_exact("z0", 1), Err(DecodeError::NonZeroPadding));
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert!(is_valid(&s));
            prop_assert_eq!(decode_exact(&s, bytes.len()).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(s in "[0-9a-z]{0,60}") {
            let _ = decode(&s);
        }
    }
}
