//! Presence: how many subscriptions a topic has, on this instance and on all of them
//! ([`EventBus::presence`](super::EventBus::presence)).
//!
//! ## Behavior
//!
//! - **Counting.** Every subscription made with [`EventBus::subscribe`](super::EventBus::subscribe)
//!   (so every event stream) counts once for each of its topics, from when it is returned until
//!   it is dropped. On the in-process bus that count is the answer.
//! - **Across instances.** With a Redis backend each instance writes its own counts to Redis,
//!   under its random instance id, and a read adds up the counts of every live instance (one
//!   script, one command on the topic's keys; on a cluster they share the topic as hash tag, so
//!   one slot answers), with this instance's part taken from its live count. Each count Redis
//!   holds carries a deadline of the Redis server's clock, `RedisConfig::presence_ttl` after
//!   it was written (default 30 s): reads skip counts past it, so the subscribers of an instance that was killed
//!   disappear within that time, and the keys of a topic nobody writes any more expire.
//! - **Writes are batched.** Changed counts are written at most every 250 ms (four writes a
//!   second, however many subscriptions come and go), and every count again every third of
//!   the TTL (the heartbeat): one round trip whatever the number of topics, in pipelines of up
//!   to 1 000 calls per Redis node, all sent at once.
//!   Other instances therefore see a change within about 250 ms. A write that fails is tried
//!   again a second later.
//! - **Shutdown.** [`EventBus::shutdown`](super::EventBus::shutdown) removes this instance's
//!   counts at once; [`EventBus::closed`](super::EventBus::closed) waits until that is done.
//! - **Complete or not.** When the other instances' counts cannot be read (Redis is down or too
//!   slow), the answer is this instance's count alone, marked not
//!   [complete](Presence::is_complete); it is never an error.
//!
//! ## Events
//!
//! With [`Builder::presence_events`](super::Builder::presence_events), whenever a topic's count
//! on this instance changes, the bus publishes the topic's new total to its companion topic
//! `{topic}@presence` ([`PRESENCE_SUFFIX`]), as an event of type `sse-presence`
//! ([`PRESENCE_EVENT`]) with data `{"topic":"TOPIC","subscribers":N}`. Bursts are coalesced:
//! at most one event per topic and instance a second, carrying the total when it is sent.
//! Companion topics have no companions of their own, a topic whose companion's name would be
//! longer than the topic rule allows has none, and no event is sent when the total cannot be
//! read. The type is reserved (`sse-`), so no publisher can forge one. Follow the companion
//! like any topic:
//!
//! ```js
//! const source = new EventSource("/events?topic=room:1&topic=room:1@presence");
//! source.addEventListener("sse-presence", (e) => {
//!   const { topic, subscribers } = JSON.parse(e.data);
//! });
//! ```

mod counts;
mod events;
mod share;

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::watch;

pub(crate) use self::counts::Entered;
pub use self::events::{PRESENCE_EVENT, PRESENCE_SUFFIX};
use self::{
    counts::{LocalCounts, Watcher},
    share::Sharing,
};
use super::{backend::BoxFuture, Inner, Topic};

/// How many subscriptions a topic has, from [`EventBus::presence`](super::EventBus::presence).
///
/// # Example
///
/// ```
/// use tower_sse::EventBus;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_sse::BusError> {
/// let bus = EventBus::memory();
/// let _one = bus.subscribe(["room:1"], None).await?;
/// let _two = bus.subscribe(["room:1", "room:2"], None).await?;
/// let presence = bus.presence("room:1").await?;
/// assert_eq!(presence.subscribers(), 2);
/// assert!(presence.is_complete());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    topic: Topic,
    subscribers: u64,
    complete: bool,
}

impl Presence {
    pub(crate) fn new(topic: Topic, subscribers: u64, complete: bool) -> Self {
        Self {
            topic,
            subscribers,
            complete,
        }
    }

    /// The topic counted.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The subscriptions to the topic on every live instance (on this one alone when not
    /// [complete](Self::is_complete)). A stream of several topics counts once for each.
    pub fn subscribers(&self) -> u64 {
        self.subscribers
    }

    /// False when the other instances' counts could not be read, and
    /// [`subscribers`](Self::subscribers) is this instance's count alone.
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

/// Where a backend of many instances keeps their counts.
pub(crate) trait PresenceStore: Send + Sync + 'static {
    /// Writes this instance's `counts` (a zero removes the topic's), in as few round trips as
    /// the store can.
    fn write<'a>(&'a self, counts: &'a [(Topic, usize)]) -> BoxFuture<'a, Result<(), String>>;

    /// The subscriptions to `topic` on every other live instance.
    fn others<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<u64, String>>;

    /// How long a count lives without being written again.
    fn ttl(&self) -> Duration;
}

/// A bus's presence: its counts, the task sharing them, the events.
pub(crate) struct Tracker {
    counts: Arc<LocalCounts>,
    store: Option<Arc<dyn PresenceStore>>,
    sharing: Option<Sharing>,
    /// Turns true at shutdown; the tasks end when it does or when it is dropped.
    closing: watch::Sender<bool>,
    /// With presence events, what their task learns of; it starts with the first subscription.
    events: Option<Arc<Watcher>>,
    events_started: AtomicBool,
    /// Whether the last read of the other instances' counts failed.
    read_failing: AtomicBool,
}

impl Tracker {
    /// A tracker sharing its counts through `store`, if any. Must be called within a Tokio
    /// runtime when there is a store.
    pub(crate) fn new(store: Option<Arc<dyn PresenceStore>>, events: bool) -> Self {
        let counts = Arc::new(LocalCounts::default());
        let (closing, _) = watch::channel(false);
        let sharing = store
            .clone()
            .map(|store| Sharing::start(store, counts.clone(), closing.subscribe()));
        Self {
            events: events.then(|| counts.watch()),
            counts,
            store,
            sharing,
            closing,
            events_started: AtomicBool::new(false),
            read_failing: AtomicBool::new(false),
        }
    }

    /// Counts a subscription of `topics` until the guard is dropped; starts the events' task
    /// of `bus` if it is wanted and not running.
    pub(super) fn enter(&self, topics: &[Topic], bus: &Arc<Inner>) -> Entered {
        if let Some(watcher) = &self.events {
            if !self.events_started.swap(true, Ordering::AcqRel) {
                let closing = self.closing.subscribe();
                events::start(Arc::downgrade(bus), watcher.clone(), closing);
            }
        }
        self.counts.enter(topics)
    }

    /// The subscriptions to `topic` on every live instance.
    pub(crate) async fn read(&self, topic: Topic) -> Presence {
        let local = u64::try_from(self.counts.count(&topic)).unwrap_or(u64::MAX);
        let Some(store) = &self.store else {
            return Presence::new(topic, local, true);
        };
        match store.others(&topic).await {
            Ok(others) => {
                if self.read_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("presence counts are read again");
                }
                Presence::new(topic, others.saturating_add(local), true)
            }
            Err(reason) => {
                if !self.read_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%reason, "cannot read presence counts; answering with this instance's");
                }
                Presence::new(topic, local, false)
            }
        }
    }

    /// Stops sharing and announcing: this instance's counts are withdrawn.
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once [`close`](Self::close) withdrew the counts.
    pub(crate) async fn closed(&self) {
        match &self.sharing {
            Some(sharing) => sharing.closed().await,
            None => {
                let mut closing = self.closing.subscribe();
                let _ = closing.wait_for(|&closing| closing).await;
            }
        }
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("shared", &self.store.is_some())
            .field("events", &self.events.is_some())
            .finish()
    }
}
