//! Keeps a behaviour off relayed connections: NAR bytes never cross a
//! relay's circuit. [`DirectOnly`] hands the wrapped behaviour only the
//! direct connections; a relayed one gets a handler that speaks nothing, so
//! the transfer protocol is neither offered nor used on it, and a request
//! to a peer reached only through a relay waits (in the actor) for hole
//! punching to give a direct connection.

use std::collections::{HashMap, HashSet};
use std::task::{Context, Poll};

use either::Either;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, FromSwarm};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// True for an address through a relay (`.../p2p-circuit/...`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// `inner`, over direct connections only.
#[derive(Debug)]
pub struct DirectOnly<B> {
    pub inner: B,
    /// Relayed connections, by peer: hidden from `inner`.
    relayed: HashMap<PeerId, HashSet<ConnectionId>>,
    /// Off: new connections are hidden too (the ones `inner` has keep it).
    off: bool,
}

impl<B> DirectOnly<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            relayed: HashMap::new(),
            off: false,
        }
    }

    /// Turns `inner` on or off for connections made from now on.
    pub fn set_on(&mut self, on: bool) {
        self.off = !on;
    }

    fn hidden(&self, peer: &PeerId, id: &ConnectionId) -> bool {
        self.relayed.get(peer).is_some_and(|s| s.contains(id))
    }

    fn hide(&mut self, peer: PeerId, id: ConnectionId) {
        self.relayed.entry(peer).or_default().insert(id);
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for DirectOnly<B> {
    type ConnectionHandler = Either<THandler<B>, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.off || is_relayed(local) || is_relayed(remote) {
            self.hide(peer, id);
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
            .map(Either::Left)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.off || is_relayed(addr) {
            self.hide(peer, id);
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
            .map(Either::Left)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) if self.hidden(&e.peer_id, &e.connection_id) => {}
            FromSwarm::AddressChange(e) if self.hidden(&e.peer_id, &e.connection_id) => {}
            FromSwarm::ConnectionClosed(e) => {
                let hidden_left = match self.relayed.get_mut(&e.peer_id) {
                    Some(set) => {
                        let was_hidden = set.remove(&e.connection_id);
                        let left = set.len();
                        if set.is_empty() {
                            self.relayed.remove(&e.peer_id);
                        }
                        if was_hidden {
                            return;
                        }
                        left
                    }
                    None => 0,
                };
                // `inner` counts only the connections it was shown.
                self.inner.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                    remaining_established: e.remaining_established.saturating_sub(hidden_left),
                    ..e
                }));
            }
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {
            Either::Left(e) => self.inner.on_connection_handler_event(peer, id, e),
            Either::Right(never) => match never {},
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|e| e.map_in(Either::Left))
    }
}
