//! The NAR pipeline: everything between Nix asking for a NAR the local
//! store lacks and the verified bytes reaching it.
//!
//! - [`policy`]: where the bytes come from (upstream, peers, both ends),
//!   from the rates measured lately; a pure function with unit tests.
//! - [`merge`]: the legs of one NAR in order: forward legs, the peers' tail,
//!   the hedge and failover.
//! - [`verify`]: NarSize, NarHash and content address checked as the bytes
//!   pass, the last piece held back until they pass, and ingest.
//! - [`file`]: an upstream's compressed file passed through to Nix,
//!   checked on the way, decoded and stored behind it.
//! - [`prefetch`]: NARs started from peers when their narinfo is served.
//! - [`error`]: the pipeline's error and its HTTP mapping.
//!
//! Blame is the pipeline's: a source whose NAR failed (short, long or
//! wrong) is skipped for that NAR for a while, and peers score their
//! providers themselves.

pub mod error;
pub mod file;
pub mod merge;
pub mod policy;
pub mod prefetch;
mod slots;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use nixswarm_node::AsyncStore;
use nixswarm_protocol::{NarInfo, Sha256Hash, StorePathHash};

pub use error::NarError;
pub use file::Codings;
use merge::{Blame, Fallback, Forward, Spec, TaggedStream};
pub use policy::{Estimates, Offload, Plan, Tail};
pub use prefetch::{Instead, PrefetchSettings, Prefetcher};

use crate::metrics::Metrics;
use crate::resolve::{Answer, Resolver};
use crate::source::{SourceId, SourceKind};

/// The longest a NAR request waits for its prefetch while an upstream
/// could send it.
const JOIN_MAX: Duration = Duration::from_secs(5);
/// The longest a NAR request waits for its prefetch when only peers have
/// the NAR (Nix hears nothing meanwhile, and gives up on a download that
/// is silent for 300 s).
const JOIN_PEERS_ONLY: Duration = Duration::from_secs(120);
/// How long a NAR passed through as a file is remembered, so that Nix's
/// resumption of a broken download gets the rest of the same file.
const PASSED_FOR: Duration = Duration::from_secs(600);

/// How the pipeline behaves.
#[derive(Debug, Clone)]
pub struct NarSettings {
    pub offload: Offload,
    /// With `offload = max`: peers alone this long before an upstream
    /// starts beside them.
    pub hedge_after: Duration,
    /// Most NAR bytes the peers' tail holds in memory per transfer.
    pub tail_budget: u64,
    pub prefetch: PrefetchSettings,
}

impl Default for NarSettings {
    fn default() -> Self {
        Self {
            offload: Offload::Balanced,
            hedge_after: Duration::from_secs(1),
            tail_budget: 64 << 20,
            prefetch: PrefetchSettings::default(),
        }
    }
}

/// A NAR on its way: the narinfo it is checked against, its bytes, and
/// the kind of source asked first (for the request metrics).
pub struct Opened {
    pub info: NarInfo,
    pub body: Body,
    pub first: SourceKind,
}

/// How the NAR travels to the client.
pub enum Body {
    /// The NAR's own bytes, from one or more sources, in pieces tagged
    /// with their source.
    Nar(TaggedStream),
    /// One upstream's compressed file of it, passed through unchanged for
    /// the client to decompress (`Content-Encoding`).
    File(Box<FileLeg>),
}

/// An upstream's file of a NAR, as it arrives.
pub struct FileLeg {
    pub id: SourceId,
    /// That upstream's narinfo: its `URL`, `Compression`, `FileSize` and
    /// `FileHash` (unsigned) describe the file; its NarHash is the NAR's.
    pub file: NarInfo,
    pub stream: crate::source::ByteStream,
    /// The other upstreams, to finish the same file from (same FileHash)
    /// if this one's ends early or breaks.
    pub rest: Vec<Fallback>,
    /// When the file was asked for, and where its rate goes.
    pub opened: tokio::time::Instant,
    pub estimates: Arc<Estimates>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nar(_) => f.write_str("Nar"),
            Self::File(leg) => f.debug_tuple("File").field(leg).finish(),
        }
    }
}

impl std::fmt::Debug for FileLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLeg")
            .field("id", &self.id)
            .field("url", &self.file.url)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("path", &self.info.store_path)
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

/// Answers for bad NARs: skips the source for that NAR, counts and logs.
#[derive(Debug)]
struct Blamer {
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
}

