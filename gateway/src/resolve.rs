//! Resolution: local store first, then the sources. Every narinfo from a
//! source must verify against the trusted keys (or be a valid content
//! address, Nix's own rule) and name the path asked for; a source whose NAR
//! failed verification is skipped for that NAR for a while.
//!
//! The narinfo and the NAR are two decisions. A narinfo comes from the
//! first verified source (its latency is what the user feels); where a
//! NAR's bytes come from is [`crate::nar`]'s decision.

use std::sync::Arc;
use std::time::Duration;

use nixswarm_protocol::{NarInfo, PublicKey, Sha256Hash, StorePathHash};

use crate::metrics::Metrics;
use crate::peers::PeerSource;
use crate::source::{Source, SourceId, SourceKind};
use crate::ttl::TtlMap;

/// How long a source stays skipped for a NAR after it served a bad one.
const BAD_SOURCE_TTL: Duration = Duration::from_secs(600);
/// How long a verified narinfo from a source is remembered.
const FOUND_TTL: Duration = Duration::from_secs(300);
/// Entries kept per cache before expired ones are purged.
const CACHE_CAP: usize = 50_000;

/// The sources in priority order and what is known about them.
#[derive(Debug)]
pub struct Resolver {
    pub sources: Vec<Arc<dyn Source>>,
    keys: Vec<PublicKey>,
    metrics: Arc<Metrics>,
    /// How long peers get before the upstreams are asked as well.
    lookup_budget: Duration,
    /// Verified narinfo per (source, path).
    found: TtlMap<(SourceId, StorePathHash), NarInfo>,
    /// An upstream's "no such path", kept for the negative TTL.
    absent: TtlMap<(SourceId, StorePathHash), ()>,
    /// Paths no source had.
    missing: TtlMap<StorePathHash, ()>,
    /// (source, path, NarHash) that failed verification.
    bad: TtlMap<(SourceId, StorePathHash, Sha256Hash), ()>,
    /// The share keys, when some trusted key is not one: peers are then
    /// asked about a path only once its narinfo verified with a share key
    /// (or no upstream had it), so a private cache's paths never reach
    /// them. `None`: every trusted key is shared, peers are asked at once.
    private: Option<Vec<PublicKey>>,
}

