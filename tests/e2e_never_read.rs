//! Peers that ask and never read: a `nixswarm` process holding the fixture
//! cache (its largest path is 20 MB) is asked by 8 peer identities, 64
//! requests each at a time, each request for 32 of its largest chunks, and
//! none of them ever reads an answer. The victim's memory is measured from
//! /proc while it lasts, and it must stay within a bound; afterwards it
//! still answers an honest peer.
//!
//! Before answers held their memory budget until written (and the codec
//! dropped the answer once encoded), the same attack took a donor from
//! 20 MB to 1.1 GB in 25 s.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use futures::{AsyncRead, AsyncWrite};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};
use nixswarm_node::p2p::{PROTOCOL, TransferCodec};
use nixswarm_protocol::ChunkId;
use nixswarm_protocol::wire::{Request, Response};
use support::probe::{path_info, probe};
use support::{Gateway, down_upstream, fixture, import, rss};

/// Identities attacking at once.
const ATTACKERS: usize = 8;
/// Requests each keeps open (the victim's streams per connection).
const OPEN: usize = 64;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(15);
/// What the victim may grow by: its answer budget is 64 MiB.
const BOUND: u64 = 256 << 20;

/// Writes requests; reading an answer never finishes.
#[derive(Debug, Clone, Default)]
struct NeverRead;

impl request_response::Codec for NeverRead {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<Request> {
        Err(std::io::Error::other("the attacker takes no requests"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<Response> {
        futures::future::pending().await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> std::io::Result<()> {
        // Requests as any node writes them.
        request_response::Codec::write_request(&mut TransferCodec, &PROTOCOL, io, req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Response,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// One attacking identity: keeps `OPEN` requests for `ids` open until cancelled.
async fn attack(victim: Multiaddr, ids: Vec<ChunkId>, stop: tokio_util::sync::CancellationToken) -> Result<()> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| {
            request_response::Behaviour::<NeverRead>::new(
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(3600))
                    .with_max_concurrent_streams(OPEN),
            )
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    let peer = match victim.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => bail!("no peer id in {victim}"),
    };
    swarm.dial(victim)?;
    let mut open = 0usize;
    let mut top_up = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            ev = swarm.select_next_some() => {
                if let libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) = ev {
                    open = open.saturating_sub(1);
                }
            }
            _ = top_up.tick() => {
                if swarm.is_connected(&peer) {
                    while open < OPEN {
                        swarm.behaviour_mut().send_request(&peer, Request::Chunks {
                            ids: ids.clone(),
                            compress: true,
                        });
                        open += 1;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_read_cannot_grow_a_donor_past_a_bound() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let key = fx.trusted_pub.as_str();
    import(&tmp.path().join("victim"), &fx.cache(), key)?;
    let down = down_upstream();
    let victim = Gateway::start(&tmp.path().join("victim"), &[&down], key)?;
    let addr = victim.node_addrs[0].clone();
    let big = fx
        .paths
        .iter()
        .find(|p| p.ends_with("-big-20m"))
        .context("the 20 MB fixture path")?;
    let (honest, peer) = probe(&tmp.path().join("probe"), &addr).await?;
    let Response::PathInfo { manifest, .. } = path_info(&honest, peer, big).await? else {
        bail!("the victim does not serve {big}");
    };
    let mut chunks = manifest.chunks.clone();
    chunks.sort_by_key(|c| std::cmp::Reverse(c.size));
    let ids: Vec<ChunkId> = chunks.iter().take(32).map(|c| c.id).collect();
    let asked: u64 = chunks.iter().take(32).map(|c| u64::from(c.size)).sum();

    let before = rss(victim.pid())?;
    let stop = tokio_util::sync::CancellationToken::new();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(attack(addr.parse().unwrap(), ids.clone(), stop.clone())))
        .collect();
    let start = Instant::now();
    let mut peak = before;
    while start.elapsed() < ATTACK {
        peak = peak.max(rss(victim.pid())?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
    for a in attackers {
        a.await??;
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "{ATTACKERS} identities x {OPEN} open requests x {} MiB asked each: victim RSS {} MiB before, peak {} MiB (+{} MiB, bound {} MiB)",
        asked >> 20,
        before >> 20,
        peak >> 20,
        grew >> 20,
        BOUND >> 20
    );
    if grew > BOUND {
        bail!("the victim grew by {} MiB", grew >> 20);
    }
    // Once they are gone, it serves an honest peer again.
    let deadline = Instant::now() + Duration::from_secs(70);
    loop {
        match honest
            .request(
                peer,
                Request::Chunks {
                    ids: ids[..1].to_vec(),
                    compress: true,
                },
            )
            .await
        {
            Ok(Response::Chunks { chunks }) if chunks.len() == 1 => break,
            other => {
                if Instant::now() > deadline {
                    bail!("the victim did not serve again: {other:?}\n{}", victim.log());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    victim.stop()
}
