//! The gateway's routes through `Router::oneshot` (no sockets), with
//! in-memory sources: verification, fallback between sources, bad-source
//! memory, Range, zstd, 404s, and request paths that try to escape.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use nixswarm_gateway::{ByteStream, Gateway, GatewayOptions, Source, SourceError, SourceKind};
use nixswarm_node::{ChunkStore, StoreOptions};
use nixswarm_protocol::{NarInfo, SecretKey, Sha256Hash, StorePath, StorePathHash};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

fn key() -> SecretKey {
    SecretKey::from_seed("test-1", &[7; 32])
}

fn nar_bytes(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(n)).collect()
}

fn signed(n: u8, nar: &[u8], by: &SecretKey) -> NarInfo {
    let mut info = NarInfo {
        store_path: StorePath::new(StorePathHash::from_bytes(&[n; 20]), &format!("pkg-{n}")).unwrap(),
        url: format!("nar/{n}.nar"),
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256Hash::digest(nar),
        nar_size: nar.len() as u64,
        references: vec![],
        deriver: None,
        sigs: vec![],
        ca: None,
    };
    info.sigs = vec![by.sign(&info.fingerprint())];
    info
}

/// A source held in memory; `nar` may differ from what the narinfo says.
#[derive(Debug, Default)]
struct MemSource {
    entries: HashMap<StorePathHash, (NarInfo, Vec<u8>)>,
    down: bool,
    nar_requests: AtomicUsize,
}

impl MemSource {
    fn with(mut self, info: NarInfo, nar: Vec<u8>) -> Self {
        self.entries.insert(info.store_path.hash(), (info, nar));
        self
    }
}

impl Source for MemSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }
    fn name(&self) -> &str {
        "memory"
    }
    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        Box::pin(async move {
            if self.down {
                return Err(SourceError::Failed {
                    source_name: "memory".into(),
                    message: "down".into(),
                });
            }
            Ok(self.entries.get(hash).map(|(i, _)| i.clone()))
        })
    }
    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async move {
            self.nar_requests.fetch_add(1, Ordering::SeqCst);
            let Some((_, nar)) = self.entries.get(&info.store_path.hash()) else {
                return Ok(None);
            };
            let pieces: Vec<std::io::Result<Bytes>> =
                nar.chunks(10_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            Ok(Some(futures::stream::iter(pieces).boxed()))
        })
    }
}

struct Setup {
    gateway: Gateway,
    store: ChunkStore,
    _dir: tempfile::TempDir,
}

fn setup(sources: Vec<Arc<dyn Source>>) -> Setup {
    setup_with(sources, GatewayOptions::default())
}

fn setup_with(sources: Vec<Arc<dyn Source>>, options: GatewayOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), StoreOptions::with_quota(1 << 30)).unwrap();
    let gateway = Gateway::new(
        store.clone(),
        sources,
        vec![],
        vec![key().public_key()],
        options,
        CancellationToken::new(),
    );
    Setup {
        gateway,
        store,
        _dir: dir,
    }
}

async fn get(
    g: &Gateway,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Result<Bytes, String>) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = g.router().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| e.to_string());
    (parts.status, parts.headers, body)
}

/// Like [`get`], but reads as an HTTP client does: it stops once it has
/// Content-Length bytes, so a body that errors only after that counts as a
/// clean end.
async fn get_like_a_client(g: &Gateway, uri: &str, headers: &[(&str, &str)]) -> Result<Bytes, String> {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = g.router().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let len: usize = resp.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = resp.into_body().into_data_stream();
    let mut got = Vec::new();
    while got.len() < len {
        match body.next().await {
            Some(Ok(b)) => got.extend_from_slice(&b),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("ended short".into()),
        }
    }
    Ok(got.into())
}

fn nar_uri(info: &NarInfo) -> String {
    format!("/nar/{}-{}.nar", info.store_path.hash(), info.nar_hash.to_nixbase32())
}

