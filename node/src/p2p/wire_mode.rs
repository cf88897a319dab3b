//! Whether to ask a peer for its chunks zstd-compressed.
//!
//! Compressing is worth it where the link is slower than the sender's
//! compressor: a home uplink, a rate-limited donor, most of the internet.
//! On a fast link (a LAN of 10 Gbit/s, loopback) the sender's zstd is the
//! bottleneck and costs both machines CPU per byte: about 3 core-seconds
//! per GB to compress and 1 to decompress, against 1.6 for the hashing and
//! encryption that cannot be avoided. Neither side can tell the link's
//! speed in advance, so the fetcher measures, for each peer, the goodput
//! (NAR bytes per second over a batch's round trip, times the batches
//! that shared it) of the way in use, a moving average, and tries the
//! other way on one batch: at once, then one batch in 64, in case the link
//! or the sender's load changed. A tried batch switches the way only if it
//! beat the way in use by a fifth ([`RAW_MARGIN`]), and going as stored is
//! tried only where compressed chunks arrive at [`FAST`] or more.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Peers remembered; the least recently used is forgotten first.
pub const MAX_PEERS: usize = 1024;
/// One batch in this many is asked the other way, to measure it again.
pub const PROBE_EVERY: u64 = 64;
/// Batches smaller than this are not measured: their time is mostly the
/// round trip, whichever way they travel.
pub const MIN_MEASURED: u64 = 128 << 10;
/// Chunks go as stored only when that measured this many times faster:
/// compressed chunks spend less of the sender's upload, the swarm's
/// scarcest resource, and a rate limiter's burst or a busy moment makes
/// single measurements jumpy.
pub const RAW_MARGIN: f64 = 1.2;
/// Chunks go as stored only on a link where compressed ones arrive at this
/// goodput or more (NAR bytes per second): below it the link, not the
/// sender's zstd, is what limits (a home uplink, a limited donor, a
/// gigabit LAN), and compressing pays. A link that drops below it while
/// chunks go as stored goes back to compressed at once.
pub const FAST: f64 = 100e6;
/// Weight of the newest measurement in the moving average.
const NEW_WEIGHT: f64 = 0.3;

#[derive(Debug, Clone)]
struct Rates {
    /// Goodput in bytes per second: [as stored, compressed].
    rate: [Option<f64>; 2],
    /// Measured batches asked so far.
    asked: u64,
    /// The way in use.
    using: bool,
    used: Instant,
    /// A batch asked the way being tried (unmeasured, or a probe) is in
    /// flight since then: one at a time, so a slow way costs one batch.
    trying: Option<(bool, Instant)>,
}

/// A tried batch that never reported back (it failed) stops blocking the
/// next try after this long.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-peer measurements (a state machine fed by the fetcher).
#[derive(Debug, Default)]
pub struct WireModes {
    peers: HashMap<PeerId, Rates>,
}

impl WireModes {
    /// Whether the next batch from `peer`, of `bytes` NAR bytes, should be
    /// asked compressed: the way in use (compressed until a measurement
    /// says otherwise: the cheaper guess on a link of unknown speed), or
    /// the other way for one batch being tried. A batch too small to
    /// measure takes the way in use and counts toward nothing.
    pub fn choose(&mut self, peer: PeerId, bytes: u64, now: Instant) -> bool {
        let r = self.entry(peer, now);
        if bytes < MIN_MEASURED {
            return r.using;
        }
        r.asked += 1;
        // Once the way in use is measured, the other way is tried (one
        // batch at a time): as stored only on a fast link; at once while
        // it is unmeasured, then now and then. Only a tried batch's
        // measurement can switch to going as stored.
        let in_use = r.rate[usize::from(r.using)];
        let worth = !r.using || in_use.is_some_and(|z| z >= FAST);
        let try_other = in_use.is_some()
            && worth
            && (r.rate[usize::from(!r.using)].is_none() || r.asked.is_multiple_of(PROBE_EVERY));
        let free = r
            .trying
            .is_none_or(|(_, since)| now.duration_since(since) >= TRY_TIMEOUT);
        if try_other && free {
            r.trying = Some((!r.using, now));
            return !r.using;
        }
        r.using
    }

