//! Keeps the DHT in step with the shelves: announces every shared path at
//! start-up and whenever one is added, withdraws evicted paths, and
//! re-announces everything periodically, with a bounded number of provide
//! queries in flight (all at once degrades badly: see ARCHITECTURE.md).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use nixswarm_protocol::StorePathHash;
use tokio_util::sync::CancellationToken;

use super::NodeHandle;
use super::readvertise::Readvertise;
use crate::shelf::Shelves;
use crate::store::StoreEvent;

/// Paths waiting to be announced, each at most once. A set beside the
/// queue keeps pushes and removals O(1): a donor shares 100k paths, and
/// re-queueing them all with `VecDeque::contains` was quadratic.
#[derive(Default)]
struct Pending {
    order: VecDeque<StorePathHash>,
    queued: HashSet<StorePathHash>,
}

impl Pending {
    fn push(&mut self, h: StorePathHash) {
        if self.queued.insert(h) {
            self.order.push_back(h);
        }
    }

    fn extend(&mut self, hs: impl IntoIterator<Item = StorePathHash>) {
        for h in hs {
            self.push(h);
        }
    }

    /// Forgets `h`; its place in the queue is skipped when reached.
    fn remove(&mut self, h: &StorePathHash) {
        self.queued.remove(h);
    }

    fn pop(&mut self) -> Option<StorePathHash> {
        while let Some(h) = self.order.pop_front() {
            if self.queued.remove(&h) {
                return Some(h);
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.queued.len()
    }
}

/// Every shared path, read off the async runtime (a donor lists 100k).
async fn list(store: &Shelves) -> Vec<StorePathHash> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.list().unwrap_or_default())
        .await
        .unwrap_or_default()
}

/// Whether the shelves share a path, read off the async runtime.
async fn shares(store: &Shelves, h: StorePathHash) -> bool {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.contains(&h).unwrap_or(false))
        .await
        .unwrap_or(false)
}

async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn run(
    handle: NodeHandle,
    store: Shelves,
    max_in_flight: usize,
    reprovide: Duration,
    cancel: CancellationToken,
) {
    let mut events = store.events();
    let mut events_done = false;
    let mut queue = Pending::default();
    queue.extend(list(&store).await);
    tracing::info!(paths = queue.len(), "announcing stored paths");
    let mut in_flight = FuturesUnordered::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + reprovide, reprovide);
    let mut readvertise = Readvertise::default();
    loop {
        while in_flight.len() < max_in_flight.max(1) {
            let Some(hash) = queue.pop() else { break };
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
                // Holding a path is not sharing it: the policy decides (one signed
                // only by a trusted, unshared key is kept, never announced).
                Some(Some(StoreEvent::Added(h))) => {
                    if shares(&store, h).await {
                        queue.push(h);
                    }
                }
                Some(Some(StoreEvent::Removed(h))) => {
                    // Another shelf may still share it (installed and cached).
                    if shares(&store, h).await {
                        continue;
                    }
                    queue.remove(&h);
                    if handle.withdraw(&h).await.is_err() {
                        return;
                    }
                }
                Some(None) => {
                    // Missed changes: resynchronise from the shelves.
                    queue = Pending::default();
                    queue.extend(list(&store).await);
                }
                None => events_done = true, // no shelves (or all closed)
            },
            () = handle.stats.joined.notified() => {
                tracing::info!("connected to the swarm: announcing stored paths again");
                queue.extend(list(&store).await);
            }
            () = handle.stats.readdressed.notified() => readvertise.changed(tokio::time::Instant::now()),
            () = sleep_until_due(readvertise.due()), if readvertise.due().is_some() => {
                tracing::info!("advertised addresses changed: announcing stored paths again");
                readvertise.fired(tokio::time::Instant::now());
                queue.extend(list(&store).await);
            }
            _ = tick.tick() => queue.extend(list(&store).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> StorePathHash {
        StorePathHash::from_bytes(&[n; 20])
    }

    #[test]
    fn pending_announces_each_path_once_in_order_and_skips_removed_ones() {
        let mut q = Pending::default();
        q.extend([h(1), h(2), h(1), h(3)]);
        assert_eq!(q.len(), 3);
        q.remove(&h(2));
        q.push(h(3));
        assert_eq!(q.pop(), Some(h(1)));
        // Removed, then queued again: announced once.
        q.push(h(2));
        assert_eq!(q.pop(), Some(h(2)));
        assert_eq!(q.pop(), Some(h(3)));
        assert_eq!(q.pop(), None);
        assert_eq!(q.len(), 0);
    }
}
