//! The bounded queue between the bus and one subscription.
//!
//! A queue is bounded by items and by bytes. The producer (the hub, under its lock) never
//! waits: a push that would overflow either bound ends the queue instead, frees what it held,
//! and the subscription ends after telling its client why (the client then resumes from its
//! last id). A queue also ends when its consumer took nothing for the stall timeout while items
//! waited (checked at each push and by the bus's periodic sweep), and, when the bus holds more
//! than its byte budget, at a push into a queue that already has a backlog.

use std::{
    collections::VecDeque,
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::time::Instant;

use super::{EncodedEvent, GapReason};
use crate::sync::lock;

/// One thing queued for a subscription.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// An encoded event with its id and topic.
    Event(EncodedEvent),
    /// Events may have been lost here (only a broker loses events).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Gap(GapReason),
}

impl Item {
    /// The bytes the item holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Item::Event(event) => event.frame().len(),
            Item::Gap(_) => 0,
        }
    }
}

/// Why a queue stopped taking items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The subscriber fell more than the queue's bounds behind, or had a backlog while the bus
    /// was over its byte budget.
    Lagged,
    /// The subscriber took nothing for the stall timeout while items waited.
    Stalled,
    /// The bus is shutting down.
    Closed,
}

/// The bounds of one queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) items: usize,
    pub(crate) bytes: usize,
    pub(crate) stall: Duration,
}

/// What the hub tells every queue it pushes one event to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Push {
    /// When the event was published (where delivery latency starts).
    pub(crate) published: Instant,
    /// When it reached the hub.
    pub(crate) now: Instant,
    /// The bus holds more than its byte budget: a queue with a backlog ends.
    pub(crate) shed: bool,
}

/// A bounded single-consumer queue; see the module docs.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Item>,
    bytes: usize,
    limits: QueueLimits,
    /// When the oldest queued item was published (at the latest: set from the item an empty
    /// queue gets).
    since: Option<Instant>,
    /// Since when items have waited without the consumer taking any (at the latest).
    waiting: Option<Instant>,
    /// A backlog was reported by `push` and not yet found gone by `check_stall`.
    reported: bool,
    waker: Option<Waker>,
    /// The consumer is writing a backlog at its own pace and asked to be woken only once the
    /// queue holds this many bytes (or half its items), not by every push.
    wake_mark: Option<usize>,
    end: Option<End>,
}

