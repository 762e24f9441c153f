//! The local fan-out every backend delivers through: per-topic subscriber lists and a bounded
//! history for resume.
//!
//! Events reach the hub already sequenced (the in-process backend numbers them itself; the
//! Redis backends take the number Redis assigned) and in sequence order. Delivery, history and
//! registration of new subscribers happen under one lock, so a subscriber that resumes gets the
//! replay and then the live events with nothing missing and nothing twice, and every
//! subscription sees events in sequence order across all its topics, which is what makes the
//! id of the last event seen a cursor for all of them.
//!
//! ## Bounds
//!
//! - History: per topic by count, bytes and age, and across all topics by bytes, evicting the
//!   oldest event first (see [`history`](super::history)). A resume point older than what is
//!   left is a `history-expired` reset, never a silent `resumed`.
//! - Each subscriber's queue: by items and bytes, and by the time its consumer takes nothing
//!   while events wait (see [`queue`](super::queue)).
//! - Everything the bus holds, in bytes, counting a shared frame once (see
//!   [`budget`](super::budget)).
//!
//! A periodic tick (see [`janitor`](super::janitor)) ages history out and ends stalled
//! subscribers when nothing is published; publishing does the same work on the way.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use super::{
    budget::Held,
    history::{HistoryLimits, Oldest, Stored, TopicHistory},
    queue::{End, Item, Push, Queue, QueueLimits},
    wheel::Wheel,
    EncodedEvent, ResetReason, ResumeStatus, Topic,
};
use crate::{
    error::{BusError, BusErrorKind, InvalidEventId},
    last_event_id::EventId,
};

#[cfg(feature = "redis")]
mod broker;
mod resume;

use self::resume::{known_positions, merge, plan_resume};
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use self::resume::{Registration, Resume};
use crate::sync::lock;

/// A subscriber a hub registered, with what it is owed first and how it started: what a
/// [`Subscription`](crate::Subscription) is made of.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) hub: Hub,
    pub(crate) id: u64,
    pub(crate) topics: Vec<Topic>,
    pub(crate) queue: Arc<Queue>,
    /// In sequence order, before anything queued.
    pub(crate) replay: VecDeque<Item>,
    pub(crate) status: ResumeStatus,
    /// Where the subscriber stands before it takes anything.
    pub(crate) start_id: EventId,
}

/// The floor of a topic whose events this instance does not hear: no resume point is complete.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// How much a hub keeps: history, and each subscriber's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) history: HistoryLimits,
    pub(crate) queue: QueueLimits,
    /// Bytes of frames the bus may hold before it sheds subscribers with a backlog.
    pub(crate) held_bytes: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    limits: Limits,
    held: Held,
    janitor: super::janitor::Started,
}

#[derive(Debug)]
struct State {
    epoch: u32,
    /// The highest sequence number known to exist.
    last_seq: u64,
    /// Whether this instance hears every topic's events (then an unknown topic simply had no
    /// events since `forgotten`), or only the topics it listens to.
    hears_all: bool,
    /// Floor for topics without state: the highest sequence number whose history was dropped.
    forgotten: u64,
    topics: HashMap<Topic, TopicState>,
    /// Finds the oldest event in history across topics.
    oldest: Oldest,
    /// Bytes of history across topics.
    history_bytes: usize,
    /// Queues that had a backlog at a push, checked for stalls by the periodic tick.
    backlogged: Vec<Arc<Queue>>,
    /// Keep-alive wake-ups of the subscriptions' consumers.
    wheel: Wheel,
    closed: bool,
    next_subscriber: u64,
    ticks: u64,
}

#[derive(Debug)]
struct TopicState {
    /// Every event of this topic with a higher sequence number is in `history` (or will be
    /// delivered); `UNKNOWN` when the instance is not listening to the topic.
    floor: u64,
    history: TopicHistory,
    subscribers: Vec<(u64, Arc<Queue>)>,
}

impl TopicState {
    fn new(floor: u64) -> Self {
        Self {
            floor,
            history: TopicHistory::default(),
            subscribers: Vec::new(),
        }
    }

    fn history(&mut self) -> &mut TopicHistory {
        &mut self.history
    }

    /// Drops the oldest event; returns its size.
    fn evict_front(&mut self) -> usize {
        match self.history.pop_front() {
            Some((seq, len)) => {
                self.floor = self.floor.max(seq);
                len
            }
            None => 0,
        }
    }
}

