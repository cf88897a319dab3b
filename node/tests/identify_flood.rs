//! A hostile peer (a real libp2p swarm in this test) that claims the DHT
//! protocol and pushes identify messages of 150 fresh addresses 20 times a
//! second. Before the node kept a bounded book of addresses, each push
//! went into Kademlia's per-peer list, which grew without bound (and every
//! insert scanned it and copied it into an event). Now the victim's
//! routing table holds a few addresses for it, however long it pushes,
//! and the victim keeps answering.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use futures::StreamExt as _;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, identify, kad, noise, tcp, yamux};
use nixswarm_node::p2p::behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL};

#[derive(NetworkBehaviour)]
struct Pusher {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

fn fresh(i: u32) -> Multiaddr {
    let [_, b, c, d] = i.to_be_bytes();
    format!("/ip4/1.{b}.{c}.{d}/tcp/{}", 1024 + i % 50_000).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identify_push_flood_keeps_a_few_addresses() {
    let victim = TestNode::start(None, |_| {}).await;
    let victim_id = victim.node.handle.peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut kad =
                kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kad::Config::new(KAD_PROTOCOL));
            kad.set_mode(Some(kad::Mode::Server));
            Pusher {
                identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public())),
                kad,
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.dial(victim.addr()).unwrap();

    const PUSHES: u32 = 200;
    const PER_PUSH: u32 = 150;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut pushed = 0u32;
    let mut claimed: Vec<Multiaddr> = Vec::new();
    let mut connected = false;
    let mut slowest = Duration::ZERO;
    while pushed < PUSHES {
        tokio::select! {
            ev = swarm.select_next_some() => {
                if let SwarmEvent::ConnectionEstablished { peer_id, .. } = ev {
                    connected |= peer_id == victim_id;
                }
            }
            _ = tick.tick(), if connected => {
                for a in claimed.drain(..) {
                    swarm.remove_external_address(&a);
                }
                for i in 0..PER_PUSH {
                    let a = fresh(pushed * PER_PUSH + i);
                    swarm.add_external_address(a.clone());
                    claimed.push(a);
                }
                swarm.behaviour_mut().identify.push([victim_id]);
                pushed += 1;
                // The victim keeps answering.
                let t = Instant::now();
                victim.node.handle.status().await.unwrap();
                slowest = slowest.max(t.elapsed());
            }
        }
    }
    // Let the last pushes arrive.
    let settle = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(settle);
    loop {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            () = &mut settle => break,
        }
    }
    let s = victim.node.handle.status().await.unwrap();
    eprintln!(
        "{pushed} pushes of {PER_PUSH} addresses: the victim's routing table holds {} addresses; slowest status answer {slowest:?}",
        s.routing_addresses
    );
    let table = victim.node.handle.routing_table().await.unwrap();
    assert!(
        table.contains(swarm.local_peer_id()),
        "the pusher is in the table: its claims were heard"
    );
    assert!(
        s.routing_addresses <= 8,
        "{} addresses kept for one peer",
        s.routing_addresses
    );
}
