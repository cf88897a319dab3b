//! The fetch policy: where a NAR's bytes come from. A pure function of
//! what is known when Nix asks for the NAR (its sizes, whether peers are
//! ready with it now, the rates measured lately), so every decision is
//! unit-tested without a network.
//!
//! Two promises, in this order: Nix is never slower than the upstream
//! alone, and within that peers carry every byte they can.
//!
//! - Nothing waits for discovery. When no peer is known to hold the path
//!   now, the upstream starts at once; a peer found meanwhile joins from
//!   the tail (unless the whole NAR is expected within [`SMALL`]).
//! - When peers hold it and are measured clearly faster than the upstream
//!   (or the user asked for `offload = max`), peers alone; the upstream
//!   starts too if they have not finished when they should have.
//! - Otherwise a two-ended fetch: the upstream streams from byte 0 (a
//!   compressed NAR can only be read from its start), peers fetch chunks
//!   from the end backwards, and the upstream is closed where they meet.
//!   The NAR takes about NarSize / (ρ·C + P) and the upstream sends only
//!   the head; a tiny NAR simply comes from whichever answers first.

use std::sync::Mutex;
use std::time::Duration;

/// Below this predicted upstream time a peer found later cannot help.
pub const SMALL: Duration = Duration::from_millis(100);
/// Peers alone only when predicted to take at most this share of the
/// upstream's time: the margin that pays for a wrong estimate.
const PEERS_ALONE_SHARE: f64 = 0.5;
/// Before the upstream is measured, a file this small counts as small: at
/// 10 MB/s it takes [`SMALL`].
const SMALL_FILE: u64 = 1 << 20;
/// A peers' tail predicted to bring less than this share of a NAR is not
/// started: its requests would cost the peers' upload and this link's
/// bandwidth for bytes the upstream delivers first anyway.
const MIN_TAIL_SHARE: f64 = 0.1;
/// Samples smaller than this say more about latency than about rate.
const MIN_RATE_SAMPLE: u64 = 256 << 10;
/// Weight of a new sample in the moving averages.
const ALPHA: f64 = 0.3;

/// How much a user gives: `balanced` keeps Nix as fast as the upstream
/// alone; `max` sends every byte peers hold through them first, trading a
/// bounded slowdown (the hedge) for offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    #[default]
    Balanced,
    Max,
}

impl std::str::FromStr for Offload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "balanced" => Ok(Self::Balanced),
            "max" => Ok(Self::Max),
            _ => Err(format!("offload must be \"balanced\" or \"max\", not {s:?}")),
        }
    }
}

/// A source's measured behaviour: time to the first byte, and rate (for
/// upstreams in compressed bytes per second, what its link carries; for
/// peers in NAR bytes per second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub latency: Duration,
    pub rate: f64,
}

impl Estimate {
    /// Predicted time for `bytes`.
    pub fn time(&self, bytes: u64) -> Duration {
        self.latency + Duration::from_secs_f64(bytes as f64 / self.rate.max(1.0))
    }
}

#[derive(Debug, Default)]
struct Ewma {
    latency: Option<f64>,
    rate: Option<f64>,
}

impl Ewma {
    fn add(v: &mut Option<f64>, x: f64) {
        *v = Some(v.map_or(x, |old| old * (1.0 - ALPHA) + x * ALPHA));
    }

    fn estimate(&self) -> Option<Estimate> {
        Some(Estimate {
            latency: Duration::from_secs_f64(self.latency?),
            rate: self.rate?,
        })
    }
}

/// Moving averages of the upstreams' and the peers' measured behaviour,
/// fed by every NAR transfer.
#[derive(Debug, Default)]
pub struct Estimates {
    upstream: Mutex<Ewma>,
    peers: Mutex<Ewma>,
}

