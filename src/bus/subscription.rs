use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use tokio::time::Instant;

pub use super::encoded::EncodedEvent;
use super::{
    budget::ReplayPermit,
    hub::{Hub, Joined},
    queue::{End, Item, Queue},
    GapReason, ResumeStatus, Topic,
};
use crate::last_event_id::{write_per_topic, Cursor, EventId};

/// How many queued items one poll moves out of the shared queue (one lock per batch).
const DRAIN_BATCH: usize = 64;

/// A live subscription to one or more topics: a [`Stream`] of [`Message`]s.
///
/// Created by [`EventBus::subscribe`](crate::EventBus::subscribe). It first yields the events
/// replayed from history (when resuming), then live events, in the order of their ids across all
/// its topics (on a Redis Cluster bus, where each topic is numbered on its own, in order within
/// each topic). The stream ends after [`Message::Lagged`] (the subscriber fell too far behind) or
/// [`Message::Closed`] (the bus shut down); the client should then resume from
/// [`last_event_id`](Subscription::last_event_id). Dropping it unsubscribes.
///
/// To serve it to a client, wrap it in an [`EventStream`](crate::EventStream).
pub struct Subscription {
    inner: Inner,
    _guard: Option<Box<dyn Send + Sync>>,
}

enum Inner {
    /// The subscription of one hub: one sequence orders all its topics.
    One(Part),
    /// Subscriptions of one topic each, numbered independently (a Redis Cluster bus).
    PerTopic(PerTopic),
}

/// A subscriber of one hub.
struct Part {
    hub: Hub,
    id: u64,
    topics: Vec<Topic>,
    queue: Arc<Queue>,
    pending: VecDeque<Item>,
    status: ResumeStatus,
    last_id: EventId,
    done: bool,
    /// When the oldest event taken from the queue and not yet reported was published.
    oldest: Option<Instant>,
    /// How many of the first `pending` items are the replay, their bytes, and the budget they
    /// hold.
    replay_left: usize,
    replay_bytes: usize,
    replay_permit: Option<ReplayPermit>,
}

/// One single-topic [`Part`] per topic, with a cursor that holds a position for each.
struct PerTopic {
    parts: Vec<Part>,
    topics: Vec<Topic>,
    ids: Vec<EventId>,
    status: ResumeStatus,
    /// The part polled first next time, so that a busy topic does not starve the others.
    next: usize,
    done: bool,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// An event, encoded once for all subscribers.
    Event(EncodedEvent),
    /// Events may have been lost at this point (for example during a broker outage); the
    /// stream goes on.
    Gap(GapReason),
    /// The subscriber fell more than its queue's bounds behind and was dropped; the stream
    /// ends. Resume from [`Subscription::last_event_id`].
    Lagged,
    /// The subscriber took nothing for the stall timeout while events waited for it (its
    /// client stopped reading) and was dropped; the stream ends. Resume from
    /// [`Subscription::last_event_id`].
    Stalled,
    /// The bus is shutting down; the stream ends. Resume elsewhere from
    /// [`Subscription::last_event_id`].
    Closed,
}

impl From<Joined> for Subscription {
    fn from(joined: Joined) -> Self {
        let Joined {
            hub,
            id,
            topics,
            queue,
            replay,
            status,
            start_id,
        } = joined;
        Self {
            inner: Inner::One(Part {
                hub,
                id,
                topics,
                queue,
                replay_left: replay.len(),
                replay_bytes: replay.iter().map(Item::len).sum(),
                pending: replay,
                status,
                last_id: start_id,
                done: false,
                oldest: None,
                replay_permit: None,
            }),
            _guard: None,
        }
    }
}

impl Subscription {
    fn parts_mut(&mut self) -> &mut [Part] {
        match &mut self.inner {
            Inner::One(part) => std::slice::from_mut(part),
            Inner::PerTopic(joined) => &mut joined.parts,
        }
    }

    /// The events and bytes of the replay not yet taken.
    pub(crate) fn replay_size(&mut self) -> (usize, usize) {
        self.parts_mut()
            .iter()
            .fold((0, 0), |(events, bytes), part| {
                (events + part.replay_left, bytes + part.replay_bytes)
            })
    }

    /// Attaches the replay budget `permit` holds, given back as the replay is taken.
    pub(crate) fn hold_replay_budget(&mut self, mut permit: ReplayPermit) {
        for part in self.parts_mut() {
            part.replay_permit = permit.split(part.replay_left, part.replay_bytes);
        }
    }

    /// Wakes the consumer about every `every` even when no event comes, for its keep-alive.
    pub(crate) fn keep_alive(&mut self, every: Duration) {
        if let Some(part) = self.parts_mut().first() {
            part.hub.keep_alive(&part.queue, every);
        }
    }

