//! Keep-alive timing for many streams without a timer each: a wheel of one-second slots that
//! the hub's periodic tick turns, waking the subscriptions whose interval came round.
//!
//! A stream asks for a wake-up every `every`; the first comes after a random part of it, so
//! the streams of a fleet spread over the interval instead of writing in lockstep. A woken
//! stream decides itself whether a keep-alive is due (it may have written meanwhile). Entries
//! of dropped subscriptions fall out when their slot comes round.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use super::{janitor::TICK, queue::Queue};

/// Slots in the wheel: intervals up to this many ticks take one turn; longer ones wait out
/// whole turns.
const SLOTS: u64 = 64;

#[derive(Debug)]
pub(crate) struct Wheel {
    slots: Vec<Vec<Entry>>,
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    due: u64,
    every: u64,
    queue: Weak<Queue>,
}

impl Default for Wheel {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            tick: 0,
        }
    }
}

impl Wheel {
    /// Wakes `queue`'s consumer about every `every` (at least one tick), first after a random
    /// part of it.
    pub(crate) fn insert(&mut self, queue: &Arc<Queue>, every: Duration) {
        let every = ticks(every);
        let due = self.tick + 1 + crate::random::u64() % every;
        self.put(Entry {
            due,
            every,
            queue: Arc::downgrade(queue),
        });
    }

    fn put(&mut self, entry: Entry) {
        self.slots[(entry.due % SLOTS) as usize].push(entry);
    }

    /// Turns the wheel by one tick; returns the queues due now, already set for their next turn.
    pub(crate) fn turn(&mut self) -> Vec<Arc<Queue>> {
        self.tick += 1;
        let tick = self.tick;
        let slot = std::mem::take(&mut self.slots[(tick % SLOTS) as usize]);
        let mut due = Vec::new();
        for mut entry in slot {
            if entry.due > tick {
                self.put(entry);
                continue;
            }
            let Some(queue) = entry.queue.upgrade() else {
                continue;
            };
            entry.due = tick + entry.every;
            self.put(entry);
            due.push(queue);
        }
        due
    }
}

/// `every` in ticks, at least one.
fn ticks(every: Duration) -> u64 {
    let tick = TICK.as_millis().max(1);
    every.as_millis().div_ceil(tick).clamp(1, u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::queue::QueueLimits;

    fn queue() -> Arc<Queue> {
        Arc::new(Queue::new(QueueLimits {
            items: 1,
            bytes: 1,
            stall: Duration::from_secs(1),
        }))
    }

    #[test]
    fn each_queue_comes_round_once_per_interval() {
        let mut wheel = Wheel::default();
        let queues: Vec<_> = (0..50).map(|_| queue()).collect();
        for q in &queues {
            wheel.insert(q, Duration::from_secs(15));
        }
        let mut counts = vec![0; queues.len()];
        for _ in 0..150 {
            for due in wheel.turn() {
                let i = queues.iter().position(|q| Arc::ptr_eq(q, &due)).unwrap();
                counts[i] += 1;
            }
        }
        assert!(counts.iter().all(|&n| n == 10), "{counts:?}");
        // Long intervals wait out whole turns; dropped queues fall out.
        let long = queue();
        wheel.insert(&long, Duration::from_secs(200));
        drop(queues);
        let due: usize = (0..200).map(|_| wheel.turn().len()).sum();
        assert_eq!(due, 1);
    }
}
