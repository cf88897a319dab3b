//! Test builds only (feature `test-hooks`): a hostile DHT server for
//! tests. A real libp2p swarm, in Kademlia server mode, that answers
//! GET_PROVIDERS for some keys with made-up providers, each
//! listing addresses it chose (a victim's, the asker's own loopback or
//! LAN): every node that looks the key up is asked to dial them.

use futures::StreamExt as _;
use libp2p::kad::store::{MemoryStoreConfig, RecordStore as _};
use libp2p::kad::{ProviderRecord, RecordKey};
use libp2p::{Multiaddr, PeerId};

use super::identify_flood::{dht_peer, listen_local};

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
    let mut swarm = dht_peer(MemoryStoreConfig {
        max_providers_per_key: fakes,
        ..MemoryStoreConfig::default()
    })?;
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
    let addr = listen_local(&mut swarm)
        .await?
        .with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok(Reflector { addr, task })
}