    /// For a consumer holding back on purpose (the write delay): whether events worth `bytes`
    /// (or half a queue) are waiting; if not, `cx` is woken once they are. See
    /// [`Queue::wake_at`].
    pub(crate) fn wake_at(&mut self, cx: &mut Context<'_>, bytes: usize) -> bool {
        let mut any = false;
        for part in self.parts_mut() {
            any |= !part.pending.is_empty() || part.queue.wake_at(cx, bytes);
        }
        any
    }

    /// Sets how long the consumer may take nothing while events wait before the subscription
    /// ends as [`Message::Stalled`].
    pub(crate) fn set_stall_timeout(&mut self, timeout: Duration) {
        for part in self.parts_mut() {
            part.queue.set_stall_timeout(timeout);
        }
    }

    /// Joins subscriptions of one topic each (in the order of their topics, sorted), whose
    /// topics are numbered independently, into one whose cursor holds a position per topic.
    /// Each event's `id:` line is rewritten to that cursor.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn per_topic(subscriptions: Vec<Subscription>) -> Self {
        let mut parts = Vec::with_capacity(subscriptions.len());
        let mut guards = Vec::new();
        for mut subscription in subscriptions {
            guards.extend(subscription._guard.take());
            match std::mem::replace(&mut subscription.inner, Inner::PerTopic(PerTopic::empty())) {
                Inner::One(part) => parts.push(part),
                Inner::PerTopic(_) => unreachable!("joined once, from single-topic subscriptions"),
            }
        }
        let topics = parts
            .iter()
            .flat_map(|p| p.topics.iter().cloned())
            .collect();
        let ids = parts.iter().map(|p| p.last_id).collect();
        let status = joint_status(parts.iter().map(|p| p.status));
        let joined = Self {
            inner: Inner::PerTopic(PerTopic {
                parts,
                topics,
                ids,
                status,
                next: 0,
                done: false,
            }),
            _guard: None,
        };
        if guards.is_empty() {
            joined
        } else {
            joined.with_guard(Box::new(guards))
        }
    }

    /// Attaches a value that lives as long as the subscription (a backend's interest in its
    /// topics, the bus's count of it), besides those attached before.
    pub(crate) fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> Self {
        self._guard = Some(match self._guard.take() {
            Some(held) => Box::new((held, guard)),
            None => guard,
        });
        self
    }

    /// How the subscription started: fresh, resumed, or reset with the reason. For a
    /// subscription with a position per topic (see [`Cursor`]): reset when any topic was, with
    /// the first reason; resumed when any topic was, with the replayed events of all.
    pub fn status(&self) -> ResumeStatus {
        match &self.inner {
            Inner::One(part) => part.status,
            Inner::PerTopic(joined) => joined.status,
        }
    }

    /// The topics subscribed to, sorted.
    pub fn topics(&self) -> &[Topic] {
        match &self.inner {
            Inner::One(part) => &part.topics,
            Inner::PerTopic(joined) => &joined.topics,
        }
    }

    /// When the oldest event yielded since the last call was published, as far as this instance
    /// knows (replayed events do not count). For measuring delivery latency once per write.
    pub(crate) fn take_oldest(&mut self) -> Option<Instant> {
        match &mut self.inner {
            Inner::One(part) => part.oldest.take(),
            Inner::PerTopic(joined) => joined
                .parts
                .iter_mut()
                .filter_map(|p| p.oldest.take())
                .min(),
        }
    }

    /// The cursor to resume from: the id of the last event yielded, or before any, the position
    /// the subscription started at. On a Redis Cluster bus, a subscription of several topics
    /// holds a position per topic (see [`Cursor`]).
    pub fn last_event_id(&self) -> Cursor {
        match &self.inner {
            Inner::One(part) => part.last_id.into(),
            Inner::PerTopic(joined) => Cursor::per_topic(&joined.ids),
        }
    }
}

impl Part {
    /// The next pending item; a replayed one gives its budget back.
    fn pop_pending(&mut self) -> Option<Item> {
        let item = self.pending.pop_front()?;
        if self.replay_left > 0 {
            self.replay_left -= 1;
            self.replay_bytes -= item.len();
            if let Some(permit) = &mut self.replay_permit {
                permit.keep(self.replay_left, self.replay_bytes);
            }
            if self.replay_left == 0 {
                self.replay_permit = None;
            }
        }
        Some(item)
    }

