//! Whether to ask a peer for its chunks zstd-compressed.
//!
//! Compressing is worth it where the link is slower than the sender's
//! compressor: a home uplink, a rate-limited donor, most of the internet.
//! On a fast link (a LAN of 10 Gbit/s, loopback), or where the sender's
//! cores are busy, the sender's zstd is the bottleneck and costs both
//! machines CPU per byte: about 3 core-seconds per GB to compress and 1 to
//! decompress, against 1.6 for the hashing and encryption that cannot be
//! avoided. Neither side can tell in advance which limits, so the fetcher
//! measures, for each peer and each way, the goodput as a moving average:
//! a batch's NAR bytes over its share of the time it was in flight (the
//! batches asked of one peer share its link and its sender, by every
//! transfer at once, so a batch's share of each moment is one over the
//! batches then in flight), and tries the other way on one batch: at once, then one
//! batch in 64, and whenever the way in use has fallen below what the
//! other way last measured. Only a tried batch switches the way, and only
//! if it beat the way in use by a fifth ([`RAW_MARGIN`], a band either
//! way): an old measurement of the other way asks for a try, never for a
//! switch, so a limiter's first-second burst cannot make raw batches look
//! fast for long.

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
/// Chunks go as stored only when that measured this many times faster, and
/// back to compressed when that did: compressed chunks spend less of the
/// sender's upload, the swarm's scarcest resource, and single
/// measurements are jumpy.
pub const RAW_MARGIN: f64 = 1.2;
/// Weight of the newest measurement in the moving average.
const NEW_WEIGHT: f64 = 0.5;

/// A batch asked of a peer: which way, and the peer's shared clock then.
/// Give it back to [`WireModes::answered`] however the batch ends.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub compressed: bool,
    /// The batch trying the other way.
    tried: bool,
    shared_at: f64,
}

#[derive(Debug, Clone)]
struct Rates {
    /// Goodput in bytes per second: [as stored, compressed].
    rate: [Option<f64>; 2],
    /// Batches in flight now, of every transfer.
    in_flight: u32,
    /// Seconds of the link's time as one batch's share: advances by
    /// 1/in_flight per second while any is in flight.
    shared: f64,
    shared_until: Instant,
    /// Measured batches asked so far.
    asked: u64,
    /// The way in use.
    using: bool,
    used: Instant,
    /// A batch asked the way being tried (unmeasured, or a probe) is in
    /// flight since then: one at a time, so a slow way costs one batch.
    trying: Option<Instant>,
}

impl Rates {
    fn advance(&mut self, now: Instant) {
        if self.in_flight > 0 {
            self.shared += now.saturating_duration_since(self.shared_until).as_secs_f64() / f64::from(self.in_flight);
        }
        self.shared_until = self.shared_until.max(now);
    }

    /// Whether compressed wins over as stored with these rates, starting
    /// from the way in use (the band).
    fn compressed_wins(&self, raw: f64, z: f64) -> bool {
        if self.using {
            raw <= z * RAW_MARGIN
        } else {
            z > raw * RAW_MARGIN
        }
    }

    /// The other way's last measurement beats the way in use.
    fn other_looks_better(&self) -> bool {
        match self.rate {
            [Some(raw), Some(z)] => self.compressed_wins(raw, z) != self.using,
            _ => false,
        }
    }
}

/// A tried batch whose ticket never came back stops blocking the next try
/// after this long.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-peer measurements (a state machine fed by the fetcher).
#[derive(Debug, Default)]
pub struct WireModes {
    peers: HashMap<PeerId, Rates>,
}

impl WireModes {
    /// The next batch from `peer`, of `bytes` NAR bytes, is asked now:
    /// compressed or not. The way in use (compressed until a measurement
    /// says otherwise: the cheaper guess on a link of unknown speed), or
    /// the other way for one batch being tried. A batch too small to
    /// measure takes the way in use and counts toward nothing but the
    /// sharing.
    pub fn ask(&mut self, peer: PeerId, bytes: u64, now: Instant) -> Ticket {
        let r = self.entry(peer, now);
        r.advance(now);
        r.in_flight += 1;
        let ticket = |compressed, tried| Ticket {
            compressed,
            tried,
            shared_at: r.shared,
        };
        if bytes < MIN_MEASURED {
            return ticket(r.using, false);
        }
        r.asked += 1;
        // Once the way in use is measured, the other way is tried (one
        // batch at a time): at once while it is unmeasured, then now and
        // then, and when its old measurement beats the way in use now.
        let try_other = r.rate[usize::from(r.using)].is_some()
            && (r.rate[usize::from(!r.using)].is_none()
                || r.asked.is_multiple_of(PROBE_EVERY)
                || r.other_looks_better());
        let free = r.trying.is_none_or(|since| now.duration_since(since) >= TRY_TIMEOUT);
        if try_other && free {
            r.trying = Some(now);
            return ticket(!r.using, true);
        }
        ticket(r.using, false)
    }

