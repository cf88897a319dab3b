//! Keeps a behaviour from confirming external addresses itself: UPnP
//! reports the mapping its router claims, and any host on the LAN can
//! answer as that router. Its `ExternalAddrConfirmed` and
//! `ExternalAddrExpired` are dropped here; the actor hands its events'
//! addresses to the AutoNAT client as candidates instead.

use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// `inner`, whose confirmations of external addresses are dropped.
#[derive(Debug)]
pub struct Unconfirmed<B>(pub B);

impl<B: NetworkBehaviour> NetworkBehaviour for Unconfirmed<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.0.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.0.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.0.on_swarm_event(event);
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.0.on_connection_handler_event(peer, id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            match self.0.poll(cx) {
                Poll::Ready(ToSwarm::ExternalAddrConfirmed(a) | ToSwarm::ExternalAddrExpired(a)) => {
                    tracing::debug!(addr = %a, "a confirmation not taken (a candidate instead)");
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use libp2p::swarm::dummy;

    use super::*;

    /// Reports what it is given, as UPnP reports a mapping.
    struct Reporter(VecDeque<ToSwarm<(), std::convert::Infallible>>);

    impl NetworkBehaviour for Reporter {
        type ConnectionHandler = dummy::ConnectionHandler;
        type ToSwarm = ();

        fn handle_established_inbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }

        fn handle_established_outbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }

        fn on_swarm_event(&mut self, _: FromSwarm) {}

        fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, e: THandlerOutEvent<Self>) {
            match e {}
        }

        fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
            self.0.pop_front().map_or(Poll::Pending, Poll::Ready)
        }
    }

    #[test]
    fn confirmations_are_dropped_and_every_other_event_passes() {
        let a: Multiaddr = "/ip4/81.2.69.160/tcp/4001".parse().unwrap();
        let mut u = Unconfirmed(Reporter(VecDeque::from([
            ToSwarm::ExternalAddrConfirmed(a.clone()),
            ToSwarm::ExternalAddrExpired(a.clone()),
            ToSwarm::GenerateEvent(()),
        ])));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(u.poll(&mut cx), Poll::Ready(ToSwarm::GenerateEvent(()))));
        assert!(u.poll(&mut cx).is_pending());
    }
}
