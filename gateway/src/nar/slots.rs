//! Slots handed out newest first.
//!
//! Nix asks for a closure's narinfos from the top down (a path, then what
//! it refers to) and for its NARs from the bottom up (a path only after
//! everything it refers to is valid). So of the prefetches waiting for a
//! slot, the one whose narinfo was served last is the one Nix will ask for
//! first: it gets the next free slot.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

#[derive(Debug)]
struct State {
    free: usize,
    /// Waiting, oldest first.
    waiting: Vec<oneshot::Sender<Slot>>,
}

/// A fixed number of slots; the newest waiter is served first.
#[derive(Debug, Clone)]
pub struct NewestFirst {
    state: Arc<Mutex<State>>,
}

/// A slot held; it goes to the newest waiter when dropped.
#[derive(Debug)]
pub struct Slot {
    state: Option<Arc<Mutex<State>>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NewestFirst {
    pub fn new(slots: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                free: slots,
                waiting: Vec::new(),
            })),
        }
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> Slot {
        let rx = {
            let mut s = lock(&self.state);
            if s.free > 0 {
                s.free -= 1;
                return self.slot();
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.push(tx);
            rx
        };
        // The sender is only dropped after handing a slot over.
        rx.await
            .unwrap_or_else(|_| unreachable!("a waiter's sender is kept until it is served"))
    }

    fn slot(&self) -> Slot {
        Slot {
            state: Some(self.state.clone()),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else { return };
        let mut s = lock(&state);
        // The newest waiter still waiting gets it; waiters that gave up
        // (their receiver is gone) are skipped.
        while let Some(tx) = s.waiting.pop() {
            let next = Slot {
                state: Some(state.clone()),
            };
            match tx.send(next) {
                Ok(()) => return,
                // Handed back: forget it without recursing into this drop.
                Err(mut unsent) => unsent.state = None,
            }
        }
        s.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_waiter_gets_the_next_slot_and_gone_ones_are_skipped() {
        let slots = NewestFirst::new(1);
        let held = slots.acquire().await;
        let mut a = Box::pin(slots.acquire());
        let mut b = Box::pin(slots.acquire());
        let mut c = Box::pin(slots.acquire());
        assert!(futures::poll!(a.as_mut()).is_pending());
        assert!(futures::poll!(b.as_mut()).is_pending());
        assert!(futures::poll!(c.as_mut()).is_pending());
        drop(c); // gives up before a slot is free
        drop(held);
        assert!(futures::poll!(a.as_mut()).is_pending(), "the oldest waits on");
        let std::task::Poll::Ready(b_slot) = futures::poll!(b.as_mut()) else {
            panic!("b, the newest still waiting, has it");
        };
        drop(b_slot);
        assert!(futures::poll!(a.as_mut()).is_ready());
        // Everything back: one free slot again.
        assert!(futures::poll!(Box::pin(slots.acquire())).is_ready());
    }
}
