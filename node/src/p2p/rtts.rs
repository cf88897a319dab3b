//! Round trips to connected peers, as libp2p's ping measures them (at
//! connection start, then every 15 s): a transfer sizes its requests in
//! flight to a peer by them ([`super::schedule::depth_for`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use libp2p::PeerId;

/// Peers remembered; a new peer past this is not (its transfers use the
/// default depth).
const MAX_PEERS: usize = 4096;

/// The last round trip measured to each connected peer.
#[derive(Debug, Default)]
pub struct Rtts(Mutex<HashMap<PeerId, Duration>>);

impl Rtts {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Duration>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, peer: &PeerId) -> Option<Duration> {
        self.map().get(peer).copied()
    }

    pub fn set(&self, peer: PeerId, rtt: Duration) {
        let mut m = self.map();
        if m.len() < MAX_PEERS || m.contains_key(&peer) {
            m.insert(peer, rtt);
        }
    }

    /// The peer's last connection closed.
    pub fn forget(&self, peer: &PeerId) {
        self.map().remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_kept_per_peer_within_the_bound() {
        let r = Rtts::default();
        let p = PeerId::random();
        r.set(p, Duration::from_millis(40));
        assert_eq!(r.get(&p), Some(Duration::from_millis(40)));
        for _ in 0..MAX_PEERS {
            r.set(PeerId::random(), Duration::from_millis(1));
        }
        assert_eq!(r.map().len(), MAX_PEERS, "full: new peers are not kept");
        r.set(p, Duration::from_millis(20));
        assert_eq!(r.get(&p), Some(Duration::from_millis(20)), "a known one is updated");
        r.forget(&p);
        assert_eq!(r.get(&p), None);
    }
}
