//! A persistent Kademlia record store without MemoryStore's 1,024-key cap.
//!
//! Provider records (the only kind nixswarm uses) live in redb: those this
//! node provides itself, and those other nodes announced to it, each with
//! its expiry and addresses. Value records are not used by nixswarm and are
//! kept in a small in-memory map so the behaviour still works.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::{Multiaddr, PeerId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// (key ++ provider peer id) -> (expiry in unix seconds, 0 = never; encoded addresses)
const PROVIDERS: TableDefinition<&[u8], (u64, &[u8])> = TableDefinition::new("providers");
/// Keys this node provides.
const PROVIDED: TableDefinition<&[u8], ()> = TableDefinition::new("provided");

/// Limits of the store.
#[derive(Debug, Clone)]
pub struct RecordLimits {
    /// Most provider records held in total (own and others').
    pub max_provider_records: usize,
    /// Most providers remembered per key.
    pub max_providers_per_key: usize,
    /// Most value records (unused by nixswarm).
    pub max_value_records: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_provider_records: 2_000_000,
            max_providers_per_key: 20,
            max_value_records: 1024,
        }
    }
}

/// The store.
#[derive(Debug)]
pub struct PersistentStore {
    db: Database,
    local: PeerId,
    limits: RecordLimits,
    count: usize,
    values: HashMap<RecordKey, Record>,
}

fn to_unix(t: Option<Instant>) -> u64 {
    let Some(t) = t else { return 0 };
    let left = t.saturating_duration_since(Instant::now());
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| (d + left).as_secs().max(1))
}

fn from_unix(secs: u64) -> Option<Instant> {
    if secs == 0 {
        return None;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(secs).saturating_sub(now);
    Some(Instant::now() + left)
}

fn expired(secs: u64) -> bool {
    secs != 0
        && SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() >= secs)
}

fn encode_addrs(addrs: &[Multiaddr]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in addrs.iter().take(16) {
        let b = a.to_vec();
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(&b);
    }
    out
}

fn decode_addrs(mut b: &[u8]) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([b[0], b[1]]));
        let Some(a) = b.get(2..2 + n) else { break };
        if let Ok(m) = Multiaddr::try_from(a.to_vec()) {
            out.push(m);
        }
        b = &b[2 + n..];
    }
    out
}

fn db_err<E: std::fmt::Display>(e: E) -> Error {
    tracing::warn!(error = %e, "provider record store");
    Error::MaxProvidedKeys
}

impl PersistentStore {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path, local: PeerId, limits: RecordLimits) -> std::result::Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(PROVIDERS)?;
        tx.open_table(PROVIDED)?;
        tx.commit()?;
        let count = {
            let tx = db.begin_read()?;
            tx.open_table(PROVIDERS)?.len()? as usize
        };
        Ok(Self {
            db,
            local,
            limits,
            count,
            values: HashMap::new(),
        })
    }

    /// Number of provider records held.
    pub fn provider_records(&self) -> usize {
        self.count
    }

    /// Number of keys this node provides itself.
    pub fn provided_count(&self) -> usize {
        self.db
            .begin_read()
            .ok()
            .and_then(|t| t.open_table(PROVIDED).ok())
            .and_then(|t| t.len().ok())
            .unwrap_or(0) as usize
    }

    fn row_key(key: &RecordKey, peer: &PeerId) -> Vec<u8> {
        let mut k = key.as_ref().to_vec();
        k.extend_from_slice(&peer.to_bytes());
        k
    }

    fn scan(&self, key: &RecordKey) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
        let Ok(tx) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(t) = tx.open_table(PROVIDERS) else {
            return Vec::new();
        };
        let prefix = key.as_ref();
        let Ok(range) = t.range(prefix..) else {
            return Vec::new();
        };
        range
            .filter_map(std::result::Result::ok)
            .take_while(|(k, _)| k.value().starts_with(prefix))
            .map(|(k, v)| {
                let (exp, addrs) = v.value();
                (k.value().to_vec(), exp, addrs.to_vec())
            })
            .collect()
    }
}

