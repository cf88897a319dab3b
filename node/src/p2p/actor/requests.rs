//! Transfer requests: sent on a direct connection, or parked in
//! [`Links`](super::Links) until one is up (a dial, or a hole punch through
//! a relayed connection), and failed when it does not come.

use std::time::Instant;

use libp2p::PeerId;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use nixswarm_protocol::wire::Request;

use super::{Actor, DIRECT_WAIT, OUT_OF_REACH, Reply};

/// A peer's failed dial through relays is tried again at most
/// [`RELAY_REDIALS`] times in this long.
const RELAY_REDIAL_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const RELAY_REDIALS: u32 = 2;

impl Actor {
    /// Sends a transfer request on a direct connection, or parks it until
    /// one is up (dialling the peer if it is not connected at all).
    pub(super) fn request(&mut self, peer: PeerId, request: Request, reply: Reply) {
        if self.links.direct(&peer) {
            self.send_request(peer, request, reply);
            return;
        }
        if self.links.out_of_reach(&peer, Instant::now()) {
            let _ = reply.send(Err(format!(
                "no direct connection to {peer}: the last attempt failed (behind NAT, hole punching did not work)"
            )));
            return;
        }
        let connected = self.links.connected(&peer);
        if let Err((_, reply)) = self.links.park(peer, (request, reply), Instant::now() + DIRECT_WAIT) {
            let _ = reply.send(Err("too many requests wait for a direct connection".into()));
            return;
        }
        let redial_due = self.relay_redials.get(&peer).is_some_and(|(_, _, a)| !a.is_empty());
        if !connected && !redial_due {
            let addrs = self.known.get(&peer);
            self.dial_for_parked(peer, addrs);
        }
    }

    /// A dial that failed only through relays is tried again a moment
    /// later (at most [`RELAY_REDIALS`] times in [`RELAY_REDIAL_EVERY`] per
    /// peer) while requests wait for it, instead of failing them; with
    /// nothing waiting, the peer is not marked out of reach.
    /// libp2p-relay 0.22 drops a circuit dial whose relay is being dialled
    /// at that moment (its own dial of the relay finds the peer "already
    /// dialling"), so a node that had just dialled its relays failed the
    /// first requests to a peer behind NAT. Returns whether it will be.
    pub(super) fn redial_through_relay(&mut self, peer: PeerId, error: &DialError) -> bool {
        let DialError::Transport(tried) = error else {
            return false;
        };
        let now = Instant::now();
        if tried.is_empty() || !tried.iter().all(|(a, _)| super::super::direct::is_relayed(a)) {
            return false;
        }
        // Nothing may wait yet (a lookup's dial): the addresses are kept
        // for the request that follows, and the peer is not out of reach
        // for a relay's hiccup.
        let parked = self.links.has_parked(&peer);
        if self.relay_redials.len() >= 1024 {
            self.relay_redials
                .retain(|_, (since, _, _)| now < *since + RELAY_REDIAL_EVERY);
        }
        let entry = self.relay_redials.entry(peer).or_insert((now, 0, Vec::new()));
        if now >= entry.0 + RELAY_REDIAL_EVERY {
            *entry = (now, 0, Vec::new());
        }
        if !entry.2.is_empty() {
            // A redial is due already (several dials failed at once).
            return true;
        }
        if entry.1 >= RELAY_REDIALS {
            return !parked;
        }
        entry.2 = tried.iter().map(|(a, _)| a.clone()).collect();
        tracing::debug!(%peer, "dial through relays failed; trying again in a moment");
        true
    }

    /// Once a second: the dials through relays due again (kept until a
    /// request waits for the peer, dropped once it is connected).
    pub(super) fn redial_due(&mut self) {
        let links = &self.links;
        let due: Vec<(PeerId, Vec<libp2p::Multiaddr>)> = self
            .relay_redials
            .iter_mut()
            .filter(|(p, (_, _, addrs))| !addrs.is_empty() && (links.connected(p) || links.has_parked(p)))
            .map(|(p, (_, n, addrs))| {
                *n += 1;
                (*p, std::mem::take(addrs))
            })
            .collect();
        for (peer, addrs) in due {
            if !self.links.connected(&peer) {
                self.dial_for_parked(peer, addrs);
            }
        }
    }

    /// Dials `peer` (at `addrs` and what the behaviours know) for the
    /// requests parked for it; a dial that cannot start fails them.
    fn dial_for_parked(&mut self, peer: PeerId, addrs: Vec<libp2p::Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.fail_parked(&peer, &format!("cannot dial: {e}")),
        }
    }

    pub(super) fn fail_parked(&mut self, peer: &PeerId, why: &str) {
        tracing::debug!(%peer, why, "no direct connection: out of reach for a while");
        self.links.give_up(*peer, Instant::now() + OUT_OF_REACH);
        for (_, reply) in self.links.take(peer) {
            let _ = reply.send(Err(why.to_owned()));
        }
    }

    /// Sends on a direct connection (the transfer behaviour knows no other).
    pub(super) fn send_request(&mut self, peer: PeerId, request: Request, reply: Reply) {
        let id = self.swarm.behaviour_mut().transfer.inner.send_request(&peer, request);
        self.requests.insert(id, reply);
    }

    /// Fails the requests that waited too long for a direct connection;
    /// their peers are out of reach for a while.
    pub(super) fn expire_parked(&mut self) {
        let mut given_up = std::collections::HashSet::new();
        for (peer, (_, reply)) in self.links.expire(Instant::now()) {
            let why = format!(
                "no direct connection to {peer} within {DIRECT_WAIT:?} (behind NAT, and hole punching did not finish)"
            );
            if given_up.insert(peer) {
                tracing::info!("{why}: its requests fail");
                self.links.give_up(peer, Instant::now() + OUT_OF_REACH);
            }
            let _ = reply.send(Err(why));
        }
    }
}
