//! The bounded queue between the bus and one subscription.

use std::{
    collections::VecDeque,
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::Instant,
};

use bytes::Bytes;

use super::GapReason;
use crate::last_event_id::EventId;

/// One thing queued for a subscription.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// An encoded event with its id.
    Event(EventId, Bytes),
    /// Events may have been lost here.
    Gap(GapReason),
}

/// Why a queue stopped taking items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The subscriber fell more than the queue's capacity behind.
    Lagged,
    /// The bus is shutting down.
    Closed,
}

/// A bounded single-consumer queue. The producer never waits: when the queue is full the
/// subscriber is marked lagged, its queued items are freed, and it ends after telling its client
/// why (the client then resumes from its last id).
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// When the oldest queued item was published (at the latest: set from the item an empty
    /// queue gets).
    since: Option<Instant>,
    waker: Option<Waker>,
    end: Option<End>,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item`, published `at` (a reading the caller shares with all the queues it
    /// delivers to), or ends the queue as lagged when it is full. Returns `false` when
    /// the queue has ended (now or before).
    pub(crate) fn push(&self, item: Item, at: Instant) -> bool {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return false;
        }
        let accepted = if state.items.len() >= self.capacity {
            crate::metrics::lagged(state.items.len() + 1);
            state.items = VecDeque::new();
            state.end = Some(End::Lagged);
            false
        } else {
            if state.items.is_empty() {
                state.since = Some(at);
            }
            state.items.push_back(item);
            true
        };
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        accepted
    }

    /// Ends the queue (no-op when already ended), dropping what is queued.
    pub(crate) fn end(&self, end: End) {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return;
        }
        state.items = VecDeque::new();
        state.end = Some(end);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves up to `max` queued items into `out`. `Ready(Ok(n))` with `n > 0` when items were
    /// moved, `Ready(Err(end))` once the queue has ended and is empty, `Pending` otherwise.
    /// `oldest` becomes the arrival time of the oldest item moved, unless it holds an earlier
    /// one.
    pub(crate) fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Item>,
        oldest: &mut Option<Instant>,
        max: usize,
    ) -> Poll<Result<usize, End>> {
        let mut state = lock(&self.state);
        if !state.items.is_empty() {
            let n = state.items.len().min(max);
            out.extend(state.items.drain(..n));
            // Items left behind are newer; they keep this time, an overestimate of their wait.
            let since = if state.items.is_empty() {
                state.since.take()
            } else {
                state.since
            };
            if oldest.is_none() {
                *oldest = since;
            }
            return Poll::Ready(Ok(n));
        }
        if let Some(end) = state.end {
            return Poll::Ready(Err(end));
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).items.len()
    }
}

/// Locks a mutex, carrying on after a panic elsewhere poisoned it: every critical section here
/// leaves the state consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn overflow_ends_as_lagged_and_frees() {
        let q = Queue::new(2);
        assert!(q.push(
            Item::Event(EventId::new(0, 1), Bytes::new()),
            Instant::now()
        ));
        assert!(q.push(
            Item::Event(EventId::new(0, 2), Bytes::new()),
            Instant::now()
        ));
        assert!(!q.push(
            Item::Event(EventId::new(0, 3), Bytes::new()),
            Instant::now()
        ));
        assert_eq!(q.len(), 0);
        let mut out = VecDeque::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            q.poll_drain(&mut cx, &mut out, &mut None, 8),
            Poll::Ready(Err(End::Lagged))
        );
        assert!(!q.push(
            Item::Event(EventId::new(0, 4), Bytes::new()),
            Instant::now()
        ));
    }

    #[test]
    fn drains_in_batches() {
        let q = Queue::new(10);
        for i in 0..5 {
            q.push(
                Item::Event(EventId::new(0, i), Bytes::new()),
                Instant::now(),
            );
        }
        let mut out = VecDeque::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            q.poll_drain(&mut cx, &mut out, &mut None, 3),
            Poll::Ready(Ok(3))
        );
        assert_eq!(
            q.poll_drain(&mut cx, &mut out, &mut None, 3),
            Poll::Ready(Ok(2))
        );
        assert!(q.poll_drain(&mut cx, &mut out, &mut None, 3).is_pending());
        q.end(End::Closed);
        assert_eq!(
            q.poll_drain(&mut cx, &mut out, &mut None, 3),
            Poll::Ready(Err(End::Closed))
        );
    }
}
