//! Redis backends: fan events out to every instance of a service through one Redis server.
//!
//! Enable the `redis` cargo feature, then build the bus with [`Builder::redis_pubsub`] or
//! [`Builder::redis_streams`]. Code that publishes and subscribes does not change: it still
//! talks to an [`EventBus`].
//!
//! - Pub/Sub: events are announced, not stored. Each instance resumes clients from the history
//!   it heard itself; a broken connection is a gap.
//! - Streams: every event is also stored in Redis, per topic, for a configured count and age.
//!   Any instance resumes any client from Redis, and a broken connection costs connected clients
//!   nothing: the instance reads what it missed. Needs Redis 6.2 or later.
//!
//! Instances share events when they use the same server, database and prefix; all of them must
//! use the same backend (and, for Streams, the same retention settings).
//!
//! Both backends also run on a Redis Cluster, over sharded pub/sub, with
//! [`RedisConfig::cluster`]; what changes there is described on that constructor. The rest of
//! this page describes one server.
//!
//! # How events travel
//!
//! Everything a bus keeps in Redis lives under one prefix (default `tower-sse`), so several
//! applications can share a server:
//!
//! - `{prefix}:state` is a hash holding the namespace's `epoch` (8 hex digits) and `seq`, the
//!   global sequence counter. A publish runs one Lua script that increments `seq`, creates the
//!   epoch if it is missing, and publishes the event to the channel `{prefix}:t:{topic}`
//!   (Pub/Sub; Streams also stores it and uses `{prefix}:n:{topic}`), so numbering and
//!   publishing are one atomic step and every instance sees events in the order of their ids.
//! - The message on the channel is the complete `text/event-stream` frame, ending with its
//!   `id:` line and the blank line. Receivers use the bytes as they are: one buffer per event,
//!   shared by all local subscribers.
//! - When Redis loses the hash (it restarted without persistence, or the key was evicted or
//!   deleted), the next publish starts a new epoch. Ids of the old epoch are then recognised as
//!   unknown instead of being mistaken for positions in the new history.
//!
//! With Pub/Sub, every instance keeps its own bounded history (see [`Builder`]) for resuming
//! clients; Pub/Sub itself keeps nothing. For how the Streams backend stores events, see
//! [`Builder::redis_streams`].

mod cluster;
mod connection;
mod envelope;
mod pubsub;
mod replay;
mod streams;

use std::{fmt, future::Future, time::Duration};

use self::cluster::Kind;
use super::{Builder, EventBus};
use crate::error::BusError;

tokio::task_local! {
    /// The idempotency key of the publishes made within [`with_idempotency_key`].
    static IDEMPOTENCY_KEY: String;
}

/// Runs `future` (typically one [`EventBus::publish`]) with `key` as the idempotency key of the
/// publishes it makes on a [Streams](Builder::redis_streams) bus.
///
/// Redis remembers a key for [`RedisConfig::idempotency_ttl`] after the first publish that
/// used it; a publish with a remembered key, on any instance sharing the prefix, stores and
/// announces nothing and returns the id the first one got. So a publish that failed or timed
/// out can be retried with the same key without ever appearing twice, for example by the
/// handler of a webhook that its sender may deliver more than once.
///
/// Keys are compared as they are, so make them unique per event (an id from the request, say)
/// and keep them short: each is a Redis key while it is remembered. Without this function, the
/// bus uses a random key per publish (see [`Builder::redis_streams`]). The in-process and
/// Pub/Sub backends ignore the key.
///
/// # Example
///
/// ```
/// use tower_sse::{bus::redis::with_idempotency_key, BusError, Event, EventBus, Published};
///
/// async fn deliver_webhook(bus: &EventBus, delivery_id: &str) -> Result<Published, BusError> {
///     let event = Event::new("payment received");
///     with_idempotency_key(delivery_id, bus.publish("payments", event)).await
/// }
/// ```
pub async fn with_idempotency_key<F: Future>(key: impl Into<String>, future: F) -> F::Output {
    IDEMPOTENCY_KEY.scope(key.into(), future).await
}

