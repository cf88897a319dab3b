//! Transfer requests: sent on a direct connection, or parked in
//! [`Links`](super::Links) until one is up (a dial, or a hole punch through
//! a relayed connection), and failed when it does not come.

use std::time::Instant;

use libp2p::PeerId;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use nixswarm_protocol::wire::Request;

use super::{Actor, DIRECT_WAIT, OUT_OF_REACH, Reply};

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
        if !connected {
            let addrs = self.known.get(&peer);
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
    }

    pub(super) fn fail_parked(&mut self, peer: &PeerId, why: &str) {
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