/// Waits until the gateway's background ingest has stored `hash` (20 s at
/// most: a deadline for a busy machine, not a speed expectation).
async fn stored(store: &ChunkStore, hash: &StorePathHash) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < until {
        if store.contains(hash).unwrap() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn serves_a_verified_narinfo_with_its_own_url_and_the_original_signature() {
    let nar = nar_bytes(1, 300_000);
    let info = signed(1, &nar, &key());
    let s = setup(vec![Arc::new(MemSource::default().with(info.clone(), nar.clone()))]);
    let (status, headers, body) = get(&s.gateway, &format!("/{}.narinfo", info.store_path.hash()), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/x-nix-narinfo");
    let served = NarInfo::parse(std::str::from_utf8(&body.unwrap()).unwrap()).unwrap();
    assert_eq!(served.url, nar_uri(&info)[1..]);
    assert_eq!(served.compression, "none");
    assert_eq!(served.sigs, info.sigs);
    assert!(served.trust(&[key().public_key()]).is_some());

    let (status, headers, body) = get(&s.gateway, &nar_uri(&info), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], "300000");
    assert_eq!(body.unwrap(), nar);
    assert!(
        stored(&s.store, &info.store_path.hash()).await,
        "a verified NAR is kept"
    );

    let (_, _, metrics) = get(&s.gateway, "/metrics", &[]).await;
    let metrics = String::from_utf8(metrics.unwrap().to_vec()).unwrap();
    assert!(
        metrics.contains(r#"nixswarm_gateway_requests_total{route="nar",source="upstream"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"nixswarm_gateway_served_bytes_total{source="upstream"} 300000"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn untrusted_or_mislabelled_narinfos_fall_through_to_the_next_source() {
    let nar = nar_bytes(2, 1000);
    let good = signed(2, &nar, &key());
    let by_stranger = signed(2, &nar, &SecretKey::from_seed("test-1", &[8; 32]));
    let mut other_path = signed(3, &nar, &key());
    other_path.store_path = StorePath::new(StorePathHash::from_bytes(&[4; 20]), "pkg-4").unwrap();
    let mut unsigned = good.clone();
    unsigned.sigs.clear();

    let first = MemSource::default().with(by_stranger, nar.clone());
    let mislabelled = MemSource {
        entries: HashMap::from([(good.store_path.hash(), (other_path, nar.clone()))]),
        ..Default::default()
    };
    let unsigned = MemSource::default().with(unsigned, nar.clone());
    let down = MemSource {
        down: true,
        ..Default::default()
    };
    let last = MemSource::default().with(good.clone(), nar.clone());
    let s = setup(vec![
        Arc::new(first),
        Arc::new(mislabelled),
        Arc::new(unsigned),
        Arc::new(down),
        Arc::new(last),
    ]);
    let (status, _, body) = get(&s.gateway, &format!("/{}.narinfo", good.store_path.hash()), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let served = NarInfo::parse(std::str::from_utf8(&body.unwrap()).unwrap()).unwrap();
    assert_eq!(served.sigs, good.sigs);
}

#[tokio::test]
async fn a_bad_nar_aborts_the_body_is_not_kept_and_the_retry_uses_the_next_source() {
    let nar = nar_bytes(5, 500_000);
    let info = signed(5, &nar, &key());
    let mut altered = nar.clone();
    altered[400_000] ^= 1;
    let liar = Arc::new(MemSource::default().with(info.clone(), altered));
    let honest = Arc::new(MemSource::default().with(info.clone(), nar.clone()));
    let s = setup(vec![liar.clone(), honest.clone()]);

    let (status, _, body) = get(&s.gateway, &nar_uri(&info), &[]).await;
    assert_eq!(status, StatusCode::OK, "headers go out before the body is verified");
    assert!(body.is_err(), "the body must fail, never end cleanly with wrong bytes");
    // A rejected NAR is never committed (no Commit is ever sent), so no wait is needed.
    assert!(
        !s.store.contains(&info.store_path.hash()).unwrap(),
        "nothing wrong is kept"
    );

    let (status, _, body) = get(&s.gateway, &nar_uri(&info), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), nar, "the retry comes from the honest source");
    assert_eq!(
        liar.nar_requests.load(Ordering::SeqCst),
        1,
        "the liar is skipped for this NAR"
    );
    assert!(stored(&s.store, &info.store_path.hash()).await);

    // A range that ends long before the bad byte still never ends cleanly:
    // its last piece waits for the whole NAR to verify.
    let s = setup(vec![Arc::new(MemSource::default().with(info.clone(), {
        let mut a = nar.clone();
        a[450_000] ^= 1;
        a
    }))]);
    let body = get_like_a_client(&s.gateway, &nar_uri(&info), &[("range", "bytes=0-99")]).await;
    assert!(body.is_err(), "a range of a bad NAR must fail, not end cleanly");
    let s = setup(vec![Arc::new(MemSource::default().with(info.clone(), nar.clone()))]);
    let body = get_like_a_client(&s.gateway, &nar_uri(&info), &[("range", "bytes=0-99")]).await;
    assert_eq!(body.unwrap(), nar[..100], "a good NAR's range arrives");

    // Short and long bodies are rejected too.
    for (n, body_len) in [(6u8, 999usize), (7, 1001)] {
        let good = nar_bytes(n, 1000);
        let info = signed(n, &good, &key());
        let wrong = nar_bytes(n, body_len);
        let s = setup(vec![Arc::new(MemSource::default().with(info.clone(), wrong))]);
        let (_, _, body) = get(&s.gateway, &nar_uri(&info), &[]).await;
        assert!(body.is_err(), "{body_len}-byte body for a 1000-byte NAR must fail");
        assert!(!s.store.contains(&info.store_path.hash()).unwrap());
    }
}

#[tokio::test]
async fn local_nars_honour_range_and_zstd() {
    let nar = nar_bytes(9, 400_000);
    let info = signed(9, &nar, &key());
    let s = setup(vec![Arc::new(MemSource::default().with(info.clone(), nar.clone()))]);
    get(&s.gateway, &nar_uri(&info), &[]).await.2.unwrap();
    assert!(stored(&s.store, &info.store_path.hash()).await);

    let (status, headers, body) = get(&s.gateway, &nar_uri(&info), &[("range", "bytes=100000-200099")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers[header::CONTENT_RANGE], "bytes 100000-200099/400000");
    assert_eq!(body.unwrap(), nar[100_000..200_100]);

    let (status, headers, _) = get(&s.gateway, &nar_uri(&info), &[("range", "bytes=400000-")]).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers[header::CONTENT_RANGE], "bytes */400000");

    let (status, headers, body) = get(&s.gateway, &nar_uri(&info), &[("accept-encoding", "gzip, zstd")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_ENCODING], "zstd");
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(&body.unwrap()[..])
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, nar);
}

#[tokio::test]
async fn misses_are_404_and_paths_cannot_escape() {
    let down = MemSource {
        down: true,
        ..Default::default()
    };
    let s = setup(vec![Arc::new(down)]);
    for uri in [
        "/00000000000000000000000000000000.narinfo",
        "/nar/00000000000000000000000000000000-0000000000000000000000000000000000000000000000000000.nar",
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/nar/..%2f..%2fmeta.redb",
        "/nar/../store/meta.redb",
        "/store/meta.redb",
        "/chunks",
        "/log/..%2f..%2fetc%2fpasswd",
        "/e0000000000000000000000000000000.narinfo",
        "/x.narinfo",
    ] {
        let (status, _, _) = get(&s.gateway, uri, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    let (status, _, body) = get(&s.gateway, "/nix-cache-info", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n");
}

/// A page on another site can send a bodiless POST to 127.0.0.1 without a
/// CORS preflight; pinning must not be reachable that way.
#[tokio::test]
async fn pinning_refuses_requests_a_web_page_could_make() {
    let nar = nar_bytes(9, 1000);
    let info = signed(9, &nar, &key());
    let s = setup(vec![]);
    let uri = format!("/pin/{}", info.store_path.hash());
    let send = |method: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let (g, uri) = (&s.gateway, uri.clone());
        async move {
            let mut req = Request::builder()
                .method(method)
                .uri(uri)
                .header("host", "127.0.0.1:37515");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            g.router()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send("POST", vec![]).await, StatusCode::FORBIDDEN, "a simple POST");
    let foreign = vec![("x-nixswarm-request", "1"), ("origin", "http://evil.example")];
    assert_eq!(
        send("POST", foreign.clone()).await,
        StatusCode::FORBIDDEN,
        "another origin"
    );
    assert_eq!(send("DELETE", foreign).await, StatusCode::FORBIDDEN);
    let null = vec![("x-nixswarm-request", "1"), ("origin", "null")];
    assert_eq!(send("POST", null).await, StatusCode::FORBIDDEN, "a sandboxed page");
    assert!(s.store.pinned().is_empty(), "nothing was pinned");
    // `nixswarm pin` (the header, no Origin) and the gateway's own origin may.
    assert_eq!(send("POST", vec![("x-nixswarm-request", "1")]).await, StatusCode::OK);
    let own = vec![("x-nixswarm-request", "1"), ("origin", "http://127.0.0.1:37515")];
    assert_eq!(send("DELETE", own).await, StatusCode::OK);
}

/// An upstream that says "no such path" the first `misses` times.
#[derive(Debug)]
struct Late {
    inner: MemSource,
    misses: AtomicUsize,
}

impl Source for Late {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }
    fn name(&self) -> &str {
        "late"
    }
    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        if self
            .misses
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Box::pin(async { Ok(None) });
        }
        self.inner.narinfo(hash)
    }
    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        self.inner.nar(info)
    }
}

/// `negative-ttl` bounds how long an upstream's miss is believed (it was
/// kept for 300 s whatever the setting).
#[tokio::test]
async fn an_upstream_miss_is_kept_only_for_the_negative_ttl() {
    let nar = nar_bytes(8, 5000);
    let info = signed(8, &nar, &key());
    let late = Late {
        inner: MemSource::default().with(info.clone(), nar),
        misses: AtomicUsize::new(1),
    };
    let options = GatewayOptions {
        negative_ttl: std::time::Duration::ZERO,
        ..GatewayOptions::default()
    };
    let s = setup_with(vec![Arc::new(late)], options);
    let uri = format!("/{}.narinfo", info.store_path.hash());
    assert_eq!(get(&s.gateway, &uri, &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&s.gateway, &uri, &[]).await.0,
        StatusCode::OK,
        "asked again, not remembered"
    );
}

/// A metadata backend whose reads fail once `broken` is set (a damaged or
/// full disk); everything else is the in-memory backend.
#[derive(Debug, Default)]
struct Flaky {
    inner: nixswarm_node::store::MemMeta,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Flaky {
    fn check(&self) -> nixswarm_node::store::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(nixswarm_node::store::StoreError::Io {
                context: "reading the store database".into(),
                source: std::io::Error::other("disk failed"),
            });
        }
        Ok(())
    }
}