/// How a Pub/Sub instance chooses the Redis channels it listens to. See [`RedisConfig::mode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeMode {
    /// Subscribe only to the topics this instance's clients follow (`SUBSCRIBE` per topic,
    /// reference-counted, released a little while after the last subscriber leaves; see
    /// [`RedisConfig::unsubscribe_delay`]).
    ///
    /// Wins when there are many topics and each instance serves a small share of them (per-user
    /// or per-document topics): an instance receives only the events it delivers. The first
    /// subscriber of a topic on an instance waits one round trip to Redis, and an instance can
    /// resume a client only from history it heard, that is since it started listening to the
    /// topic.
    #[default]
    Interest,
    /// Listen to every topic with one `PSUBSCRIBE {prefix}:t:*` made at connect time.
    ///
    /// Wins when topics are few or most instances serve most of them: subscribing costs no
    /// round trip, and every instance holds history for every topic since it connected, so a
    /// client can resume on any instance. Every instance receives (and keeps bounded history
    /// for) every event, whether or not a local client wants it.
    Pattern,
}

/// Where and how the Redis backends connect, and what the Streams backend keeps. Pass it to
/// [`Builder::redis_pubsub`] or [`Builder::redis_streams`].
///
/// The URL follows the redis crate's format,
/// `redis://[<username>][:<password>@]<host>[:<port>][/<db>]` (`rediss://` for TLS needs the
/// redis crate's TLS features). The connection always speaks RESP3, whatever the URL's
/// `protocol` parameter says. The `Debug` output never shows the password.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{RedisConfig, SubscribeMode};
///
/// let config = RedisConfig::new("redis://:secret@127.0.0.1:6379/")
///     .prefix("myapp-events")
///     .mode(SubscribeMode::Pattern)
///     .publish_timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) url: String,
    /// Seed nodes of a Redis Cluster; empty for one server.
    pub(crate) nodes: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) mode: SubscribeMode,
    pub(crate) publish_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) unsubscribe_delay: Duration,
    pub(crate) stream_max_len: usize,
    pub(crate) stream_max_age: Duration,
    pub(crate) stream_idle_ttl: Duration,
    pub(crate) replay_budget: usize,
    pub(crate) replay_wait: Duration,
    pub(crate) idempotency_ttl: Duration,
    pub(crate) notification_backlog: usize,
    pub(crate) replicas: usize,
    pub(crate) replica_timeout: Duration,
}