impl Resolver {
    pub fn new(
        sources: Vec<Arc<dyn Source>>,
        keys: Vec<PublicKey>,
        negative_ttl: Duration,
        lookup_budget: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sources,
            keys,
            metrics,
            lookup_budget,
            found: TtlMap::new(FOUND_TTL, CACHE_CAP),
            absent: TtlMap::new(negative_ttl, CACHE_CAP),
            missing: TtlMap::new(negative_ttl, CACHE_CAP),
            bad: TtlMap::new(BAD_SOURCE_TTL, CACHE_CAP),
            private: None,
        }
    }

    /// The keys whose paths leave the machine. When some trusted key is not
    /// among them, peers are asked about a path only once its narinfo
    /// verified with one of them.
    pub fn with_share_keys(mut self, share: Vec<PublicKey>) -> Self {
        self.private = self.keys.iter().any(|k| !share.contains(k)).then_some(share);
        self
    }

    /// Whether peers may be asked about `info`'s path (and its NAR): every
    /// trusted key is shared, or a share key signed it.
    pub fn may_ask_peers(&self, info: &NarInfo) -> bool {
        self.private.as_ref().is_none_or(|share| info.trust(share).is_some())
    }

    /// True if the trusted keys (or Nix's content-address rule) accept `info`
    /// as the narinfo of `hash`. `Ok(true)` when only its NAR can show it is
    /// right (see [`NarInfo::unbound`]).
    pub fn acceptable(&self, hash: &StorePathHash, info: &NarInfo) -> Result<bool, &'static str> {
        if info.store_path.hash() != *hash {
            return Err("wrong_path");
        }
        let trust = info.trust(&self.keys).ok_or("untrusted")?;
        Ok(info.unbound(&trust))
    }

    /// Fetches and checks the NAR of an unbound narinfo from the source
    /// that sent it, before the narinfo is handed to Nix: Nix keeps a
    /// narinfo it was given (for a month by default), so a forged one would
    /// stay wrong there even after the NAR failed. The NAR is fetched again
    /// to be served; this costs a second download, but only for unsigned
    /// flat and text paths (signed ones are bound by their signature).
    async fn check_unbound(&self, idx: SourceId, info: &NarInfo) -> Result<(), String> {
        let hash = info.store_path.hash();
        if !self.usable(idx, &hash, &info.nar_hash) {
            return Err("its NAR failed verification lately".into());
        }
        let mut stream = match self.source(idx).nar(info).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("no NAR".into()),
            Err(e) => return Err(e.to_string()),
        };
        let mut check = nixswarm_protocol::NarCheck::new(info);
        let outcome = async {
            while let Some(piece) = futures::StreamExt::next(&mut stream).await {
                check
                    .update(&piece.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            check.finish().map(drop).map_err(|e| e.to_string())
        }
        .await;
        if outcome.is_err() {
            self.mark_bad(idx, &hash, &info.nar_hash);
            self.source(idx).rejected(info, true);
        }
        outcome
    }

    /// The source with this id.
    pub fn source(&self, id: SourceId) -> &Arc<dyn Source> {
        &self.sources[id.0]
    }

    /// Every source's id, in priority order.
    pub fn ids(&self) -> impl Iterator<Item = SourceId> + '_ {
        (0..self.sources.len()).map(SourceId)
    }

    /// The swarm, if it is one of the sources.
    pub fn peers(&self) -> Option<(SourceId, &PeerSource)> {
        self.ids().find_map(|id| self.source(id).as_peers().map(|p| (id, p)))
    }

    /// The verified narinfo of `hash` from source `idx`.
    pub(crate) async fn narinfo_from(&self, idx: SourceId, hash: &StorePathHash) -> Answer {
        if let Some(info) = self.found.get(&(idx, *hash)) {
            return Answer::Found(Box::new(info));
        }
        if self.absent.get(&(idx, *hash)).is_some() {
            return Answer::Absent;
        }
        let source = self.source(idx);
        let kind = source.kind().as_str();
        let result = match source.narinfo(hash).await {
            Ok(Some(info)) => match self.acceptable(hash, &info) {
                Ok(false) => Some(info),
                Ok(true) => match self.check_unbound(idx, &info).await {
                    Ok(()) => Some(info),
                    Err(why) => {
                        tracing::warn!(source = source.name(), %hash, %why, "rejected content-addressed narinfo: its NAR does not match");
                        self.metrics.reject(kind, "ca_mismatch");
                        None
                    }
                },
                Err(reason) => {
                    tracing::warn!(source = source.name(), %hash, reason, "rejected narinfo");
                    self.metrics.reject(kind, reason);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                // Down or broken: skip it for this request, do not remember.
                tracing::warn!(error = %e, %hash, "source failed");
                self.metrics.reject(kind, "narinfo_error");
                return Answer::Failed;
            }
        };
        // A peer that lacks a path now may have it soon: remember only its
        // hits. An upstream's miss is kept only for the negative TTL.
        match &result {
            Some(info) => self.found.insert((idx, *hash), info.clone()),
            None if source.kind() == SourceKind::Upstream => self.absent.insert((idx, *hash), ()),
            None => {}
        }
        result.map_or(Answer::Absent, |i| Answer::Found(Box::new(i)))
    }

    /// The first verified answer among `idxs`, asked in order; otherwise
    /// whether every one of them answered that it has no such path.
    async fn first(&self, idxs: &[SourceId], hash: &StorePathHash) -> Result<(SourceId, NarInfo), Miss> {
        let mut all_absent = true;
        for &idx in idxs {
            match self.narinfo_from(idx, hash).await {
                Answer::Found(info) => return Ok((idx, *info)),
                Answer::Absent => {}
                Answer::Failed => all_absent = false,
            }
        }
        Err(if all_absent { Miss::Absent } else { Miss::Unknown })
    }

    fn peer_sources(&self) -> impl Iterator<Item = &Arc<dyn Source>> {
        self.sources.iter().filter(|s| s.kind() == SourceKind::Peer)
    }

    /// Tells the peer sources that these paths will likely be asked for.
    fn prefetch(&self, hashes: &[StorePathHash]) {
        if hashes.is_empty() {
            return;
        }
        for s in self.peer_sources() {
            s.prefetch(hashes);
        }
    }

    /// The first verified narinfo for `hash`, and which source gave it.
    ///
    /// Provider discovery starts at once, in the background. Peers are
    /// asked first; if they have not answered within the lookup budget,
    /// the upstreams are asked too, and the first verified answer wins.
    /// When every upstream has answered that it has no such path, the
    /// answer is a miss at once: no waiting for the DHT walk. Once found,
    /// the path's references are prefetched too (Nix asks for a closure's
    /// narinfos before any NAR).
    pub async fn narinfo(&self, hash: &StorePathHash) -> Option<(SourceId, NarInfo)> {
        if self.missing.get(hash).is_some() {
            return None;
        }
        // With a trusted key that is not shared, peers hear of the path
        // only once its narinfo says they may (`may_ask_peers`).
        let private = self.private.is_some();
        if !private {
            self.prefetch(std::slice::from_ref(hash));
        }
        let (peers, ups): (Vec<SourceId>, Vec<SourceId>) =
            self.ids().partition(|&i| self.source(i).kind() == SourceKind::Peer);
        let result = if private {
            self.upstreams_then_peers(hash, &peers, &ups).await
        } else if peers.is_empty() {
            self.first(&ups, hash).await.ok()
        } else if ups.is_empty() {
            self.first(&peers, hash).await.ok()
        } else {
            let peer_answer = self.first(&peers, hash);
            let up_answer = self.first(&ups, hash);
            tokio::pin!(peer_answer, up_answer);
            let budget = tokio::time::sleep(self.lookup_budget);
            tokio::pin!(budget);
            let early = tokio::select! {
                biased;
                r = &mut peer_answer => Some(r),
                () = &mut budget => None,
            };
            match early {
                Some(Ok(found)) => Some(found),
                Some(Err(_)) => up_answer.await.ok(),
                None => tokio::select! {
                    r = &mut peer_answer => match r { Ok(found) => Some(found), Err(_) => up_answer.await.ok() },
                    r = &mut up_answer => match r {
                        Ok(found) => Some(found),
                        // Every upstream says there is no such path: a miss
                        // now, unless the peers have answered already.
                        Err(Miss::Absent) => futures::FutureExt::now_or_never(&mut peer_answer).and_then(Result::ok),
                        Err(Miss::Unknown) => peer_answer.await.ok(),
                    },
                },
            }
        };
        match &result {
            Some((_, info)) if self.may_ask_peers(info) => {
                if private {
                    self.prefetch(std::slice::from_ref(hash));
                }
                self.prefetch(&info.reference_hashes());
            }
            Some(_) => {}
            None => self.missing.insert(*hash, ()),
        }
        result
    }

    /// When some trusted key is not shared: the upstreams first; the peers
    /// (and discovery) only if no upstream had the path (a path no upstream
    /// serves is no private cache's).
    async fn upstreams_then_peers(
        &self,
        hash: &StorePathHash,
        peers: &[SourceId],
        ups: &[SourceId],
    ) -> Option<(SourceId, NarInfo)> {
        match self.first(ups, hash).await {
            Ok(found) => Some(found),
            Err(_) if !peers.is_empty() => {
                self.prefetch(std::slice::from_ref(hash));
                self.first(peers, hash).await.ok()
            }
            Err(_) => None,
        }
    }

    /// A verified narinfo of `hash` with `nar_hash`: one already known, or
    /// the first source's that has it.
    pub(crate) async fn info_for(&self, hash: &StorePathHash, nar_hash: &Sha256Hash) -> Option<NarInfo> {
        let known = self
            .ids()
            .filter_map(|idx| self.found.get(&(idx, *hash)))
            .find(|i| i.nar_hash == *nar_hash);
        if known.is_some() {
            return known;
        }
        for idx in self.ids() {
            if let Answer::Found(info) = self.narinfo_from(idx, hash).await
                && info.nar_hash == *nar_hash
            {
                return Some(*info);
            }
        }
        None
    }

    /// A verified narinfo of `hash` from `idx`, if known without asking.
    pub(crate) fn known(&self, idx: SourceId, hash: &StorePathHash) -> Option<NarInfo> {
        self.found.get(&(idx, *hash))
    }

    /// False if `idx` served a bad copy of this NAR lately.
    pub(crate) fn usable(&self, idx: SourceId, hash: &StorePathHash, nar_hash: &Sha256Hash) -> bool {
        self.bad.get(&(idx, *hash, *nar_hash)).is_none()
    }

    /// Remembers that source `idx` served a bad NAR for this path.
    pub fn mark_bad(&self, idx: SourceId, hash: &StorePathHash, nar_hash: &Sha256Hash) {
        self.bad.insert((idx, *hash, *nar_hash), ());
    }
}

/// One source's answer for a narinfo.
pub(crate) enum Answer {
    Found(Box<NarInfo>),
    /// It answered that it has no such path (or its answer did not verify).
    Absent,
    /// It could not answer (down, broken).
    Failed,
}

/// Why no source among some gave a narinfo.
enum Miss {
    /// Every one answered that it has none.
    Absent,
    /// At least one could not answer.
    Unknown,
}