impl RecordStore for PersistentStore {
    type RecordsIter<'a> =
        std::iter::Map<std::collections::hash_map::Values<'a, RecordKey, Record>, fn(&'a Record) -> Cow<'a, Record>>;
    type ProvidedIter<'a> = std::vec::IntoIter<Cow<'a, ProviderRecord>>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.values.get(k).map(Cow::Borrowed)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        if self.values.len() >= self.limits.max_value_records && !self.values.contains_key(&r.key) {
            return Err(Error::MaxRecords);
        }
        self.values.insert(r.key.clone(), r);
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.values.remove(k);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.values.values().map(Cow::Borrowed)
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        let existing = self.scan(&record.key);
        let row = Self::row_key(&record.key, &record.provider);
        let is_new = !existing.iter().any(|(k, _, _)| *k == row);
        if is_new {
            let live = existing.iter().filter(|(_, e, _)| !expired(*e)).count();
            if live >= self.limits.max_providers_per_key && record.provider != self.local {
                return Ok(()); // enough providers known for this key; ignore quietly
            }
            if self.count >= self.limits.max_provider_records {
                return Err(Error::MaxProvidedKeys);
            }
        }
        let mut tx = self.db.begin_write().map_err(db_err)?;
        // Provider records are re-announced periodically: losing the last
        // few to a crash costs nothing, fsyncing each would cost a lot.
        tx.set_durability(Durability::None).map_err(db_err)?;
        {
            let mut t = tx.open_table(PROVIDERS).map_err(db_err)?;
            let addrs = encode_addrs(&record.addresses);
            t.insert(row.as_slice(), (to_unix(record.expires), addrs.as_slice()))
                .map_err(db_err)?;
            // Expired rows of this key go on the way.
            for (k, e, _) in &existing {
                if expired(*e) && *k != row {
                    t.remove(k.as_slice()).map_err(db_err)?;
                    self.count = self.count.saturating_sub(1);
                }
            }
            if record.provider == self.local {
                tx.open_table(PROVIDED)
                    .map_err(db_err)?
                    .insert(record.key.as_ref(), ())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        if is_new {
            self.count += 1;
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let klen = key.as_ref().len();
        let mut all: Vec<ProviderRecord> = self
            .scan(key)
            .into_iter()
            .filter(|(_, e, _)| !expired(*e))
            .filter_map(|(k, e, a)| {
                let provider = PeerId::from_bytes(&k[klen..]).ok()?;
                Some(ProviderRecord {
                    key: key.clone(),
                    provider,
                    expires: from_unix(e),
                    addresses: decode_addrs(&a),
                })
            })
            .collect();
        // Our own record first: it is the one we can vouch for.
        all.sort_by_key(|r| r.provider != self.local);
        all.truncate(self.limits.max_providers_per_key);
        all
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        let mut out = Vec::new();
        if let Ok(tx) = self.db.begin_read()
            && let Ok(t) = tx.open_table(PROVIDED)
            && let Ok(iter) = t.iter()
        {
            for (k, _) in iter.filter_map(std::result::Result::ok) {
                let key = RecordKey::from(k.value().to_vec());
                if let Some(rec) = self.providers(&key).into_iter().find(|r| r.provider == self.local) {
                    out.push(Cow::Owned(rec));
                }
            }
        }
        out.into_iter()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        let row = Self::row_key(k, p);
        let result = (|| -> std::result::Result<bool, redb::Error> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::None)?;
            let removed = {
                let mut t = tx.open_table(PROVIDERS)?;
                let removed = t.remove(row.as_slice())?.is_some();
                if p == &self.local {
                    tx.open_table(PROVIDED)?.remove(k.as_ref())?;
                }
                removed
            };
            tx.commit()?;
            Ok(removed)
        })();
        match result {
            Ok(true) => self.count = self.count.saturating_sub(1),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "removing a provider record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &RecordKey, provider: PeerId, ttl: Option<Duration>) -> ProviderRecord {
        ProviderRecord {
            key: key.clone(),
            provider,
            expires: ttl.map(|t| Instant::now() + t),
            addresses: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        }
    }

    #[test]
    fn holds_far_more_than_1024_keys_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let local = PeerId::random();
        let path = dir.path().join("records.redb");
        let keys: Vec<RecordKey> = (0..5000u32).map(|i| RecordKey::new(&i.to_le_bytes())).collect();
        {
            let mut s = PersistentStore::open(&path, local, RecordLimits::default()).unwrap();
            for k in &keys {
                s.add_provider(rec(k, local, None)).unwrap();
            }
            let other = PeerId::random();
            s.add_provider(rec(&keys[0], other, Some(Duration::from_secs(3600))))
                .unwrap();
            assert_eq!(s.provider_records(), 5001);
        }
        let s = PersistentStore::open(&path, local, RecordLimits::default()).unwrap();
        assert_eq!(s.provider_records(), 5001);
        assert_eq!(s.provided_count(), 5000);
        assert_eq!(s.provided().count(), 5000);
        let p = s.providers(&keys[0]);
        assert_eq!(p.len(), 2);
        assert_eq!(p.iter().find(|r| r.provider == local).unwrap().addresses.len(), 1);
    }

    #[test]
    fn expiry_removal_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let local = PeerId::random();
        let limits = RecordLimits {
            max_provider_records: 10,
            max_providers_per_key: 3,
            max_value_records: 1,
        };
        let mut s = PersistentStore::open(&dir.path().join("r.redb"), local, limits).unwrap();
        let k = RecordKey::new(b"k");
        s.add_provider(rec(&k, PeerId::random(), Some(Duration::ZERO))).unwrap();
        assert!(s.providers(&k).is_empty(), "expired records are not returned");
        for _ in 0..5 {
            s.add_provider(rec(&k, PeerId::random(), Some(Duration::from_secs(60))))
                .unwrap();
        }
        assert_eq!(s.providers(&k).len(), 3, "per-key cap");
        s.add_provider(rec(&k, local, None)).unwrap();
        assert!(
            s.providers(&k).iter().any(|r| r.provider == local),
            "own record always kept"
        );
        s.remove_provider(&k, &local);
        assert!(!s.providers(&k).iter().any(|r| r.provider == local));
        assert_eq!(s.provided().count(), 0);
        for i in 0..20u32 {
            let _ = s.add_provider(rec(&RecordKey::new(&i.to_le_bytes()), local, None));
        }
        assert!(s.provider_records() <= 10, "total cap");
        assert!(matches!(
            s.add_provider(rec(&RecordKey::new(b"new"), local, None)),
            Err(Error::MaxProvidedKeys)
        ));
    }
}

#[cfg(test)]
mod scale {
    use super::*;

    /// The MemoryStore stops at 1,024 keys; this store must hold 100k.
    #[test]
    fn holds_100k_provider_keys() {
        let dir = tempfile::tempdir().unwrap();
        let local = PeerId::random();
        let mut s = PersistentStore::open(&dir.path().join("r.redb"), local, RecordLimits::default()).unwrap();
        let remote = PeerId::random();
        for i in 0..100_000u32 {
            let key = RecordKey::new(&nixswarm_protocol::wire::path_key(
                &nixswarm_protocol::StorePathHash::from_bytes(&{
                    let mut b = [0u8; 20];
                    b[..4].copy_from_slice(&i.to_le_bytes());
                    b
                }),
            ));
            let provider = if i % 2 == 0 { local } else { remote };
            s.add_provider(ProviderRecord {
                key,
                provider,
                expires: None,
                addresses: vec![],
            })
            .unwrap();
        }
        assert_eq!(s.provider_records(), 100_000);
        assert_eq!(s.provided_count(), 50_000);
    }
}