impl nixswarm_node::store::MetaDb for Flaky {
    fn get(&self, hash: &str) -> nixswarm_node::store::Result<Option<nixswarm_node::store::PathRecord>> {
        self.check()?;
        self.inner.get(hash)
    }
    fn narinfo(&self, hash: &str) -> nixswarm_node::store::Result<Option<String>> {
        self.check()?;
        self.inner.narinfo(hash)
    }
    fn contains(&self, hash: &str) -> nixswarm_node::store::Result<bool> {
        self.check()?;
        self.inner.contains(hash)
    }
    fn insert(
        &self,
        hash: &str,
        r: &nixswarm_node::store::PathRecord,
        now: u64,
        written: &nixswarm_node::store::Written,
    ) -> nixswarm_node::store::Result<nixswarm_node::store::Inserted> {
        self.inner.insert(hash, r, now, written)
    }
    fn remove(&self, hash: &str) -> nixswarm_node::store::Result<Vec<nixswarm_node::store::Freed>> {
        self.inner.remove(hash)
    }
    fn chunk_loc(
        &self,
        id: &nixswarm_protocol::ChunkId,
    ) -> nixswarm_node::store::Result<Option<(u32, nixswarm_node::store::Loc)>> {
        self.inner.chunk_loc(id)
    }
    fn packs(&self) -> nixswarm_node::store::Result<Vec<u64>> {
        self.inner.packs()
    }
    fn touch(&self, accesses: &[(String, u64)]) -> nixswarm_node::store::Result<()> {
        self.check()?;
        self.inner.touch(accesses)
    }
    fn lru(&self, limit: usize) -> nixswarm_node::store::Result<Vec<String>> {
        self.inner.lru(limit)
    }
    fn chunk_refs(&self, id: &nixswarm_protocol::ChunkId) -> nixswarm_node::store::Result<u32> {
        self.inner.chunk_refs(id)
    }
    fn chunk_size(&self, id: &nixswarm_protocol::ChunkId) -> nixswarm_node::store::Result<Option<u32>> {
        self.inner.chunk_size(id)
    }
    fn total_bytes(&self) -> nixswarm_node::store::Result<u64> {
        self.inner.total_bytes()
    }
    fn path_count(&self) -> nixswarm_node::store::Result<u64> {
        self.inner.path_count()
    }
    fn list(&self) -> nixswarm_node::store::Result<Vec<String>> {
        self.inner.list()
    }
}

