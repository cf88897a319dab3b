//! The simulated network: each node has an uplink and a downlink rate and a
//! one-way latency to the core; two nodes are the sum of their latencies
//! apart. A message leaves its sender's uplink in the order it was sent
//! (first in, first out), crosses the core, and enters its receiver's
//! downlink in arrival order: it has arrived when both ends have carried
//! all its bytes and the last byte has crossed.

use std::time::Duration;

use crate::clock::Time;

/// One node's access link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Bytes per second it can send.
    pub up: u64,
    /// Bytes per second it can receive.
    pub down: u64,
    /// To the core, one way.
    pub latency: Duration,
}

/// The network of `n` nodes.
#[derive(Debug)]
pub struct Net {
    links: Vec<Link>,
    up_free: Vec<Time>,
    down_free: Vec<Time>,
}

fn carry(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

impl Net {
    pub fn new(links: Vec<Link>) -> Self {
        let n = links.len();
        Self {
            links,
            up_free: vec![Time::ZERO; n],
            down_free: vec![Time::ZERO; n],
        }
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    pub fn link(&self, node: usize) -> Link {
        self.links[node]
    }

    /// One way from `a` to `b`.
    pub fn latency(&self, a: usize, b: usize) -> Duration {
        self.links[a].latency + self.links[b].latency
    }

    pub fn rtt(&self, a: usize, b: usize) -> Duration {
        2 * self.latency(a, b)
    }

    /// `bytes` sent from `from` to `to` at `now`: when the last byte has
    /// arrived.
    pub fn send(&mut self, from: usize, to: usize, bytes: u64, now: Time) -> Time {
        let (up, down) = (self.links[from].up, self.links[to].down);
        let start = now.max(self.up_free[from]);
        let sent = start + carry(bytes, up);
        self.up_free[from] = sent;
        let latency = self.latency(from, to);
        let enters = (start + latency).max(self.down_free[to]);
        let arrived = (enters + carry(bytes, down)).max(sent + latency);
        self.down_free[to] = arrived;
        arrived
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn net(links: &[(u64, u64, u64)]) -> Net {
        Net::new(
            links
                .iter()
                .map(|&(up, down, ms)| Link {
                    up,
                    down,
                    latency: Duration::from_millis(ms),
                })
                .collect(),
        )
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_millis(1)
    }

    #[test]
    fn a_small_message_takes_the_latency() {
        let mut n = net(&[(100 * MB, 100 * MB, 10), (100 * MB, 100 * MB, 30)]);
        assert_eq!(n.rtt(0, 1), Duration::from_millis(80));
        let t = n.send(0, 1, 1, Time::ZERO);
        assert!(close(t, Duration::from_millis(40)), "{t:?}");
    }

    #[test]
    fn the_slower_end_sets_the_rate() {
        // A 1 MB/s uplink to a 100 MB/s downlink: 10 MB in 10 s, plus the
        // latency; and the other way, the 2 MB/s downlink decides.
        let mut n = net(&[(MB, 100 * MB, 5), (100 * MB, 2 * MB, 5)]);
        let t = n.send(0, 1, 10 * MB, Time::ZERO);
        assert!(close(t, Duration::from_millis(10_010)), "{t:?}");
        let t = n.send(1, 1, 10 * MB, Duration::from_secs(100));
        assert!(close(t, Duration::from_millis(105_010)), "{t:?}");
    }

    #[test]
    fn an_uplink_sends_in_order_and_a_downlink_is_shared() {
        let mut n = net(&[(MB, 100 * MB, 0), (MB, 100 * MB, 0), (100 * MB, MB, 0)]);
        // Two messages from 0, back to back: the second waits for the first.
        let first = n.send(0, 2, MB, Time::ZERO);
        let second = n.send(0, 2, MB, Time::ZERO);
        assert!(close(first, Duration::from_secs(1)) && close(second, Duration::from_secs(2)));
        // Node 1 sends to the same downlink at once: it queues behind them.
        let third = n.send(1, 2, MB, Time::ZERO);
        assert!(close(third, Duration::from_secs(3)), "{third:?}");
    }
}
