use super::*;
use nixswarm_protocol::{NarCheckError, Sha256Hash, StorePath};

/// Deterministic pseudo-random bytes (xorshift).
pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) fn info_for(bytes: &[u8], n: u8) -> NarInfo {
    let hash = StorePathHash::from_bytes(&[n; 20]);
    NarInfo {
        store_path: StorePath::new(hash, &format!("p{n}")).unwrap(),
        url: format!("nar/{n}.nar"),
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256Hash::digest(bytes),
        nar_size: bytes.len() as u64,
        references: vec![],
        deriver: None,
        sigs: vec![],
        ca: None,
    }
}

pub(crate) fn open(dir: &Path, quota: u64) -> ChunkStore {
    ChunkStore::open(dir, StoreOptions::with_quota(quota)).unwrap()
}

pub(crate) fn put(store: &ChunkStore, bytes: &[u8], n: u8) -> Result<()> {
    let mut ingest = store.begin_ingest(info_for(bytes, n))?;
    for piece in bytes.chunks(10_000) {
        ingest.write(piece)?;
    }
    ingest.finish()
}

pub(crate) fn read_all(store: &ChunkStore, n: u8, start: u64, end: u64) -> Result<Vec<u8>> {
    let handle = store.open_nar(&StorePathHash::from_bytes(&[n; 20]))?.expect("stored");
    let mut out = Vec::new();
    for piece in handle.reader(start, end) {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

pub(crate) fn hash(n: u8) -> StorePathHash {
    StorePathHash::from_bytes(&[n; 20])
}

fn pack_files(dir: &Path) -> usize {
    ChunkDir::open(dir).unwrap().list_packs().unwrap().len()
}

#[test]
fn stores_and_reads_back_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let bytes = data(3_000_000, 1);
    put(&store, &bytes, 1).unwrap();
    assert_eq!(store.narinfo(&hash(1)).unwrap().unwrap(), info_for(&bytes, 1));
    assert_eq!(read_all(&store, 1, 0, u64::MAX).unwrap(), bytes);
    for (s, e) in [
        (0, 1),
        (1, 70_000),
        (65_535, 2_000_001),
        (2_999_999, 3_000_000),
        (100, 100),
        (5_000_000, 6_000_000),
    ] {
        let (su, eu) = ((s as usize).min(bytes.len()), (e as usize).min(bytes.len()));
        assert_eq!(
            read_all(&store, 1, s, e).unwrap(),
            &bytes[su..eu.max(su)],
            "range {s}..{e}"
        );
    }
    let stats = store.stats().unwrap();
    assert_eq!((stats.paths, stats.bytes), (1, 3_000_000));
}

#[test]
fn identical_chunks_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let a = data(2_000_000, 2);
    let mut b = a.clone();
    b.extend_from_slice(&data(500_000, 3));
    put(&store, &a, 1).unwrap();
    put(&store, &b, 2).unwrap();
    let stats = store.stats().unwrap();
    assert!(
        stats.bytes < 2_000_000 + 1_000_000,
        "shared prefix deduplicated: {}",
        stats.bytes
    );
    assert!(store.remove(&hash(1)).unwrap());
    assert_eq!(
        read_all(&store, 2, 0, u64::MAX).unwrap(),
        b,
        "shared chunks survive removing one path"
    );
}