impl Blame for Blamer {
    fn leg_failed(&self, id: SourceId, info: &NarInfo, why: &str) {
        let source = self.resolver.source(id);
        tracing::warn!(source = source.name(), path = %info.store_path, why, "NAR from this source is wrong: skipping it for this NAR");
        self.metrics.reject(source.kind().as_str(), "truncated");
        if !source.rejected(info, true) {
            self.resolver.mark_bad(id, &info.store_path.hash(), &info.nar_hash);
        }
    }

    fn nar_rejected(&self, info: &NarInfo, why: &NarError, used: &[SourceId]) {
        for &id in used {
            let source = self.resolver.source(id);
            tracing::warn!(source = source.name(), path = %info.store_path, %why, "NAR failed verification: aborting the response");
            self.metrics.reject(source.kind().as_str(), why.reason());
            if !source.rejected(info, why.wrong_nar()) {
                self.resolver.mark_bad(id, &info.store_path.hash(), &info.nar_hash);
            }
        }
    }
}

/// The NAR pipeline (one per gateway).
#[derive(Debug)]
pub struct NarPipeline {
    resolver: Arc<Resolver>,
    store: AsyncStore,
    blamer: Arc<Blamer>,
    estimates: Arc<Estimates>,
    settings: NarSettings,
    prefetcher: Prefetcher,
    /// NARs lately passed through: their FileHash.
    passed: crate::ttl::TtlMap<StorePathHash, Sha256Hash>,
}

impl NarPipeline {
    pub fn new(resolver: Arc<Resolver>, store: AsyncStore, metrics: Arc<Metrics>, settings: NarSettings) -> Self {
        let estimates = Arc::new(Estimates::default());
        Self {
            blamer: Arc::new(Blamer {
                resolver: resolver.clone(),
                metrics: metrics.clone(),
            }),
            prefetcher: Prefetcher::new(settings.prefetch, metrics, estimates.clone()),
            resolver,
            store,
            estimates,
            settings,
            passed: crate::ttl::TtlMap::new(PASSED_FOR, 4096),
        }
    }

    /// Who answers for a NAR that failed verification.
    pub fn blame(&self) -> Arc<dyn Blame> {
        self.blamer.clone()
    }

    /// The rates measured so far.
    pub fn estimates(&self) -> &Estimates {
        &self.estimates
    }

    /// Nix asked for this NAR: counts a prefetch of it as used. True if
    /// this is the first ask of a prefetched NAR (its bytes came from peers).
    pub fn asked(&self, hash: &StorePathHash) -> bool {
        self.prefetcher.asked(hash) > 0
    }

    /// A narinfo was served: if peers hold the path, its NAR starts
    /// towards the store now (bounded; see [`prefetch`]). However slow the
    /// peers, what they bring by the time Nix asks is the tail of its
    /// two-ended fetch.
    pub fn prefetch(&self, info: &NarInfo) {
        if self.settings.prefetch.running == 0 {
            return;
        }
        if let Some((_, peers)) = self.resolver.peers().filter(|_| self.resolver.may_ask_peers(info)) {
            self.prefetcher.start(info, peers, &self.store, peers.patience());
        }
    }

    /// Nix asks for a NAR the store lacks: if a prefetch of it is running,
    /// wait for it while its progress says it will be done within what the
    /// upstream would take (no wait before the upstream is measured, nor
    /// for a prefetch with no bytes yet). Where no upstream has the NAR the
    /// prefetch is the quickest way there is, and is waited for. True if
    /// the NAR is in the store now.
    pub async fn join_prefetch(&self, hash: &StorePathHash, nar_hash: &Sha256Hash) -> bool {
        if !self.prefetcher.is_running(hash) {
            return false;
        }
        let ups = self.upstreams(hash, nar_hash, |_| true).await;
        let instead = match ups.iter().find_map(|f| f.info.as_ref()) {
            // `offload = max` takes the peers whenever they hold the path.
            _ if self.settings.offload == Offload::Max => Instead::PeersOnly(JOIN_PEERS_ONLY),
            None => Instead::PeersOnly(JOIN_PEERS_ONLY),
            // Before the upstream is measured there is nothing to be
            // faster than: no wait, unless the prefetch's bytes are all
            // here.
            Some(i) => Instead::Upstream(self.estimates.upstream().map_or(Duration::ZERO, |e| {
                e.time(i.file_size.unwrap_or(i.nar_size)).min(JOIN_MAX)
            })),
        };
        self.prefetcher.join(hash, instead).await
    }