impl Estimates {
    fn lock(m: &Mutex<Ewma>) -> std::sync::MutexGuard<'_, Ewma> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A finished (or cut) transfer: its first byte came after `latency`;
    /// `bytes` (counted as the link carried them) took `busy` after that.
    ///
    /// Each side's error is made to fall toward the plan that is never
    /// slower (two-ended): an upstream's rate is its bytes over the time
    /// after the first byte (never underestimated), the peers' over the
    /// whole transfer. Peers answer in batches of chunks a round trip
    /// apart, so a NAR of one or two batches arrives in a burst whose rate
    /// says nothing about a large NAR's.
    pub fn record(&self, peer: bool, latency: Duration, bytes: u64, busy: Duration) {
        let mut e = Self::lock(if peer { &self.peers } else { &self.upstream });
        Ewma::add(&mut e.latency, latency.as_secs_f64());
        let time = if peer { latency + busy } else { busy };
        if bytes >= MIN_RATE_SAMPLE && !time.is_zero() {
            Ewma::add(&mut e.rate, bytes as f64 / time.as_secs_f64());
        }
    }

    pub fn upstream(&self) -> Option<Estimate> {
        Self::lock(&self.upstream).estimate()
    }

    pub fn peers(&self) -> Option<Estimate> {
        Self::lock(&self.peers).estimate()
    }
}

/// What is known when Nix asks for a NAR.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    pub nar_size: u64,
    /// The compressed size at the upstream that has it; `None` if no
    /// upstream has it (or none is configured).
    pub file_size: Option<u64>,
    /// Peers are known to hold it now: the NAR bytes still to fetch from
    /// them (chunks held here already do not count).
    pub peers_ready: Option<u64>,
    pub upstream: Option<Estimate>,
    pub peers: Option<Estimate>,
    pub offload: Offload,
    /// The hedge for `offload = max`: peers alone this long at least.
    pub hedge_after: Duration,
}

/// When the peers' tail of a two-ended fetch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Peers are ready now.
    Now,
    /// Once discovery finds a provider (it runs in the background).
    Later,
    /// The NAR will be done before a peer could help.
    Never,
}

/// Where the bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The upstream from byte 0 at once, peers from the tail.
    TwoEnded(Tail),
    /// Peers alone; an upstream starts too after `upstream_after`, if
    /// given and the peers have not finished, and whichever is ahead
    /// serves.
    Peers { upstream_after: Option<Duration> },
}

/// Decides where a NAR's bytes come from.
pub fn plan(i: &Inputs) -> Plan {
    let Some(file_size) = i.file_size else {
        // No upstream has it: the peers are all there is, worth a wait.
        return Plan::Peers { upstream_after: None };
    };
    if i.offload == Offload::Max {
        // Peers first, found within the peers' wait if not yet.
        return Plan::Peers {
            upstream_after: Some(i.hedge_after),
        };
    }
    if i.peers_ready == Some(0) {
        // Every byte came with the peers' lookup (a small NAR).
        return Plan::Peers {
            upstream_after: Some(i.hedge_after),
        };
    }
    let t_up = i.upstream.map(|e| e.time(file_size));
    let tail_pays = tail_share(i, file_size).is_none_or(|s| s >= MIN_TAIL_SHARE);
    let Some(missing) = i.peers_ready else {
        return Plan::TwoEnded(match t_up {
            Some(t) if t < SMALL || !tail_pays => Tail::Never,
            None if file_size <= SMALL_FILE => Tail::Never,
            _ => Tail::Later,
        });
    };
    let t_peers = i.peers.map(|e| e.time(missing));
    match (t_up, t_peers) {
        // Before the upstream is measured, a small file counts as small
        // here too: a tail's first batch is a peer round trip away.
        (None, _) if file_size <= SMALL_FILE => Plan::TwoEnded(Tail::Never),
        (Some(up), Some(p)) if p.as_secs_f64() <= up.as_secs_f64() * PEERS_ALONE_SHARE => Plan::Peers {
            // Peers on schedule finish before this; late ones get the
            // upstream beside them, never later than the upstream's own
            // time (p is at most half of it).
            upstream_after: Some(p.mul_f64(2.0).max(i.peers.map_or(p, |e| e.latency * 2))),
        },
        _ if !tail_pays => Plan::TwoEnded(Tail::Never),
        _ => Plan::TwoEnded(Tail::Now),
    }
}

