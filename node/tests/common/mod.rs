//! What the swarm tests share: real nodes on 127.0.0.1 in one process,
//! each with its own store, and helpers to wait and fetch.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::Multiaddr;
use nixswarm_node::p2p::{FetchSettings, Fetcher, PeerPath, load_or_create_key};
use nixswarm_node::{ChunkStore, Node, NodeConfig, SharePolicy, Shelves, StoreOptions};
use nixswarm_protocol::{NarInfo, SecretKey, Sha256Hash, StorePath, StorePathHash};
use tokio_util::sync::CancellationToken;

pub fn key() -> SecretKey {
    SecretKey::from_seed("test-1", &[7; 32])
}

pub fn nar(n: u8, len: usize) -> Vec<u8> {
    let mut x = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn info(n: u8, bytes: &[u8]) -> NarInfo {
    let mut i = NarInfo {
        store_path: StorePath::new(StorePathHash::from_bytes(&[n; 20]), &format!("pkg-{n}")).unwrap(),
        url: "nar/x.nar".into(),
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256Hash::digest(bytes),
        nar_size: bytes.len() as u64,
        references: vec![],
        deriver: None,
        sigs: vec![],
        ca: None,
    };
    i.sigs = vec![key().sign(&i.fingerprint())];
    i
}

pub struct TestNode {
    pub node: Node,
    pub store: ChunkStore,
    pub cancel: CancellationToken,
    pub fetcher: Fetcher,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start(bootstrap: Option<Multiaddr>, tweak: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keypair = load_or_create_key(&dir.path().join("node.key")).unwrap();
        Self::start_in(dir, keypair, bootstrap, tweak).await
    }

    /// Same, with this key.
    pub async fn start_with_key(
        keypair: libp2p::identity::Keypair,
        bootstrap: Option<Multiaddr>,
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), keypair, bootstrap, tweak).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        keypair: libp2p::identity::Keypair,
        bootstrap: Option<Multiaddr>,
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let store = ChunkStore::open(&dir.path().join("store"), StoreOptions::with_quota(1 << 30)).unwrap();
        let mut config = NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: bootstrap.into_iter().collect(),
            mdns: false,
            announce_private: true,
            // Many nodes share this process: the budget is one node's.
            test_memory_budget: Some(usize::MAX),
            ..NodeConfig::default()
        };
        tweak(&mut config);
        let cancel = CancellationToken::new();
        let shelves = Shelves::store(store.clone(), SharePolicy::new(vec![key().public_key()], false));
        let node = Node::start(dir.path(), keypair, shelves, config, cancel.clone())
            .await
            .unwrap();
        let settings = FetchSettings {
            lookup_timeout: Duration::from_secs(3),
            ..FetchSettings::default()
        };
        let fetcher = Fetcher::new(node.handle.clone(), store.clone(), vec![key().public_key()], settings);
        Self {
            node,
            store,
            cancel,
            fetcher,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> Multiaddr {
        self.node.listen_addrs[0]
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(self.node.handle.peer_id()))
    }

    pub fn put(&self, n: u8, bytes: &[u8]) {
        let mut ingest = self.store.begin_ingest(info(n, bytes)).unwrap();
        ingest.write(bytes).unwrap();
        ingest.finish().unwrap();
    }
}

pub async fn swarm(n: usize, tweak: impl Fn(usize, &mut NodeConfig)) -> Vec<TestNode> {
    let first = TestNode::start(None, |c| tweak(0, c)).await;
    let boot = first.addr();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(TestNode::start(Some(boot.clone()), |c| tweak(i, c)).await);
    }
    // Wait until every node is connected to the swarm.
    for node in &nodes {
        wait(|| async { !node.node.handle.peers().await.unwrap().is_empty() }).await;
    }
    nodes
}

/// Polls a condition until it holds (10 s at most).
pub async fn wait<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}

pub async fn collect(
    mut s: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> (Vec<u8>, Option<String>) {
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        match piece {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e.to_string())),
        }
    }
    (out, None)
}

/// Waits until a DHT walk from `node` finds `n` providers of `h` (10 s at
/// most). A fetcher keeps what its first search found for minutes (a hit
/// is not searched again), so a test that wants several providers in one
/// lookup waits for their records first.
pub async fn wait_providers(node: &TestNode, h: StorePathHash, n: usize) {
    wait(|| async {
        let Ok(mut rx) = node.node.handle.find_providers(&h).await else {
            return false;
        };
        let mut seen = std::collections::HashSet::new();
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            seen.insert(p);
        }
        seen.len() >= n
    })
    .await;
}

/// Looks a path up until the answer satisfies `ok` (10 s at most).
pub async fn lookup_until(f: &Fetcher, h: StorePathHash, ok: impl Fn(&PeerPath) -> bool) -> PeerPath {
    for _ in 0..100 {
        let r = f.lookup(&h).await;
        if let Some(p) = r.filter(|p| ok(p)) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no satisfying lookup for {h} within 10 s");
}

pub fn hash(n: u8) -> StorePathHash {
    StorePathHash::from_bytes(&[n; 20])
}
