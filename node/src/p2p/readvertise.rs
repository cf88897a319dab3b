//! When a change of this node's advertised addresses makes it announce
//! every shared path again. Provider records carry the addresses, so a
//! real change (a new home IP, a new relay) needs new records; but which
//! addresses count as confirmed is partly what peers tell us (AutoNAT, a
//! relay), and a full re-announcement of 100k paths is a lot of DHT work.
//! So only a change of the *IP addresses* advertised counts (not of ports
//! or of a relay's listing), and it is acted on once things have been
//! quiet for [`QUIET`], at most once per [`MIN_GAP`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use libp2p::Multiaddr;
use tokio::time::Instant;

/// How long the advertised addresses must stay put before the records
/// are made again.
pub const QUIET: Duration = Duration::from_secs(30);
/// Address-driven re-announcements are at least this far apart.
pub const MIN_GAP: Duration = Duration::from_secs(300);

/// The IP addresses in `addrs`: a direct address's own, a circuit's
/// relay's.
pub fn ips<'a>(addrs: impl IntoIterator<Item = &'a Multiaddr>) -> BTreeSet<IpAddr> {
    addrs.into_iter().filter_map(super::ip_of).collect()
}

/// The debounce: fed each change, it says when to re-announce.
#[derive(Debug, Default)]
pub struct Readvertise {
    due: Option<Instant>,
    last: Option<Instant>,
}

impl Readvertise {
    /// The advertised IPs changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        let quiet = now + QUIET;
        self.due = Some(self.last.map_or(quiet, |l| quiet.max(l + MIN_GAP)));
    }

    /// When to re-announce, if a change waits.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The re-announcement started at `now`.
    pub fn fired(&mut self, now: Instant) {
        self.due = None;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_addresses_count() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let before = [a("/ip4/1.2.3.4/tcp/4001"), a("/ip4/1.2.3.4/udp/4001/quic-v1")];
        let new_port = [a("/ip4/1.2.3.4/tcp/5001")];
        assert_eq!(ips(&before), ips(&new_port));
        let relay = a("/ip4/5.6.7.8/tcp/4001/p2p/12D3KooWGyfMDKvKQbDSZgYLVawzM7CroAFy1TaPr3T8LHuRyjTU/p2p-circuit");
        assert_eq!(
            ips([&relay]).into_iter().collect::<Vec<_>>(),
            vec!["5.6.7.8".parse::<IpAddr>().unwrap()]
        );
        assert_ne!(ips(&before), ips([&relay]));
    }

    #[test]
    fn a_flapping_address_makes_one_announcement_per_gap() {
        let t0 = Instant::now();
        let mut r = Readvertise::default();
        let mut fired = Vec::new();
        // The advertised IPs change every 5 s for ten minutes (a peer
        // lying about our address), then stay.
        let mut t = t0;
        while t < t0 + Duration::from_secs(900) {
            if t < t0 + Duration::from_secs(600) && (t - t0).as_secs().is_multiple_of(5) {
                r.changed(t);
            }
            if r.due().is_some_and(|d| d <= t) {
                r.fired(t);
                fired.push(t - t0);
            }
            t += Duration::from_secs(1);
        }
        // Never quiet for 30 s during the flapping: one announcement, 30 s
        // after it stopped.
        assert_eq!(fired, vec![Duration::from_secs(625)]);
    }

    #[test]
    fn a_real_change_is_acted_on_after_the_quiet_and_the_gap() {
        let t0 = Instant::now();
        let mut r = Readvertise::default();
        r.changed(t0);
        assert_eq!(r.due(), Some(t0 + QUIET));
        r.fired(t0 + QUIET);
        // The next change soon after waits for the gap.
        r.changed(t0 + Duration::from_secs(60));
        assert_eq!(r.due(), Some(t0 + QUIET + MIN_GAP));
    }
}
