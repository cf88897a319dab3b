//! Keeps the DHT in step with the shelves: announces every shared path at
//! start-up and whenever one is added, withdraws evicted paths, and
//! re-announces everything periodically, with a bounded number of provide
//! queries in flight (all at once degrades badly: see ARCHITECTURE.md).

use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use nixswarm_protocol::StorePathHash;
use tokio_util::sync::CancellationToken;

use super::NodeHandle;
use crate::shelf::{Shelf as _, Shelves};
use crate::store::StoreEvent;

pub(super) async fn run(
    handle: NodeHandle,
    store: Shelves,
    max_in_flight: usize,
    reprovide: Duration,
    cancel: CancellationToken,
) {
    let mut events = store.events();
    let mut events_done = false;
    let mut queue: std::collections::VecDeque<StorePathHash> = store.list().unwrap_or_default().into();
    tracing::info!(paths = queue.len(), "announcing stored paths");
    let mut in_flight = FuturesUnordered::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + reprovide, reprovide);
    loop {
        while in_flight.len() < max_in_flight.max(1) {
            let Some(hash) = queue.pop_front() else { break };
            let h = handle.clone();
            in_flight.push(async move { h.provide(&hash).await });
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                if r.is_err() {
                    return; // the node stopped
                }
            }
            ev = events.next(), if !events_done => match ev {
                Some(Some(StoreEvent::Added(h))) => queue.push_back(h),
                Some(Some(StoreEvent::Removed(h))) => {
                    // Another shelf may still share it (installed and cached).
                    if store.contains(&h).unwrap_or(false) {
                        continue;
                    }
                    queue.retain(|q| *q != h);
                    if handle.withdraw(&h).await.is_err() {
                        return;
                    }
                }
                Some(None) => {
                    // Missed changes: resynchronise from the shelves.
                    queue = store.list().unwrap_or_default().into();
                }
                None => events_done = true, // no shelves (or all closed)
            },
            () = handle.stats.joined.notified() => {
                tracing::info!("connected to the swarm: announcing stored paths again");
                for h in store.list().unwrap_or_default() {
                    if !queue.contains(&h) {
                        queue.push_back(h);
                    }
                }
            }
            _ = tick.tick() => {
                for h in store.list().unwrap_or_default() {
                    if !queue.contains(&h) {
                        queue.push_back(h);
                    }
                }
            }
        }
    }
}
