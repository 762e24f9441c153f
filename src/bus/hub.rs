//! The local fan-out every backend delivers through: per-topic subscriber lists and a bounded
//! per-topic history for resume.
//!
//! Events reach the hub already sequenced (the in-process backend numbers them itself; the
//! Redis backends take the number Redis assigned) and in sequence order. Delivery, history and
//! registration of new subscribers happen under one lock, so a subscriber that resumes gets the
//! replay and then the live events with nothing missing and nothing twice, and every
//! subscription sees events in sequence order across all its topics, which is what makes the
//! id of the last event seen a cursor for all of them.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{
    queue::{lock, End, Item, Queue},
    subscription::Subscription,
    GapReason, ResetReason, ResumeStatus, Topic,
};
use crate::{
    error::{BusError, BusErrorKind, InvalidEventId},
    last_event_id::EventId,
};

/// The floor of a topic whose events this instance does not hear: no resume point is complete.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// How much history the hub keeps per topic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) history_events: usize,
    pub(crate) history_age: Duration,
    pub(crate) history_bytes: usize,
    pub(crate) queue_capacity: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    limits: Limits,
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
    closed: bool,
    next_subscriber: u64,
    last_sweep: Instant,
}

#[derive(Debug)]
struct TopicState {
    /// Every event of this topic with a higher sequence number is in `history` (or will be
    /// delivered); `UNKNOWN` when the instance is not listening to the topic.
    floor: u64,
    history: VecDeque<Stored>,
    history_bytes: usize,
    subscribers: Vec<(u64, Arc<Queue>)>,
}

#[derive(Debug)]
struct Stored {
    seq: u64,
    at: Instant,
    frame: Bytes,
}

impl TopicState {
    fn new(floor: u64) -> Self {
        Self {
            floor,
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: Vec::new(),
        }
    }

    fn evict(&mut self, limits: &Limits, now: Instant) {
        while let Some(front) = self.history.front() {
            let too_many = self.history.len() > limits.history_events;
            let too_big = self.history_bytes > limits.history_bytes;
            let too_old = now.saturating_duration_since(front.at) > limits.history_age;
            if !(too_many || too_big || too_old) {
                break;
            }
            let front = self.history.pop_front().expect("checked above");
            self.history_bytes -= front.frame.len();
            self.floor = self.floor.max(front.seq);
        }
    }

    fn forget_history(&mut self) {
        self.history = VecDeque::new();
        self.history_bytes = 0;
    }
}

