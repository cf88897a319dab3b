//! Human sizes: `123B`, `64K`, `512MiB`, `10G`, `1.5T` (K, M, G, T are
//! powers of 1024; a trailing `B` or `iB` is optional). A number without a
//! unit is refused (is `10` ten bytes or ten gigabytes?), except `0`.

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
            "" if unit.is_empty() && !num.is_empty() && num.chars().all(|c| c == '0' || c == '.') => 0,
            "" if unit.is_empty() && !num.is_empty() => {
                return Err(format!(
                    "size {s:?} has no unit: write {num}B for bytes, or {num}K, {num}M, {num}G, {num}T"
                ));
            }
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
        if self.0 == 0 {
            return write!(f, "0");
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Deserializes a number of bytes, or a string parsed with `FromStr`.
fn bytes_or_str<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(d: D, bytes: fn(u64) -> T) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(0) => Ok(bytes(0)),
        Raw::N(n) => Err(serde::de::Error::custom(format!(
            "{n} has no unit: write \"{n}B\" for bytes, or \"{n}K\", \"{n}M\", \"{n}G\", \"{n}T\""
        ))),
        Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bytes_or_str(d, Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!("123B".parse(), Ok(Size(123)));
        assert_eq!("0".parse(), Ok(Size(0)));
        let e = "10".parse::<Size>().unwrap_err();
        assert!(e.contains("no unit") && e.contains("10B") && e.contains("10G"), "{e}");
        assert_eq!("64K".parse(), Ok(Size(64 << 10)));
        assert_eq!("512MiB".parse(), Ok(Size(512 << 20)));
        assert_eq!("10 GB".parse(), Ok(Size(10 << 30)));
        assert_eq!("1.5T".parse(), Ok(Size(3 << 39)));
        assert!("10X".parse::<Size>().is_err());
        assert!("".parse::<Size>().is_err());
        assert!("G".parse::<Size>().is_err());
        assert_eq!(Size(10 << 30).to_string(), "10G");
        assert_eq!(Size(1000).to_string(), "1000B");
        #[derive(Debug, Deserialize)]
        struct T {
            #[allow(dead_code)]
            s: Size,
        }
        let e = toml::from_str::<T>("s = 10").unwrap_err().to_string();
        assert!(e.contains("no unit"), "{e}");
        assert!(toml::from_str::<T>("s = 0").is_ok());
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

/// How much disk to use: a size, or a percentage of the filesystem that
/// holds the data directory (`10%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Bytes(Size),
    Percent(f64),
}

impl FromStr for Amount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let v: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("amount {s:?}: {p:?} is not a number"))?;
                if !(v > 0.0 && v <= 100.0) {
                    return Err(format!("amount {s:?}: a percentage must be above 0 and at most 100"));
                }
                Ok(Self::Percent(v))
            }
            None => s.parse().map(Self::Bytes),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => b.fmt(f),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bytes_or_str(d, |n| Self::Bytes(Size(n)))
    }
}

pub use nixswarm_node::store::FsSpace;

impl Amount {
    /// Bytes for the store's quota. A percentage is of the space a plain
    /// user may fill on the filesystem holding the store, the reserve kept
    /// ([`FsSpace::usable`]): `100%` leaves [`FsSpace::reserve`] free.
    pub fn bytes(&self, fs: &FsSpace) -> u64 {
        match self {
            Self::Bytes(b) => b.0,
            Self::Percent(p) => (fs.usable() as f64 * p / 100.0) as u64,
        }
    }
}

#[cfg(test)]
mod amount_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_and_percentages() {
        assert_eq!("20G".parse(), Ok(Amount::Bytes(Size(20 << 30))));
        assert_eq!("10%".parse(), Ok(Amount::Percent(10.0)));
        assert_eq!(" 2.5 %".parse(), Ok(Amount::Percent(2.5)));
        assert!("0%".parse::<Amount>().is_err());
        assert!("101%".parse::<Amount>().is_err());
        assert!("x%".parse::<Amount>().is_err());
        let here = FsSpace::of(std::path::Path::new("/nonexistent/below/root")).unwrap();
        assert!(here.size > 0 && here.available <= here.free && here.free <= here.size);
        assert_eq!(Amount::Bytes(Size(5)).bytes(&here), 5);
    }

    #[test]
    fn a_dedicated_disk_at_100_percent_keeps_its_reserve_free() {
        let g = 1u64 << 30;
        // 1 TiB ext4 with 5% for root, nothing else on it.
        let disk = FsSpace {
            size: 1024 * g,
            free: 1024 * g,
            available: 1024 * g - 51 * g,
        };
        assert_eq!(disk.reserve(), 8 * g, "1% capped at 8 GiB");
        assert_eq!(Amount::Percent(100.0).bytes(&disk), 1024 * g - 51 * g - 8 * g);
        assert_eq!(Amount::Percent(50.0).bytes(&disk), (1024 * g - 59 * g) / 2);
        // 100 GiB: 1 GiB reserve; 8 MiB (a test tmpfs): a tenth of it.
        let small = FsSpace {
            size: 100 * g,
            free: 100 * g,
            available: 100 * g,
        };
        assert_eq!(small.reserve(), g);
        let tiny = FsSpace {
            size: 8 << 20,
            free: 8 << 20,
            available: 8 << 20,
        };
        assert_eq!(tiny.reserve(), (8 << 20) / 10);
    }

    proptest! {
        #[test]
        fn a_percentage_never_eats_the_reserve_or_roots_blocks(
            size in 0u64..(1 << 50),
            free_pct in 0u64..=100,
            root_pct in 0u64..=10,
            p in 1u32..=1000,
        ) {
            let free = size / 100 * free_pct;
            let fs = FsSpace { size, free, available: free.saturating_sub(size / 100 * root_pct) };
            let q = Amount::Percent(f64::from(p) / 10.0).bytes(&fs);
            prop_assert!(q + fs.reserve() + (fs.free - fs.available) <= fs.size);
            prop_assert!(fs.reserve() <= fs.size / 10);
        }

        #[test]
        fn display_round_trips(p in 1u32..=1000) {
            let a = Amount::Percent(f64::from(p) / 10.0);
            prop_assert_eq!(a.to_string().parse::<Amount>(), Ok(a));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<Amount>();
        }
    }
}