    /// A batch asked `compressed` (or not) delivered `bytes` NAR bytes,
    /// verified, `elapsed` after it was asked, while `sharing` batches
    /// (itself included) were asked of the peer: batches in flight together
    /// share the link and the sender, so one batch's rate is that share.
    pub fn record(
        &mut self,
        peer: PeerId,
        compressed: bool,
        bytes: u64,
        elapsed: Duration,
        sharing: u32,
        now: Instant,
    ) {
        if bytes < MIN_MEASURED {
            return;
        }
        let rate = bytes as f64 * f64::from(sharing.max(1)) / elapsed.as_secs_f64().max(1e-6);
        let r = self.entry(peer, now);
        if r.trying.is_some_and(|(way, _)| way == compressed) {
            r.trying = None;
        }
        tracing::trace!(%peer, compressed, rate, sharing, "batch measured");
        let slot = &mut r.rate[usize::from(compressed)];
        if compressed == r.using {
            // The way in use: a moving average over its batches.
            let avg = slot.map_or(rate, |old| old * (1.0 - NEW_WEIGHT) + rate * NEW_WEIGHT);
            *slot = Some(avg);
            if !compressed && avg < FAST {
                r.using = true;
            }
            return;
        }
        // A tried batch: it switches the way if it beat the way in use by
        // the margin (a band either way, so noisy batches do not flap).
        *slot = Some(rate);
        if let [Some(raw), Some(z)] = r.rate {
            r.using = if r.using {
                raw <= z * RAW_MARGIN
            } else {
                z > raw * RAW_MARGIN
            };
        }
    }

    /// The measured goodputs, bytes per second: (as stored, compressed).
    #[cfg(test)]
    pub fn rates(&self, peer: &PeerId) -> (Option<f64>, Option<f64>) {
        self.peers.get(peer).map_or((None, None), |r| (r.rate[0], r.rate[1]))
    }

    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut Rates {
        if !self.peers.contains_key(&peer)
            && self.peers.len() >= MAX_PEERS
            && let Some(oldest) = self.peers.iter().min_by_key(|(_, r)| r.used).map(|(p, _)| *p)
        {
            self.peers.remove(&oldest);
        }
        let r = self.peers.entry(peer).or_insert(Rates {
            rate: [None, None],
            asked: 0,
            using: true,
            used: now,
            trying: None,
        });
        r.used = now;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn run(modes: &mut WireModes, peer: PeerId, batches: usize, rate_of: impl Fn(bool) -> f64) -> Vec<bool> {
        let now = Instant::now();
        (0..batches)
            .map(|_| {
                let z = modes.choose(peer, MB, now);
                let secs = MB as f64 / rate_of(z);
                modes.record(peer, z, MB, Duration::from_secs_f64(secs), 1, now);
                z
            })
            .collect()
    }

    /// Batches after the first two (one measured each way) that are probes.
    fn probes(batches: u64) -> usize {
        (3..=batches).filter(|a| a.is_multiple_of(PROBE_EVERY)).count()
    }

    #[test]
    fn a_slow_link_gets_compressed_batches_and_a_fast_one_raw_ones() {
        let mut modes = WireModes::default();
        let (slow, fast) = (PeerId::random(), PeerId::random());
        let n = 2 * PROBE_EVERY as usize;
        // A 50 Mbit/s link carrying NARs that compress 2.4:1: far below
        // what makes going as stored worth a try.
        let got = run(&mut modes, slow, n, |z| if z { 6e6 * 2.4 } else { 6e6 });
        assert!(got.iter().all(|z| *z), "{got:?}");
        // Loopback: raw at 900 MB/s, the sender's zstd at 300 MB/s.
        let got = run(&mut modes, fast, n, |z| if z { 300e6 } else { 900e6 });
        assert_eq!(got[..2], [true, false], "one batch each way first");
        let raw = got[2..].iter().filter(|z| !**z).count();
        assert_eq!(raw, n - 2 - probes(n as u64), "{got:?}");
        let (r, z) = modes.rates(&fast);
        assert!(r.unwrap() > z.unwrap());
    }

    #[test]
    fn a_limiters_burst_does_not_switch_to_raw() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let now = Instant::now();
        // A limiter's burst: both ways measure fast at first.
        assert!(modes.choose(peer, MB, now));
        modes.record(peer, true, MB, Duration::from_secs_f64(MB as f64 / 300e6), 1, now);
        assert!(!modes.choose(peer, MB, now));
        modes.record(peer, false, MB, Duration::from_secs_f64(MB as f64 / 300e6), 1, now);
        // Then the limit: compressed delivers 12 MB/s, raw would 5.
        let mut raw = 0;
        for _ in 0..48 {
            let z = modes.choose(peer, MB, now);
            raw += usize::from(!z);
            let rate = if z { 12e6 } else { 5e6 };
            modes.record(peer, z, MB, Duration::from_secs_f64(MB as f64 / rate), 1, now);
        }
        assert!(raw <= 2, "raw tried once after the burst, not used: {raw}");
    }