impl Hub {
    pub(crate) fn new(epoch: u32, hears_all: bool, limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    epoch,
                    last_seq: 0,
                    hears_all,
                    forgotten: 0,
                    topics: HashMap::new(),
                    closed: false,
                    next_subscriber: 0,
                    last_sweep: Instant::now(),
                }),
                limits,
            }),
        }
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

    /// Delivers an event that was numbered elsewhere and published `age` ago (where delivery
    /// latency starts). Sequence numbers must arrive in increasing order; a frame whose number
    /// is not above the topic's last one is dropped as a duplicate.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn deliver(&self, topic: &Topic, seq: u64, frame: Bytes, age: Duration) {
        let mut state = lock(&self.shared.state);
        self.deliver_locked(&mut state, topic, seq, frame, age);
    }

    /// Like [`deliver`](Self::deliver) for an event of history `id.epoch()`: when that is not
    /// the current history (the broker lost its state and numbering started over), a new epoch
    /// starts first, under the same lock.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn deliver_in_epoch(&self, topic: &Topic, id: EventId, frame: Bytes, age: Duration) {
        let mut state = lock(&self.shared.state);
        if state.epoch != id.epoch() {
            let last_seq = id.sequence().saturating_sub(1);
            new_epoch_locked(&mut state, id.epoch(), last_seq, Instant::now());
        }
        self.deliver_locked(&mut state, topic, id.sequence(), frame, age);
    }

    fn deliver_locked(
        &self,
        state: &mut State,
        topic: &Topic,
        seq: u64,
        frame: Bytes,
        age: Duration,
    ) {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let published = now.checked_sub(age).unwrap_or(now);
        state.last_seq = state.last_seq.max(seq);
        let state_epoch = state.epoch;
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
        if entry.history.back().is_some_and(|last| last.seq >= seq) {
            return;
        }
        let id = EventId::new(state_epoch, seq);
        for (_, queue) in &entry.subscribers {
            queue.push(Item::Event(id, frame.clone()), published);
        }
        entry.history_bytes += frame.len();
        entry.history.push_back(Stored {
            seq,
            at: now,
            frame,
        });
        entry.evict(limits, now);
        if now.saturating_duration_since(state.last_sweep) >= Duration::from_secs(1) {
            state.last_sweep = now;
            sweep(state, limits, now);
        }
    }

    /// Registers a subscriber of `topics` (sorted, without duplicates), replaying what it missed
    /// after `resume` as far as the history reaches.
    pub(crate) fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: Option<&str>,
    ) -> Result<Subscription, BusError> {
        let cursor = resume.map(|raw| raw.parse::<EventId>());
        match self.subscribe_inner(topics, cursor, false)? {
            Resume::Done(subscription) => Ok(subscription),
            Resume::Pending(_) => unreachable!("only deferred resumes are left pending"),
        }
    }

    /// Like [`subscribe`](Self::subscribe) from `cursor`, for a backend that can read history
    /// elsewhere: when the local history cannot answer (the answer would be a
    /// [`HistoryExpired`](ResetReason::HistoryExpired) or [`UnknownId`](ResetReason::UnknownId)
    /// reset), the subscriber is registered without replay and returned as a [`Registration`],
    /// for the caller to finish with the replay it found.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn resume_or_register(
        &self,
        topics: Vec<Topic>,
        cursor: EventId,
    ) -> Result<Resume, BusError> {
        self.subscribe_inner(topics, Some(Ok(cursor)), true)
    }

    fn subscribe_inner(
        &self,
        topics: Vec<Topic>,
        cursor: Option<Result<EventId, InvalidEventId>>,
        defer: bool,
    ) -> Result<Resume, BusError> {
        let limits = self.shared.limits;
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Err(BusError::new(BusErrorKind::Closed));
        }
        let now = Instant::now();
        let epoch = state.epoch;
        let last_seq = state.last_seq;
        let unknown_floor = if state.hears_all {
            state.forgotten
        } else {
            UNKNOWN
        };
        for topic in &topics {
            if let Some(t) = state.topics.get_mut(topic) {
                t.evict(&limits, now);
            }
        }
        let floor_of = |state: &State, topic: &Topic| {
            state.topics.get(topic).map_or(unknown_floor, |t| t.floor)
        };

        let mut replay = VecDeque::new();
        let status = match cursor {
            None => ResumeStatus::Fresh,
            Some(Err(_)) => ResumeStatus::Reset(ResetReason::InvalidId),
            Some(Ok(id)) if id.epoch() != epoch => ResumeStatus::Reset(ResetReason::UnknownEpoch),
            Some(Ok(id)) if id.sequence() > last_seq => ResumeStatus::Reset(ResetReason::UnknownId),
            Some(Ok(id)) => {
                let after = id.sequence();
                if topics.iter().any(|t| floor_of(&state, t) > after) {
                    ResumeStatus::Reset(ResetReason::HistoryExpired)
                } else {
                    for topic in &topics {
                        if let Some(t) = state.topics.get(topic) {
                            let start = t.history.partition_point(|s| s.seq <= after);
                            replay.extend(
                                t.history.range(start..).map(|s| {
                                    Item::Event(EventId::new(epoch, s.seq), s.frame.clone())
                                }),
                            );
                        }
                    }
                    if topics.len() > 1 {
                        replay
                            .make_contiguous()
                            .sort_unstable_by_key(|item| match item {
                                Item::Event(id, _) => id.sequence(),
                                Item::Gap(_) => 0,
                            });
                    }
                    ResumeStatus::Resumed {
                        replayed: replay.len(),
                    }
                }
            }
        };

        if defer
            && matches!(
                status,
                ResumeStatus::Reset(ResetReason::HistoryExpired | ResetReason::UnknownId)
            )
        {
            // Per topic, the last event delivered here, or the point where listening began
            // (capped by the watermark): no event of the topic between it and the watermark
            // exists, so the replay need not look there.
            let known = topics
                .iter()
                .map(|topic| match state.topics.get(topic) {
                    Some(t) if t.floor != UNKNOWN => {
                        let last = t.history.back().map_or(0, |s| s.seq);
                        t.floor.max(last).min(last_seq)
                    }
                    _ => last_seq,
                })
                .collect();
            let (id, queue) = register_locked(&mut state, &topics, &limits, unknown_floor);
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

        let (id, queue) = register_locked(&mut state, &topics, &limits, unknown_floor);
        drop(state);
        Ok(Resume::Done(Subscription::new(
            self.clone(),
            id,
            topics,
            queue,
            replay,
            status,
            start_id,
        )))
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
            }
        }
    }

    /// Records that every event numbered up to `seq` that this instance will deliver has been
    /// delivered: a subscriber registered from now on is owed only later events.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn advance(&self, seq: u64) {
        let mut state = lock(&self.shared.state);
        state.last_seq = state.last_seq.max(seq);
    }

    /// Records that from now on this instance hears every event of `topic` numbered above
    /// `since` (it subscribed to the topic upstream). Does nothing if it was already listening.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn listening(&self, topic: &Topic, since: u64) {
        let mut state = lock(&self.shared.state);
        state.last_seq = state.last_seq.max(since);
        let t = state
            .topics
            .entry(topic.clone())
            .or_insert_with(|| TopicState::new(since));
        if t.floor == UNKNOWN {
            t.floor = since;
        }
    }

    /// Records that this instance stopped hearing `topic`: its history can no longer be trusted
    /// to be complete.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn not_listening(&self, topic: &Topic) {
        let mut state = lock(&self.shared.state);
        if let Some(t) = state.topics.get_mut(topic) {
            t.floor = UNKNOWN;
            t.forget_history();
            if t.subscribers.is_empty() {
                state.topics.remove(topic);
            }
        }
    }

    /// Events numbered up to `at` may have been lost (for `topics`, or all topics with `None`):
    /// resumes from before `at` become resets, and current subscribers are told in-band.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn gap(&self, topics: Option<&[Topic]>, at: u64, reason: GapReason) {
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        state.last_seq = state.last_seq.max(at);
        // A subscription of several topics is told once.
        let mut told = HashSet::new();
        let mut mark = |t: &mut TopicState| {
            if t.floor != UNKNOWN {
                t.floor = t.floor.max(at);
            }
            for (id, q) in &t.subscribers {
                if told.insert(*id) {
                    q.push(Item::Gap(reason), now);
                }
            }
        };
        match topics {
            Some(topics) => {
                for topic in topics {
                    if let Some(t) = state.topics.get_mut(topic) {
                        mark(t);
                    }
                }
            }
            None => {
                state.forgotten = state.forgotten.max(at);
                state.topics.values_mut().for_each(mark);
            }
        }
    }

    /// The numbering started over under a new epoch (the broker lost its state): all history is
    /// dropped and every subscriber is told.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn new_epoch(&self, epoch: u32, last_seq: u64) {
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        if state.epoch != epoch {
            new_epoch_locked(&mut state, epoch, last_seq, now);
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

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// The epoch of the current history.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn epoch(&self) -> u32 {
        lock(&self.shared.state).epoch
    }

    /// Counts of open subscriptions (per topic, summed) and topics with state.
    pub(crate) fn stats(&self) -> HubStats {
        let state = lock(&self.shared.state);
        HubStats {
            topics: state.topics.len(),
            subscriptions: state.topics.values().map(|t| t.subscribers.len()).sum(),
            history_events: state.topics.values().map(|t| t.history.len()).sum(),
            history_bytes: state.topics.values().map(|t| t.history_bytes).sum(),
        }
    }
}

