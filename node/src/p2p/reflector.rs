//! Test builds only (feature `test-hooks`): a hostile DHT server for
//! tests. A real libp2p swarm, in Kademlia server mode, that answers
//! GET_PROVIDERS for some keys with made-up providers, each
//! listing addresses it chose (a victim's, the asker's own loopback or
//! LAN): every node that looks the key up is asked to dial them.

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore as _};
use libp2p::kad::{ProviderRecord, RecordKey};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, kad, noise, tcp, yamux};

use super::behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL};

#[derive(NetworkBehaviour)]
struct Server {
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
}

/// The running reflector; stops when dropped.
#[derive(Debug)]
pub struct Reflector {
    /// Where it listens, with `/p2p/<id>`.
    pub addr: Multiaddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a reflector on 127.0.0.1 that lists `fakes` providers of each
/// of `keys`, each at `targets`.
pub async fn start(
    keys: &[RecordKey],
    fakes: usize,
    targets: Vec<Multiaddr>,
) -> Result<Reflector, Box<dyn std::error::Error + Send + Sync>> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|k| {
            let id = k.public().to_peer_id();
            let store = MemoryStore::with_config(
                id,
                MemoryStoreConfig {
                    max_providers_per_key: fakes,
                    ..MemoryStoreConfig::default()
                },
            );
            let mut kad = kad::Behaviour::with_config(id, store, kad::Config::new(KAD_PROTOCOL));
            kad.set_mode(Some(kad::Mode::Server));
            Server {
                identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), k.public())),
                kad,
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    for key in keys {
        for _ in 0..fakes {
            swarm.behaviour_mut().kad.store_mut().add_provider(ProviderRecord {
                key: key.clone(),
                provider: PeerId::random(),
                expires: None,
                addresses: targets.clone(),
            })?;
        }
    }
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
        }
    };
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok(Reflector { addr, task })
}
