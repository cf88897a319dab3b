//! `.narinfo` files: parse and print, with every field Nix writes, and the
//! trust decision (a trusted signature, or a valid content address).

use std::fmt::{self, Write as _};

use thiserror::Error;

use crate::content_address::ContentAddress;
use crate::hash::{HashError, Sha256Hash};
use crate::signature::{KeyError, PublicKey, Signature, fingerprint};
use crate::store_path::{StorePath, StorePathError, StorePathHash};

/// What is wrong in a narinfo, and on which line (1-based; 0 for the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("narinfo line {line}: {kind}")]
pub struct NarInfoError {
    pub line: usize,
    pub kind: NarInfoErrorKind,
}

/// The kinds of narinfo error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoErrorKind {
    #[error("expected \"Key: value\", got {0:?}")]
    NotKeyValue(String),
    #[error("the last line has no terminating newline")]
    Unterminated,
    #[error("field {0} appears twice")]
    Duplicate(&'static str),
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("{field}: {source}")]
    StorePath {
        field: &'static str,
        source: StorePathError,
    },
    #[error("{field}: {source}")]
    Hash { field: &'static str, source: HashError },
    #[error("{field}: {value:?} is not a non-negative integer")]
    Number { field: &'static str, value: String },
    #[error("Sig: {0}")]
    Signature(KeyError),
    #[error("NarSize is 0")]
    EmptyNar,
}

/// A parsed narinfo. Fields in the order Nix writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root. Not signed.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, `br`... Not signed. Nix reads a missing
    /// `Compression` as `bzip2`, and so do we.
    pub compression: String,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub sigs: Vec<Signature>,
    /// The raw `CA:` value, if any.
    pub ca: Option<String>,
}

/// Why a narinfo is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A `Sig` verifies against the named trusted key.
    Signed(String),
    /// No trusted signature, but the store path is the one its `CA` implies:
    /// Nix accepts such paths unsigned, and so do we.
    ContentAddressed,
}

fn parse_u64(field: &'static str, v: &str) -> Result<u64, NarInfoErrorKind> {
    v.parse().map_err(|_| NarInfoErrorKind::Number {
        field,
        value: v.to_owned(),
    })
}

fn parse_hash(field: &'static str, v: &str) -> Result<Sha256Hash, NarInfoErrorKind> {
    v.parse().map_err(|source| NarInfoErrorKind::Hash { field, source })
}

fn set<T>(slot: &mut Option<T>, field: &'static str, v: T) -> Result<(), NarInfoErrorKind> {
    if slot.replace(v).is_some() {
        return Err(NarInfoErrorKind::Duplicate(field));
    }
    Ok(())
}

impl NarInfo {
    /// The hashes of the paths this one refers to, itself left out.
    pub fn reference_hashes(&self) -> Vec<StorePathHash> {
        let own = self.store_path.hash();
        self.references
            .iter()
            .map(StorePath::hash)
            .filter(|h| *h != own)
            .collect()
    }

    /// Parses narinfo text. Unknown keys are ignored, as Nix does.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut sigs = Vec::new();
        let mut ca = None;

        let mut rest = text;
        let mut line_no = 0;
        while !rest.is_empty() {
            line_no += 1;
            let err = |kind| NarInfoError { line: line_no, kind };
            let (line, tail) = rest.split_once('\n').ok_or(err(NarInfoErrorKind::Unterminated))?;
            rest = tail;
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| err(NarInfoErrorKind::NotKeyValue(line.chars().take(80).collect())))?;
            let path = |field, v: &str| {
                StorePath::from_base_name(v)
                    .or_else(|_| v.parse())
                    .map_err(|source| NarInfoErrorKind::StorePath { field, source })
            };
            let r = match key {
                "StorePath" => {
                    let p = value.parse().map_err(|source| NarInfoErrorKind::StorePath {
                        field: "StorePath",
                        source,
                    });
                    p.and_then(|p| set(&mut store_path, "StorePath", p))
                }
                "URL" => set(&mut url, "URL", value.to_owned()),
                "Compression" => set(&mut compression, "Compression", value.to_owned()),
                "FileHash" => parse_hash("FileHash", value).and_then(|h| set(&mut file_hash, "FileHash", h)),
                "FileSize" => parse_u64("FileSize", value).and_then(|n| set(&mut file_size, "FileSize", n)),
                "NarHash" => parse_hash("NarHash", value).and_then(|h| set(&mut nar_hash, "NarHash", h)),
                "NarSize" => parse_u64("NarSize", value).and_then(|n| set(&mut nar_size, "NarSize", n)),
                "References" => value
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(|r| path("References", r))
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|refs| set(&mut references, "References", refs)),
                "Deriver" if value == "unknown-deriver" => Ok(()),
                "Deriver" => path("Deriver", value).and_then(|d| set(&mut deriver, "Deriver", d)),
                "Sig" => value.parse().map(|s| sigs.push(s)).map_err(NarInfoErrorKind::Signature),
                "CA" => set(&mut ca, "CA", value.to_owned()),
                _ => Ok(()),
            };
            r.map_err(err)?;
        }
        let missing = |f| NarInfoError {
            line: 0,
            kind: NarInfoErrorKind::Missing(f),
        };
        let nar_size = nar_size.ok_or(missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError {
                line: 0,
                kind: NarInfoErrorKind::EmptyNar,
            });
        }
        Ok(Self {
            store_path: store_path.ok_or(missing("StorePath"))?,
            url: url.filter(|u| !u.is_empty()).ok_or(missing("URL"))?,
            compression: compression
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(missing("NarHash"))?,
            nar_size,
            references: references.unwrap_or_default(),
            deriver,
            sigs,
            ca,
        })
    }

    /// The fingerprint signatures are made over.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.store_path, &self.nar_hash, self.nar_size, &self.references)
    }

    /// Decides whether to trust this narinfo, following Nix's rule: a
    /// signature by one of `keys`, or else a content address that implies
    /// exactly this store path. `None` means untrusted.
    pub fn trust(&self, keys: &[PublicKey]) -> Option<Trust> {
        let fp = self.fingerprint();
        for sig in &self.sigs {
            if let Some(k) = keys.iter().find(|k| k.verify(&fp, sig)) {
                return Some(Trust::Signed(k.name().to_owned()));
            }
        }
        let ca: ContentAddress = self.ca.as_deref()?.parse().ok()?;
        // A recursive sha256 address is the NAR hash itself: it must agree.
        if let ContentAddress::Recursive(h) = ca
            && h != self.nar_hash
        {
            return None;
        }
        ca.matches(&self.store_path, &self.references)
            .then_some(Trust::ContentAddressed)
    }

    /// True when `trust` leaves the NarHash unchecked: an unsigned flat or
    /// text path, whose NarHash and NarSize are whatever the sender wrote
    /// (a recursive address is the NarHash itself). Only a NAR that passes
    /// [`crate::NarCheck`] shows such a narinfo to be right, so it must not
    /// be handed on before one has.
    pub fn unbound(&self, trust: &Trust) -> bool {
        *trust == Trust::ContentAddressed
            && matches!(
                self.ca.as_deref().and_then(|c| c.parse().ok()),
                Some(ContentAddress::Flat(_) | ContentAddress::Text(_))
            )
    }

    /// Prints the narinfo exactly as Nix 2.8 does.
    pub fn to_text(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(512);
        let _ = writeln!(s, "StorePath: {}", self.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash);
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<String> = self.references.iter().map(StorePath::base_name).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.base_name());
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        f.write_str(&s)
    }
}
