//! The [`EventBus`]: publish events to topics, subscribe to topics, resume after a disconnect.

mod backend;
mod budget;
mod encoded;
mod history;
pub(crate) mod hub;
mod janitor;
mod memory;
mod queue;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod subscription;
mod topic;
mod wheel;

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tracing::Instrument;

pub(crate) use self::backend::Backend;
pub use self::{
    subscription::{EncodedEvent, Message, Subscription},
    topic::{Topic, MAX_TOPIC_LEN},
};
use crate::{
    error::{BusError, BusErrorKind},
    event::Event,
    last_event_id::{Cursor, EventId, ResumeFrom},
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
        Ok(subscription)
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

/// A snapshot of an instance's bus state, from [`EventBus::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Topics with subscribers or history on this instance.
    pub topics: usize,
    /// Topic subscriptions on this instance (a stream of three topics counts three times).
    pub subscriptions: usize,
    /// Events held in history for resume.
    pub history_events: usize,
    /// Bytes of encoded events held in history.
    pub history_bytes: usize,
    /// Bytes of encoded events held anywhere (history, queues, replays, bodies not yet
    /// written), each event counted once however many subscribers share it.
    pub held_bytes: usize,
}

/// The result of a successful [`EventBus::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    id: EventId,
    local_only: bool,
}

impl Published {
    pub(crate) fn new(id: EventId, local_only: bool) -> Self {
        Self { id, local_only }
    }

    /// The id assigned to the event; subscribers see the same id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// True when the event reached only this instance's subscribers, because the connection to
    /// the broker was down. Other instances never see it.
    pub fn is_local_only(&self) -> bool {
        self.local_only
    }
}

/// Whether the bus's backend is connected, from [`EventBus::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    problem: Option<String>,
}

impl Health {
    pub(crate) fn healthy() -> Self {
        Self { problem: None }
    }

    pub(crate) fn unhealthy(problem: impl Into<String>) -> Self {
        Self {
            problem: Some(problem.into()),
        }
    }

    /// True when the backend is connected and subscriptions are served.
    pub fn is_healthy(&self) -> bool {
        self.problem.is_none()
    }

    /// What is wrong, when unhealthy.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

/// How a subscription started, from [`Subscription::status`]. The SSE stream tells the client
/// in its first event (see the crate docs, "Resume status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeStatus {
    /// No resume point was given.
    Fresh,
    /// Every event after the resume point was replayed (`replayed` of them); nothing was missed.
    Resumed {
        /// How many events were replayed.
        replayed: usize,
    },
    /// The resume point could not be honoured; the subscription starts fresh and events may
    /// have been missed.
    Reset(ResetReason),
}

impl ResumeStatus {
    /// The word used on the wire: `fresh`, `resumed` or `reset`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Resumed { .. } => "resumed",
            Self::Reset(_) => "reset",
        }
    }
}

/// Why a resume point could not be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetReason {
    /// The id is not one this bus issues.
    InvalidId,
    /// The id belongs to a history that no longer exists (the server or broker restarted and
    /// lost it).
    UnknownEpoch,
    /// The id is newer than any event this instance knows of.
    UnknownId,
    /// The history this instance holds does not reach back to the id (it was trimmed, or this
    /// instance was not listening to a topic at that time).
    HistoryExpired,
}

impl ResetReason {
    /// The word used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidId => "invalid-id",
            Self::UnknownEpoch => "unknown-epoch",
            Self::UnknownId => "unknown-id",
            Self::HistoryExpired => "history-expired",
        }
    }
}

/// Why events may have been lost in the middle of a subscription ([`Message::Gap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapReason {
    /// The connection to the broker dropped; events published meanwhile were not received.
    BrokerDisconnected,
    /// The broker lost its state (for example it restarted without persistence); ids start a
    /// new history.
    HistoryLost,
}

impl GapReason {
    /// The word used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BrokerDisconnected => "broker-disconnected",
            Self::HistoryLost => "history-lost",
        }
    }
}

