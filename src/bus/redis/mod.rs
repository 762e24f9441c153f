//! Redis backends: fan events out to every instance of a service through Redis.
//!
//! Enable the `redis` cargo feature, then build the bus with [`Builder::redis_pubsub`] or
//! [`Builder::redis_streams`]. Code that publishes and subscribes does not change: it still
//! talks to an [`EventBus`].
//!
//! - **Pub/Sub**: events are announced, not stored. Each instance resumes clients from the
//!   history it heard itself; a broken connection is a gap.
//! - **Streams**: every event is also stored in Redis, per topic, for a configured count and
//!   age. Any instance resumes any client from Redis, and a broken connection costs connected
//!   clients nothing: the instance reads what it missed. Needs Redis 6.2 or later.
//!
//! Instances share events when they use the same server, database and prefix; all of them must
//! use the same backend (and, for Streams, the same retention settings). Both backends also run
//! on a Redis Cluster ([`RedisConfig::cluster`], see [below](#on-a-redis-cluster)).
//!
//! # How events travel
//!
//! Everything a bus keeps in Redis lives under one prefix (default `tower-sse`), so several
//! applications can share a server. A hash `{prefix}:state` holds the namespace's `epoch` (8
//! hex digits) and `seq`, the sequence counter. A publish runs one Lua script that increments
//! `seq`, creates the epoch if it is missing, and publishes the event to the topic's channel
//! (Streams also stores it), so numbering and publishing are one atomic step and every instance
//! sees events in the order of their ids. The message is the complete `text/event-stream` frame,
//! ending with its `id:` line and the blank line; receivers use the bytes as they are, one
//! buffer per event shared by all local subscribers.
//!
//! When Redis loses the hash (it restarted without persistence, or the key was evicted or
//! deleted), the next publish starts a new epoch. Ids of the old epoch are then recognised as
//! unknown instead of being mistaken for positions in the new history.
//!
//! # Pub/Sub
//!
//! Every instance keeps its own bounded history (see [`Builder`]) for resuming clients;
//! Pub/Sub itself keeps nothing. [`SubscribeMode`] chooses whether an instance listens to the
//! topics its clients follow or to all of them.
//!
//! When the connection drops, the bus reconnects with randomised exponential backoff
//! ([`RedisConfig::reconnect_backoff`]), listens again, and tells open subscriptions that events
//! may have been missed ([`Message::Gap`](crate::Message::Gap) with
//! [`BrokerDisconnected`](crate::GapReason::BrokerDisconnected), or
//! [`HistoryLost`](crate::GapReason::HistoryLost) when Redis came back without its state).
//! [`EventBus::health`] is unhealthy, with the reason, while the connection is down.
//!
//! A publish never waits for a connection that is known to be down, and never longer than
//! [`RedisConfig::publish_timeout`]:
//!
//! - While the connection is down, the event is delivered to this instance's subscribers only
//!   ([`Published::is_local_only`](crate::Published::is_local_only) is true, and a warning is
//!   logged), numbered in a temporary epoch of this instance that ends when the connection is
//!   back: subscribers get a `HistoryLost` gap when it begins and when it ends.
//! - While the connection is up but Redis does not answer in time, the publish fails with
//!   [`BusError::is_timeout`]; the event may or may not have been published.
//! - When the request fails otherwise, the publish fails with [`BusError::is_unavailable`].
//!
//! Subscribing while disconnected works: the subscription is registered locally at once and
//! connected to Redis when the bus reconnects (after the gap message).
//!
//! # Streams
//!
//! Under the prefix, besides the state hash: one stream per topic (`{prefix}:s:{topic}`, entry
//! ids `{seq}-0`), a small sorted set of timestamps (`{prefix}:clock`, to trim by age) and the
//! idempotency keys (`{prefix}:i:{key}`). A publish appends the event to the topic's stream,
//! trims it by count and age ([`RedisConfig::stream_max_len`],
//! [`RedisConfig::stream_max_age`]), sets its expiry ([`RedisConfig::stream_idle_ttl`]) and
//! announces it. Keys must not be evicted: run Redis with `maxmemory-policy noeviction` (or
//! without a memory limit).
//!
//! **Publishing.** Every publish carries an idempotency key, random unless given with
//! [`with_idempotency_key`]. When Redis does not answer within the publish timeout, or the
//! connection breaks or fails meanwhile, the publish is sent once more with the same key; if the
//! first one ran, Redis answers the second with the first's id instead of storing the event
//! again. When that fails too, the publish fails ([`BusError::is_timeout`] or
//! [`BusError::is_unavailable`]); retry with an explicit key to be sure it is stored once. While
//! the connection is known to be down, publishing fails at once (an event delivered to one
//! instance only would be missing from the history every instance resumes from).
//! [`RedisConfig::wait_for_replicas`] makes a publish wait until replicas hold the event.
//!
//! **Connection loss.** The bus reconnects and reads what every topic it follows missed from
//! the streams, delivering it in order before anything newer: open subscriptions see every
//! event, once. Only events trimmed before they could be read become a gap; when Redis came
//! back without its state, subscriptions get `HistoryLost`. Resuming while disconnected works
//! only as far as this instance's own history reaches.
//!
//! **Resuming.** A client that reconnects to any instance with `Last-Event-ID` receives exactly
//! the events it missed, as long as they are within the retention; otherwise its stream starts
//! with a reset saying so ([`ResetReason::HistoryExpired`](crate::ResetReason::HistoryExpired)).
//! A resume is answered from this instance's history when it reaches back far enough, otherwise
//! from the streams. Reads are shared between concurrent resumes of a topic and bounded by
//! [`RedisConfig::replay_budget`] (pages of up to 256 entries, down to 16 when the budget runs
//! low); beyond it, resumes wait up to [`RedisConfig::replay_wait`], then fail with
//! [`BusError::is_overloaded`] (`503` with `Retry-After`), so a reconnection storm is spread
//! out instead of holding unbounded memory.
//!
//! # On a Redis Cluster
//!
//! [`RedisConfig::cluster`] runs either backend on a Redis Cluster (Redis 7 or later):
//!
//! - **Sharded pub/sub.** Each topic's channel lives on the shard that owns the topic's slot
//!   (`SPUBLISH`/`SSUBSCRIBE`). Each topic's keys and channel share the topic as hash tag,
//!   `{prefix}:{TOPIC}:...`, so one script numbers, stores and announces an event on one shard.
//!   The prefix must not contain `{` or `}`.
//! - **Ids per topic.** Each topic is numbered on its own shard. A stream of several topics
//!   therefore stands at one id per topic: its cursor lists them, comma-separated, in the order
//!   of the sorted topics (see [`Cursor`](crate::Cursor)), and the stream writes it as the `id:`
//!   of every event, so browsers resume with `Last-Event-ID` as usual. Events of one topic
//!   arrive in order; events of different topics in the order this instance heard them.
//! - **No pattern mode.** Sharded pub/sub has no pattern form, so [`SubscribeMode::Pattern`] is
//!   refused.
//! - **Connections.** One multiplexed connection per node, for publishing and listening alike.
//! - **Topology changes.** When a slot moves or a primary fails over, the bus subscribes each
//!   affected topic again on the slot's new owner and reads the topic's counter. With Streams
//!   it then reads the events it missed from the stream; with Pub/Sub subscribers get a gap, as
//!   they do as soon as a number is skipped. A topic whose counter went back (a failover lost
//!   acknowledged events) starts a new epoch, so ids are never reused.
//! - **State expires.** A topic's counter (and stream) expires
//!   [`stream_idle_ttl`](RedisConfig::stream_idle_ttl) after its last event. A topic published
//!   again after that starts a new epoch (subscribers get `HistoryLost`, older ids reset).
//! - While the cluster is unreachable, publishing fails with [`BusError::is_unavailable`] for
//!   Pub/Sub too.
//!
//! # What is checked
//!
//! Redis is shared infrastructure: another application, an older instance or a bug can publish
//! on the bus's channels. Every message, notification and stream entry an instance reads is
//! checked before it is delivered: exactly one event frame as the bus's scripts write it, an id
//! of the current epoch, and a plausible number. A number far ahead of what the instance knows
//! (more than 1 024 on one server, where one counter numbers every topic; any skip on a
//! cluster, where each topic is numbered without holes), or of another epoch, is checked
//! against the counter in Redis before it is believed. A message that fails is dropped, never
//! moves what the instance knows, is logged (at most one warning every 10 s) and counted in
//! `sse_redis_rejected_total` (feature `metrics`, label `reason`: `malformed`, `epoch`,
//! `ahead`, `stale`). Where it hides real missing events, subscribers get the gap signal.
//!
//! # Publishing from other languages
//!
//! A program in any language can publish into a bus by calling the same Lua script an instance
//! runs, with the same keys and arguments: the Redis publish protocol, version
//! [`PROTOCOL_VERSION`], described in `docs/redis-protocol.md` with publish functions for
//! Python and Node. Its events are numbered, stored and delivered like those of
//! [`EventBus::publish`], and pass the same checks.
//!
//! # TLS
//!
//! With the feature `tls`, `rediss://` URLs (and cluster seeds) connect over TLS 1.2 or 1.3
//! with rustls and its `ring` provider, verifying the server against the operating system's
//! trusted roots (`rustls-native-certs`, which managed services' public CAs are in); set
//! `SSL_CERT_FILE` (or `SSL_CERT_DIR`) to trust other roots, a private CA say. If your
//! application builds rustls with another provider as well, install one process-wide
//! (`rustls::crypto::CryptoProvider::install_default`) before connecting. Without the feature,
//! a `rediss://` URL is refused with an error saying so.
//!
//! # Shutdown
//!
//! [`EventBus::shutdown`] stops listening to Redis (open subscriptions end), but publishing keeps
//! working until the last [`EventBus`] clone is dropped, which closes the connections.