    #[test]
    fn raw_must_be_clearly_faster() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let got = run(
            &mut modes,
            peer,
            32,
            |z| if z { 100e6 } else { 100e6 * RAW_MARGIN * 0.9 },
        );
        assert!(
            got.iter().all(|z| *z) || got.iter().filter(|z| !**z).count() == 1,
            "{got:?}"
        );
    }

    #[test]
    fn a_link_that_slows_goes_back_to_compressed() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        run(&mut modes, peer, 40, |z| if z { 300e6 } else { 900e6 });
        // The link becomes slow: back to compressed once the average of
        // the raw batches drops below what makes them worth it.
        let n = 8 * PROBE_EVERY as usize;
        let got = run(&mut modes, peer, n, |z| if z { 14e6 } else { 6e6 });
        assert!(got[..10].iter().any(|z| *z), "back within a few batches: {got:?}");
        assert!(got[10..].iter().all(|z| *z), "and no raw batch since: {got:?}");
    }

    #[test]
    fn one_batch_at_a_time_tries_the_other_way() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let now = Instant::now();
        // Four batches before anything is measured: all compressed.
        assert!((0..4).all(|_| modes.choose(peer, MB, now)));
        modes.record(peer, true, MB, Duration::from_millis(10), 4, now);
        assert!(!modes.choose(peer, MB, now), "one batch tries raw");
        assert!((0..4).all(|_| modes.choose(peer, MB, now)), "the rest wait for it");
        // A try that never reports back stops blocking after a while.
        let later = now + TRY_TIMEOUT;
        assert!(!modes.choose(peer, MB, later), "raw is tried again");
        modes.record(peer, false, MB, Duration::from_millis(40), 1, later);
        assert!(modes.choose(peer, MB, later), "compressed measured better");
    }

    #[test]
    fn batches_that_shared_the_link_are_measured_by_their_share() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let now = Instant::now();
        // Four compressed batches shared a link of 8 MB/s (each took four
        // times as long as alone); one raw batch then had it alone at 4 MB/s.
        modes.record(peer, true, MB, Duration::from_secs_f64(4.0 * MB as f64 / 8e6), 4, now);
        modes.record(peer, false, MB, Duration::from_secs_f64(MB as f64 / 4e6), 1, now);
        assert!(modes.choose(peer, MB, now), "compressed delivered more");
    }

    #[test]
    fn small_batches_are_not_measured_and_peers_are_bounded() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let now = Instant::now();
        modes.record(peer, true, MIN_MEASURED - 1, Duration::from_millis(1), 1, now);
        assert_eq!(modes.rates(&peer), (None, None));
        // Small batches take the way in use (compressed) and count toward
        // nothing.
        assert!((0..10).all(|_| modes.choose(peer, MIN_MEASURED - 1, now)));
        assert!(modes.choose(peer, MB, now), "the first measured batch is compressed");
        assert!(modes.choose(peer, MB, now), "still compressed until measured");
        modes.record(peer, true, MB, Duration::from_millis(10), 1, now);
        assert!(!modes.choose(peer, MB, now), "then one as stored");
        modes.record(peer, false, MB, Duration::from_millis(1), 1, now);
        assert!(
            !modes.choose(peer, MIN_MEASURED - 1, now),
            "small batches follow the better way"
        );
        for _ in 0..MAX_PEERS + 10 {
            modes.choose(PeerId::random(), MB, now);
        }
        assert_eq!(modes.peers.len(), MAX_PEERS);
    }
}
