//! Pinned paths: kept regardless of eviction. A small file in the store
//! directory, one store-path hash per line, replaced atomically.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use nixswarm_protocol::StorePathHash;

use super::{ChunkStore, Result, StoreError};

/// The set of pinned hashes and the file that keeps it.
#[derive(Debug)]
pub(super) struct Pins {
    file: PathBuf,
    pub(super) set: HashSet<StorePathHash>,
}

impl Pins {
    pub(super) fn load(dir: &Path) -> Result<Self> {
        let file = dir.join("pins");
        let set = match std::fs::read_to_string(&file) {
            Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(source) => {
                return Err(StoreError::Io {
                    context: format!("reading {}", file.display()),
                    source,
                });
            }
        };
        Ok(Self { file, set })
    }

    fn save(&self) -> Result<()> {
        let io = |source| StoreError::Io {
            context: format!("writing {}", self.file.display()),
            source,
        };
        let tmp = self.file.with_extension("tmp");
        let sorted: BTreeSet<&str> = self.set.iter().map(StorePathHash::as_str).collect();
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        for h in sorted {
            writeln!(f, "{h}").map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)
    }
}

impl ChunkStore {
    /// The closure of a stored path among stored paths (following the
    /// narinfos' References), and the referenced paths not stored.
    pub fn closure(&self, hash: &StorePathHash) -> Result<(Vec<StorePathHash>, Vec<StorePathHash>)> {
        let (mut held, mut missing) = (Vec::new(), Vec::new());
        let mut seen = HashSet::from([*hash]);
        let mut queue = VecDeque::from([*hash]);
        while let Some(h) = queue.pop_front() {
            let Some(info) = self.narinfo(&h)? else {
                missing.push(h);
                continue;
            };
            held.push(h);
            for r in &info.references {
                if seen.insert(r.hash()) {
                    queue.push_back(r.hash());
                }
            }
        }
        Ok((held, missing))
    }

    /// Pins paths: they are never evicted (they still count against the
    /// quota). Paths not stored yet are pinned when they arrive.
    pub fn pin(&self, hashes: &[StorePathHash]) -> Result<()> {
        let mut state = self.state();
        state.pins.set.extend(hashes.iter().copied());
        state.pins.save()
    }

    /// Unpins paths; they become evictable again.
    pub fn unpin(&self, hashes: &[StorePathHash]) -> Result<()> {
        let mut state = self.state();
        for h in hashes {
            state.pins.set.remove(h);
        }
        state.pins.save()
    }

    /// Every pinned hash.
    pub fn pinned(&self) -> Vec<StorePathHash> {
        let mut v: Vec<_> = self.state().pins.set.iter().copied().collect();
        v.sort();
        v
    }
}
