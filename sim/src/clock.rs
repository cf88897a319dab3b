//! Virtual time: events in a queue, taken in time order (ties in the order
//! they were scheduled), so a run is the same for the same seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Virtual time since the start of a run.
pub type Time = Duration;

/// The event queue.
#[derive(Debug)]
pub struct Clock<E> {
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, Slot<E>)>>,
}

/// An event, ordered by nothing but its place (time, then sequence).
#[derive(Debug)]
struct Slot<E>(E);

impl<E> PartialEq for Slot<E> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<E> Eq for Slot<E> {}
impl<E> PartialOrd for Slot<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Slot<E> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<E> Default for Clock<E> {
    fn default() -> Self {
        Self {
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
        }
    }
}

impl<E> Clock<E> {
    pub fn now(&self) -> Time {
        self.now
    }

    /// `e` happens at `at` (never before now).
    pub fn at(&mut self, at: Time, e: E) {
        let at = at.max(self.now);
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, Slot(e))));
    }

    /// `e` happens `after` from now.
    pub fn after(&mut self, after: Duration, e: E) {
        self.at(self.now + after, e);
    }

    /// The next event; the clock moves to its time.
    pub fn step(&mut self) -> Option<(Time, E)> {
        let Reverse((t, _, Slot(e))) = self.queue.pop()?;
        self.now = t;
        Some((t, e))
    }

    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_in_time_order_and_ties_in_scheduling_order() {
        let mut c = Clock::default();
        c.at(Duration::from_secs(2), "b");
        c.at(Duration::from_secs(1), "a");
        c.at(Duration::from_secs(2), "c");
        let got: Vec<_> = std::iter::from_fn(|| c.step()).map(|(_, e)| e).collect();
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(c.now(), Duration::from_secs(2));
        // Nothing is scheduled in the past.
        c.at(Duration::ZERO, "late");
        assert_eq!(c.step(), Some((Duration::from_secs(2), "late")));
    }
}