/// A local store that cannot be read is not a reason for a 500: the
/// sources answer instead (Nix takes a 500 on a narinfo for a broken
/// substituter and, without `fallback`, stops the build).
#[tokio::test]
async fn a_local_store_that_fails_falls_through_to_the_sources() {
    let nar = nar_bytes(7, 70_000);
    let info = signed(7, &nar, &key());
    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::default();
    let broken = flaky.broken.clone();
    let store = ChunkStore::open_with(dir.path(), Box::new(flaky), StoreOptions::with_quota(1 << 30)).unwrap();
    let gateway = Gateway::new(
        store.clone(),
        vec![Arc::new(MemSource::default().with(info.clone(), nar.clone()))],
        vec![],
        vec![key().public_key()],
        GatewayOptions::default(),
        CancellationToken::new(),
    );
    // Stored first (a pull-through), then the disk fails.
    assert_eq!(get(&gateway, &nar_uri(&info), &[]).await.0, StatusCode::OK);
    assert!(stored(&store, &info.store_path.hash()).await);
    broken.store(true, Ordering::SeqCst);
    let (status, _, _) = get(&gateway, &format!("/{}.narinfo", info.store_path.hash()), &[]).await;
    assert_eq!(status, StatusCode::OK, "the upstream's narinfo, not a 500");
    let (status, _, body) = get(&gateway, &nar_uri(&info), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), nar, "the upstream's NAR, verified");
}

