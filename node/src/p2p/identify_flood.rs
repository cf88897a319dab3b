//! Test builds only (feature `test-hooks`): a hostile peer for tests and
//! benchmarks. A real libp2p swarm that claims the DHT protocol and pushes
//! identify messages of [`PER_PUSH`] fresh public addresses every
//! [`PUSH_EVERY`] at a victim (each push used to grow the victim's
//! Kademlia entry without bound).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, kad, noise, tcp, yamux};

use super::behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL};

/// Fresh addresses in each push.
pub const PER_PUSH: u32 = 150;
/// How often it pushes.
pub const PUSH_EVERY: Duration = Duration::from_millis(50);

/// A hostile peer's behaviours: identify, and Kademlia in server mode (so
/// it claims the DHT protocol) over a memory store.
#[derive(NetworkBehaviour)]
pub(crate) struct DhtPeer {
    identify: identify::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// A swarm of [`DhtPeer`] over TCP, with a fresh identity.
pub(crate) fn dht_peer(
    store: kad::store::MemoryStoreConfig,
) -> Result<libp2p::Swarm<DhtPeer>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let store = kad::store::MemoryStore::with_config(id, store);
            let mut kad = kad::Behaviour::with_config(id, store, kad::Config::new(KAD_PROTOCOL));
            kad.set_mode(Some(kad::Mode::Server));
            DhtPeer {
                identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public())),
                kad,
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build())
}

/// Listens on 127.0.0.1 and gives back the address once it is up.
pub(crate) async fn listen_local(
    swarm: &mut libp2p::Swarm<DhtPeer>,
) -> Result<Multiaddr, Box<dyn std::error::Error + Send + Sync>> {
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return Ok(address);
        }
    }
}

/// The `i`th fresh address: public, TCP, never repeated for 2^24 pushes.
pub fn fresh(i: u32) -> Multiaddr {
    let [_, b, c, d] = i.to_be_bytes();
    let mut a = Multiaddr::empty();
    a.push(libp2p::multiaddr::Protocol::Ip4([1, b, c, d].into()));
    a.push(libp2p::multiaddr::Protocol::Tcp(1024 + (i % 50_000) as u16));
    a
}

/// The flood, until `stop` or `rounds` pushes; its peer id is reported
/// through `me` once known and the pushes so far through `pushes`. With
/// `listen`, it listens on 127.0.0.1 and claims that address too (a victim
/// that dials it back there admits it to its routing table).
pub async fn run(
    listen: bool,
    victim: Multiaddr,
    victim_id: PeerId,
    rounds: Option<u32>,
    stop: Arc<AtomicBool>,
    pushes: Arc<AtomicU32>,
    me: tokio::sync::oneshot::Sender<PeerId>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut swarm = dht_peer(kad::store::MemoryStoreConfig::default())?;
    if listen {
        let address = listen_local(&mut swarm).await?;
        swarm.add_external_address(address);
    }
    let _ = me.send(*swarm.local_peer_id());
    swarm.dial(victim)?;
    let mut tick = tokio::time::interval(PUSH_EVERY);
    let (mut claimed, mut connected, mut n) = (Vec::new(), false, 0u32);
    while !stop.load(Ordering::Relaxed) && rounds.is_none_or(|r| n < r) {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == victim_id => connected = true,
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == victim_id => {
                    connected = false;
                    swarm.dial(victim_id)?;
                }
                _ => {}
            },
            _ = tick.tick(), if connected => {
                for a in claimed.drain(..) {
                    swarm.remove_external_address(&a);
                }
                for i in 0..PER_PUSH {
                    let a = fresh(n.wrapping_mul(PER_PUSH).wrapping_add(i));
                    swarm.add_external_address(a.clone());
                    claimed.push(a);
                }
                swarm.behaviour_mut().identify.push([victim_id]);
                n += 1;
                pushes.store(n, Ordering::Relaxed);
            }
        }
    }
    // Let the last pushes go out.
    let settle = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(settle);
    loop {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            () = &mut settle => return Ok(()),
        }
    }
}