    fn message(&mut self, item: Item) -> Message {
        match item {
            Item::Event(event) => {
                self.last_id = event.id();
                Message::Event(event)
            }
            Item::Gap(reason) => Message::Gap(reason),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if let Some(item) = self.pop_pending() {
            return Poll::Ready(Some(self.message(item)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self
            .queue
            .poll_drain(cx, &mut self.pending, &mut self.oldest, DRAIN_BATCH)
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(_)) => {
                let item = self.pending.pop_front().expect("drained at least one");
                Poll::Ready(Some(self.message(item)))
            }
            Poll::Ready(Err(end)) => {
                self.done = true;
                Poll::Ready(Some(match end {
                    End::Lagged => Message::Lagged,
                    End::Stalled => Message::Stalled,
                    End::Closed => Message::Closed,
                }))
            }
        }
    }
}

impl PerTopic {
    fn empty() -> Self {
        Self {
            parts: Vec::new(),
            topics: Vec::new(),
            ids: Vec::new(),
            status: ResumeStatus::Fresh,
            next: 0,
            done: true,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if self.done {
            return Poll::Ready(None);
        }
        let n = self.parts.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            match self.parts[i].poll_next(cx) {
                Poll::Pending | Poll::Ready(None) => continue,
                Poll::Ready(Some(Message::Event(event))) => {
                    self.next = (i + 1) % n;
                    self.ids[i] = event.id();
                    let frame = with_cursor(event.frame(), &self.ids);
                    return Poll::Ready(Some(Message::Event(event.with_frame(frame))));
                }
                Poll::Ready(Some(end @ (Message::Lagged | Message::Stalled | Message::Closed))) => {
                    self.done = true;
                    return Poll::Ready(Some(end));
                }
                Poll::Ready(Some(other)) => {
                    self.next = (i + 1) % n;
                    return Poll::Ready(Some(other));
                }
            }
        }
        Poll::Pending
    }
}

/// The status of a subscription made of one per topic.
fn joint_status(statuses: impl Iterator<Item = ResumeStatus>) -> ResumeStatus {
    let mut joint = ResumeStatus::Fresh;
    for status in statuses {
        joint = match (joint, status) {
            (reset @ ResumeStatus::Reset(_), _) => reset,
            (_, reset @ ResumeStatus::Reset(_)) => reset,
            (ResumeStatus::Resumed { replayed: a }, ResumeStatus::Resumed { replayed: b }) => {
                ResumeStatus::Resumed { replayed: a + b }
            }
            (resumed @ ResumeStatus::Resumed { .. }, _)
            | (_, resumed @ ResumeStatus::Resumed { .. }) => resumed,
            (fresh, _) => fresh,
        };
    }
    joint
}

/// `frame` with its `id:` line (the last line before the blank one) replaced by `cursor`.
fn with_cursor(frame: &[u8], cursor: &[EventId]) -> Bytes {
    let body = frame.strip_suffix(b"\n\n").unwrap_or(frame);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let body = if body[start..].starts_with(b"id:") {
        &frame[..start]
    } else {
        frame.strip_suffix(b"\n").unwrap_or(frame)
    };
    // One buffer per frame: an id is at most 29 bytes, and a comma separates two.
    let mut out = BytesMut::with_capacity(body.len() + 6 + cursor.len() * 30);
    out.put_slice(body);
    out.put_slice(b"id: ");
    write_per_topic(cursor, &mut out).expect("writing to a buffer that grows");
    out.put_slice(b"\n\n");
    out.freeze()
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match &mut self.inner {
            Inner::One(part) => part.poll_next(cx),
            Inner::PerTopic(joined) => joined.poll_next(cx),
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id, &self.topics);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topics())
            .field("status", &self.status())
            .field("last_event_id", &self.last_event_id())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ResetReason;

    #[test]
    fn the_cursor_replaces_the_id_line() {
        let cursor = [EventId::new(1, 5), EventId::new(2, 9)];
        let frame = b"event: x\ndata: a\ndata: b\nid: 00000002-9\n\n";
        assert_eq!(
            &with_cursor(frame, &cursor)[..],
            b"event: x\ndata: a\ndata: b\nid: 00000001-5,00000002-9\n\n"
        );
        // A frame without an id line gets one.
        assert_eq!(
            &with_cursor(b"data: a\n\n", &cursor)[..],
            b"data: a\nid: 00000001-5,00000002-9\n\n"
        );
        // Only the last line counts: data that looks like an id stays.
        assert_eq!(
            &with_cursor(b"data: id: x\nid: 00000001-5\n\n", &cursor[..1])[..],
            b"data: id: x\nid: 00000001-5\n\n"
        );
    }

    #[test]
    fn statuses_join() {
        use ResumeStatus::{Fresh, Reset, Resumed};
        let expired = Reset(ResetReason::HistoryExpired);
        let join = |s: &[ResumeStatus]| joint_status(s.iter().copied());
        assert_eq!(join(&[Fresh, Fresh]), Fresh);
        assert_eq!(
            join(&[Resumed { replayed: 2 }, Fresh, Resumed { replayed: 3 }]),
            Resumed { replayed: 5 }
        );
        assert_eq!(join(&[Resumed { replayed: 2 }, expired]), expired);
        assert_eq!(join(&[expired, Reset(ResetReason::InvalidId)]), expired);
    }
}