impl RedisConfig {
    /// A configuration for the server at `url`, with the defaults: prefix `tower-sse`,
    /// [`SubscribeMode::Interest`], 5 s publish and connect timeouts, reconnect backoff from
    /// 100 ms to 5 s, unsubscribe delay 10 s; for Streams, 1 000 events and 1 hour per topic,
    /// idle topics kept 24 hours, a replay budget of 10 000 events with a wait of 2 s,
    /// idempotency keys remembered 2 minutes, and a notification backlog of 8 192 events.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            nodes: Vec::new(),
            prefix: "tower-sse".to_owned(),
            mode: SubscribeMode::Interest,
            publish_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            unsubscribe_delay: Duration::from_secs(10),
            stream_max_len: 1_000,
            stream_max_age: Duration::from_secs(3_600),
            stream_idle_ttl: Duration::from_secs(86_400),
            replay_budget: 10_000,
            replay_wait: Duration::from_secs(2),
            idempotency_ttl: Duration::from_secs(120),
            notification_backlog: 8_192,
            replicas: 0,
            replica_timeout: Duration::from_millis(100),
        }
    }

    /// A configuration for a Redis Cluster (Redis 7 or later), reached through `nodes`: URLs of
    /// some of its primaries, from which the bus learns the rest. The defaults are those of
    /// [`new`](Self::new). Pass it to [`Builder::redis_pubsub`] or [`Builder::redis_streams`]
    /// as for one server.
    ///
    /// # How it differs from one server
    ///
    /// - **Sharded pub/sub.** Each topic's channel lives on the shard that owns the topic's
    ///   slot (`SPUBLISH`/`SSUBSCRIBE`), so adding shards adds throughput; classic pub/sub on a
    ///   cluster would copy every message to every node. Each topic's keys and channel share a
    ///   hash tag, `{prefix}:{TOPIC}:...`, so one script numbers, stores and announces an event
    ///   on one shard. The prefix must not contain `{` or `}`.
    /// - **Ids per topic.** Each topic is numbered on its own shard, so ids are `EPOCH-SEQ` of
    ///   their topic. A stream of several topics cannot resume from one of them: its cursor is
    ///   one id per topic, comma-separated in the order of the sorted topics (see
    ///   [`Cursor`](crate::Cursor)), and the stream writes it as the `id:` of every event, so
    ///   browsers resume it with `Last-Event-ID` as usual. Events of one topic arrive in order;
    ///   events of different topics in the order this instance heard them. Writing that cursor
    ///   costs such a stream a copy of each frame; streams of one topic share one buffer per
    ///   event, as on one server.
    /// - **No pattern mode.** Sharded pub/sub has no pattern form, so
    ///   [`SubscribeMode::Pattern`] is refused: an instance listens to the topics its clients
    ///   follow. An application that wants every event (an audit log, say) subscribes to the
    ///   topics it knows, or uses a topic of its own that publishers also write to.
    /// - **Connections.** One multiplexed connection per node the bus talks to, for publishing
    ///   and listening alike, however many topics are followed.
    /// - **Topology changes.** When a slot moves or a primary fails over, the shard tells its
    ///   subscribers, or their connection drops; the bus subscribes each affected topic again
    ///   on the slot's new owner and reads the topic's counter. With Streams it then reads the
    ///   events it missed from the topic's stream, so subscribers lose nothing; with Pub/Sub
    ///   they get a [`Message::Gap`](crate::Message::Gap). Because each topic is numbered on
    ///   its own, a Pub/Sub subscriber is also told of a gap as soon as a number is skipped.
    /// - **State expires.** A topic's counter (and, with Streams, its stream) expires
    ///   [`stream_idle_ttl`](Self::stream_idle_ttl) after its last event, so per-user topics
    ///   cost nothing once idle. A topic that is published again after that starts a new epoch:
    ///   its subscribers get a [`GapReason::HistoryLost`](crate::GapReason::HistoryLost) gap,
    ///   and older ids are reset.
    /// - While the cluster is unreachable, publishing fails with
    ///   [`BusError::is_unavailable`] for Pub/Sub too (there is no local-only delivery).
    ///
    /// Redis replicates to replicas asynchronously: a primary that fails right after
    /// acknowledging a publish can lose that event, as with any Redis deployment.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use tower_sse::{EventBus, RedisConfig};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_sse::BusError> {
    /// let config = RedisConfig::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]);
    /// let bus = EventBus::builder().redis_streams(config).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster<I>(nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut config = Self::new(nodes.first().cloned().unwrap_or_default());
        config.nodes = nodes;
        config
    }

    /// Whether this configuration is for a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The prefix of every channel and key the bus uses (default `tower-sse`). Instances share
    /// events exactly when they use the same Redis server, database and prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How a Pub/Sub instance picks the channels it listens to (default
    /// [`SubscribeMode::Interest`]; see [`SubscribeMode`] for when each wins). Instances with
    /// different modes can share a prefix. The Streams backend always listens per topic (any
    /// instance can resume from Redis, so hearing every topic buys nothing) and ignores this.
    pub fn mode(mut self, mode: SubscribeMode) -> Self {
        self.mode = mode;
        self
    }

    /// How long a publish waits for Redis to answer before it fails with an error for which
    /// [`BusError::is_timeout`] is true (default 5 s; on Streams, a publish is sent once more
    /// after the first wait, so it can take twice as long). Also bounds the bus's own requests
    /// (subscribing, reading history, health checks).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long one attempt to connect (TCP, TLS, authentication) may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The delays between reconnection attempts: the first after at most `min`, then doubling
    /// up to `max`, each randomised (so instances do not reconnect in lockstep after Redis
    /// restarts). Defaults: 100 ms and 5 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// In [`SubscribeMode::Interest`], how long the instance keeps listening to a topic after its
    /// last local subscriber left (default 10 s). While it listens it keeps the topic's history,
    /// so a client that reconnects to the same instance within that time can resume.
    pub fn unsubscribe_delay(mut self, delay: Duration) -> Self {
        self.unsubscribe_delay = delay;
        self
    }

    /// Streams: how many events each topic keeps (default 1 000). Trimming is approximate (whole
    /// nodes of Redis's stream encoding, 100 entries by default), so a topic keeps at least this
    /// many and up to about a hundred more.
    pub fn stream_max_len(mut self, n: usize) -> Self {
        self.stream_max_len = n.max(1);
        self
    }

    /// Streams: how long each topic keeps its events (default 1 hour). Events are trimmed by age
    /// when their topic gets a new event, approximately like [`stream_max_len`](Self::stream_max_len);
    /// a topic's newest event stays until the topic expires (see
    /// [`stream_idle_ttl`](Self::stream_idle_ttl)).
    pub fn stream_max_age(mut self, age: Duration) -> Self {
        self.stream_max_age = age;
        self
    }

    /// Streams: how long after its last event a topic's stream is kept (default 24 hours; never
    /// less than [`stream_max_age`](Self::stream_max_age)). Then the key expires, so idle topics
    /// cost nothing.
    ///
    /// Until then the stream holds at least the topic's newest event, which proves to any
    /// instance that a client's cursor misses nothing of the topic. Once it expired, a resume
    /// from a cursor older than this TTL is answered with a reset, since Redis can no longer
    /// tell whether the topic had events after it. Clients of quiet topics that reconnect after
    /// longer than this get a reset even if nothing was published.
    pub fn stream_idle_ttl(mut self, ttl: Duration) -> Self {
        self.stream_idle_ttl = ttl;
        self
    }

    /// Streams: how many stream entries this instance reads for resuming clients at once
    /// (default 10 000), which bounds the memory a burst of resumes takes. Resumes of the same
    /// topic share reads. A resume that finds the budget used up waits for it (see
    /// [`replay_wait`](Self::replay_wait)), then fails with an error for which
    /// [`BusError::is_overloaded`] is true (`503` with `Retry-After`); the client tries again.
    ///
    /// Reads ask for up to 256 entries at a time (down to 16 when the budget runs low) and hold
    /// them until the read is over; only the first request of a read waits for budget. So keep
    /// the budget well above [`stream_max_len`](Self::stream_max_len) plus 256: a resume needs
    /// its topics' missed events at once.
    pub fn replay_budget(mut self, events: usize) -> Self {
        self.replay_budget = events.max(1);
        self
    }

    /// Streams: how long a resume waits for replay budget before it fails as overloaded
    /// (default 2 s; zero fails at once). Resumes of a topic that arrive while a read of it waits
    /// join that read.
    pub fn replay_wait(mut self, wait: Duration) -> Self {
        self.replay_wait = wait;
        self
    }

    /// Streams: how long Redis remembers an idempotency key (default 2 minutes, rounded up to
    /// whole seconds; zero turns idempotency keys off). See [`with_idempotency_key`] and
    /// [`Builder::redis_streams`].
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// Streams: how many notifications of new events may wait to be delivered to this
    /// instance's subscribers (default 8 192, and never more than 64 MiB of them). Notifications
    /// arrive faster than they are delivered only while this instance reads missed events from
    /// Redis, or when it cannot keep up. Past the backlog it stops holding them and, once it
    /// has caught up, reads the events it did not hold from the streams: a burst costs reads,
    /// not memory, and nothing is lost.
    pub fn notification_backlog(mut self, events: usize) -> Self {
        self.notification_backlog = events.max(1);
        self
    }
}