/// Adds a subscriber's queue to `topics`.
fn register_locked(
    state: &mut State,
    topics: &[Topic],
    limits: &Limits,
    unknown_floor: u64,
) -> (u64, Arc<Queue>) {
    let queue = Arc::new(Queue::new(limits.queue_capacity));
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

/// What [`Hub::resume_or_register`] did.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Resume {
    /// The local history answered (or the resume point is of another epoch): the subscription
    /// is complete.
    Done(Subscription),
    /// The subscriber is registered and receives every event delivered from now on; the replay
    /// is up to the caller.
    Pending(Registration),
}

/// A registered subscriber whose replay is still to be found; see [`Hub::resume_or_register`].
/// Dropping it unregisters the subscriber.
#[derive(Debug)]
pub(crate) struct Registration {
    hub: Hub,
    id: u64,
    topics: Vec<Topic>,
    queue: Option<Arc<Queue>>,
    epoch: u32,
    watermark: u64,
    known: Vec<u64>,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Registration {
    /// The epoch of the hub's history at registration.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The highest sequence number known at registration. Events are delivered in sequence
    /// order, so events numbered above it reach the subscriber's queue; the replay must hold
    /// the ones after the resume point up to it.
    pub(crate) fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Per topic (in the order of the topics), a sequence number at or below the watermark such
    /// that no event of the topic is numbered between it and the watermark: the replay of the
    /// topic ends there.
    pub(crate) fn known(&self) -> &[u64] {
        &self.known
    }

    /// The subscription: `replay` (in sequence order, none above the watermark) first, then the
    /// events queued since registration.
    pub(crate) fn finish(
        mut self,
        replay: VecDeque<Item>,
        status: ResumeStatus,
        start_id: EventId,
    ) -> Subscription {
        let queue = self.queue.take().expect("finished once");
        let topics = std::mem::take(&mut self.topics);
        Subscription::new(
            self.hub.clone(),
            self.id,
            topics,
            queue,
            replay,
            status,
            start_id,
        )
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.queue.is_some() {
            self.hub.unsubscribe(self.id, &self.topics);
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HubStats {
    pub(crate) topics: usize,
    pub(crate) subscriptions: usize,
    pub(crate) history_events: usize,
    pub(crate) history_bytes: usize,
}

/// Starts history `epoch` at `last_seq`: all history is dropped and every subscriber is told.
fn new_epoch_locked(state: &mut State, epoch: u32, last_seq: u64, now: Instant) {
    state.epoch = epoch;
    state.last_seq = last_seq;
    state.forgotten = last_seq;
    let mut told = HashSet::new();
    for t in state.topics.values_mut() {
        t.forget_history();
        if t.floor != UNKNOWN {
            t.floor = last_seq;
        }
        for (id, q) in &t.subscribers {
            if told.insert(*id) {
                q.push(Item::Gap(GapReason::HistoryLost), now);
            }
        }
    }
}

/// Ages out history everywhere and drops the state of topics nobody follows any more.
fn sweep(state: &mut State, limits: &Limits, now: Instant) {
    let mut forgotten = state.forgotten;
    state.topics.retain(|_, t| {
        t.evict(limits, now);
        let keep = !t.subscribers.is_empty() || !t.history.is_empty();
        if !keep && t.floor != UNKNOWN {
            forgotten = forgotten.max(t.floor);
        }
        keep
    });
    state.forgotten = forgotten;
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll, Waker},
    };

    use futures_core::Stream;

    use super::*;
    use crate::bus::Message;

    fn limits() -> Limits {
        Limits {
            history_events: 10,
            history_age: Duration::from_secs(60),
            history_bytes: 1 << 20,
            queue_capacity: 10,
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

    #[test]
    fn a_gap_is_told_once_to_a_subscription_of_several_topics() {
        let hub = Hub::new(1, true, limits());
        let topics = vec![Topic::new("a").unwrap(), Topic::new("b").unwrap()];
        let mut sub = hub.subscribe(topics, None).unwrap();
        hub.gap(None, 0, GapReason::BrokerDisconnected);
        assert_eq!(
            drain(&mut sub),
            [Message::Gap(GapReason::BrokerDisconnected)]
        );
        hub.new_epoch(2, 0);
        assert_eq!(drain(&mut sub), [Message::Gap(GapReason::HistoryLost)]);
    }
}