/// An upstream that stores one NAR as a zstd file, as caches do.
#[derive(Debug)]
struct ZstdUpstream {
    info: NarInfo,
    nar: Vec<u8>,
    file: Vec<u8>,
}

impl ZstdUpstream {
    fn new(n: u8, nar: Vec<u8>) -> Self {
        let file = zstd::encode_all(&nar[..], 3).unwrap();
        let mut info = signed(n, &nar, &key());
        info.url = format!("nar/{n}.nar.zst");
        info.compression = "zstd".into();
        info.file_hash = Some(Sha256Hash::digest(&file));
        info.file_size = Some(file.len() as u64);
        Self { info, nar, file }
    }
}

impl Source for ZstdUpstream {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }
    fn name(&self) -> &str {
        "zstd-upstream"
    }
    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        Box::pin(async move { Ok((*hash == self.info.store_path.hash()).then(|| self.info.clone())) })
    }
    fn nar<'a>(&'a self, _info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        let pieces: Vec<std::io::Result<Bytes>> =
            self.nar.chunks(7_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Box::pin(async move { Ok(Some(futures::stream::iter(pieces).boxed())) })
    }
    fn file<'a>(&'a self, _info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        let pieces: Vec<std::io::Result<Bytes>> =
            self.file.chunks(3_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Box::pin(async move { Ok(Some(futures::stream::iter(pieces).boxed())) })
    }
}

