//! The AutoNAT client's side of one connection: it asks the remote, when
//! told to, to dial a candidate back (the dial-request stream), and, on a
//! direct inbound connection only, takes the nonce a server dials back
//! with (the dial-back stream). Streams are bounded in number and time.

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt as _, FutureExt as _, StreamExt as _};
use libp2p::Multiaddr;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound, ProtocolsChange,
};
use libp2p::swarm::{ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, SubstreamProtocol};
use tokio::sync::oneshot;

use super::wire::{self, Msg};

/// How long one probe may take, data included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a dial-back stream may take.
const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Dial-back streams open at once on one connection.
const MAX_DIAL_BACKS: usize = 2;

/// From the behaviour: probe `addr` with `nonce`.
#[derive(Debug)]
pub struct Probe {
    pub nonce: u64,
    pub addr: Multiaddr,
}

/// What a server said of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It dialled back.
    Reachable,
    /// It could not connect, or the dial-back stream failed.
    Unreachable,
}

/// To the behaviour.
#[derive(Debug)]
pub enum Out {
    /// The remote serves AutoNAT.
    Server,
    /// A probe ended: an answer, or why there is none.
    Outcome { nonce: u64, result: Result<Answer, String> },
    /// A dial-back arrived with `nonce`: `ours` says whether to accept it.
    DialBack { nonce: u64, ours: oneshot::Sender<bool> },
}

type DialBackRead = BoxFuture<'static, io::Result<(u64, Stream)>>;

/// The handler of one connection.
pub struct Handler {
    accept_dial_back: bool,
    events: VecDeque<ConnectionHandlerEvent<ReadyUpgrade<StreamProtocol>, Probe, Out>>,
    probes: FuturesUnordered<BoxFuture<'static, (u64, Result<Answer, String>)>>,
    dial_backs: FuturesUnordered<DialBackRead>,
    replies: FuturesUnordered<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("accept_dial_back", &self.accept_dial_back)
            .field("probes", &self.probes.len())
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// `accept_dial_back`: a direct inbound connection (a server's dial
    /// back arrives as one); any other refuses dial-back streams.
    pub fn new(accept_dial_back: bool) -> Self {
        Self {
            accept_dial_back,
            events: VecDeque::new(),
            probes: FuturesUnordered::new(),
            dial_backs: FuturesUnordered::new(),
            replies: FuturesUnordered::new(),
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Probe;
    type ToBehaviour = Out;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Probe;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(wire::DIAL_BACK), ())
    }

    fn on_behaviour_event(&mut self, probe: Probe) {
        self.events.push_back(ConnectionHandlerEvent::OutboundSubstreamRequest {
            protocol: SubstreamProtocol::new(ReadyUpgrade::new(wire::DIAL_REQUEST), probe),
        });
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Probe>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, info }) => {
                let nonce = info.nonce;
                self.probes.push(
                    async move {
                        let result = tokio::time::timeout(PROBE_TIMEOUT, ask(protocol, info))
                            .await
                            .unwrap_or_else(|_| Err("timed out".into()));
                        (nonce, result)
                    }
                    .boxed(),
                );
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                self.events
                    .push_back(ConnectionHandlerEvent::NotifyBehaviour(Out::Outcome {
                        nonce: info.nonce,
                        result: Err(format!("cannot open the request stream: {error}")),
                    }));
            }
            // Any other dial-back stream is dropped: reset.
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, .. })
                if self.accept_dial_back && self.dial_backs.len() + self.replies.len() < MAX_DIAL_BACKS =>
            {
                self.dial_backs.push(read_dial_back(protocol).boxed());
            }
            // `added` is an iterator: the guard cannot advance it.
            #[allow(clippy::collapsible_match)]
            ConnectionEvent::RemoteProtocolsChange(ProtocolsChange::Added(mut added)) => {
                if added.any(|p| *p == wire::DIAL_REQUEST) {
                    self.events
                        .push_back(ConnectionHandlerEvent::NotifyBehaviour(Out::Server));
                }
            }
            _ => {}
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Probe, Out>> {
        if let Some(e) = self.events.pop_front() {
            return Poll::Ready(e);
        }
        if let Poll::Ready(Some((nonce, result))) = self.probes.poll_next_unpin(cx) {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Out::Outcome { nonce, result }));
        }
        while let Poll::Ready(Some(_)) = self.replies.poll_next_unpin(cx) {}
        while let Poll::Ready(Some(read)) = self.dial_backs.poll_next_unpin(cx) {
            match read {
                Ok((nonce, stream)) => {
                    let (ours, answer) = oneshot::channel();
                    self.replies.push(reply_dial_back(stream, answer).boxed());
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Out::DialBack { nonce, ours }));
                }
                Err(e) => tracing::debug!(error = %e, "AutoNAT dial-back stream failed"),
            }
        }
        Poll::Pending
    }
}

/// One probe on the request stream: the request, the data the server may
/// ask for (within the spec's bounds), its answer.
async fn ask(mut s: Stream, probe: Probe) -> Result<Answer, String> {
    let request = wire::Message {
        msg: Some(Msg::DialRequest(wire::DialRequest {
            addrs: vec![probe.addr.to_vec()],
            nonce: probe.nonce,
        })),
    };
    let io = |e: io::Error| e.to_string();
    wire::send(&mut s, &request).await.map_err(io)?;
    let mut reply: wire::Message = wire::recv(&mut s, wire::MAX_MESSAGE).await.map_err(io)?;
    if let Some(Msg::DialDataRequest(d)) = &reply.msg {
        if d.addr_idx != 0 || !wire::DATA_BYTES.contains(&d.num_bytes) {
            return Err(format!(
                "asked for {} bytes for address {} (out of bounds)",
                d.num_bytes, d.addr_idx
            ));
        }
        let mut left = usize::try_from(d.num_bytes).map_err(|e| e.to_string())?;
        while left > 0 {
            let n = left.min(wire::DATA_CHUNK);
            let data = wire::Message {
                msg: Some(Msg::DialDataResponse(wire::DialDataResponse { data: vec![0; n] })),
            };
            wire::send(&mut s, &data).await.map_err(io)?;
            left -= n;
        }
        reply = wire::recv(&mut s, wire::MAX_MESSAGE).await.map_err(io)?;
    }
    let _ = s.close().await;
    let Some(Msg::DialResponse(r)) = reply.msg else {
        return Err("expected a dial response".into());
    };
    if r.status != wire::STATUS_OK {
        return Err(format!("request refused (status {})", r.status));
    }
    if r.addr_idx != 0 {
        return Err(format!("answered for address {} (one was asked)", r.addr_idx));
    }
    match r.dial_status {
        wire::DIAL_OK => Ok(Answer::Reachable),
        wire::DIAL_ERROR | wire::DIAL_BACK_ERROR => Ok(Answer::Unreachable),
        other => Err(format!("unknown dial status {other}")),
    }
}

async fn read_dial_back(mut s: Stream) -> io::Result<(u64, Stream)> {
    let back: wire::DialBack = tokio::time::timeout(DIAL_BACK_TIMEOUT, wire::recv(&mut s, wire::MAX_DIAL_BACK))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok((back.nonce, s))
}

/// Confirms the dial-back if the behaviour says the nonce is ours; resets
/// the stream otherwise.
async fn reply_dial_back(mut s: Stream, ours: oneshot::Receiver<bool>) {
    if ours.await == Ok(true) {
        let send = wire::send(&mut s, &wire::DialBackResponse { status: 0 });
        let _ = tokio::time::timeout(DIAL_BACK_TIMEOUT, send).await;
        let _ = s.close().await;
    }
}