#[test]
fn a_wrong_nar_is_never_visible_and_leaves_no_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let bytes = data(1_000_000, 4);
    let mut info = info_for(&bytes, 1);
    info.nar_hash = Sha256Hash::digest(b"something else");
    let mut ingest = store.begin_ingest(info).unwrap();
    ingest.write(&bytes).unwrap();
    assert!(matches!(
        ingest.finish(),
        Err(StoreError::Mismatch {
            source: NarCheckError::WrongHash { .. },
            ..
        })
    ));

    let mut short = store.begin_ingest(info_for(&bytes, 2)).unwrap();
    short.write(&bytes[..999_999]).unwrap();
    assert!(matches!(
        short.finish(),
        Err(StoreError::Mismatch {
            source: NarCheckError::WrongSize { .. },
            ..
        })
    ));

    let mut long = store.begin_ingest(info_for(&bytes, 3)).unwrap();
    long.write(&bytes).unwrap();
    assert!(matches!(
        long.write(b"x"),
        Err(StoreError::Mismatch {
            source: NarCheckError::TooLong { .. },
            ..
        })
    ));
    drop(long);

    for n in 1..=3 {
        assert!(!store.contains(&hash(n)).unwrap());
        assert!(store.open_nar(&hash(n)).unwrap().is_none());
    }
    assert_eq!(pack_files(dir.path()), 0);
    assert_eq!(store.stats().unwrap().bytes, 0);
}

/// Where a chunk's bytes are on disk: its pack file and its range there.
struct Spot {
    path: std::path::PathBuf,
    offset: u64,
    size: u64,
}

impl Spot {
    /// Flips a bit of the chunk's bytes.
    fn flip(&self) {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, self.offset + 10).unwrap();
        f.write_all_at(&[b[0] ^ 1], self.offset + 10).unwrap();
    }

    /// Cuts the pack one byte into the chunk's end.
    fn cut_short(&self) {
        let f = std::fs::File::options().write(true).open(&self.path).unwrap();
        f.set_len(self.offset + self.size - 1).unwrap();
    }
}

/// A store holding one 500 kB path; its second chunk's id and place.
fn one_path_and_a_chunk(dir: &std::path::Path) -> (ChunkStore, ChunkId, Spot) {
    let store = open(dir, 1 << 30);
    put(&store, &data(500_000, 5), 1).unwrap();
    let victim = store.open_nar(&hash(1)).unwrap().unwrap().manifest.chunks[1].id;
    let Some((size, Loc::Pack { pack, offset })) = store.inner.meta.chunk_loc(&victim).unwrap() else {
        panic!("the chunk is in a pack");
    };
    let spot = Spot {
        path: dir.join("packs").join(format!("{pack:016x}.pack")),
        offset,
        size: u64::from(size),
    };
    (store, victim, spot)
}

#[test]
fn reads_for_peers_check_sizes_always_and_hashes_on_a_sample() {
    let dir = tempfile::tempdir().unwrap();
    let (store, victim, spot) = one_path_and_a_chunk(dir.path());
    spot.flip();
    let caught = (0..PEER_READS_HASHED * 4)
        .filter(|_| matches!(store.read_chunk_for_peer(&victim), Err(StoreError::ChunkCorrupt(_))))
        .count();
    assert_eq!(caught, 4, "one read in {PEER_READS_HASHED} is hashed");
    // Reads for this node's own use are always hashed.
    for _ in 0..PEER_READS_HASHED {
        assert!(matches!(store.read_chunk(&victim), Err(StoreError::ChunkCorrupt(_))));
    }
    // A chunk cut short is caught on every read.
    spot.cut_short();
    for _ in 0..PEER_READS_HASHED {
        assert!(matches!(
            store.read_chunk_for_peer(&victim),
            Err(StoreError::ChunkCorrupt(_))
        ));
    }
}

#[test]
fn corrupt_chunk_on_disk_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (store, victim, spot) = one_path_and_a_chunk(dir.path());
    spot.flip();
    let err = read_all(&store, 1, 0, u64::MAX).unwrap_err();
    assert!(matches!(err, StoreError::ChunkCorrupt(id) if id == victim), "{err}");
    std::fs::remove_file(&spot.path).unwrap();
    assert!(matches!(
        read_all(&store, 1, 0, u64::MAX),
        Err(StoreError::ChunkMissing(_))
    ));
}

