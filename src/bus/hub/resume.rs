//! Resuming on a hub: what a resume point is owed from history, merged outside the lock, and
//! the registrations whose replay a backend reads elsewhere.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;

use super::{Hub, Joined, State, UNKNOWN};
use crate::{
    bus::{
        queue::{Item, Queue},
        EncodedEvent, ResetReason, ResumeStatus, Topic,
    },
    error::InvalidEventId,
    last_event_id::EventId,
};

/// Per topic, the stored events after the resume point (each part in sequence order).
pub(super) type Replay = Vec<(Topic, Vec<(u64, Bytes)>)>;

/// How a subscription of `topics` from `cursor` starts, and what it replays.
pub(super) fn plan_resume(
    state: &State,
    topics: &[Topic],
    cursor: Option<&Result<EventId, InvalidEventId>>,
) -> (ResumeStatus, Replay) {
    let unknown_floor = if state.hears_all {
        state.forgotten
    } else {
        UNKNOWN
    };
    let floor_of = |topic: &Topic| state.topics.get(topic).map_or(unknown_floor, |t| t.floor);
    let after = match cursor {
        None => return (ResumeStatus::Fresh, Vec::new()),
        Some(Err(_)) => return (ResumeStatus::Reset(ResetReason::InvalidId), Vec::new()),
        Some(Ok(id)) if id.epoch() != state.epoch => {
            return (ResumeStatus::Reset(ResetReason::UnknownEpoch), Vec::new())
        }
        Some(Ok(id)) if id.sequence() > state.last_seq => {
            return (ResumeStatus::Reset(ResetReason::UnknownId), Vec::new())
        }
        Some(Ok(id)) => id.sequence(),
    };
    if topics.iter().any(|t| floor_of(t) > after) {
        return (ResumeStatus::Reset(ResetReason::HistoryExpired), Vec::new());
    }
    let replay: Replay = topics
        .iter()
        .filter_map(|topic| Some((topic, state.topics.get(topic)?)))
        .map(|(topic, t)| {
            let events = t.history.after(after).map(|s| (s.seq, s.frame.clone()));
            (topic.clone(), events.collect())
        })
        .collect();
    let replayed = replay.iter().map(|(_, events)| events.len()).sum();
    (ResumeStatus::Resumed { replayed }, replay)
}

/// Per topic, the last event delivered here, or the point where listening began (capped by the
/// watermark): no event of the topic between it and the watermark exists, so a replay read
/// elsewhere need not look there.
pub(super) fn known_positions(state: &State, topics: &[Topic]) -> Vec<u64> {
    topics
        .iter()
        .map(|topic| match state.topics.get(topic) {
            Some(t) if t.floor != UNKNOWN => {
                let last = t.history.last_seq().unwrap_or(0);
                t.floor.max(last).min(state.last_seq)
            }
            _ => state.last_seq,
        })
        .collect()
}

/// The replay's parts merged into one queue in sequence order.
pub(super) fn merge(parts: Replay, epoch: u32) -> VecDeque<Item> {
    let mut all: Vec<Item> = Vec::with_capacity(parts.iter().map(|(_, e)| e.len()).sum());
    let several = parts.len() > 1;
    for (topic, events) in parts {
        all.extend(events.into_iter().map(|(seq, frame)| {
            let id = EventId::new(epoch, seq);
            Item::Event(EncodedEvent::new(id, topic.clone(), frame))
        }));
    }
    if several {
        all.sort_unstable_by_key(|item| match item {
            Item::Event(event) => event.id().sequence(),
            Item::Gap(_) => 0,
        });
    }
    all.into()
}

/// What [`Hub::resume_or_register`] did.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Resume {
    /// The local history answered (or the resume point is of another epoch): the subscription
    /// is complete.
    Done(Joined),
    /// The subscriber is registered and receives every event delivered from now on; the replay
    /// is up to the caller.
    Pending(Registration),
}

/// A registered subscriber whose replay is still to be found; see [`Hub::resume_or_register`].
/// Dropping it unregisters the subscriber.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Registration {
    pub(super) hub: Hub,
    pub(super) id: u64,
    pub(super) topics: Vec<Topic>,
    pub(super) queue: Option<Arc<Queue>>,
    pub(super) epoch: u32,
    pub(super) watermark: u64,
    pub(super) known: Vec<u64>,
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
    ) -> Joined {
        let queue = self.queue.take().expect("finished once");
        let topics = std::mem::take(&mut self.topics);
        Joined {
            hub: self.hub.clone(),
            id: self.id,
            topics,
            queue,
            replay,
            status,
            start_id,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.queue.is_some() {
            self.hub.unsubscribe(self.id, &self.topics);
        }
    }
}
