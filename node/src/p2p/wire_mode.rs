//! Whether to ask a peer for its chunks zstd-compressed.
//!
//! Compressing is worth it where the link is slower than the sender's
//! compressor: a home uplink, a rate-limited donor, most of the internet.
//! On a fast link (a LAN of 10 Gbit/s, loopback) the sender's zstd is the
//! bottleneck and costs both machines CPU per byte: about 3 core-seconds
//! per GB to compress and 1 to decompress, against 1.6 for the hashing and
//! encryption that cannot be avoided. Neither side can tell the link's
//! speed in advance, so the fetcher measures: for each peer, the goodput
//! (NAR bytes per second over a batch's round trip) of batches asked each
//! way, and asks the way that delivered more, trying the other way now and
//! then in case the link or the sender's load changed.

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
/// Weight of the newest measurement in the moving average.
const NEW_WEIGHT: f64 = 0.3;

#[derive(Debug, Clone)]
struct Rates {
    /// Goodput in bytes per second: [as stored, compressed].
    rate: [Option<f64>; 2],
    asked: u64,
    used: Instant,
}

/// The per-peer measurements (a state machine fed by the fetcher).
#[derive(Debug, Default)]
pub struct WireModes {
    peers: HashMap<PeerId, Rates>,
}

impl WireModes {
    /// Whether the next batch from `peer`, of `bytes` NAR bytes, should be
    /// asked compressed. A batch too small to measure takes the way that
    /// measured better (compressed while nothing is known: the cheaper
    /// guess on a link of unknown speed) and counts toward nothing.
    pub fn choose(&mut self, peer: PeerId, bytes: u64, now: Instant) -> bool {
        let r = self.entry(peer, now);
        let best = match r.rate {
            [Some(raw), Some(z)] => z >= raw,
            [Some(_), None] => true,
            [None, Some(_)] => false,
            [None, None] => true,
        };
        if bytes < MIN_MEASURED {
            return match r.rate {
                [Some(raw), Some(z)] => z >= raw,
                _ => true,
            };
        }
        r.asked += 1;
        match r.rate {
            // Until each way is measured, the unmeasured one.
            [None, _] | [_, None] => best,
            _ if r.asked.is_multiple_of(PROBE_EVERY) => !best,
            _ => best,
        }
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
        let slot = &mut r.rate[usize::from(compressed)];
        *slot = Some(slot.map_or(rate, |old| old * (1.0 - NEW_WEIGHT) + rate * NEW_WEIGHT));
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
            used: now,
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
        // A 50 Mbit/s link carrying NARs that compress 2.4:1.
        let got = run(&mut modes, slow, n, |z| if z { 6e6 * 2.4 } else { 6e6 });
        assert_eq!(got[..2], [true, false], "one batch each way first");
        let compressed = got[2..].iter().filter(|z| **z).count();
        assert_eq!(compressed, n - 2 - probes(n as u64), "{got:?}");
        // Loopback: raw at 900 MB/s, the sender's zstd at 300 MB/s.
        let got = run(&mut modes, fast, n, |z| if z { 300e6 } else { 900e6 });
        let raw = got[2..].iter().filter(|z| !**z).count();
        assert_eq!(raw, n - 2 - probes(n as u64), "{got:?}");
        let (r, z) = modes.rates(&fast);
        assert!(r.unwrap() > z.unwrap());
    }

    #[test]
    fn a_link_that_changes_is_followed_by_the_probes() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        run(&mut modes, peer, 40, |z| if z { 300e6 } else { 900e6 });
        // The link becomes slow: the probes find compression pays again
        // (each probe moves the average 30% of the way).
        let n = 8 * PROBE_EVERY as usize;
        let got = run(&mut modes, peer, n, |z| if z { 14e6 } else { 6e6 });
        let last = &got[n - 2 * PROBE_EVERY as usize..];
        assert_eq!(
            last.iter().filter(|z| !**z).count(),
            2,
            "only the probes go raw: {got:?}"
        );
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
        // Until both ways are measured, small batches go compressed and
        // are not counted.
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