#[test]
fn evicts_least_recently_used_and_never_what_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3_500_000);
    let nars: Vec<Vec<u8>> = (0..5).map(|i| data(1_000_000, 10 + i)).collect();
    for (i, n) in nars.iter().enumerate().take(3) {
        put(&store, n, i as u8).unwrap();
    }
    // Hold 0 open, then use 1 and 2: 0 is least recently used but in use.
    let held = store.open_nar(&hash(0)).unwrap().unwrap();
    drop(store.open_nar(&hash(1)).unwrap());
    drop(store.open_nar(&hash(2)).unwrap());
    put(&store, &nars[3], 3).unwrap();
    assert!(store.contains(&hash(0)).unwrap(), "in use: kept");
    assert!(
        !store.contains(&hash(1)).unwrap(),
        "least recently used and free: evicted"
    );
    assert!(store.stats().unwrap().bytes <= 3_500_000);
    drop(held);
    put(&store, &nars[4], 4).unwrap();
    assert!(
        !store.contains(&hash(0)).unwrap(),
        "released, and now least recently used"
    );
    assert!(
        store.contains(&hash(2)).unwrap() && store.contains(&hash(3)).unwrap() && store.contains(&hash(4)).unwrap()
    );
    assert!(store.stats().unwrap().bytes <= 3_500_000);
    assert_eq!(read_all(&store, 4, 0, u64::MAX).unwrap(), nars[4]);

    // Larger than the quota: refused up front.
    assert!(matches!(
        store.begin_ingest(info_for(&data(4_000_000, 1), 9)),
        Err(StoreError::QuotaFull { .. })
    ));
    // Everything in use: refused rather than evicting a reader's path.
    let _h: Vec<_> = [2, 3, 4]
        .iter()
        .map(|&n| store.open_nar(&hash(n)).unwrap().unwrap())
        .collect();
    assert!(matches!(
        store.begin_ingest(info_for(&nars[1], 1)),
        Err(StoreError::QuotaFull { .. })
    ));
}

#[test]
fn a_crash_before_commit_leaves_nothing_visible_and_orphans_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(800_000, 6);
    {
        let store = open(dir.path(), 1 << 30);
        put(&store, &data(300_000, 7), 2).unwrap();
        // What a crash mid-ingest leaves: a pack, no metadata.
        let chunks = ChunkDir::open(dir.path()).unwrap();
        let mut pack = chunks.create().unwrap();
        for piece in bytes.chunks(64 * 1024) {
            pack.append(piece).unwrap();
        }
    }
    assert_eq!(pack_files(dir.path()), 2);
    let store = open(dir.path(), 1 << 30);
    assert!(!store.contains(&hash(1)).unwrap());
    assert_eq!(store.sweep_orphans().unwrap(), 1);
    assert_eq!(store.sweep_orphans().unwrap(), 0);
    assert_eq!(pack_files(dir.path()), 1, "the committed path's pack stays");
    assert_eq!(
        read_all(&store, 2, 0, u64::MAX).unwrap(),
        data(300_000, 7),
        "committed path intact"
    );
    put(&store, &bytes, 1).unwrap();
    assert_eq!(read_all(&store, 1, 0, u64::MAX).unwrap(), bytes);
}

#[test]
fn the_chunk_store_is_a_conforming_shelf() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let nar = data(300_000, 9);
    put(&store, &nar, 1).unwrap();
    crate::shelf::conformance(
        &store,
        &StorePathHash::from_bytes(&[1; 20]),
        &nar,
        &StorePathHash::from_bytes(&[2; 20]),
    );
}

/// Bytes of pack files on disk under the store directory (allocated:
/// punched holes do not count), less the last block of each file.
fn chunk_bytes_on_disk(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir.join("packs")).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                (m.blocks() * 512).min(m.len()).saturating_sub(4096)
            })
            .sum()
    })
}