    /// A batch asked with `ticket` ended: with `verified` NAR bytes, or
    /// `None` if it failed.
    pub fn answered(&mut self, peer: PeerId, ticket: Ticket, verified: Option<u64>, now: Instant) {
        let r = self.entry(peer, now);
        r.advance(now);
        r.in_flight = r.in_flight.saturating_sub(1);
        let compressed = ticket.compressed;
        if ticket.tried {
            r.trying = None;
        }
        let Some(bytes) = verified.filter(|b| *b >= MIN_MEASURED) else {
            return;
        };
        let share = (r.shared - ticket.shared_at).max(1e-6);
        let rate = bytes as f64 / share;
        tracing::trace!(%peer, compressed, rate, "batch measured");
        let slot = &mut r.rate[usize::from(compressed)];
        if compressed == r.using {
            // The way in use: a moving average over its batches.
            *slot = Some(slot.map_or(rate, |old| old * (1.0 - NEW_WEIGHT) + rate * NEW_WEIGHT));
            return;
        }
        // A tried batch: it switches the way if it beat the way in use by
        // the margin.
        *slot = Some(rate);
        if let [Some(raw), Some(z)] = r.rate {
            r.using = r.compressed_wins(raw, z);
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
            in_flight: 0,
            shared: 0.0,
            shared_until: now,
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

    fn secs(bytes: u64, rate: f64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / rate)
    }

    /// Batches one after another, each at the rate its way gets.
    fn run(modes: &mut WireModes, peer: PeerId, batches: usize, rate_of: impl Fn(bool) -> f64) -> Vec<bool> {
        let mut now = Instant::now();
        (0..batches)
            .map(|_| {
                let t = modes.ask(peer, MB, now);
                now += secs(MB, rate_of(t.compressed));
                modes.answered(peer, t, Some(MB), now);
                t.compressed
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
        // A 50 Mbit/s link carrying NARs that compress 2.4:1: raw is tried
        // once, then only on the probes.
        let got = run(&mut modes, slow, n, |z| if z { 6e6 * 2.4 } else { 6e6 });
        let raw = got.iter().filter(|z| !**z).count();
        assert_eq!(raw, 1 + probes(n as u64), "{got:?}");
        assert!(!got[1] && got[2..10].iter().all(|z| *z), "{got:?}");
        // Loopback: raw at 900 MB/s, the sender's zstd at 300 MB/s.
        let got = run(&mut modes, fast, n, |z| if z { 300e6 } else { 900e6 });
        assert_eq!(got[..2], [true, false], "one batch each way first");
        let raw = got[2..].iter().filter(|z| !**z).count();
        assert_eq!(raw, n - 2 - probes(n as u64), "{got:?}");
        let (r, z) = modes.rates(&fast);
        assert!(r.unwrap() > z.unwrap());
    }

    #[test]
    fn a_busy_sender_goes_raw_at_any_speed() {
        // Both cores busy (Nix, the gateway and the sender on one machine):
        // the sender's zstd is what limits, at 40 MB/s against 70 raw.
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let n = 2 * PROBE_EVERY as usize;
        let got = run(&mut modes, peer, n, |z| if z { 40e6 } else { 70e6 });
        let compressed = got[2..].iter().filter(|z| **z).count();
        assert_eq!(compressed, probes(n as u64), "{got:?}");
    }

    #[test]
    fn a_limiters_burst_does_not_switch_to_raw() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        // A limiter's burst: both ways measure fast at first.
        let got = run(&mut modes, peer, 2, |_| 300e6);
        assert_eq!(got, [true, false]);
        // Then the limit: compressed delivers 12 MB/s, raw would 5.
        let got = run(&mut modes, peer, 48, |z| if z { 12e6 } else { 5e6 });
        let raw = got.iter().filter(|z| !**z).count();
        assert!(raw <= 2, "raw tried once after the burst, not used: {got:?}");
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
        assert_eq!(got.iter().filter(|z| !**z).count(), 1, "{got:?}");
    }

    #[test]
    fn a_link_that_slows_goes_back_to_compressed() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        run(&mut modes, peer, 40, |z| if z { 300e6 } else { 900e6 });
        // The link becomes slow: compressed is tried as the raw average
        // falls below what compressed measured, and taken once it wins.
        let n = 8 * PROBE_EVERY as usize;
        let got = run(&mut modes, peer, n, |z| if z { 14e6 } else { 6e6 });
        assert!(got[10..20].iter().all(|z| *z), "back within 10 batches: {got:?}");
        let raw_since = got[10..].iter().filter(|z| !**z).count();
        assert!(
            raw_since <= n / PROBE_EVERY as usize + 1,
            "then raw only on probes: {got:?}"
        );
    }

    #[test]
    fn one_batch_at_a_time_tries_the_other_way() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let now = Instant::now();
        // Four batches before anything is measured: all compressed.
        let first: Vec<Ticket> = (0..4).map(|_| modes.ask(peer, MB, now)).collect();
        assert!(first.iter().all(|t| t.compressed));
        let later = now + Duration::from_millis(40);
        for t in first {
            modes.answered(peer, t, Some(MB), later);
        }
        let tried = modes.ask(peer, MB, later);
        assert!(!tried.compressed, "one batch tries raw");
        assert!(
            (0..4).all(|_| modes.ask(peer, MB, later).compressed),
            "the rest wait for it"
        );
        // A try whose ticket never comes back stops blocking after a while.
        let lost = later + TRY_TIMEOUT;
        let again = modes.ask(peer, MB, lost);
        assert!(!again.compressed, "raw is tried again");
        // A failed try frees the next one at once.
        modes.answered(peer, again, None, lost);
        assert!(!modes.ask(peer, MB, lost).compressed);
    }

