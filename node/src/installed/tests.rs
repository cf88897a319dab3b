//! The installed-paths source against a Nix database written with Nix's
//! schema (the real Nix client is exercised in `node/tests/installed.rs`).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use nixswarm_protocol::{SecretKey, Sha256Hash, StorePath, fingerprint};
use rusqlite::Connection;

use super::*;

struct FakeStore {
    root: tempfile::TempDir,
    key: SecretKey,
}

impl FakeStore {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("nix/store")).unwrap();
        fs::create_dir_all(root.path().join("nix/var/nix/db")).unwrap();
        let c = Connection::open(root.path().join("nix/var/nix/db/db.sqlite")).unwrap();
        c.execute_batch(super::nixdb::SCHEMA).unwrap();
        Self {
            root,
            key: SecretKey::from_seed("test-1", &[7; 32]),
        }
    }

    fn db(&self) -> Connection {
        Connection::open(self.root.path().join("nix/var/nix/db/db.sqlite")).unwrap()
    }

    /// Creates a path with one file and a subdirectory, registers it and
    /// signs it with `key` (or not). Returns its hash and NAR.
    fn add(&self, n: u8, name: &str, key: Option<&SecretKey>, ca: Option<&str>) -> (StorePathHash, Vec<u8>) {
        self.add_sized(n, name, key, ca, 200_000 + usize::from(n))
    }

    fn add_sized(
        &self,
        n: u8,
        name: &str,
        key: Option<&SecretKey>,
        ca: Option<&str>,
        size: usize,
    ) -> (StorePathHash, Vec<u8>) {
        let hash = StorePathHash::from_bytes(&[n; 20]);
        let sp = StorePath::new(hash, name).unwrap();
        let dir = self.root.path().join("nix/store").join(sp.base_name());
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/tool"), crate::store::tests::data(size, u64::from(n))).unwrap();
        fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("README"), format!("path {n}")).unwrap();
        let mut nar = Vec::new();
        crate::nar::dump(&dir, &mut nar).unwrap();
        let nar_hash = Sha256Hash::digest(&nar);
        let sigs = key
            .map(|k| k.sign(&fingerprint(&sp, &nar_hash, nar.len() as u64, &[])).to_string())
            .unwrap_or_default();
        self.db()
            .execute(
                "insert into ValidPaths (path, hash, registrationTime, narSize, sigs, ca) values (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    format!("/nix/store/{}", sp.base_name()),
                    format!("sha256:{}", nar_hash.to_hex()),
                    1_700_000_000 + i64::from(n),
                    nar.len() as i64,
                    sigs,
                    ca
                ],
            )
            .unwrap();
        (hash, nar)
    }

    /// Signs a registered path afterwards, as `nix store sign` does.
    fn sign_later(&self, hash: &StorePathHash, name: &str, nar: &[u8]) {
        let sp = StorePath::new(*hash, name).unwrap();
        let sig = self
            .key
            .sign(&fingerprint(&sp, &Sha256Hash::digest(nar), nar.len() as u64, &[]));
        self.db()
            .execute(
                "update ValidPaths set sigs = ?1 where path = ?2",
                [sig.to_string(), format!("/nix/store/{}", sp.base_name())],
            )
            .unwrap();
    }

    fn unregister(&self, hash: &StorePathHash) {
        self.db()
            .execute(
                "delete from ValidPaths where path like ?1",
                [format!("/nix/store/{hash}-%")],
            )
            .unwrap();
    }

    fn open(&self, index: &Path) -> InstalledStore {
        InstalledStore::open(
            index,
            InstalledOptions {
                root: self.root.path().to_owned(),
                share_keys: vec![self.key.public_key()],
                exclude: vec!["*-private".parse().unwrap()],
                index_rate: None,
                poll: Duration::from_millis(20),
            },
        )
        .unwrap()
    }
}

#[test]
fn shares_signed_paths_and_conforms() {
    let fake = FakeStore::new();
    let (held, nar) = fake.add(1, "hello", Some(&fake.key), None);
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    store.sync_once().unwrap();
    crate::shelf::conformance(&store, &held, &nar, &StorePathHash::from_bytes(&[9; 20]));
    let stats = store.stats().unwrap();
    assert_eq!((stats.paths_shared, stats.bytes_indexed), (1, nar.len() as u64));
}

#[test]
fn never_shares_unsigned_foreign_signed_content_addressed_or_excluded_paths() {
    let fake = FakeStore::new();
    let other = SecretKey::from_seed("someone-else-1", &[8; 32]);
    let (signed, _) = fake.add(1, "ok", Some(&fake.key), None);
    let (unsigned, _) = fake.add(2, "unsigned", None, None);
    let (foreign, _) = fake.add(3, "foreign", Some(&other), None);
    let (ca, _) = fake.add(
        4,
        "added",
        None,
        Some("fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"),
    );
    let (excluded, _) = fake.add(5, "corp-private", Some(&fake.key), None);
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    store.sync_once().unwrap();
    assert_eq!(store.list().unwrap(), vec![signed]);
    for h in [unsigned, foreign, ca, excluded] {
        assert!(store.path_info(&h).unwrap().is_none(), "{h} must not be shared");
    }
    assert_eq!(store.stats().unwrap().not_shareable, 4);
}