impl Hub {
    pub(crate) fn new(epoch: u32, hears_all: bool, limits: Limits) -> Self {
        let hub = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    epoch,
                    last_seq: 0,
                    hears_all,
                    forgotten: 0,
                    topics: HashMap::new(),
                    oldest: Oldest::default(),
                    history_bytes: 0,
                    backlogged: Vec::new(),
                    wheel: Wheel::default(),
                    closed: false,
                    next_subscriber: 0,
                    ticks: 0,
                }),
                held: Held::new(limits.held_bytes),
                limits,
                janitor: Default::default(),
            }),
        };
        hub.start_janitor();
        hub
    }

    /// Starts the periodic tick, if it is not running and a runtime is at hand.
    fn start_janitor(&self) {
        if self.shared.janitor.is_running() {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        self.shared.janitor.start(move |now| {
            let shared = weak.upgrade()?;
            Hub { shared }.tick(now);
            Some(())
        });
    }

    /// Assigns the next sequence number to the frame `finish` builds from it and delivers it,
    /// atomically: the in-process backend's publish.
    pub(crate) fn publish_next(
        &self,
        topic: &Topic,
        finish: impl FnOnce(EventId) -> Bytes,
    ) -> EventId {
        let mut state = lock(&self.shared.state);
        let id = EventId::new(state.epoch, state.last_seq + 1);
        let frame = finish(id);
        self.deliver_locked(&mut state, topic, id.sequence(), frame, Duration::ZERO);
        id
    }

    fn deliver_locked(
        &self,
        state: &mut State,
        topic: &Topic,
        seq: u64,
        frame: Bytes,
        age: Duration,
    ) {
        self.start_janitor();
        let limits = &self.shared.limits;
        let now = Instant::now();
        state.last_seq = state.last_seq.max(seq);
        let floor_if_new = if state.hears_all {
            state.forgotten
        } else {
            // We hold this event, and claim nothing before it.
            seq - 1
        };
        let entry = state
            .topics
            .entry(topic.clone())
            .or_insert_with(|| TopicState::new(floor_if_new));
        if entry.floor == UNKNOWN {
            entry.floor = seq - 1;
        }
        if entry.history.last_seq().is_some_and(|last| last >= seq) {
            return;
        }
        let frame = self.shared.held.account(frame);
        let push = Push {
            published: now.checked_sub(age).unwrap_or(now),
            now,
            shed: self.shared.held.is_over(),
        };
        let id = EventId::new(state.epoch, seq);
        let item = Item::Event(EncodedEvent::new(id, topic.clone(), frame.clone()));
        let backlogged = &mut state.backlogged;
        entry
            .subscribers
            .retain(|(_, queue)| match queue.push(item.clone(), push) {
                None => false,
                Some(newly_backlogged) => {
                    if newly_backlogged {
                        backlogged.push(queue.clone());
                    }
                    true
                }
            });
        state.history_bytes += frame.len();
        entry.history.push(Stored {
            seq,
            at: now,
            frame,
        });
        state.oldest.track(topic, &mut entry.history);
        while entry.history.front_expired(&limits.history, now) {
            state.history_bytes -= entry.evict_front();
            crate::metrics::history_evicted(1);
        }
        if entry.history.is_empty() && entry.subscribers.is_empty() {
            forget_topic(state, topic);
        }
        while state.history_bytes > limits.history.total_bytes && evict_oldest(state) {}
    }

    /// Wakes the consumer of `queue` about every `every`, for its keep-alive.
    pub(crate) fn keep_alive(&self, queue: &Arc<Queue>, every: Duration) {
        lock(&self.shared.state).wheel.insert(queue, every);
    }

    /// The periodic work: wakes streams for their keep-alive, ages history out, ends
    /// subscribers that stalled, compacts.
    pub(crate) fn tick(&self, now: Instant) {
        let due = lock(&self.shared.state).wheel.turn();
        for queue in due {
            queue.nudge();
        }
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        let age = self.shared.limits.history.age;
        while let Some((_, at)) = state.oldest.find(&mut state.topics, TopicState::history) {
            if now.saturating_duration_since(at) <= age || !evict_oldest(state) {
                break;
            }
        }
        state.backlogged.retain(|queue| queue.check_stall(now));
        state.ticks += 1;
        if state.ticks.is_multiple_of(60) {
            // Topics that lost everything some other way than the paths that forget them.
            let mut forgotten = state.forgotten;
            state.topics.retain(|_, t| {
                let keep = !t.subscribers.is_empty() || !t.history.is_empty();
                if !keep && t.floor != UNKNOWN {
                    forgotten = forgotten.max(t.floor);
                }
                keep
            });
            state.forgotten = forgotten;
        }
        let State { oldest, topics, .. } = state;
        oldest.compact(topics.len(), |topic, seq| {
            topics
                .get(topic)
                .is_some_and(|t| Oldest::is_entry(&t.history, seq))
        });
    }

    /// Registers a subscriber of `topics` (sorted, without duplicates), replaying what it missed
    /// after `resume` as far as the history reaches.
    pub(crate) fn subscribe(
        &self,
        topics: Vec<Topic>,
        cursor: Option<Result<EventId, InvalidEventId>>,
    ) -> Result<Joined, BusError> {
        match self.subscribe_inner(topics, cursor, false)? {
            Resume::Done(joined) => Ok(joined),
            Resume::Pending(_) => unreachable!("only deferred resumes are left pending"),
        }
    }

    fn subscribe_inner(
        &self,
        topics: Vec<Topic>,
        cursor: Option<Result<EventId, InvalidEventId>>,
        defer: bool,
    ) -> Result<Resume, BusError> {
        self.start_janitor();
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Err(BusError::new(BusErrorKind::Closed));
        }
        let epoch = state.epoch;
        let last_seq = state.last_seq;
        let (status, replay) = plan_resume(&state, &topics, cursor.as_ref());

        if defer
            && matches!(
                status,
                ResumeStatus::Reset(ResetReason::HistoryExpired | ResetReason::UnknownId)
            )
        {
            let known = known_positions(&state, &topics);
            let (id, queue) = self.register_locked(&mut state, &topics);
            drop(state);
            return Ok(Resume::Pending(Registration {
                hub: self.clone(),
                id,
                topics,
                queue: Some(queue),
                epoch,
                watermark: last_seq,
                known,
            }));
        }

        // A client that saw nothing yet resumes from here: everything after it will be
        // delivered to this subscription.
        let start_id = match (status, cursor) {
            (ResumeStatus::Resumed { .. }, Some(Ok(id))) => id,
            _ => EventId::new(epoch, last_seq),
        };
        let (id, queue) = self.register_locked(&mut state, &topics);
        drop(state);
        // Merged outside the lock: each topic's part is in order already.
        let replay = merge(replay, epoch);
        Ok(Resume::Done(Joined {
            hub: self.clone(),
            id,
            topics,
            queue,
            replay,
            status,
            start_id,
        }))
    }

    /// Adds a subscriber's queue to `topics`.
    fn register_locked(&self, state: &mut State, topics: &[Topic]) -> (u64, Arc<Queue>) {
        let unknown_floor = if state.hears_all {
            state.forgotten
        } else {
            UNKNOWN
        };
        let queue = Arc::new(Queue::new(self.shared.limits.queue));
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        for topic in topics {
            state
                .topics
                .entry(topic.clone())
                .or_insert_with(|| TopicState::new(unknown_floor))
                .subscribers
                .push((id, queue.clone()));
        }
        (id, queue)
    }

    /// Removes a subscriber; called when its [`Subscription`] is dropped.
    pub(crate) fn unsubscribe(&self, id: u64, topics: &[Topic]) {
        let mut state = lock(&self.shared.state);
        for topic in topics {
            if let Some(t) = state.topics.get_mut(topic) {
                if let Some(i) = t.subscribers.iter().position(|(s, _)| *s == id) {
                    t.subscribers.swap_remove(i);
                }
                if t.subscribers.is_empty() && t.subscribers.capacity() > 4 {
                    t.subscribers = Vec::new();
                }
                if t.subscribers.is_empty() && t.history.is_empty() {
                    forget_topic(&mut state, topic);
                }
            }
        }
    }

    /// Stops new subscriptions and ends every open one.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.shared.state);
        state.closed = true;
        for t in state.topics.values() {
            for (_, q) in &t.subscribers {
                q.end(End::Closed);
            }
        }
    }

    /// Counts of open subscriptions (per topic, summed), topics with state and history.
    pub(crate) fn stats(&self) -> HubStats {
        let state = lock(&self.shared.state);
        HubStats {
            topics: state.topics.len(),
            subscriptions: state.topics.values().map(|t| t.subscribers.len()).sum(),
            history_events: state.topics.values().map(|t| t.history.len()).sum(),
            history_bytes: state.history_bytes,
            held_bytes: self.shared.held.bytes(),
        }
    }
}

