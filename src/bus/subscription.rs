use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use futures_core::Stream;

use super::{
    hub::Hub,
    queue::{End, Item, Queue},
    GapReason, ResumeStatus, Topic,
};
use crate::last_event_id::EventId;

/// How many queued items one poll moves out of the shared queue (one lock per batch).
const DRAIN_BATCH: usize = 64;

/// A live subscription to one or more topics: a [`Stream`] of [`Message`]s.
///
/// Created by [`EventBus::subscribe`](crate::EventBus::subscribe). It first yields the events
/// replayed from history (when resuming), then live events, in the order of their ids across all
/// its topics. The stream ends after [`Message::Lagged`] (the subscriber fell too far behind) or
/// [`Message::Closed`] (the bus shut down); the client should then resume from
/// [`last_event_id`](Subscription::last_event_id). Dropping it unsubscribes.
///
/// To serve it to a client, wrap it in an [`EventStream`](crate::EventStream).
pub struct Subscription {
    hub: Hub,
    id: u64,
    topics: Vec<Topic>,
    queue: Arc<Queue>,
    pending: VecDeque<Item>,
    status: ResumeStatus,
    last_id: EventId,
    done: bool,
    /// When the oldest event taken from the queue and not yet reported reached the bus.
    oldest: Option<Instant>,
    _guard: Option<Box<dyn Send + Sync>>,
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
    /// The subscriber fell more than its queue's capacity behind and was dropped; the stream
    /// ends. Resume from [`Subscription::last_event_id`].
    Lagged,
    /// The bus is shutting down; the stream ends. Resume elsewhere from
    /// [`Subscription::last_event_id`].
    Closed,
}

/// An event as delivered to subscribers: its id and its complete encoded frame.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    id: EventId,
    frame: Bytes,
}

impl EncodedEvent {
    /// The event's id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The `text/event-stream` frame, ending with the blank line that dispatches it.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Takes the frame.
    pub fn into_frame(self) -> Bytes {
        self.frame
    }
}

impl fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedEvent")
            .field("id", &self.id)
            .field("len", &self.frame.len())
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(
        hub: Hub,
        id: u64,
        topics: Vec<Topic>,
        queue: Arc<Queue>,
        replay: VecDeque<Item>,
        status: ResumeStatus,
        start_id: EventId,
    ) -> Self {
        Self {
            hub,
            id,
            topics,
            queue,
            pending: replay,
            status,
            last_id: start_id,
            done: false,
            oldest: None,
            _guard: None,
        }
    }

    /// Attaches a value that lives as long as the subscription (a backend's interest in its
    /// topics).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> Self {
        self._guard = Some(guard);
        self
    }

    /// How the subscription started: fresh, resumed, or reset with the reason.
    pub fn status(&self) -> ResumeStatus {
        self.status
    }

    /// The topics subscribed to, sorted.
    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }

    /// When the oldest event yielded since the last call was published, as far as this instance
    /// knows (replayed events do not count). For measuring delivery latency once per write.
    pub(crate) fn take_oldest(&mut self) -> Option<Instant> {
        self.oldest.take()
    }

    /// The cursor to resume from: the id of the last event yielded, or before any, the position
    /// the subscription started at.
    pub fn last_event_id(&self) -> EventId {
        self.last_id
    }

    fn message(&mut self, item: Item) -> Message {
        match item {
            Item::Event(id, frame) => {
                self.last_id = id;
                Message::Event(EncodedEvent { id, frame })
            }
            Item::Gap(reason) => Message::Gap(reason),
        }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let this = &mut *self;
        if let Some(item) = this.pending.pop_front() {
            return Poll::Ready(Some(this.message(item)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this
            .queue
            .poll_drain(cx, &mut this.pending, &mut this.oldest, DRAIN_BATCH)
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(_)) => {
                let item = this.pending.pop_front().expect("drained at least one");
                Poll::Ready(Some(this.message(item)))
            }
            Poll::Ready(Err(end)) => {
                this.done = true;
                Poll::Ready(Some(match end {
                    End::Lagged => Message::Lagged,
                    End::Closed => Message::Closed,
                }))
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id, &self.topics);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topics)
            .field("status", &self.status)
            .field("last_event_id", &self.last_id)
            .finish()
    }
}