    /// Opens the NAR of `hash` with `nar_hash` from the sources, as the
    /// policy decides. Sources that served a bad copy lately are skipped.
    /// A NAR the upstream alone will send comes as its file (see
    /// [`Body::File`]) if `codings` allow its compression.
    pub async fn open(
        &self,
        hash: &StorePathHash,
        nar_hash: &Sha256Hash,
        codings: &Codings,
    ) -> Result<Opened, NarError> {
        let r = &self.resolver;
        let info = r.info_for(hash, nar_hash).await.ok_or(NarError::Unavailable)?;
        let usable = |id: SourceId| r.usable(id, hash, nar_hash);
        let peers = r.peers().filter(|(id, _)| usable(*id) && r.may_ask_peers(&info));
        let ups = self.upstreams(hash, nar_hash, |_| true).await;
        // The first upstream with this NAR gives its compressed size.
        let file_size = ups
            .iter()
            .find_map(|f| f.info.as_ref())
            .map(|i| i.file_size.unwrap_or(i.nar_size));
        let mut ready = peers.as_ref().and_then(|(_, p)| p.ready(&info));
        let plan = match &peers {
            None => Plan::TwoEnded(Tail::Never),
            Some(_) => policy::plan(&policy::Inputs {
                nar_size: info.nar_size,
                file_size: file_size.filter(|_| !ups.is_empty()),
                peers_ready: ready.as_ref().map(|p| info.nar_size.saturating_sub(p.inline_bytes())),
                upstream: self.estimates.upstream(),
                peers: self.estimates.peers(),
                offload: self.settings.offload,
                hedge_after: self.settings.hedge_after,
            }),
        };
        // A prefetch of this NAR still running, not waited for, becomes the
        // peers' tail of a two-ended fetch: what it brought is not lost.
        // Where peers alone serve, their transfer goes in order instead.
        let taken = match (&peers, plan) {
            (Some(_), Plan::Peers { .. }) => {
                self.prefetcher.stop(hash);
                None
            }
            (Some(_), Plan::TwoEnded(_)) => self.prefetcher.take_tail(hash).await,
            (None, _) => None,
        };
        tracing::debug!(path = %info.store_path, ?plan, prefetch_as_tail = taken.is_some(), "NAR plan");
        let spec = |forward: Vec<Forward>, ups: Vec<Fallback>| Spec {
            info: info.clone(),
            forward,
            tail: None,
            tail_later: None,
            hedge: None,
            fallbacks: ups,
            tail_budget: self.settings.tail_budget,
            estimates: self.estimates.clone(),
            blame: self.blamer.clone(),
        };
        if let (Plan::Peers { upstream_after }, Some((id, p)), None) = (plan, &peers, &taken) {
            let stream = match ready.take() {
                Some(path) => Some(p.stream(path)),
                // Waits for discovery as `PeerWait` allows.
                None => crate::source::Source::nar(*p, &info).await.ok().flatten(),
            };
            if let Some(stream) = stream {
                let mut s = spec(vec![Forward::new(*id, SourceKind::Peer, stream)], ups);
                s.hedge = upstream_after;
                return Ok(self.opened(s, SourceKind::Peer));
            }
        }
        if taken.is_none()
            && (peers.is_none() || plan == Plan::TwoEnded(Tail::Never))
            && let Some(leg) = self.open_file(&ups, codings, None).await
        {
            if let Some(h) = leg.file.file_hash {
                self.passed.insert(*hash, h);
            }
            return Ok(Opened {
                info,
                body: Body::File(Box::new(leg)),
                first: SourceKind::Upstream,
            });
        }
        let mut rest = ups.into_iter();
        let Some(up) = merge::open_next(&info, &mut rest).await else {
            // No upstream could open it: peers alone, if they have it.
            let (id, p) = peers.ok_or(NarError::Unavailable)?;
            let path = p.path_for(&info, p.patience()).await.ok_or(NarError::Unavailable)?;
            let s = spec(vec![Forward::new(id, SourceKind::Peer, p.stream(path))], vec![]);
            return Ok(self.opened(s, SourceKind::Peer));
        };
        let mut s = spec(vec![up], rest.collect());
        if let (Some(t), Some((id, _))) = (taken, &peers) {
            s.tail = Some((*id, t));
        } else if let (Plan::TwoEnded(tail), Some((id, p))) = (plan, &peers) {
            let id = *id;
            match tail {
                Tail::Now => s.tail = ready.map(|path| (id, p.stream_tail(path))),
                Tail::Later => {
                    let later = p.tail_later(&info);
                    s.tail_later = Some(Box::pin(async move { later.await.map(|t| (id, t)) }));
                }
                Tail::Never => {}
            }
        }
        Ok(self.opened(s, SourceKind::Upstream))
    }