/// Configures an [`EventBus`]: limits and history first, then the backend.
///
/// Every buffer the bus keeps is bounded, in events and in bytes:
///
/// | what | bound | default |
/// | --- | --- | --- |
/// | history, per topic | [`history_events`](Self::history_events), [`history_bytes`](Self::history_bytes), [`history_age`](Self::history_age) | 1 000 events, 4 MiB, 5 min |
/// | history, all topics | [`history_total_bytes`](Self::history_total_bytes) (oldest evicted first) | 64 MiB |
/// | each subscriber's queue | [`queue_capacity`](Self::queue_capacity), [`queue_bytes`](Self::queue_bytes), [`stall_timeout`](Self::stall_timeout) | 1 024 events, 8 MiB, 30 s |
/// | everything held at once | [`max_held_bytes`](Self::max_held_bytes) | 256 MiB |
/// | replays under way | [`replay_budget`](Self::replay_budget), [`replay_wait`](Self::replay_wait) | 10 000 events and 64 MiB, 2 s |
///
/// A subscriber that breaks a bound of its queue is disconnected with its resume id
/// ([`Message::Lagged`], [`Message::Stalled`]); its client resumes. What `n` stalled clients
/// can pin is therefore at most `n` times the queue bounds, and never more than
/// `max_held_bytes` beyond the history: past it, every subscriber with a backlog is
/// disconnected at its next event. (A client's own socket and HTTP buffers come on top, at most
/// about one chunk each until the server's write timeout closes the connection.)
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_sse::EventBus;
///
/// let bus = EventBus::builder()
///     .history_events(10_000)
///     .history_age(Duration::from_secs(600))
///     .queue_bytes(4 << 20)
///     .memory();
/// # drop(bus);
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) limits: hub::Limits,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_topics: usize,
    replay_events: usize,
    replay_bytes: usize,
    replay_wait: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            limits: hub::Limits {
                history: history::HistoryLimits {
                    events: 1_000,
                    age: Duration::from_secs(300),
                    bytes: 4 << 20,
                    total_bytes: 64 << 20,
                },
                queue: queue::QueueLimits {
                    items: 1_024,
                    bytes: 8 << 20,
                    stall: Duration::from_secs(30),
                },
                held_bytes: 256 << 20,
            },
            max_event_bytes: 1 << 20,
            max_topics: 32,
            replay_events: 10_000,
            replay_bytes: 64 << 20,
            replay_wait: Duration::from_secs(2),
        }
    }
}

impl Builder {
    /// How many events per topic are kept for resume (default 1 000).
    pub fn history_events(mut self, n: usize) -> Self {
        self.limits.history.events = n;
        self
    }

    /// How long events are kept for resume (default 5 minutes). Expired events go within a
    /// second, whether or not anything is published.
    pub fn history_age(mut self, age: Duration) -> Self {
        self.limits.history.age = age;
        self
    }

    /// How many bytes of encoded events per topic are kept for resume (default 4 MiB).
    pub fn history_bytes(mut self, n: usize) -> Self {
        self.limits.history.bytes = n;
        self
    }

    /// How many bytes of encoded events are kept for resume across all topics (default 64 MiB);
    /// past it the oldest event of any topic goes first.
    pub fn history_total_bytes(mut self, n: usize) -> Self {
        self.limits.history.total_bytes = n;
        self
    }

    /// How many events may wait for one subscriber before it is disconnected as too slow
    /// (default 1 024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.limits.queue.items = n.max(1);
        self
    }

    /// How many bytes of events may wait for one subscriber before it is disconnected as too
    /// slow (default 8 MiB). A single event larger than this is still delivered to a
    /// subscriber with nothing waiting.
    pub fn queue_bytes(mut self, n: usize) -> Self {
        self.limits.queue.bytes = n;
        self
    }

    /// How long a subscriber may take nothing while events wait for it before it is
    /// disconnected as stalled (default 30 s): a client that stopped reading. Event streams can
    /// set their own ([`SseLayer::write_timeout`](crate::SseLayer::write_timeout)).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.limits.queue.stall = timeout;
        self
    }

    /// How many bytes of encoded events the bus may hold at once, counting an event shared by
    /// many subscribers once (default 256 MiB); past it, subscribers with a backlog are
    /// disconnected at their next event.
    pub fn max_held_bytes(mut self, n: usize) -> Self {
        self.limits.held_bytes = n;
        self
    }

    /// How many events and bytes the replays of resumes answered from this instance's memory
    /// may have under way at once (default 10 000 events and 64 MiB). A resume that does not
    /// fit within [`replay_wait`](Self::replay_wait) fails as overloaded (`503` with
    /// `Retry-After` from the layer).
    pub fn replay_budget(mut self, events: usize, bytes: usize) -> Self {
        self.replay_events = events;
        self.replay_bytes = bytes;
        self
    }

    /// How long a resume waits for replay budget (default 2 s).
    pub fn replay_wait(mut self, wait: Duration) -> Self {
        self.replay_wait = wait;
        self
    }

    /// The largest event data accepted by [`EventBus::publish`], in bytes (default 1 MiB).
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }

    /// The most topics one subscription may name (default 32).
    pub fn max_topics(mut self, n: usize) -> Self {
        self.max_topics = n.max(1);
        self
    }

    /// Builds an in-process bus: fan-out and bounded history within this process, no setup.
    pub fn memory(self) -> EventBus {
        let backend = memory::Memory::new(self.limits);
        EventBus::from_backend(Box::new(backend), &self)
    }
}

/// A random 32-bit number, from the standard library's randomly seeded hasher.
pub(crate) fn random_u32() -> u32 {
    random_u64() as u32
}

pub(crate) fn random_u64() -> u64 {
    use std::{
        collections::hash_map::RandomState,
        hash::{BuildHasher, Hasher},
        sync::atomic::{AtomicU64, Ordering},
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