#[test]
fn a_path_modified_after_registration_is_never_served() {
    let fake = FakeStore::new();
    let (h, _) = fake.add(1, "changed", Some(&fake.key), None);
    let dir = fake.root.path().join("nix/store").join(format!("{h}-changed"));
    fs::write(dir.join("README"), "tampered").unwrap();
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    store.sync_once().unwrap();
    assert!(store.path_info(&h).unwrap().is_none());
    assert_eq!(store.stats().unwrap().rejected, 1);
    // Remembered across restarts: not read again.
    drop(store);
    let store = fake.open(&idx.path().join("installed.redb"));
    store.sync_once().unwrap();
    assert_eq!(store.stats().unwrap().rejected, 0, "not re-read");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_file_changed_after_indexing_is_caught_when_served_and_withdrawn() {
    let fake = FakeStore::new();
    let (h, _) = fake.add(1, "later", Some(&fake.key), None);
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    store.sync_once().unwrap();
    let mut events = store.subscribe();
    let (_, manifest) = store.path_info(&h).unwrap().unwrap();
    let tool = fake.root.path().join("nix/store").join(format!("{h}-later/bin/tool"));
    let mut bytes = fs::read(&tool).unwrap();
    bytes[100] ^= 1;
    fs::write(&tool, bytes).unwrap();
    let served: Vec<_> = manifest
        .chunks
        .iter()
        .map(|c| store.read_chunk(&c.id).unwrap())
        .collect();
    assert!(served.iter().any(Option::is_none), "the changed chunk is refused");
    assert!(store.path_info(&h).unwrap().is_none(), "and the path withdrawn");
    assert_eq!(events.try_recv().unwrap(), StoreEvent::Removed(h));
}

#[test]
fn follows_the_database_adds_and_garbage_collection() {
    let fake = FakeStore::new();
    let (a, _) = fake.add(1, "a", Some(&fake.key), None);
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    let mut events = store.subscribe();
    let cancel = CancellationToken::new();
    let follower = {
        let (s, c) = (store.clone(), cancel.clone());
        std::thread::spawn(move || s.follow(&c))
    };
    let next = |events: &mut broadcast::Receiver<StoreEvent>| {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match events.try_recv() {
                Ok(e) => return e,
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("no event: {e}"),
            }
        }
    };
    assert_eq!(next(&mut events), StoreEvent::Added(a));
    let (b, _) = fake.add(2, "b", Some(&fake.key), None);
    assert_eq!(next(&mut events), StoreEvent::Added(b));
    // Garbage collection: unregistered, then deleted.
    fake.unregister(&a);
    fs::remove_dir_all(fake.root.path().join("nix/store").join(format!("{a}-a"))).unwrap();
    assert_eq!(next(&mut events), StoreEvent::Removed(a));
    assert!(store.path_info(&a).unwrap().is_none());
    assert_eq!(store.list().unwrap(), vec![b]);
    cancel.cancel();
    follower.join().unwrap();
}

#[test]
fn a_restart_does_not_index_finished_paths_again() {
    let fake = FakeStore::new();
    let (a, _) = fake.add(1, "a", Some(&fake.key), None);
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    store.sync_once().unwrap();
    drop(store);
    let (b, _) = fake.add(2, "b", Some(&fake.key), None);
    let store = fake.open(&idx.path().join("installed.redb"));
    let mut events = store.subscribe();
    store.sync_once().unwrap();
    assert_eq!(events.try_recv().unwrap(), StoreEvent::Added(b), "only the new path");
    assert!(events.try_recv().is_err());
    let mut listed = store.list().unwrap();
    listed.sort();
    assert_eq!(listed, vec![a, b]);
}

#[test]
fn a_path_signed_after_registration_is_shared_once_signed() {
    let fake = FakeStore::new();
    let (a, _) = fake.add(1, "a", None, None);
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    let cancel = CancellationToken::new();
    let follower = {
        let (s, c) = (store.clone(), cancel.clone());
        std::thread::spawn(move || s.follow(&c))
    };
    let until = Instant::now() + Duration::from_secs(20);
    while store.stats().unwrap().not_shareable != 1 {
        assert!(Instant::now() < until, "never looked at");
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = fake.root.path().join(format!("nix/store/{a}-a"));
    let mut nar = Vec::new();
    crate::nar::dump(&dir, &mut nar).unwrap();
    fake.sign_later(&a, "a", &nar);
    while store.list().unwrap() != vec![a] {
        assert!(Instant::now() < until, "a signature added later is never noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.stats().unwrap().not_shareable, 0);
    cancel.cancel();
    follower.join().unwrap();
}

#[test]
fn large_paths_are_checked_the_same() {
    let fake = FakeStore::new();
    let big = 6 << 20;
    let (good, nar) = fake.add_sized(1, "big-good", Some(&fake.key), None, big);
    let (bad, _) = fake.add_sized(2, "big-bad", Some(&fake.key), None, big);
    let tool = fake.root.path().join(format!("nix/store/{bad}-big-bad/bin/tool"));
    let mut bytes = fs::read(&tool).unwrap();
    bytes[big - 1] ^= 1;
    fs::write(&tool, bytes).unwrap();
    let idx = tempfile::tempdir().unwrap();
    let store = fake.open(&idx.path().join("installed.redb"));
    store.sync_once().unwrap();
    assert_eq!(store.list().unwrap(), vec![good]);
    assert_eq!(store.stats().unwrap().rejected, 1);
    let (_, manifest) = store.path_info(&good).unwrap().unwrap();
    assert_eq!(manifest.nar_hash, Sha256Hash::digest(&nar));
}