#[test]
fn filling_past_the_amount_never_exceeds_it_evicts_lru_first_and_keeps_pinned_closures() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 2_000_000;
    let store = open(dir.path(), quota);
    // A pinned closure: 1 references 2.
    let (b1, b2) = (data(400_000, 101), data(300_000, 102));
    put(&store, &b2, 2).unwrap();
    let mut i1 = info_for(&b1, 1);
    i1.references = vec![info_for(&b2, 2).store_path];
    let mut ingest = store.begin_ingest(i1).unwrap();
    ingest.write(&b1).unwrap();
    ingest.finish().unwrap();
    let (closure, missing) = store.closure(&hash(1)).unwrap();
    assert_eq!((closure.clone(), missing), (vec![hash(1), hash(2)], vec![]));
    store.pin(&closure).unwrap();

    // Fill well past the quota with 300 kB paths, reading an early one
    // often so it stays recently used.
    for n in 10..40u8 {
        put(&store, &data(300_000, u64::from(n)), n).unwrap();
        if n > 10 && store.contains(&hash(10)).unwrap() {
            read_all(&store, 10, 0, 1).unwrap();
        }
        let on_disk = chunk_bytes_on_disk(dir.path());
        assert!(on_disk <= quota, "{on_disk} bytes on disk over the amount {quota}");
        assert!(store.stats().unwrap().bytes <= quota);
    }
    assert!(
        store.contains(&hash(1)).unwrap() && store.contains(&hash(2)).unwrap(),
        "pinned kept"
    );
    assert!(store.contains(&hash(10)).unwrap(), "the recently used path is kept");
    assert!(
        !store.contains(&hash(11)).unwrap(),
        "the least recently used went first"
    );
    assert!(store.contains(&hash(39)).unwrap(), "the newest is stored");

    // Pins survive a restart; unpinned, the closure is evictable again.
    drop(store);
    let store = open(dir.path(), quota);
    assert_eq!(store.pinned(), vec![hash(1), hash(2)]);
    store.unpin(&[hash(1), hash(2)]).unwrap();
    for n in 40..50u8 {
        put(&store, &data(300_000, u64::from(n)), n).unwrap();
    }
    assert!(!store.contains(&hash(1)).unwrap(), "unpinned paths are evicted again");
}

#[test]
fn pinned_data_alone_cannot_push_the_store_past_its_amount() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1_000_000);
    put(&store, &data(700_000, 1), 1).unwrap();
    store.pin(&[hash(1)]).unwrap();
    assert!(matches!(
        put(&store, &data(400_000, 2), 2),
        Err(StoreError::QuotaFull { .. })
    ));
    assert!(chunk_bytes_on_disk(dir.path()) <= 1_000_000);
    assert!(store.contains(&hash(1)).unwrap());
}

#[test]
fn a_flat_content_addressed_nar_with_other_contents_is_not_stored() {
    // A real `nix-store --add-fixed sha256` path: trusted without a
    // signature, so only its contents tie it to its address.
    let text = include_str!("../../../protocol/tests/fixtures/ca-flat.narinfo");
    let nar = include_bytes!("../../../protocol/tests/fixtures/ca-flat.nar");
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let info = NarInfo::parse(text).unwrap();
    let hash = info.store_path.hash();

    let forged = String::from_utf8(nar.to_vec())
        .unwrap()
        .replace("a flat file\n", "Evil content");
    let mut lie = info.clone();
    lie.nar_hash = Sha256Hash::digest(forged.as_bytes());
    let mut ingest = store.begin_ingest(lie).unwrap();
    ingest.write(forged.as_bytes()).unwrap();
    let err = ingest.finish().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Mismatch {
                source: NarCheckError::WrongContent { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(!store.contains(&hash).unwrap());

    let mut ingest = store.begin_ingest(info).unwrap();
    ingest.write(nar).unwrap();
    ingest.finish().unwrap();
    assert!(store.contains(&hash).unwrap());
}

/// (apparent, allocated) bytes of each pack file, by pack number.
fn pack_sizes(dir: &Path) -> std::collections::BTreeMap<u64, (u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let packs = ChunkDir::open(dir).unwrap().list_packs().unwrap();
    packs
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(dir.join("packs").join(format!("{p:016x}.pack"))).unwrap();
            (p, (m.len(), m.blocks() * 512))
        })
        .collect()
}

