//! The [`EventBus`]: publish events to topics, subscribe to topics, resume after a disconnect.

mod backend;
mod budget;
mod builder;
mod encoded;
mod history;
pub(crate) mod hub;
mod janitor;
mod memory;
mod outcome;
pub mod presence;
pub(crate) mod queue;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub(crate) mod stats;
mod status;
mod subscription;
mod topic;
mod wheel;

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tracing::Instrument;

pub(crate) use self::backend::Backend;
pub use self::{
    builder::Builder,
    outcome::{Health, Published},
    presence::{Presence, PRESENCE_EVENT, PRESENCE_SUFFIX},
    stats::BusStats,
    status::{GapReason, ResetReason, ResumeStatus},
    subscription::{EncodedEvent, Message, Subscription},
    topic::{Topic, MAX_TOPIC_LEN},
};
use crate::{
    error::{BusError, BusErrorKind},
    event::Event,
    last_event_id::{Cursor, ResumeFrom},
};

/// A handle to the event bus: publish events to topics and subscribe to them.
///
/// Cloning is cheap (a reference count), and every clone talks to the same bus, so put one in
/// your application state or let [`SseLayer`](crate::SseLayer) put it into every request's
/// extensions. Code that publishes never knows which backend runs underneath: the in-process
/// one ([`EventBus::memory`]) or one that fans out across instances through Redis.
///
/// # Example
///
/// ```
/// use futures_util::StreamExt;
/// use tower_sse::{Event, EventBus, Message};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_sse::BusError> {
/// let bus = EventBus::memory();
/// let mut sub = bus.subscribe(["orders"], None).await?;
///
/// let published = bus.publish("orders", Event::new("order 1 shipped")).await?;
///
/// match sub.next().await {
///     Some(Message::Event(event)) => assert_eq!(event.id(), published.id()),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// Dropped first: its tasks withdraw the counts while the backend's connections are up.
    presence: presence::Tracker,
    backend: Box<dyn Backend>,
    closed: AtomicBool,
    max_event_bytes: usize,
    max_topics: usize,
    replay: budget::ReplayBudget,
    metrics: crate::metrics::BusMetrics,
}

impl EventBus {
    /// An in-process bus with the default settings (see [`Builder`]).
    pub fn memory() -> Self {
        Self::builder().memory()
    }