/// Evicts the oldest event across topics; returns whether there was one.
fn evict_oldest(state: &mut State) -> bool {
    let Some((topic, _)) = state.oldest.find(&mut state.topics, TopicState::history) else {
        return false;
    };
    let Some(t) = state.topics.get_mut(&topic) else {
        return false;
    };
    state.history_bytes -= t.evict_front();
    state.oldest.advance(&topic, &mut t.history);
    crate::metrics::history_evicted(1);
    if t.history.is_empty() && t.subscribers.is_empty() {
        forget_topic(state, &topic);
    }
    true
}

/// Drops the state of a topic with no history and no subscribers, keeping what its floor says.
fn forget_topic(state: &mut State, topic: &Topic) {
    if let Some(t) = state.topics.remove(topic) {
        if t.floor != UNKNOWN {
            state.forgotten = state.forgotten.max(t.floor);
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HubStats {
    pub(crate) topics: usize,
    pub(crate) subscriptions: usize,
    pub(crate) history_events: usize,
    pub(crate) history_bytes: usize,
    pub(crate) held_bytes: usize,
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll, Waker},
    };

    use futures_core::Stream;

    use super::*;
    use crate::bus::{Message, Subscription};

    fn limits() -> Limits {
        Limits {
            history: HistoryLimits {
                events: 10,
                age: Duration::from_secs(60),
                bytes: 1 << 20,
                total_bytes: 64,
            },
            queue: QueueLimits {
                items: 10,
                bytes: 1 << 20,
                stall: Duration::from_secs(30),
            },
            held_bytes: 1 << 30,
        }
    }

    fn drain(sub: &mut Subscription) -> Vec<Message> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(m)) = Pin::new(&mut *sub).poll_next(&mut cx) {
            out.push(m);
        }
        out
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    fn publish(hub: &Hub, t: &str, len: usize) -> EventId {
        hub.publish_next(&topic(t), |_| Bytes::from(vec![b'x'; len]))
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_gap_is_told_once_to_a_subscription_of_several_topics() {
        use crate::bus::GapReason;

        let hub = Hub::new(1, true, limits());
        let topics = vec![topic("a"), topic("b")];
        let mut sub = Subscription::from(hub.subscribe(topics, None).unwrap());
        hub.gap(None, 0, GapReason::BrokerDisconnected);
        assert_eq!(
            drain(&mut sub),
            [Message::Gap(GapReason::BrokerDisconnected)]
        );
        hub.new_epoch(2, 0);
        assert_eq!(drain(&mut sub), [Message::Gap(GapReason::HistoryLost)]);
    }

    #[test]
    fn history_across_topics_is_bounded_oldest_first() {
        let hub = Hub::new(1, true, limits());
        let first = publish(&hub, "a", 30);
        let second = publish(&hub, "b", 30);
        publish(&hub, "c", 30);
        // 90 bytes > 64: the oldest (of topic a) went.
        let stats = hub.stats();
        assert_eq!((stats.history_events, stats.history_bytes), (2, 60));
        let resumed = Subscription::from(hub.subscribe(vec![topic("a")], Some(Ok(first))).unwrap());
        assert_eq!(resumed.status(), ResumeStatus::Resumed { replayed: 0 });
        let before_first = EventId::new(1, 0);
        let expired = Subscription::from(
            hub.subscribe(vec![topic("a")], Some(Ok(before_first)))
                .unwrap(),
        );
        assert_eq!(
            expired.status(),
            ResumeStatus::Reset(ResetReason::HistoryExpired)
        );
        let kept = Subscription::from(
            hub.subscribe(vec![topic("b"), topic("c")], Some(Ok(first)))
                .unwrap(),
        );
        assert_eq!(kept.status(), ResumeStatus::Resumed { replayed: 2 });
        assert_eq!(kept.last_event_id().event_id(), Some(first));
        let _ = second;
    }

    #[tokio::test(start_paused = true)]
    async fn history_ages_out_without_a_publish() {
        let hub = Hub::new(1, true, limits());
        publish(&hub, "a", 10);
        assert_eq!(hub.stats().history_events, 1);
        tokio::time::sleep(Duration::from_secs(62)).await;
        // The periodic tick ran meanwhile.
        assert_eq!(hub.stats(), HubStats::default());
    }
}
