//! Presence counts in Redis, for every Redis backend: how the counts of an instance are
//! written and the counts of the others read (the behaviour is described in the
//! [presence](crate::bus::presence) docs).
//!
//! # Keys
//!
//! Each topic's presence is a hash of counts by instance id and a sorted set of the same ids
//! scored with each count's deadline (`prelude.lua`):
//!
//! - one server: `{prefix}:p:{topic}` and `{prefix}:pd:{topic}`;
//! - a cluster: `{prefix}:{TOPIC}:p` and `{prefix}:{TOPIC}:pd`, with the topic as hash tag like
//!   every key of the topic, so one script on one slot reads or writes them.
//!
//! Instance ids are 16 random hex digits, new each time a bus is built. Writes are script
//! calls (`write.lua`) sent in pipelines ([`batch`]); a read is one script call (`read.lua`).

mod batch;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use ::redis::Script;
use tokio::time::timeout;

use self::batch::{Batches, Call};
use super::{publish::Route, request::millis, RedisConfig};
use crate::bus::{backend::BoxFuture, presence::PresenceStore, Topic};

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| Script::new(concat!(include_str!("prelude.lua"), include_str!($file))))
    };
}

/// Writes one instance's count of a topic.
static WRITE: LazyLock<Script> = script!("write.lua");

/// Reads the counts of the other instances.
static READ: LazyLock<Script> = script!("read.lua");

/// Where the keys of a topic's presence live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    OneServer,
    Cluster,
}

/// Presence counts kept in Redis, reached through the backend's connection `R`.
pub(super) struct RedisPresence<R> {
    route: Arc<R>,
    prefix: String,
    layout: Layout,
    instance: String,
    ttl: Duration,
    timeout: Duration,
}

impl<R> RedisPresence<R> {
    pub(super) fn new(route: Arc<R>, config: &RedisConfig, layout: Layout) -> Self {
        Self {
            route,
            prefix: config.prefix.clone(),
            layout,
            instance: format!("{:016x}", crate::random::u64()),
            ttl: config.presence_ttl,
            timeout: config.publish_timeout,
        }
    }

    /// The hash of counts and the sorted set of deadlines of `topic`.
    fn keys(&self, topic: &Topic) -> [String; 2] {
        let (prefix, topic) = (&self.prefix, topic.as_str());
        match self.layout {
            Layout::OneServer => [
                format!("{prefix}:p:{topic}"),
                format!("{prefix}:pd:{topic}"),
            ],
            Layout::Cluster => [
                format!("{prefix}:{{{topic}}}:p"),
                format!("{prefix}:{{{topic}}}:pd"),
            ],
        }
    }
}

impl<R> PresenceStore for RedisPresence<R>
where
    R: Route + Send + Sync + 'static,
    R::Conn: Batches,
{
    fn write<'a>(&'a self, counts: &'a [(Topic, usize)]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let conn = self
                .route
                .connection()
                .ok_or("the connection to Redis is down")?;
            let calls = counts
                .iter()
                .map(|(topic, n)| Call {
                    keys: self.keys(topic),
                    count: *n,
                })
                .collect();
            let args = batch::Args {
                instance: self.instance.clone(),
                ttl_ms: millis(self.ttl),
                timeout: self.timeout,
            };
            batch::write(conn, calls, args).await
        })
    }

    fn others<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let mut conn = self
                .route
                .connection()
                .ok_or("the connection to Redis is down")?;
            let [counts, deadlines] = self.keys(topic);
            let mut invocation = READ.prepare_invoke();
            invocation.key(counts).key(deadlines).arg(&self.instance);
            let total: i64 = match timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
                Ok(Ok(total)) => total,
                Ok(Err(e)) => return Err(format!("reading presence failed: {e}")),
                Err(_) => return Err(format!("Redis did not answer within {:?}", self.timeout)),
            };
            u64::try_from(total).map_err(|_| format!("a negative presence count: {total}"))
        })
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use ::redis::cluster_routing::Slot;

    use super::*;

    #[test]
    fn a_topics_keys_share_its_slot_on_a_cluster() {
        let config = RedisConfig::cluster(["redis://127.0.0.1:1/"]).prefix("app");
        let presence = RedisPresence::new(Arc::new(()), &config, Layout::Cluster);
        let topic = Topic::new("org:orders").unwrap();
        let [counts, deadlines] = presence.keys(&topic);
        assert_eq!(counts, "app:{org:orders}:p");
        assert_eq!(deadlines, "app:{org:orders}:pd");
        // The slot of the topic's other keys (cluster/names.rs).
        let state = Slot::for_key("app:{org:orders}:state");
        assert_eq!(
            (Slot::for_key(&counts), Slot::for_key(&deadlines)),
            (state, state)
        );
        let one = RedisPresence::new(Arc::new(()), &config, Layout::OneServer);
        assert_eq!(one.keys(&topic), ["app:p:org:orders", "app:pd:org:orders"]);
        assert_eq!(presence.instance.len(), 16);
        assert_ne!(presence.instance, one.instance);
    }
}
