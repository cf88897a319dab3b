//! `nix-cache-info`: the first thing Nix asks a binary cache for.

use std::fmt;

use thiserror::Error;

/// Why a nix-cache-info could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CacheInfoError {
    #[error("nix-cache-info line {line}: expected \"Key: value\"")]
    NotKeyValue { line: usize },
    #[error("nix-cache-info line {line}: {field} {value:?} is not a number")]
    Number {
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("nix-cache-info has no StoreDir")]
    MissingStoreDir,
}

/// The contents of `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub store_dir: String,
    pub want_mass_query: bool,
    /// Lower is tried first; cache.nixos.org says 40.
    pub priority: Option<u32>,
}

impl CacheInfo {
    /// Parses the file; unknown keys are ignored.
    pub fn parse(text: &str) -> Result<Self, CacheInfoError> {
        let mut store_dir = None;
        let mut want_mass_query = false;
        let mut priority = None;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let line_no = i + 1;
            let (k, v) = line
                .split_once(':')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or(CacheInfoError::NotKeyValue { line: line_no })?;
            let num = |field| {
                v.parse::<u32>().map_err(|_| CacheInfoError::Number {
                    line: line_no,
                    field,
                    value: v.to_owned(),
                })
            };
            match k {
                "StoreDir" => store_dir = Some(v.to_owned()),
                "WantMassQuery" => want_mass_query = num("WantMassQuery")? == 1,
                "Priority" => priority = Some(num("Priority")?),
                _ => {}
            }
        }
        Ok(Self {
            store_dir: store_dir.ok_or(CacheInfoError::MissingStoreDir)?,
            want_mass_query,
            priority,
        })
    }
}

impl fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StoreDir: {}", self.store_dir)?;
        writeln!(f, "WantMassQuery: {}", u8::from(self.want_mass_query))?;
        if let Some(p) = self.priority {
            writeln!(f, "Priority: {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_nix_writes() {
        let info = CacheInfo::parse("StoreDir: /nix/store\n").unwrap();
        assert_eq!(
            info,
            CacheInfo {
                store_dir: "/nix/store".into(),
                want_mass_query: false,
                priority: None
            }
        );
        let info = CacheInfo::parse("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n").unwrap();
        assert_eq!(info.priority, Some(40));
        assert!(info.want_mass_query);
        assert_eq!(
            CacheInfo::parse("Priority: x\n"),
            Err(CacheInfoError::Number {
                line: 1,
                field: "Priority",
                value: "x".into()
            })
        );
        assert_eq!(
            CacheInfo::parse("garbage"),
            Err(CacheInfoError::NotKeyValue { line: 1 })
        );
    }

    proptest! {
        #[test]
        fn round_trip(dir in "/[a-z/]{1,20}", mass in any::<bool>(), priority in proptest::option::of(0u32..1000)) {
            let info = CacheInfo { store_dir: dir, want_mass_query: mass, priority };
            prop_assert_eq!(CacheInfo::parse(&info.to_string()).unwrap(), info);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = CacheInfo::parse(&s);
        }
    }
}
