//! Reading the Nix database (`nix/var/nix/db/db.sqlite`) read-only: valid
//! paths with their NAR hash and size, references, deriver, signatures and
//! content address. Each query is one short read transaction, so the Nix
//! daemon writing meanwhile is never held up for long (SQLite's WAL lets it
//! write while we read; a busy timeout covers the rest).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The tables of Nix's schema this reader uses, as Nix creates them: for
/// tests and benchmarks that write a database of their own.
pub const SCHEMA: &str = "
create table ValidPaths (id integer primary key autoincrement not null, path text unique not null,
  hash text not null, registrationTime integer not null, deriver text, narSize integer,
  ultimate integer, sigs text, ca text);
create table Refs (referrer integer not null, reference integer not null, primary key (referrer, reference));";

/// Why the Nix database could not be read.
#[derive(Debug, thiserror::Error)]
#[error("Nix database {path}: {message}")]
pub struct NixDbError {
    pub path: PathBuf,
    pub message: String,
}

/// A valid path as the Nix database records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPath {
    pub id: i64,
    /// Full store path, `/nix/store/<hash>-<name>`.
    pub path: String,
    /// `sha256:<base16>` as Nix stores it.
    pub nar_hash: String,
    pub nar_size: u64,
    pub registration_time: i64,
    pub deriver: Option<String>,
    /// `Sig` values, space-separated in the database.
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    /// Full store paths of the references.
    pub references: Vec<String>,
    /// A hash of the raw `sigs` column, to notice signatures added later.
    pub sigs_hash: u64,
}

/// A hash of a raw `sigs` column value.
pub fn sigs_hash(raw: Option<&str>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    raw.unwrap_or("").hash(&mut h);
    h.finish()
}

/// The Nix database of one store root.
#[derive(Debug, Clone)]
pub struct NixDb {
    path: PathBuf,
}

impl NixDb {
    /// The database of the store under `root` (`/` for the system store).
    pub fn under(root: &Path) -> Self {
        Self {
            path: root.join("nix/var/nix/db/db.sqlite"),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> NixDbError {
        NixDbError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn open(&self) -> Result<Connection, NixDbError> {
        if !self.path.exists() {
            return Err(self.err("does not exist"));
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.err(e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| self.err(e))?;
        Ok(conn)
    }

    /// A cheap token that changes whenever the database may have: the
    /// modification times and sizes of the file and its write-ahead log.
    pub fn change_token(&self) -> Option<(std::time::SystemTime, u64, Option<std::time::SystemTime>, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        let wal = std::fs::metadata(self.path.with_extension("sqlite-wal")).ok();
        Some((
            m.modified().ok()?,
            m.len(),
            wal.as_ref().and_then(|w| w.modified().ok()),
            wal.map_or(0, |w| w.len()),
        ))
    }

    /// Every valid path's id, store path and [`sigs_hash`].
    pub fn ids(&self) -> Result<HashMap<i64, (String, u64)>, NixDbError> {
        let conn = self.open()?;
        let mut stmt = conn
            .prepare("SELECT id, path, sigs FROM ValidPaths")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let sigs: Option<String> = r.get(2)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    (r.get::<_, String>(1)?, sigs_hash(sigs.as_deref())),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Full records of the valid paths among `ids` (ids no longer valid are
    /// left out).
    pub fn paths(&self, ids: &[i64]) -> Result<Vec<ValidPath>, NixDbError> {
        let conn = self.open()?;
        let mut info = conn
            .prepare(
                "SELECT id, path, hash, narSize, registrationTime, deriver, sigs, ca \
                 FROM ValidPaths WHERE id = ?1",
            )
            .map_err(|e| self.err(e))?;
        let mut refs = conn
            .prepare("SELECT p.path FROM Refs r JOIN ValidPaths p ON p.id = r.reference WHERE r.referrer = ?1")
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = info.query_row([id], |r| {
                let raw_sigs: Option<String> = r.get(6)?;
                Ok(ValidPath {
                    id: r.get(0)?,
                    path: r.get(1)?,
                    nar_hash: r.get(2)?,
                    nar_size: r.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
                    registration_time: r.get(4)?,
                    deriver: r.get::<_, Option<String>>(5)?.filter(|d| !d.is_empty()),
                    sigs_hash: sigs_hash(raw_sigs.as_deref()),
                    sigs: raw_sigs
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                    ca: r.get::<_, Option<String>>(7)?.filter(|c| !c.is_empty()),
                    references: Vec::new(),
                })
            });
            let mut p = match row {
                Ok(p) => p,
                Err(rusqlite::Error::QueryReturnedNoRows) => continue,
                Err(e) => return Err(self.err(e)),
            };
            p.references = refs
                .query_map([id], |r| r.get::<_, String>(0))
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
            out.push(p);
        }
        Ok(out)
    }
}
