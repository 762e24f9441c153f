//! What the Redis backends need of a hub besides delivering: events numbered elsewhere, a
//! history that starts over, resumes finished from what Redis holds, and topics it does or
//! does not hear.

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Hub, Item, Push, Resume, State, TopicState, UNKNOWN};
use crate::sync::lock;
use crate::{
    bus::{GapReason, Topic},
    error::BusError,
    last_event_id::EventId,
};

impl Hub {
    /// Whether the hub was closed (the bus is shutting down).
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// Delivers an event that was numbered elsewhere and published `age` ago (where delivery
    /// latency starts). Sequence numbers must arrive in increasing order; a frame whose number
    /// is not above the topic's last one is dropped as a duplicate.
    pub(crate) fn deliver(&self, topic: &Topic, seq: u64, frame: Bytes, age: Duration) {
        let mut state = lock(&self.shared.state);
        self.deliver_locked(&mut state, topic, seq, frame, age);
    }

    /// Like [`deliver`](Self::deliver) for an event of history `id.epoch()`: when that is not
    /// the current history (the broker lost its state and numbering started over), a new epoch
    /// starts first, under the same lock.
    pub(crate) fn deliver_in_epoch(&self, topic: &Topic, id: EventId, frame: Bytes, age: Duration) {
        let mut state = lock(&self.shared.state);
        if state.epoch != id.epoch() {
            let last_seq = id.sequence().saturating_sub(1);
            new_epoch_locked(&mut state, id.epoch(), last_seq, Instant::now());
        }
        self.deliver_locked(&mut state, topic, id.sequence(), frame, age);
    }

    /// Like [`subscribe`](Self::subscribe) from `cursor`, for a backend that can read history
    /// elsewhere: when the local history cannot answer (the answer would be a
    /// [`HistoryExpired`](ResetReason::HistoryExpired) or [`UnknownId`](ResetReason::UnknownId)
    /// reset), the subscriber is registered without replay and returned as a [`Registration`],
    /// for the caller to finish with the replay it found.
    pub(crate) fn resume_or_register(
        &self,
        topics: Vec<Topic>,
        cursor: EventId,
    ) -> Result<Resume, BusError> {
        self.subscribe_inner(topics, Some(Ok(cursor)), true)
    }

    /// Records that every event numbered up to `seq` that this instance will deliver has been
    /// delivered: a subscriber registered from now on is owed only later events.
    pub(crate) fn advance(&self, seq: u64) {
        let mut state = lock(&self.shared.state);
        state.last_seq = state.last_seq.max(seq);
    }

    /// Records that from now on this instance hears every event of `topic` numbered above
    /// `since` (it subscribed to the topic upstream). Does nothing if it was already listening.
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
    pub(crate) fn not_listening(&self, topic: &Topic) {
        let mut state = lock(&self.shared.state);
        if let Some(t) = state.topics.get_mut(topic) {
            t.floor = UNKNOWN;
            let freed = t.history.clear();
            let empty = t.subscribers.is_empty();
            state.history_bytes -= freed;
            if empty {
                state.topics.remove(topic);
            }
        }
    }

    /// Events numbered up to `at` may have been lost (for `topics`, or all topics with `None`):
    /// resumes from before `at` become resets, and current subscribers are told in-band.
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
            tell(t, &mut told, reason, now);
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
    pub(crate) fn new_epoch(&self, epoch: u32, last_seq: u64) {
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        if state.epoch != epoch {
            new_epoch_locked(&mut state, epoch, last_seq, now);
        }
    }

    /// The epoch of the current history.
    pub(crate) fn epoch(&self) -> u32 {
        lock(&self.shared.state).epoch
    }
}

/// Starts history `epoch` at `last_seq`: all history is dropped and every subscriber is told.
fn new_epoch_locked(state: &mut State, epoch: u32, last_seq: u64, now: Instant) {
    state.epoch = epoch;
    state.last_seq = last_seq;
    state.forgotten = last_seq;
    state.history_bytes = 0;
    let mut told = HashSet::new();
    for t in state.topics.values_mut() {
        t.history.clear();
        if t.floor != UNKNOWN {
            t.floor = last_seq;
        }
        tell(t, &mut told, GapReason::HistoryLost, now);
    }
}

/// Tells each subscriber of `t` not yet in `told` about a gap.
fn tell(t: &TopicState, told: &mut HashSet<u64>, reason: GapReason, now: Instant) {
    let push = Push {
        published: now,
        now,
        shed: false,
    };
    for (id, q) in &t.subscribers {
        if told.insert(*id) {
            q.push(Item::Gap(reason), push);
        }
    }
}