    /// A `Range` request for a NAR lately passed through as a file: Nix
    /// resuming a broken download, whose offset counts that file's bytes.
    /// The rest must come from the same file (the same FileHash, from any
    /// usable upstream), or not at all. `None` if the NAR was not passed
    /// through lately, or the request has an `Accept-Encoding` (it is for
    /// the NAR's own bytes).
    pub async fn open_resumed(
        &self,
        hash: &StorePathHash,
        nar_hash: &Sha256Hash,
        codings: &Codings,
    ) -> Option<Result<Opened, NarError>> {
        // Nix sends no Accept-Encoding; a client that lists codings wants
        // the NAR's own bytes in its ranges.
        if *codings != Codings::Any {
            return None;
        }
        let file_hash = self.passed.get(hash)?;
        let r = &self.resolver;
        let Some(info) = r.info_for(hash, nar_hash).await else {
            return Some(Err(NarError::Unavailable));
        };
        let ups = self.upstreams(hash, nar_hash, |i| i.file_hash == Some(file_hash)).await;
        let Some(leg) = self.open_file(&ups, codings, Some(file_hash)).await else {
            tracing::warn!(path = %info.store_path, "cannot resume the NAR's file: no upstream has the same file now");
            return Some(Err(NarError::Unavailable));
        };
        Some(Ok(Opened {
            info,
            body: Body::File(Box::new(leg)),
            first: SourceKind::Upstream,
        }))
    }

    /// The usable upstreams, in order, with their narinfos where known.
    /// Narinfos are asked for in order until one is for this NAR and
    /// `wanted`; upstreams known to hold another NAR of the path are left
    /// out.
    async fn upstreams(
        &self,
        hash: &StorePathHash,
        nar_hash: &Sha256Hash,
        wanted: impl Fn(&NarInfo) -> bool,
    ) -> Vec<Fallback> {
        let r = &self.resolver;
        let mut ups: Vec<Fallback> = r
            .ids()
            .filter(|&id| r.source(id).kind() == SourceKind::Upstream && r.usable(id, hash, nar_hash))
            .map(|id| Fallback {
                id,
                source: r.source(id).clone(),
                info: r.known(id, hash),
            })
            .collect();
        for f in &mut ups {
            if f.info.is_none()
                && let Answer::Found(i) = r.narinfo_from(f.id, hash).await
            {
                f.info = Some(*i);
            }
            if f.info.as_ref().is_some_and(|i| i.nar_hash == *nar_hash && wanted(i)) {
                break;
            }
        }
        ups.retain(|f| f.info.as_ref().is_none_or(|i| i.nar_hash == *nar_hash));
        ups
    }

    fn opened(&self, spec: Spec, first: SourceKind) -> Opened {
        Opened {
            info: spec.info.clone(),
            body: Body::Nar(merge::merge(spec)),
            first,
        }
    }

    /// The first upstream's file of the NAR, if it can be passed through:
    /// compressed in a way Nix decodes, with a FileSize and FileHash to
    /// check it against, and input-addressed (a content-addressed NAR is
    /// checked against its address here before anyone gets it). `None`
    /// sends the NAR's bytes instead (decoded here, with failover between
    /// upstreams).
    async fn open_file(&self, ups: &[Fallback], codings: &Codings, same_as: Option<Sha256Hash>) -> Option<FileLeg> {
        let first = ups.iter().find(|f| {
            f.info
                .as_ref()
                .is_some_and(|i| same_as.is_none_or(|h| i.file_hash == Some(h)))
        })?;
        let file = first.info.clone()?;
        let compression = file.compression.as_str();
        if file.file_size.is_none()
            || file.file_hash.is_none()
            || file.ca.is_some()
            || crate::upstream::write_decoder(compression).is_none()
            || !codings.allow(compression)
        {
            return None;
        }
        let opened = tokio::time::Instant::now();
        match first.source.file(&file).await {
            Ok(Some(stream)) => Some(FileLeg {
                id: first.id,
                file,
                stream,
                rest: ups.iter().filter(|f| f.id != first.id).cloned().collect(),
                opened,
                estimates: self.estimates.clone(),
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(source = first.source.name(), error = %e, "cannot pass the NAR's file through");
                None
            }
        }
    }
}