    #[test]
    fn batches_that_shared_the_link_are_measured_by_their_share() {
        let mut modes = WireModes::default();
        let (peer, other) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        // Four compressed batches (of different transfers) share a link of
        // 8 MB/s: all four end after 4 MB took 0.5 s. Each had a quarter.
        let four: Vec<Ticket> = (0..4).map(|_| modes.ask(peer, MB, now)).collect();
        let end = now + secs(4 * MB, 8e6);
        for t in four {
            modes.answered(peer, t, Some(MB), end);
        }
        let z = modes.rates(&peer).1.unwrap();
        assert!((z / 8e6 - 1.0).abs() < 1e-6, "{z}");
        // One raw batch then has it alone at 4 MB/s: compressed stays.
        let t = modes.ask(peer, MB, end);
        assert!(!t.compressed);
        modes.answered(peer, t, Some(MB), end + secs(MB, 4e6));
        assert!(modes.ask(peer, MB, end).compressed, "compressed delivered more");
        // Another peer's batches are not this one's sharing.
        let t = modes.ask(other, MB, now);
        modes.answered(other, t, Some(MB), now + secs(MB, 8e6));
        assert!((modes.rates(&other).1.unwrap() / 8e6 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn small_batches_are_not_measured_and_peers_are_bounded() {
        let mut modes = WireModes::default();
        let peer = PeerId::random();
        let now = Instant::now();
        let t = modes.ask(peer, MIN_MEASURED - 1, now);
        modes.answered(peer, t, Some(MIN_MEASURED - 1), now + Duration::from_millis(1));
        assert_eq!(modes.rates(&peer), (None, None));
        // Small batches take the way in use (compressed) and count toward
        // nothing.
        assert!((0..10).all(|_| modes.ask(peer, MIN_MEASURED - 1, now).compressed));
        let mut modes = WireModes::default();
        let t = modes.ask(peer, MB, now);
        assert!(t.compressed, "the first measured batch is compressed");
        assert!(modes.ask(peer, MB, now).compressed, "still compressed until measured");
        modes.answered(peer, t, Some(MB), now + Duration::from_millis(10));
        let t = modes.ask(peer, MB, now);
        assert!(!t.compressed, "then one as stored");
        modes.answered(peer, t, Some(MB), now + Duration::from_millis(11));
        assert!(
            !modes.ask(peer, MIN_MEASURED - 1, now).compressed,
            "small batches follow the better way"
        );
        for _ in 0..MAX_PEERS + 10 {
            modes.ask(PeerId::random(), MB, now);
        }
        assert_eq!(modes.peers.len(), MAX_PEERS);
    }
}