impl RedisConfig {
    /// Streams: after each publish, wait until `replicas` replicas of the server (on a cluster,
    /// of the topic's shard) hold the event, for at most `timeout` (Redis `WAIT`; default: no
    /// waiting). A publish that enough replicas did not confirm in time fails with an error for
    /// which [`BusError::is_timeout`] is true: the event is stored and announced, but a
    /// failover could still lose it, so retry it with its idempotency key (see
    /// [`with_idempotency_key`]), which answers with the same id once a replica has it.
    ///
    /// Redis replicates asynchronously, so without this a primary that fails right after a
    /// publish can take the event with it, and the promoted replica numbers the next events
    /// from where its copy ended. (On a cluster, an instance that notices a topic's counter
    /// going back starts a new epoch for the topic, so ids are not reused and subscribers are
    /// told of the lost history.) Waiting costs a round trip per publish. Ask for no more replicas than every shard has: with fewer, every publish
    /// waits for the full timeout and fails.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sse::RedisConfig;
    ///
    /// let config = RedisConfig::cluster(["redis://10.0.0.1:6379"])
    ///     .wait_for_replicas(1, Duration::from_millis(50));
    /// ```
    pub fn wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.replicas = replicas;
        self.replica_timeout = timeout;
        self
    }
}

/// Awaits the reply to a `WAIT` for `wanted` replicas: fails unless enough confirmed.
async fn replicated(
    limit: Duration,
    wanted: usize,
    waiting: impl Future<Output = ::redis::RedisResult<i64>>,
) -> Result<(), BusError> {
    use crate::error::BusErrorKind;

    match tokio::time::timeout(limit, waiting).await {
        Ok(Ok(acked)) if usize::try_from(acked).is_ok_and(|n| n >= wanted) => Ok(()),
        Ok(Ok(acked)) => {
            tracing::debug!(
                acked,
                wanted,
                "a publish was not confirmed by enough replicas"
            );
            Err(BusError::new(BusErrorKind::Timeout))
        }
        Ok(Err(e)) => Err(BusError::with_source(
            BusErrorKind::Unavailable(format!("waiting for Redis replicas failed: {e}")),
            e,
        )),
        Err(_elapsed) => Err(BusError::new(BusErrorKind::Timeout)),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|url| redacted_url(url)).collect();
        f.debug_struct("RedisConfig")
            .field("url", &redacted_url(&self.url))
            .field("cluster", &nodes)
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_backoff", &(self.backoff_min..=self.backoff_max))
            .field("unsubscribe_delay", &self.unsubscribe_delay)
            .field("stream_max_len", &self.stream_max_len)
            .field("stream_max_age", &self.stream_max_age)
            .field("stream_idle_ttl", &self.stream_idle_ttl)
            .field("replay_budget", &self.replay_budget)
            .field("replay_wait", &self.replay_wait)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .field("notification_backlog", &self.notification_backlog)
            .field("replicas", &self.replicas)
            .field("replica_timeout", &self.replica_timeout)
            .finish()
    }
}

