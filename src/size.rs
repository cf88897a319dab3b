//! Human sizes: `123`, `64K`, `512MiB`, `10G`, `1.5T` (K, M, G, T are powers
//! of 1024; a trailing `B` or `iB` is optional).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let shift = match unit.trim_end_matches("iB").trim_end_matches('B') {
            "" => 0,
            "K" | "k" => 10,
            "M" | "m" => 20,
            "G" | "g" => 30,
            "T" | "t" => 40,
            _ => {
                return Err(format!("size {s:?}: unknown unit {unit:?} (use K, M, G or T)"));
            }
        };
        let too_large = || format!("size {s:?} is too large");
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(1 << shift).map(Self).ok_or_else(too_large);
        }
        let n: f64 = num
            .parse()
            .map_err(|_| format!("size {s:?}: {num:?} is not a number"))?;
        let bytes = n * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(too_large());
        }
        Ok(Self(bytes as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!("123".parse(), Ok(Size(123)));
        assert_eq!("64K".parse(), Ok(Size(64 << 10)));
        assert_eq!("512MiB".parse(), Ok(Size(512 << 20)));
        assert_eq!("10 GB".parse(), Ok(Size(10 << 30)));
        assert_eq!("1.5T".parse(), Ok(Size(3 << 39)));
        assert!("10X".parse::<Size>().is_err());
        assert!("".parse::<Size>().is_err());
        assert!("G".parse::<Size>().is_err());
        assert_eq!(Size(10 << 30).to_string(), "10G");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    proptest! {
        #[test]
        fn display_round_trips(n in any::<u64>().prop_map(|n| n >> 2)) {
            prop_assert_eq!(Size(n).to_string().parse::<Size>(), Ok(Size(n)));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<Size>();
        }
    }
}
