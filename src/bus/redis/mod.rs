//! Redis backends: fan events out to every instance of a service through one Redis server.
//!
//! Enable the `redis` cargo feature, then build the bus with [`Builder::redis_pubsub`]. Code
//! that publishes and subscribes does not change: it still talks to an [`EventBus`].
//!
//! # How events travel
//!
//! Everything a bus keeps in Redis lives under one prefix (default `tower-sse`), so several
//! applications can share a server:
//!
//! - `{prefix}:state` is a hash holding the namespace's `epoch` (8 hex digits) and `seq`, the
//!   global sequence counter. A publish runs one Lua script that increments `seq`, creates the
//!   epoch if it is missing, and publishes the event to the channel `{prefix}:t:{topic}`, so
//!   numbering and publishing are one atomic step and every instance sees events in the order
//!   of their ids.
//! - The message on the channel is the complete `text/event-stream` frame, ending with its
//!   `id:` line and the blank line. Receivers use the bytes as they are: one buffer per event,
//!   shared by all local subscribers.
//! - When Redis loses the hash (it restarted without persistence, or the key was evicted or
//!   deleted), the next publish starts a new epoch. Ids of the old epoch are then recognised as
//!   unknown instead of being mistaken for positions in the new history.
//!
//! Every instance keeps its own bounded history (see [`Builder`]) for resuming clients; Pub/Sub
//! itself keeps nothing.

mod pubsub;

use std::{fmt, time::Duration};

use super::{Builder, EventBus};
use crate::error::BusError;

/// How an instance chooses the Redis channels it listens to. See [`RedisConfig::mode`].
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

/// Where and how the Redis Pub/Sub backend connects. Pass it to [`Builder::redis_pubsub`].
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
    pub(crate) prefix: String,
    pub(crate) mode: SubscribeMode,
    pub(crate) publish_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) unsubscribe_delay: Duration,
}

impl RedisConfig {
    /// A configuration for the server at `url`, with the defaults: prefix `tower-sse`,
    /// [`SubscribeMode::Interest`], 5 s publish and connect timeouts, reconnect backoff from
    /// 100 ms to 5 s, unsubscribe delay 10 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "tower-sse".to_owned(),
            mode: SubscribeMode::Interest,
            publish_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            unsubscribe_delay: Duration::from_secs(10),
        }
    }

    /// The prefix of every channel and key the bus uses (default `tower-sse`). Instances share
    /// events exactly when they use the same Redis server, database and prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How the instance picks the channels it listens to (default
    /// [`SubscribeMode::Interest`]; see [`SubscribeMode`] for when each wins). Instances with
    /// different modes can share a prefix.
    pub fn mode(mut self, mode: SubscribeMode) -> Self {
        self.mode = mode;
        self
    }

    /// How long a publish waits for Redis to answer before it fails with an error for which
    /// [`BusError::is_timeout`] is true (default 5 s). Also bounds the bus's own requests
    /// (subscribing, health checks) before the connection is considered broken.
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
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted_url(&self.url))
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_backoff", &(self.backoff_min..=self.backoff_max))
            .field("unsubscribe_delay", &self.unsubscribe_delay)
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
        let backend = pubsub::RedisPubSub::connect(config, self.limits).await?;
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
