//! Test builds only (feature `test-hooks`): a lying AutoNAT v2 server. A
//! real libp2p swarm (identify, and the server side of the dial-request
//! protocol) that answers every probe "dialled back, reachable", whatever
//! the address: it dials the asker at an address it already knows and
//! sends the nonce there. A client that believes one server then
//! confirms an address it does not have.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt as _, FutureExt as _, StreamExt as _};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, FromSwarm};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, NetworkBehaviour, NotifyHandler, Stream,
    StreamProtocol, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, identify, noise, tcp, yamux};
use tokio::sync::oneshot;

use super::wire::{self, Msg};
use crate::p2p::behaviour::IDENTIFY_VERSION;

/// The running liar; stops when dropped.
#[derive(Debug)]
pub struct Liar {
    /// Where it listens, with `/p2p/<id>`.
    pub addr: Multiaddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a liar listening at `listen` (a loopback TCP address) that
/// dials `victim` and lies to it.
pub async fn start(listen: Multiaddr, victim: Multiaddr) -> Result<Liar, Box<dyn std::error::Error + Send + Sync>> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| LiarPeer {
            identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public())),
            lies: Lies::default(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.listen_on(listen)?;
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
        }
    };
    swarm.add_external_address(addr.clone());
    swarm.dial(victim)?;
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok(Liar { addr, task })
}

#[derive(NetworkBehaviour)]
struct LiarPeer {
    identify: identify::Behaviour,
    lies: Lies,
}

/// Routes each dial-back to a connection the liar dialled to the asker.
#[derive(Debug, Default)]
struct Lies {
    dialled: HashMap<PeerId, ConnectionId>,
    events: VecDeque<ToSwarm<(), Order>>,
}

/// Behaviour to handler: send `nonce` on a dial-back stream, then `done`.
#[derive(Debug)]
struct Order {
    nonce: u64,
    done: oneshot::Sender<()>,
}

/// Handler to behaviour: a probe with `nonce` came in.
#[derive(Debug)]
struct Asked {
    nonce: u64,
    done: oneshot::Sender<()>,
}

impl NetworkBehaviour for Lies {
    type ConnectionHandler = LiarHandler;
    type ToSwarm = ();

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(LiarHandler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.dialled.insert(peer, id);
        Ok(LiarHandler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id, connection_id, ..
        }) = event
            && self.dialled.get(&peer_id) == Some(&connection_id)
        {
            self.dialled.remove(&peer_id);
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, _: ConnectionId, ev: THandlerOutEvent<Self>) {
        // Without a connection of its own to the asker, the lie is told
        // anyway (the answer goes out when `done` drops).
        if let Some(conn) = self.dialled.get(&peer) {
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*conn),
                event: Order {
                    nonce: ev.nonce,
                    done: ev.done,
                },
            });
        }
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
        self.events.pop_front().map_or(Poll::Pending, Poll::Ready)
    }
}

#[derive(Default)]
struct LiarHandler {
    events: VecDeque<ConnectionHandlerEvent<ReadyUpgrade<StreamProtocol>, Order, Asked>>,
    requests: FuturesUnordered<BoxFuture<'static, io::Result<(u64, Stream)>>>,
    work: FuturesUnordered<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for LiarHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiarHandler").finish_non_exhaustive()
    }
}

impl ConnectionHandler for LiarHandler {
    type FromBehaviour = Order;
    type ToBehaviour = Asked;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Order;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(wire::DIAL_REQUEST), ())
    }

    fn on_behaviour_event(&mut self, order: Order) {
        self.events.push_back(ConnectionHandlerEvent::OutboundSubstreamRequest {
            protocol: SubstreamProtocol::new(ReadyUpgrade::new(wire::DIAL_BACK), order),
        });
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Order>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, .. }) => {
                self.requests.push(
                    async move {
                        let mut s = protocol;
                        let m: wire::Message = wire::recv(&mut s, wire::MAX_MESSAGE).await?;
                        match m.msg {
                            Some(Msg::DialRequest(r)) => Ok((r.nonce, s)),
                            _ => Err(io::Error::other("not a dial request")),
                        }
                    }
                    .boxed(),
                );
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, info }) => {
                self.work.push(
                    async move {
                        let mut s = protocol;
                        if wire::send(&mut s, &wire::DialBack { nonce: info.nonce }).await.is_ok() {
                            let _ = wire::recv::<wire::DialBackResponse>(&mut s, wire::MAX_DIAL_BACK).await;
                        }
                        let _ = info.done.send(());
                    }
                    .boxed(),
                );
            }
            _ => {}
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Order, Asked>> {
        if let Some(e) = self.events.pop_front() {
            return Poll::Ready(e);
        }
        while let Poll::Ready(Some(())) = self.work.poll_next_unpin(cx) {}
        while let Poll::Ready(Some(r)) = self.requests.poll_next_unpin(cx) {
            if let Ok((nonce, mut s)) = r {
                let (done, dialled_back) = oneshot::channel();
                self.work.push(
                    async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), dialled_back).await;
                        let lie = wire::Message {
                            msg: Some(Msg::DialResponse(wire::DialResponse {
                                status: wire::STATUS_OK,
                                addr_idx: 0,
                                dial_status: wire::DIAL_OK,
                            })),
                        };
                        let _ = wire::send(&mut s, &lie).await;
                        let _ = s.close().await;
                    }
                    .boxed(),
                );
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Asked { nonce, done }));
            }
        }
        Poll::Pending
    }
}