mod backend;
mod backoff;
mod cluster;
mod config;
mod entries;
mod envelope;
mod held;
mod idle;
mod presence;
mod publish;
mod replay;
mod request;
mod resume;
mod scripts;
mod server;
mod state;
mod validate;

use self::{
    cluster::{Kind, RedisCluster},
    server::{pubsub, streams},
};
pub use self::{
    config::{RedisConfig, SubscribeMode},
    publish::with_idempotency_key,
    scripts::PROTOCOL_VERSION,
};
use super::{Builder, EventBus};
use crate::error::BusError;

impl Builder {
    /// Builds a bus that fans events out to every instance through Redis Pub/Sub (see the
    /// [module](self#pubsub) docs).
    ///
    /// Connects before returning: an unreachable server, a wrong password or an invalid URL is
    /// an error for which [`BusError::is_unavailable`] is true, with a one-line message that
    /// names the server (never the password). Must be called within a Tokio runtime; the bus
    /// runs a background task that keeps the connection up.
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
            let backend = RedisCluster::connect(config, Kind::PubSub, self.limits).await?;
            return Ok(EventBus::from_backend(Box::new(backend), &self));
        }
        let backend = pubsub::connect(config, self.limits).await?;
        Ok(EventBus::from_backend(Box::new(backend), &self))
    }

    /// Builds a bus that stores every event in Redis Streams, so a client that reconnects to
    /// any instance resumes exactly where it left off (see the [module](self#streams) docs).
    /// Needs Redis 6.2 or later.
    ///
    /// Connects before returning (errors as for [`redis_pubsub`](Self::redis_pubsub)). Must be
    /// called within a Tokio runtime; the bus runs background tasks for the connection and for
    /// delivering what it hears.
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
            let backend = RedisCluster::connect(config, Kind::Streams, self.limits).await?;
            return Ok(EventBus::from_backend(Box::new(backend), &self));
        }
        let backend = streams::connect(config, self.limits).await?;
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
}