    /// A builder to configure limits and history, then choose the backend.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn from_backend(backend: Box<dyn Backend>, builder: &Builder) -> Self {
        let presence = presence::Tracker::new(backend.presence(), builder.presence_events);
        Self {
            inner: Arc::new(Inner {
                backend,
                closed: AtomicBool::new(false),
                max_event_bytes: builder.max_event_bytes,
                max_topics: builder.max_topics,
                replay: budget::ReplayBudget::new(
                    builder.replay_events,
                    builder.replay_bytes,
                    builder.replay_wait,
                ),
                metrics: crate::metrics::BusMetrics::new(),
                presence,
            }),
        }
    }

    /// Publishes `event` to `topic` and returns the id assigned to it.
    ///
    /// The bus assigns the id, replacing any id set on the event. The event is encoded once;
    /// every subscriber shares the encoded bytes.
    ///
    /// # Errors
    ///
    /// When `topic` is invalid, the event's data is larger than the configured maximum, or the
    /// backend cannot take the event (see [`BusError`]'s predicates).
    pub async fn publish(
        &self,
        topic: impl AsRef<str>,
        event: Event,
    ) -> Result<Published, BusError> {
        let name = topic.as_ref();
        let topic = Topic::new(name)?;
        let len = event.data_len();
        if len > self.inner.max_event_bytes {
            return Err(BusError::new(BusErrorKind::TooLarge {
                len,
                max: self.inner.max_event_bytes,
            }));
        }
        let span = tracing::debug_span!(
            "tower_sse.publish",
            topic = name,
            id = tracing::field::Empty
        );
        let published = self
            .inner
            .backend
            .publish(topic, event)
            .instrument(span.clone())
            .await?;
        self.inner.metrics.published(published.is_local_only());
        span.record("id", tracing::field::display(published.id()));
        if published.is_local_only() {
            span.in_scope(|| tracing::debug!("delivered on this instance only"));
        }
        Ok(published)
    }

    /// Subscribes to `topics`, resuming after `resume_from` (a `Last-Event-ID` value) when given.
    ///
    /// When this returns, the subscription is live: every event published afterwards is
    /// delivered to it. When resuming, the events of these topics published after
    /// `resume_from` come first, as far as the history reaches; whether that was possible is
    /// [`Subscription::status`]. An unparseable, unknown or too old `resume_from` is not an
    /// error: the subscription starts fresh with a [`ResumeStatus::Reset`] saying why.
    ///
    /// # Errors
    ///
    /// When a topic is invalid, no topic or more than the configured maximum is given, the bus
    /// is shut down, the backend is unavailable, or the replay does not fit in the replay
    /// budget within the replay wait ([`BusError::is_overloaded`]).
    pub async fn subscribe<I>(
        &self,
        topics: I,
        resume_from: Option<&str>,
    ) -> Result<Subscription, BusError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let topics = self.topic_list(topics)?;
        let resume = resume_from.map(str::parse::<Cursor>);
        self.subscribe_parsed(topics, resume).await
    }

    /// [`subscribe`](Self::subscribe) with `topics` from [`topic_list`](Self::topic_list) and
    /// the resume point parsed.
    pub(crate) async fn subscribe_parsed(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> Result<Subscription, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::new(BusErrorKind::Closed));
        }
        let mut subscription = self.inner.backend.subscribe(topics, resume).await?;
        let (events, bytes) = subscription.replay_size();
        if events > 0 {
            let permit = self.inner.replay.take(events, bytes).await?;
            subscription.hold_replay_budget(permit);
        }
        let counted = self
            .inner
            .presence
            .enter(subscription.topics(), &self.inner);
        Ok(subscription.with_guard(Box::new(counted)))
    }

    /// How many subscriptions `topic` has on every instance of the bus (see [`presence`]).
    ///
    /// # Errors
    ///
    /// When `topic` is invalid. A count that could not be read from Redis is answered with this
    /// instance's count, not [complete](Presence::is_complete).
    pub async fn presence(&self, topic: impl AsRef<str>) -> Result<Presence, BusError> {
        let topic = Topic::new(topic.as_ref())?;
        Ok(self.inner.presence.read(topic).await)
    }

    /// Validates, sorts and de-duplicates a topic list against the configured maximum.
    pub(crate) fn topic_list<I>(&self, topics: I) -> Result<Vec<Topic>, BusError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let max = self.inner.max_topics;
        let too_many = || BusError::new(BusErrorKind::TooManyTopics { max });
        let mut list = Vec::new();
        for topic in topics {
            // Duplicates count once, but a list far beyond the limit is refused unread.
            if list.len() >= max.saturating_mul(4) {
                return Err(too_many());
            }
            list.push(Topic::new(topic.as_ref())?);
        }
        list.sort_unstable();
        list.dedup();
        if list.is_empty() {
            return Err(BusError::new(BusErrorKind::NoTopics));
        }
        if list.len() > max {
            return Err(too_many());
        }
        Ok(list)
    }

    /// Whether the backend is connected (always true for the in-process bus).
    pub fn health(&self) -> Health {
        if self.inner.closed.load(Ordering::Acquire) {
            return Health::unhealthy("shutting down");
        }
        self.inner.backend.health()
    }

    /// Shuts down: new subscriptions are refused and every open subscription ends with
    /// [`Message::Closed`], so clients reconnect (behind a load balancer, to another instance).
    /// Publishing keeps working.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.backend.shutdown();
        self.inner.presence.close();
    }

    /// Completes once [`shutdown`](Self::shutdown) has removed this instance's presence counts
    /// from where other instances read them (Redis), within the request timeout; at once after
    /// a shutdown of the in-process bus. Await it before the process exits.
    pub async fn closed(&self) {
        self.inner.presence.closed().await;
    }

    /// The largest event data [`publish`](Self::publish) accepts, in bytes.
    pub fn max_event_bytes(&self) -> usize {
        self.inner.max_event_bytes
    }

    /// A snapshot of the bus's local state, for monitoring and tests.
    pub fn stats(&self) -> BusStats {
        let hub = self.inner.backend.stats();
        BusStats {
            topics: hub.topics,
            subscriptions: hub.subscriptions,
            history_events: hub.history_events,
            history_bytes: hub.history_bytes,
            held_bytes: hub.held_bytes,
        }
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("backend", &self.inner.backend)
            .field("max_event_bytes", &self.inner.max_event_bytes)
            .field("max_topics", &self.inner.max_topics)
            .finish()
    }
}