/// The share of the NAR a two-ended fetch is predicted to get from the
/// peers, where both ends are measured: the upstream sends ρ·C NAR bytes a
/// second after its latency, the peers P after theirs, and they meet when
/// together they have sent NarSize.
fn tail_share(i: &Inputs, file_size: u64) -> Option<f64> {
    let (up, peers) = (i.upstream?, i.peers?);
    let size = i.nar_size.max(1) as f64;
    let head_rate = up.rate * size / file_size.max(1) as f64;
    let (lu, lp) = (up.latency.as_secs_f64(), peers.latency.as_secs_f64());
    let meet = (size + head_rate * lu + peers.rate * lp) / (head_rate + peers.rate).max(1.0);
    let tail = (peers.rate * (meet - lp)).clamp(0.0, i.peers_ready.map_or(size, |m| m as f64));
    Some(tail / size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn inputs() -> Inputs {
        Inputs {
            nar_size: 30 << 20,
            file_size: Some(10 << 20),
            peers_ready: Some(30 << 20),
            upstream: Some(Estimate {
                latency: ms(20),
                rate: 50e6,
            }),
            peers: Some(Estimate {
                latency: ms(40),
                rate: 5e6,
            }),
            offload: Offload::Balanced,
            hedge_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn slower_peers_take_the_tail_of_a_two_ended_fetch() {
        // 50 MB/s of zstd at ρ = 3 is 150 MB/s of NAR; peers at 30 MB/s
        // bring about a sixth.
        let i = Inputs {
            peers: Some(Estimate {
                latency: ms(40),
                rate: 30e6,
            }),
            ..inputs()
        };
        let share = tail_share(&i, 10 << 20).unwrap();
        assert!((0.12..0.2).contains(&share), "{share}");
        assert_eq!(plan(&i), Plan::TwoEnded(Tail::Now));
    }

    #[test]
    fn a_tail_that_would_bring_little_is_not_started() {
        // Peers at 5 MB/s against 150 MB/s of NAR from the upstream: ~3%.
        assert_eq!(plan(&inputs()), Plan::TwoEnded(Tail::Never));
        let later = Inputs {
            peers_ready: None,
            ..inputs()
        };
        assert_eq!(plan(&later), Plan::TwoEnded(Tail::Never));
        // A small NAR: the upstream is done before the peers' first batch.
        let small = Inputs {
            nar_size: 300 << 10,
            file_size: Some(100 << 10),
            peers: Some(Estimate {
                latency: ms(40),
                rate: 100e6,
            }),
            ..inputs()
        };
        assert_eq!(tail_share(&small, 100 << 10), Some(0.0));
        assert_eq!(plan(&small), Plan::TwoEnded(Tail::Never));
    }

    #[test]
    fn nothing_waits_for_discovery() {
        let i = Inputs {
            peers_ready: None,
            peers: Some(Estimate {
                latency: ms(40),
                rate: 30e6,
            }),
            ..inputs()
        };
        assert_eq!(plan(&i), Plan::TwoEnded(Tail::Later), "a large NAR: peers may join");
        let small = Inputs {
            file_size: Some(1000),
            nar_size: 3000,
            ..i
        };
        assert_eq!(
            plan(&small),
            Plan::TwoEnded(Tail::Never),
            "done before a peer could help"
        );
        let cold = Inputs { upstream: None, ..i };
        assert_eq!(plan(&cold), Plan::TwoEnded(Tail::Later), "nothing measured yet");
        let cold_small = Inputs {
            file_size: Some(SMALL_FILE),
            ..cold
        };
        assert_eq!(
            plan(&cold_small),
            Plan::TwoEnded(Tail::Never),
            "nothing measured, but small enough to be done soon from any upstream"
        );
    }

    #[test]
    fn clearly_faster_peers_serve_alone_with_the_upstream_as_a_late_hedge() {
        let i = Inputs {
            peers: Some(Estimate {
                latency: ms(1),
                rate: 500e6,
            }),
            ..inputs()
        };
        let Plan::Peers {
            upstream_after: Some(after),
        } = plan(&i)
        else {
            panic!("{:?}", plan(&i))
        };
        let t_up = i.upstream.unwrap().time(10 << 20);
        assert!(
            after <= t_up,
            "the hedge starts within the upstream's own time: {after:?} vs {t_up:?}"
        );
        // Peers only a little faster: both ends, so a wrong guess costs nothing.
        let close = Inputs {
            peers: Some(Estimate {
                latency: ms(1),
                rate: 120e6,
            }),
            ..inputs()
        };
        assert_eq!(plan(&close), Plan::TwoEnded(Tail::Now));
    }

    #[test]
    fn unmeasured_peers_share_the_nar_with_the_upstream() {
        let i = Inputs {
            peers: None,
            ..inputs()
        };
        assert_eq!(plan(&i), Plan::TwoEnded(Tail::Now));
    }

    #[test]
    fn before_anything_is_measured_only_a_large_nar_gets_a_tail() {
        // The WAN benchmark's first NARs: peers ready, nothing measured,
        // and tails started for NARs of 664 bytes that the upstream had
        // sent before a peer could answer.
        let cold = Inputs {
            upstream: None,
            peers: None,
            ..inputs()
        };
        assert_eq!(plan(&cold), Plan::TwoEnded(Tail::Now), "30 MiB: worth a tail");
        let tiny = Inputs {
            nar_size: 664,
            file_size: Some(400),
            peers_ready: Some(664),
            ..cold
        };
        assert_eq!(plan(&tiny), Plan::TwoEnded(Tail::Never));
        let edge = Inputs {
            file_size: Some(SMALL_FILE + 1),
            ..cold
        };
        assert_eq!(plan(&edge), Plan::TwoEnded(Tail::Now));
        // The same tiny NAR whose bytes all came with the peers' lookup.
        let here = Inputs {
            peers_ready: Some(0),
            ..tiny
        };
        assert_eq!(
            plan(&here),
            Plan::Peers {
                upstream_after: Some(Duration::from_secs(1))
            }
        );
    }

    #[test]
    fn without_an_upstream_peers_serve_and_max_offload_hedges_late() {
        let none = Inputs {
            file_size: None,
            ..inputs()
        };
        assert_eq!(plan(&none), Plan::Peers { upstream_after: None });
        let max = Inputs {
            offload: Offload::Max,
            ..inputs()
        };
        assert_eq!(
            plan(&max),
            Plan::Peers {
                upstream_after: Some(Duration::from_secs(1))
            }
        );
        let not_yet = Inputs {
            peers_ready: None,
            ..max
        };
        assert_eq!(plan(&not_yet), plan(&max), "max waits for the peers' lookup");
    }

    #[test]
    fn estimates_average_and_ignore_tiny_rate_samples() {
        let e = Estimates::default();
        assert!(e.upstream().is_none());
        e.record(false, ms(10), 100, ms(1));
        assert!(e.upstream().is_none(), "no rate from a 100-byte sample");
        e.record(false, ms(10), 10 << 20, Duration::from_secs(1));
        let up = e.upstream().unwrap();
        assert!((up.rate - f64::from(10 << 20)).abs() < 1.0);
        e.record(false, ms(10), 20 << 20, Duration::from_secs(1));
        let up = e.upstream().unwrap();
        assert!(up.rate > f64::from(10 << 20) && up.rate < f64::from(20 << 20));
        assert!(e.peers().is_none(), "kept apart");
    }

    #[test]
    fn a_burst_from_peers_does_not_pass_for_their_rate() {
        // 1 MiB in one batch: a 40 ms round trip, then 1 ms of bytes.
        let e = Estimates::default();
        e.record(true, ms(40), 1 << 20, ms(1));
        let p = e.peers().unwrap();
        assert!(p.rate < f64::from(30 << 20), "peers' rate {} B/s from a burst", p.rate);
        // The same burst from an upstream counts after its first byte.
        e.record(false, ms(40), 1 << 20, ms(1));
        assert!(e.upstream().unwrap().rate > f64::from(500 << 20));
    }
}
