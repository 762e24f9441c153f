//! [`RedisConfig`] and [`SubscribeMode`]: where the Redis backends connect, and how they
//! listen and keep events. What the settings do is described in the [module](super) docs.

use std::{fmt, time::Duration};

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
/// [`Builder::redis_pubsub`](crate::Builder::redis_pubsub) or
/// [`Builder::redis_streams`](crate::Builder::redis_streams).
///
/// The URL follows the redis crate's format,
/// `redis://[<username>][:<password>@]<host>[:<port>][/<db>]`, or `rediss://` for TLS (feature
/// `tls`). The connection always speaks RESP3, whatever the URL's `protocol` parameter says.
/// The `Debug` output never shows the password.
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
    pub(crate) presence_ttl: Duration,
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
            presence_ttl: Duration::from_secs(30),
        }
    }

    /// A configuration for a Redis Cluster (Redis 7 or later), reached through `nodes`: URLs of
    /// some of its primaries, from which the bus learns the rest. The defaults are those of
    /// [`new`](Self::new). How the backends differ on a cluster (sharded pub/sub, an id per
    /// topic, no pattern mode) is described in the [module](super#on-a-redis-cluster) docs.
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
    /// different modes can share a prefix. The Streams backend always listens per topic and
    /// ignores this.
    pub fn mode(mut self, mode: SubscribeMode) -> Self {
        self.mode = mode;
        self
    }

    /// How long a publish waits for Redis to answer before it fails with an error for which
    /// [`BusError::is_timeout`](crate::BusError::is_timeout) is true (default 5 s; on Streams a
    /// publish is sent once more after the first wait, so it can take twice as long). Also
    /// bounds the bus's own requests (subscribing, reading history, health checks).
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

    /// Streams: how long each topic keeps its events (default 1 hour), trimmed approximately
    /// like [`stream_max_len`](Self::stream_max_len) when the topic gets a new event; a topic's
    /// newest event stays until the topic expires.
    pub fn stream_max_age(mut self, age: Duration) -> Self {
        self.stream_max_age = age;
        self
    }

    /// Streams: how long after its last event a topic's stream is kept (default 24 hours; never
    /// less than [`stream_max_age`](Self::stream_max_age)). Once it expired, a resume from a
    /// cursor older than this is a reset, even if nothing was published meanwhile.
    pub fn stream_idle_ttl(mut self, ttl: Duration) -> Self {
        self.stream_idle_ttl = ttl;
        self
    }

    /// Streams: how many stream entries this instance reads for resuming clients at once
    /// (default 10 000), which bounds the memory a burst of resumes takes; past it, resumes
    /// wait (see [`replay_wait`](Self::replay_wait)), then fail as overloaded. Keep it well
    /// above [`stream_max_len`](Self::stream_max_len) plus 256: a resume needs its topics'
    /// missed events at once.
    pub fn replay_budget(mut self, events: usize) -> Self {
        self.replay_budget = events.max(1);
        self
    }

    /// Streams: how long a resume waits for replay budget before it fails as overloaded
    /// (default 2 s; zero fails at once).
    pub fn replay_wait(mut self, wait: Duration) -> Self {
        self.replay_wait = wait;
        self
    }

    /// Streams: how long Redis remembers an idempotency key (default 2 minutes, rounded up to
    /// whole seconds; zero turns idempotency keys off). See
    /// [`with_idempotency_key`](super::with_idempotency_key).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// Streams: how many notifications of new events may wait to be delivered to this
    /// instance's subscribers (default 8 192, and never more than 64 MiB of them). Past it, the
    /// instance reads the events it did not hold from the streams once it has caught up.
    pub fn notification_backlog(mut self, events: usize) -> Self {
        self.notification_backlog = events.max(1);
        self
    }

    /// Streams: after each publish, wait until `replicas` replicas of the server (on a cluster,
    /// of the topic's shard) hold the event, for at most `timeout` (Redis `WAIT`; default: no
    /// waiting). A publish not confirmed in time fails with an error for which
    /// [`BusError::is_timeout`](crate::BusError::is_timeout) is true: retry it with its
    /// idempotency key. Ask for no more replicas than every shard has.
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

    /// How long an instance's presence counts stay in Redis without being written again
    /// (default 30 s, at least 1 s): the subscribers of an instance that was killed stop being
    /// counted within this time. Each instance writes its counts again every third of it. Give
    /// every instance sharing a prefix the same value. See [presence](crate::bus::presence).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The idle TTL the backends apply: never below the maximum age.
    pub(crate) fn idle_ttl(&self) -> Duration {
        self.stream_idle_ttl.max(self.stream_max_age)
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
            .field("presence_ttl", &self.presence_ttl)
            .finish()
    }
}

/// The URL without its password, and without its query (which, for Unix sockets, may carry
/// credentials too).
pub(crate) fn redacted_url(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
