//! Reachability: whether a direct address is confirmed (AutoNAT, UPnP, a
//! global listen address), what follows from it (Kademlia's mode, the
//! relay service, the addresses our records carry), and the relay
//! reservations a node behind NAT keeps.

use std::time::Instant;

use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, dcutr, kad};

use super::super::Reach;
use super::super::autonat::Answer;
use super::super::behaviour::BehaviourEvent;
use super::super::direct::is_relayed;
use super::{Actor, PRIVATE_AFTER};

impl Actor {
    /// A direct external address is confirmed.
    pub(super) fn reachable(&self) -> bool {
        self.swarm.external_addresses().any(|a| !is_relayed(a))
    }

    /// Reachability as `nixswarm status` and the metrics show it.
    pub(super) fn reach(&mut self) -> Reach {
        Reach {
            state: if self.reachable() {
                "public"
            } else if self.unreachable {
                "private"
            } else {
                "unknown"
            },
            external_addrs: self.swarm.external_addresses().map(ToString::to_string).collect(),
            relays: self.relays.reserved().iter().map(ToString::to_string).collect(),
            dht_server: self.swarm.behaviour_mut().kad.mode() == kad::Mode::Server,
        }
    }

    /// Publishes reachability (and the peer and connection counts) for the
    /// metrics.
    pub(super) fn publish_reach(&mut self) {
        self.publish_counts();
        let reach = self.reach();
        if let Ok(mut r) = self.stats.reach.lock() {
            *r = reach;
        }
    }

    /// Publishes the peer and connection counts for the metrics (on each
    /// connection and each second).
    pub(super) fn publish_counts(&self) {
        let info = self.swarm.network_info();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.stats.peers.store(info.num_peers() as u64, relaxed);
        self.stats
            .connections
            .store(u64::from(info.connection_counters().num_established()), relaxed);
    }

    /// Follows reachability: Kademlia serves (auto mode) and the relay
    /// service is offered only while a direct address is reachable (a node
    /// behind NAT, reached through relays, is a client of both), and so is
    /// the AutoNAT server; our own
    /// records carry the advertised addresses.
    pub(super) fn update_mode(&mut self) {
        let reachable = self.reachable();
        // A forced DHT server is taken to be reachable.
        let serve = reachable || !self.dht_auto;
        if let Some(r) = self.swarm.behaviour_mut().relay.as_mut() {
            r.inner.set_status(Some(if serve {
                libp2p::relay::Status::Enable
            } else {
                libp2p::relay::Status::Disable
            }));
        }
        if let Some(a) = self.swarm.behaviour_mut().autonat_server.as_mut() {
            a.set_on(reachable);
        }
        if self.dht_auto {
            let mode = if reachable {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            };
            let kad = &mut self.swarm.behaviour_mut().kad;
            if kad.mode() != mode {
                tracing::info!(?mode, "DHT mode");
                kad.set_mode(Some(mode));
            }
        }
        let advertised: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        self.swarm.behaviour_mut().kad.store_mut().set_advertised(advertised);
        self.publish_reach();
    }