impl Queue {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                limits: QueueLimits {
                    items: limits.items.max(1),
                    ..limits
                },
                since: None,
                waiting: None,
                reported: false,
                waker: None,
                wake_mark: None,
                end: None,
            }),
        }
    }

    /// Queues `item`, or ends the queue when it would break a bound (see the module docs).
    /// Returns `None` when the queue has ended (now or before); otherwise whether the queue
    /// now has a backlog it did not report yet, for the caller to check it with
    /// [`check_stall`](Self::check_stall) until it has none.
    pub(crate) fn push(&self, item: Item, push: Push) -> Option<bool> {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return None;
        }
        let mut report = false;
        if let Some(end) = state.refuses(&item, push) {
            state.finish(end);
        } else {
            if state.items.is_empty() {
                state.since = Some(push.published);
            } else if !state.reported {
                state.reported = true;
                report = true;
            }
            state.waiting.get_or_insert(push.now);
            state.bytes += item.len();
            state.items.push_back(item);
        }
        let accepted = state.end.is_none();
        let waker = if accepted && state.wake_mark.is_some() && !state.at_mark() {
            None
        } else {
            state.waker.take()
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        accepted.then_some(report)
    }

    /// For a consumer that waits on purpose (a write delay) with items possibly queued: returns
    /// whether the queue already holds `bytes` bytes or half its items; if not, `cx` is woken
    /// when it does (or the queue ends), not by every push. The next
    /// [`poll_drain`](Self::poll_drain) that waits asks for every push again.
    pub(crate) fn wake_at(&self, cx: &mut Context<'_>, bytes: usize) -> bool {
        let mut state = lock(&self.state);
        state.wake_mark = Some(bytes);
        if state.at_mark() || state.end.is_some() {
            return true;
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        false
    }

    /// Ends the queue if its consumer has taken nothing for the stall timeout while items
    /// waited. Returns whether the queue still has items waiting (and is open); when it
    /// returns `false`, the next backlog is reported again by [`push`](Self::push).
    pub(crate) fn check_stall(&self, now: Instant) -> bool {
        let mut state = lock(&self.state);
        if state.end.is_some() || state.items.is_empty() {
            state.reported = false;
            return false;
        }
        let waiting = *state.waiting.get_or_insert(now);
        if now.saturating_duration_since(waiting) < state.limits.stall {
            return true;
        }
        state.finish(End::Stalled);
        state.reported = false;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        false
    }

    /// Wakes the consumer if it waits for items, without giving it any (for a keep-alive).
    pub(crate) fn nudge(&self) {
        let waker = lock(&self.state).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Sets how long the consumer may take nothing while items wait.
    pub(crate) fn set_stall_timeout(&self, stall: Duration) {
        lock(&self.state).limits.stall = stall;
    }

    /// Ends the queue (no-op when already ended), dropping what is queued.
    pub(crate) fn end(&self, end: End) {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return;
        }
        state.items = VecDeque::new();
        state.bytes = 0;
        state.end = Some(end);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves up to `max` queued items into `out`. `Ready(Ok(n))` with `n > 0` when items were
    /// moved, `Ready(Err(end))` once the queue has ended and is empty, `Pending` otherwise.
    /// `oldest` becomes the publish time of the oldest item moved, unless it holds an earlier
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
            let moved: usize = state.items.range(..n).map(Item::len).sum();
            out.extend(state.items.drain(..n));
            state.bytes -= moved;
            // The consumer took something: a stall is counted afresh from the next push (or
            // sweep) that finds items waiting.
            state.waiting = None;
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
        state.wake_mark = None;
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

impl State {
    /// Whether the queue holds its consumer's wake mark in bytes, or half its items.
    fn at_mark(&self) -> bool {
        let mark = self.wake_mark.unwrap_or(0);
        self.bytes >= mark || self.items.len() >= self.limits.items.div_ceil(2)
    }

    /// Why `item` cannot be queued, if it cannot.
    fn refuses(&self, item: &Item, push: Push) -> Option<End> {
        if self.items.is_empty() {
            // An empty queue takes any one item, even one larger than the byte bound.
            return None;
        }
        let stalled = self
            .waiting
            .is_some_and(|at| push.now.saturating_duration_since(at) >= self.limits.stall);
        if stalled {
            return Some(End::Stalled);
        }
        let full = self.items.len() >= self.limits.items
            || self.bytes.saturating_add(item.len()) > self.limits.bytes;
        (full || push.shed).then_some(End::Lagged)
    }

    /// Ends the queue, freeing what it holds.
    fn finish(&mut self, end: End) {
        let reason = match end {
            End::Lagged => "lagged",
            End::Stalled => "stalled",
            End::Closed => "closed",
        };
        crate::metrics::disconnected(reason, self.items.len());
        self.items = VecDeque::new();
        self.bytes = 0;
        self.end = Some(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::last_event_id::EventId;
    use std::task::Waker;

    const LIMITS: QueueLimits = QueueLimits {
        items: 2,
        bytes: 10,
        stall: Duration::from_secs(30),
    };

    fn event(seq: u64, len: usize) -> Item {
        let topic = crate::bus::Topic::new("t").unwrap();
        let frame = bytes::Bytes::from(vec![b'x'; len]);
        Item::Event(EncodedEvent::new(EventId::new(0, seq), topic, frame))
    }

    fn at(now: Instant) -> Push {
        Push {
            published: now,
            now,
            shed: false,
        }
    }

    fn pushed(q: &Queue, item: Item, push: Push) -> bool {
        q.push(item, push).is_some()
    }

    fn drain(q: &Queue) -> Poll<Result<usize, End>> {
        let mut cx = Context::from_waker(Waker::noop());
        q.poll_drain(&mut cx, &mut VecDeque::new(), &mut None, 8)
    }

    #[test]
    fn overflow_by_items_ends_as_lagged_and_frees() {
        let q = Queue::new(LIMITS);
        let now = Instant::now();
        assert!(pushed(&q, event(1, 1), at(now)));
        assert!(pushed(&q, event(2, 1), at(now)));
        assert!(!pushed(&q, event(3, 1), at(now)));
        assert_eq!(q.len(), 0);
        assert_eq!(drain(&q), Poll::Ready(Err(End::Lagged)));
        assert!(!pushed(&q, event(4, 1), at(now)));
    }

    #[test]
    fn overflow_by_bytes_ends_as_lagged() {
        let q = Queue::new(LIMITS);
        let now = Instant::now();
        // One item larger than the bound is taken by an empty queue...
        assert!(pushed(&q, event(1, 64), at(now)));
        assert_eq!(drain(&q), Poll::Ready(Ok(1)));
        // ...but bytes add up.
        assert!(pushed(&q, event(2, 6), at(now)));
        assert!(!pushed(&q, event(3, 6), at(now)));
        assert_eq!(drain(&q), Poll::Ready(Err(End::Lagged)));
    }

    #[test]
    fn a_consumer_that_takes_nothing_stalls() {
        let q = Queue::new(LIMITS);
        let start = Instant::now();
        assert!(pushed(&q, event(1, 1), at(start)));
        assert!(q.check_stall(start + Duration::from_secs(29)));
        // Taking something starts the count afresh.
        assert_eq!(drain(&q), Poll::Ready(Ok(1)));
        let later = start + Duration::from_secs(40);
        assert!(pushed(&q, event(2, 1), at(later)));
        assert!(q.check_stall(later + Duration::from_secs(29)));
        assert!(!q.check_stall(later + Duration::from_secs(30)));
        assert_eq!(drain(&q), Poll::Ready(Err(End::Stalled)));
    }

    #[test]
    fn a_push_finds_a_stall_too() {
        let q = Queue::new(LIMITS);
        let start = Instant::now();
        assert!(pushed(&q, event(1, 1), at(start)));
        assert!(!pushed(
            &q,
            event(2, 1),
            at(start + Duration::from_secs(31))
        ));
        assert_eq!(drain(&q), Poll::Ready(Err(End::Stalled)));
    }

    #[test]
    fn a_backlog_is_reported_once_until_it_is_gone() {
        let q = Queue::new(QueueLimits {
            items: 10,
            ..LIMITS
        });
        let now = Instant::now();
        assert_eq!(q.push(event(1, 1), at(now)), Some(false));
        assert_eq!(q.push(event(2, 1), at(now)), Some(true));
        assert_eq!(q.push(event(3, 1), at(now)), Some(false));
        assert!(q.check_stall(now));
        assert_eq!(drain(&q), Poll::Ready(Ok(3)));
        assert!(!q.check_stall(now));
        assert_eq!(q.push(event(4, 1), at(now)), Some(false));
        assert_eq!(q.push(event(5, 1), at(now)), Some(true));
    }

    #[test]
    fn shedding_ends_only_queues_with_a_backlog() {
        let q = Queue::new(LIMITS);
        let now = Instant::now();
        let shed = Push {
            shed: true,
            ..at(now)
        };
        assert!(pushed(&q, event(1, 1), shed));
        assert!(!pushed(&q, event(2, 1), shed));
        assert_eq!(drain(&q), Poll::Ready(Err(End::Lagged)));
    }

    #[test]
    fn drains_in_batches() {
        let q = Queue::new(QueueLimits {
            items: 10,
            bytes: 100,
            ..LIMITS
        });
        for i in 0..5 {
            q.push(event(i, 1), at(Instant::now()));
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