#[test]
fn shared_chunks_are_kept_once_and_their_space_comes_back_with_the_last_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let a = data(2_000_000, 21);
    // b: a new head, then all of a: content-defined cuts find a's chunks.
    let mut b = data(300_000, 22);
    b.extend_from_slice(&a);
    put(&store, &a, 1).unwrap();
    put(&store, &b, 2).unwrap();
    let sizes = pack_sizes(dir.path());
    assert_eq!(sizes.len(), 2, "one pack per ingest");
    let (b_len, b_alloc) = sizes.values().nth(1).copied().unwrap();
    assert!(b_len > 2_000_000, "b's ingest wrote every chunk: {b_len}");
    assert!(
        b_alloc < 800_000,
        "the chunks a has are given back at b's commit: {b_alloc} of {b_len} allocated"
    );
    let stored = store.stats().unwrap().bytes;
    assert!(stored < 2_500_000, "each chunk counted once: {stored}");

    // a goes; the chunks b shares stay in a's pack, the rest is given back.
    assert!(store.remove(&hash(1)).unwrap());
    assert_eq!(read_all(&store, 2, 0, u64::MAX).unwrap(), b);
    let sizes = pack_sizes(dir.path());
    assert_eq!(sizes.len(), 2, "a's pack holds b's shared chunks");
    let (a_len, a_alloc) = sizes.values().next().copied().unwrap();
    assert!(a_alloc <= a_len, "{a_alloc} allocated of {a_len}");
    assert!(store.remove(&hash(2)).unwrap());
    assert_eq!(pack_files(dir.path()), 0, "no path left: no pack left");
    assert_eq!(store.stats().unwrap().bytes, 0);
}

#[test]
fn a_path_stored_twice_leaves_one_pack() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let a = data(700_000, 23);
    put(&store, &a, 1).unwrap();
    put(&store, &a, 1).unwrap();
    assert_eq!(pack_files(dir.path()), 1, "the second ingest's pack is deleted");
    assert_eq!(read_all(&store, 1, 0, u64::MAX).unwrap(), a);
}

#[test]
fn a_store_from_before_pack_files_is_read_and_its_files_go_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (data(600_000, 31), data(400_000, 32));
    let manifest = {
        let store = open(dir.path(), 1 << 30);
        put(&store, &a, 1).unwrap();
        store.open_nar(&hash(1)).unwrap().unwrap().manifest
    };
    // What an older version left: each chunk in a file of its own, no
    // places, no packs.
    let chunks = ChunkDir::open(dir.path()).unwrap();
    for c in &manifest.chunks {
        let start: u64 = manifest
            .chunks
            .iter()
            .take_while(|x| x.id != c.id)
            .map(|x| u64::from(x.size))
            .sum();
        let path = chunks.file_path(&c.id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &a[start as usize..(start + u64::from(c.size)) as usize]).unwrap();
    }
    for p in chunks.list_packs().unwrap() {
        chunks.delete_pack(p).unwrap();
    }
    RedbMeta::open(&dir.path().join("meta.redb")).unwrap().forget_places();

    let store = open(dir.path(), 1 << 30);
    assert_eq!(store.sweep_orphans().unwrap(), 0, "referenced chunk files stay");
    assert_eq!(read_all(&store, 1, 0, u64::MAX).unwrap(), a);
    let id = manifest.chunks[0].id;
    assert!(store.read_chunk_for_peer(&id).unwrap().is_some());
    // New paths go into packs beside them.
    put(&store, &b, 2).unwrap();
    assert_eq!(read_all(&store, 2, 0, u64::MAX).unwrap(), b);
    assert_eq!(pack_files(dir.path()), 1);
    assert!(store.remove(&hash(1)).unwrap());
    assert!(
        chunks.list_files().unwrap().is_empty(),
        "the old path's files went with it"
    );
    assert_eq!(read_all(&store, 2, 0, u64::MAX).unwrap(), b);
}