/// The URL without its password, and without its query (which, for Unix sockets, may carry
/// credentials too).
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    // The last `@` ends the credentials, even when an unescaped password contains `/` or `?`.
    let (user, rest) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => (format!("{user}:<redacted>@"), host),
            None => (format!("{userinfo}@"), host),
        },
        None => (String::new(), rest),
    };
    let (address, query) = match rest.find(['?', '#']) {
        Some(end) => (&rest[..end], "?<redacted>"),
        None => (rest, ""),
    };
    format!("{scheme}://{user}{address}{query}")
}

impl Builder {
    /// Builds a bus that fans events out to every instance through Redis Pub/Sub.
    ///
    /// Connects before returning: an unreachable server, a wrong password or an invalid URL is
    /// an error for which [`BusError::is_unavailable`] is true, with a one-line message that
    /// names the server (never the password). Must be called within a Tokio runtime; the bus
    /// runs a background task that keeps the connection up.
    ///
    /// # Connection loss
    ///
    /// When the connection drops, the bus reconnects with randomised exponential backoff (see
    /// [`RedisConfig::reconnect_backoff`]), listens again to every channel it listened to, and
    /// tells open subscriptions that events may have been missed meanwhile with
    /// [`Message::Gap`](crate::Message::Gap)`(`[`BrokerDisconnected`](crate::GapReason::BrokerDisconnected)`)`,
    /// or [`HistoryLost`](crate::GapReason::HistoryLost) when Redis came back without its state
    /// (a new epoch). Resuming from an id older than the outage is then a reset.
    /// [`EventBus::health`] is unhealthy, with the reason, while the connection is down.
    ///
    /// # Publishing while disconnected
    ///
    /// The rule: a publish never waits for a connection that is known to be down, and never
    /// waits longer than [`RedisConfig::publish_timeout`].
    ///
    /// - While the connection is down (the bus noticed the loss and is reconnecting), the event
    ///   is delivered to this instance's subscribers only, and
    ///   [`Published::is_local_only`](crate::Published::is_local_only) is true; a warning is
    ///   logged. Other instances never see it. Such events are numbered in a temporary epoch of
    ///   this instance (so their ids cannot collide with ids Redis assigns), which ends when the
    ///   connection is back: subscribers get a
    ///   [`HistoryLost`](crate::GapReason::HistoryLost) gap when it begins and when it ends.
    /// - While the connection is up but Redis does not answer in time, the publish fails with
    ///   [`BusError::is_timeout`]; the event may or may not have been published.
    /// - When the request fails otherwise (the connection broke while it was in flight), the
    ///   publish fails with [`BusError::is_unavailable`].
    ///
    /// Subscribing while disconnected works too: the subscription is registered locally at
    /// once, receives local-only events, and is connected to Redis when the bus reconnects
    /// (after the gap message).
    ///
    /// # Shutdown
    ///
    /// [`EventBus::shutdown`] stops listening to Redis (open subscriptions end), but publishing
    /// keeps working until the last [`EventBus`] clone is dropped, which closes the connection.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or the first connection fails or times out (see
    /// [`RedisConfig::connect_timeout`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use tower_sse::{Event, EventBus, Message, RedisConfig};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_sse::BusError> {
    /// let bus = EventBus::builder()
    ///     .history_events(10_000)
    ///     .redis_pubsub(RedisConfig::new("redis://127.0.0.1:6379/"))
    ///     .await?;
    ///
    /// let mut sub = bus.subscribe(["orders"], None).await?;
    /// // Published here or on any other instance connected to the same Redis and prefix:
    /// let published = bus.publish("orders", Event::new("order 1 shipped")).await?;
    /// match sub.next().await {
    ///     Some(Message::Event(event)) => assert_eq!(event.id(), published.id()),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn redis_pubsub(self, config: RedisConfig) -> Result<EventBus, BusError> {
        if config.is_cluster() {
            let backend = cluster::RedisCluster::connect(config, Kind::PubSub, self.limits).await?;
            return Ok(EventBus::from_backend(Box::new(backend), &self));
        }
        let backend = pubsub::RedisPubSub::connect(config, self.limits).await?;
        Ok(EventBus::from_backend(Box::new(backend), &self))
    }

    /// Builds a bus that stores every event in Redis Streams: a client that reconnects to any
    /// instance with `Last-Event-ID` receives exactly the events it missed, as long as they are
    /// within the retention ([`RedisConfig::stream_max_len`], [`RedisConfig::stream_max_age`]);
    /// otherwise its stream starts with a reset saying so
    /// ([`ResetReason::HistoryExpired`](crate::ResetReason::HistoryExpired)). Needs Redis 6.2
    /// or later.
    ///
    /// Connects before returning (errors as for [`redis_pubsub`](Self::redis_pubsub)). Must be
    /// called within a Tokio runtime; the bus runs background tasks for the connection and for
    /// delivering what it hears.
    ///
    /// # What Redis holds
    ///
    /// Under the prefix: the state hash with the epoch and the global sequence counter (as for
    /// Pub/Sub), one stream per topic (`{prefix}:s:{topic}`, entry ids `{seq}-0`), a small
    /// sorted set of timestamps (`{prefix}:clock`, to trim by age) and the idempotency keys
    /// (`{prefix}:i:{key}`). A publish is one Lua script: it takes the next number, appends the
    /// event to the topic's stream, trims the stream by count and age, sets the stream's expiry
    /// ([`RedisConfig::stream_idle_ttl`]) and announces the event on the channel
    /// `{prefix}:n:{topic}`.
    ///
    /// Keys must not be evicted: run Redis with `maxmemory-policy noeviction` (or without a
    /// memory limit), and do not delete keys under the prefix. When Redis loses the state hash
    /// (it restarted empty), numbering starts a new epoch, and resuming from an older id is a
    /// reset ([`ResetReason::UnknownEpoch`](crate::ResetReason::UnknownEpoch)).
    ///
    /// # Publishing
    ///
    /// Every publish carries an idempotency key, random unless given with
    /// [`with_idempotency_key`]. When Redis does not answer within
    /// [`RedisConfig::publish_timeout`] or the connection breaks meanwhile, the publish is sent
    /// once more with the same key; if the first one did run, Redis answers the second with the
    /// first's id instead of storing the event again. When that fails too, the publish fails
    /// ([`BusError::is_timeout`] or [`BusError::is_unavailable`]) and the event may or may not
    /// have been published; retry with an explicit key to be sure it is stored once. While the
    /// connection is known to be down, publishing fails at once with
    /// [`BusError::is_unavailable`] (events are never delivered to this instance only: they
    /// would be missing from the history every instance resumes from).
    ///
    /// # Connection loss
    ///
    /// When the connection drops, the bus reconnects (see
    /// [`RedisConfig::reconnect_backoff`]) and reads what every topic followed on this instance
    /// missed from the streams, delivering it in order before anything newer: open
    /// subscriptions see every event, once, with no gap. Only events that were trimmed before
    /// they could be read become a [`Message::Gap`](crate::Message::Gap); when Redis came back
    /// without its state, subscriptions get
    /// [`GapReason::HistoryLost`](crate::GapReason::HistoryLost). Subscribing works while
    /// disconnected; resuming works only as far as this instance's own history reaches (it
    /// fails with [`BusError::is_unavailable`] when Redis would be needed).
    ///
    /// # Resuming
    ///
    /// A resume is answered from this instance's history when it reaches back far enough,
    /// otherwise from the streams. Reads are shared between concurrent resumes of a topic and
    /// bounded by [`RedisConfig::replay_budget`]; beyond it, resumes fail with
    /// [`BusError::is_overloaded`] (`503` with `Retry-After` from
    /// [`EventStream::error_response`](crate::EventStream::error_response)), so a reconnection
    /// storm is spread out instead of holding unbounded memory.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or the first connection fails or times out (see
    /// [`RedisConfig::connect_timeout`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use futures_util::StreamExt;
    /// use tower_sse::{Event, EventBus, Message, RedisConfig, ResumeStatus};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_sse::BusError> {
    /// let config = RedisConfig::new("redis://127.0.0.1:6379/")
    ///     .stream_max_len(10_000)
    ///     .stream_max_age(Duration::from_secs(3_600));
    /// let bus = EventBus::builder().redis_streams(config).await?;
    ///
    /// let first = bus.publish("orders", Event::new("order 1 shipped")).await?;
    /// let second = bus.publish("orders", Event::new("order 2 shipped")).await?;
    ///
    /// // A client that saw the first event resumes, here or on any other instance.
    /// let cursor = first.id().to_string();
    /// let mut sub = bus.subscribe(["orders"], Some(&cursor)).await?;
    /// assert_eq!(sub.status(), ResumeStatus::Resumed { replayed: 1 });
    /// match sub.next().await {
    ///     Some(Message::Event(event)) => assert_eq!(event.id(), second.id()),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn redis_streams(self, config: RedisConfig) -> Result<EventBus, BusError> {
        if config.is_cluster() {
            let backend =
                cluster::RedisCluster::connect(config, Kind::Streams, self.limits).await?;
            return Ok(EventBus::from_backend(Box::new(backend), &self));
        }
        let backend = streams::RedisStreams::connect(config, self.limits).await?;
        Ok(EventBus::from_backend(Box::new(backend), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connecting_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let connecting = Builder::default().redis_pubsub(RedisConfig::new("redis://127.0.0.1/"));
        assert_send(&connecting);
        let connecting = Builder::default().redis_streams(RedisConfig::new("redis://127.0.0.1/"));
        assert_send(&connecting);
    }

    #[test]
    fn redacts_passwords() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis://:hunter2@127.0.0.1:6379/0",
                "redis://:<redacted>@127.0.0.1:6379/0",
            ),
            (
                "rediss://user:hunter2@example.com",
                "rediss://user:<redacted>@example.com",
            ),
            ("redis://user@example.com/1", "redis://user@example.com/1"),
            (
                "redis+unix:///run/redis.sock?pass=hunter2",
                "redis+unix:///run/redis.sock?<redacted>",
            ),
            (
                "redis://:pa/ss?@127.0.0.1:6379/0",
                "redis://:<redacted>@127.0.0.1:6379/0",
            ),
            ("hunter2", "<not a URL>"),
        ] {
            assert_eq!(redacted_url(url), shown);
        }
        let config = RedisConfig::new("redis://u:p%40ss@h:1/?protocol=resp3");
        let debug = format!("{config:?}");
        assert!(!debug.contains("p%40ss"), "{debug}");
    }
}