    /// Keeps relay reservations while the node is contributing and not
    /// reachable directly; lets them go once it is.
    pub(super) fn ensure_relays(&mut self) {
        if !self.contributing {
            return;
        }
        if self.reachable() {
            for l in self.relays.release() {
                self.swarm.remove_listener(l);
            }
            return;
        }
        let proven = self.stats.proven.clone();
        for (relay, addr) in self
            .relays
            .wanted(self.unreachable, Instant::now(), |p| proven.contains(p))
        {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    tracing::info!(%relay, %addr, "reserving a relay slot");
                    self.relays.asked(id, relay, addr);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "cannot listen through a relay"),
            }
        }
    }

    /// Once a second: a node connected for [`PRIVATE_AFTER`] with nothing
    /// confirmed counts as behind NAT; relays are kept; metrics published.
    pub(super) fn reach_tick(&mut self) {
        if !self.unreachable && self.first_connected.is_some_and(|t| t.elapsed() >= PRIVATE_AFTER) && !self.reachable()
        {
            tracing::info!("no address confirmed reachable {PRIVATE_AFTER:?} after joining: behind NAT");
            self.unreachable = true;
        }
        self.ensure_relays();
        self.publish_reach();
    }

    /// The advertised addresses changed: the mode and relays follow, and
    /// the records made before (with no, stale or gone addresses) are
    /// announced again.
    fn addresses_changed(&mut self) {
        self.update_mode();
        self.ensure_relays();
        // Records carry the addresses: only a change of the IPs advertised
        // calls for new ones (debounced by the announcer).
        let ips = super::super::readvertise::ips(self.swarm.external_addresses());
        if ips != self.advertised_ips {
            // The first addresses ever: the records made so far were left
            // out (no address to carry), so they are made at once.
            let first = !self.addressed_once;
            self.addressed_once |= !ips.is_empty();
            self.advertised_ips = ips;
            if first {
                self.stats.joined.notify_one();
            } else {
                self.stats.readdressed.notify_one();
            }
        }
    }

    /// Once a second: a fresh relayed connection to each peer whose punch
    /// is due again (its remote then starts a new DCUtR attempt).
    pub(super) fn punch_again(&mut self) {
        for (peer, circuit) in self.punches.due(Instant::now()) {
            if self.links.direct(&peer) {
                continue;
            }
            for c in self.links.relayed_of(&peer) {
                self.swarm.close_connection(c);
            }
            tracing::info!(%peer, %circuit, "trying hole punching again");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(vec![circuit])
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::info!(%peer, error = %e, "cannot dial through the relay again");
            }
        }
    }

    /// Handles the events about addresses, reachability, relays and hole
    /// punching; gives back any other.
    pub(super) fn on_reach_event(&mut self, ev: SwarmEvent<BehaviourEvent>) -> Option<SwarmEvent<BehaviourEvent>> {
        match ev {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                tracing::info!(%address, "p2p listening");
                if is_relayed(&address) {
                    // The relay reports its own addresses; only the circuit
                    // through the address this node dialled it at (as
                    // dialable as the relay is) is advertised.
                    if let Some(circuit) = self.relays.circuit_of(listener_id).cloned() {
                        self.swarm.add_external_address(circuit);
                    }
                } else if self.announce_private || super::super::is_global(&address) {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { listener_id, address } if is_relayed(&address) => {
                // The reservation lapsed: its circuit goes (a renewal
                // reports the addresses again).
                if let Some(circuit) = self.relays.circuit_of(listener_id).cloned() {
                    self.swarm.remove_external_address(&circuit);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Some((relay, circuit)) = self.relays.closed(listener_id, Instant::now()) {
                    tracing::info!(%relay, ?reason, "relay reservation ended");
                    for a in addresses.iter().chain([&circuit]) {
                        self.swarm.remove_external_address(a);
                    }
                    self.ensure_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => match result {
                Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punched: direct connection"),
                Err(e) => {
                    let retry = self.punches.failed(&remote_peer_id, Instant::now());
                    tracing::info!(peer = %remote_peer_id, error = %e, ?retry, "hole punching failed");
                    if !self.links.direct(&remote_peer_id) {
                        self.fail_parked(&remote_peer_id, &format!("hole punching failed: {e}"));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => tracing::debug!(?ev, "relay service"),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(ev)) => tracing::info!(?ev, "relay client"),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(ev)) => match ev.result {
                Ok(Answer::Reachable) => tracing::info!(addr = %ev.addr, server = %ev.server, "AutoNAT: dialled back"),
                Ok(Answer::Unreachable) => {
                    self.unreachable = true;
                    tracing::info!(addr = %ev.addr, server = %ev.server, "not reachable at this address");
                    self.ensure_relays();
                }
                Err(e) => {
                    tracing::debug!(addr = %ev.addr, server = %ev.server, error = %e, "AutoNAT probe gave no answer")
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(ev)) => {
                tracing::info!(?ev, "UPnP");
                let autonat = &mut self.swarm.behaviour_mut().autonat;
                match ev {
                    libp2p::upnp::Event::NewExternalAddr { external_addr, .. } => autonat.candidate(external_addr),
                    libp2p::upnp::Event::ExpiredExternalAddr { external_addr, .. } => autonat.withdraw(&external_addr),
                    _ => {}
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.addresses_changed();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.addresses_changed();
            }
            other => return Some(other),
        }
        None
    }
}