#[tokio::test]
async fn an_upstream_file_passes_through_resumes_from_the_same_file_and_is_stored_decoded() {
    let nar = nar_bytes(40, 200_000);
    let up = Arc::new(ZstdUpstream::new(40, nar.clone()));
    let (info, file) = (up.info.clone(), up.file.clone());
    let s = setup(vec![up]);
    let uri = nar_uri(&info);

    // Nix's request (no Accept-Encoding): the file itself, content-coded.
    let (status, headers, body) = get(&s.gateway, &uri, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_ENCODING], "zstd");
    assert_eq!(headers[header::CONTENT_LENGTH], file.len().to_string().as_str());
    assert_eq!(body.unwrap(), file);

    // The store decodes and keeps the NAR behind the client.
    assert!(stored(&s.store, &info.store_path.hash()).await, "the NAR was kept");

    // Nix resuming: the rest of the same file, although the store has the
    // NAR by now.
    let (status, headers, body) = get(&s.gateway, &uri, &[("range", "bytes=100-")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers[header::CONTENT_ENCODING], "zstd");
    assert_eq!(body.unwrap(), file[100..]);

    // A client that lists codings gets a range of the NAR's own bytes.
    let (status, headers, body) = get(
        &s.gateway,
        &uri,
        &[("range", "bytes=100-"), ("accept-encoding", "identity")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(body.unwrap(), nar[100..]);
}

#[tokio::test]
async fn a_client_that_lists_no_such_coding_gets_the_nars_own_bytes() {
    let nar = nar_bytes(41, 100_000);
    let up = Arc::new(ZstdUpstream::new(41, nar.clone()));
    let info = up.info.clone();
    let s = setup_with(
        vec![up],
        GatewayOptions {
            keep_fetched: false,
            ..GatewayOptions::default()
        },
    );
    let (status, headers, body) = get(&s.gateway, &nar_uri(&info), &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(body.unwrap(), nar);
}

#[tokio::test]
async fn an_import_is_kept_only_when_its_narinfo_and_nar_verify() {
    let s = setup(vec![]);
    let put = |info: &NarInfo, nar: &[u8], header: bool| {
        let mut body = nixswarm_gateway::import::frame(&info.to_text()).to_vec();
        body.extend_from_slice(nar);
        let mut req = Request::put(format!("/import/{}", info.store_path.hash())).header("host", "127.0.0.1:37515");
        if header {
            req = req.header("x-nixswarm-request", "1");
        }
        let g = s.gateway.clone();
        let req = req.body(Body::from(body)).unwrap();
        async move {
            let resp = g.router().oneshot(req).await.unwrap();
            let status = resp.status();
            let text = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            (status, String::from_utf8_lossy(&text).into_owned())
        }
    };
    let nar = nar_bytes(11, 300_000);
    let good = signed(11, &nar, &key());
    // Without the header a web page could not send: refused.
    assert_eq!(put(&good, &nar, false).await.0, StatusCode::FORBIDDEN);
    // Signed by someone else: refused, nothing kept.
    let stranger = signed(11, &nar, &SecretKey::from_seed("stranger", &[9; 32]));
    let (status, text) = put(&stranger, &nar, true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("trusted key"), "{text}");
    // The NAR does not match: refused, nothing kept.
    let mut wrong = nar.clone();
    wrong[1000] ^= 1;
    let (status, text) = put(&good, &wrong, true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(!s.store.contains(&good.store_path.hash()).unwrap());
    // Right: stored, then "already present".
    assert_eq!(put(&good, &nar, true).await.0, StatusCode::CREATED);
    assert!(s.store.contains(&good.store_path.hash()).unwrap());
    assert_eq!(put(&good, &nar, true).await.0, StatusCode::OK);
}
