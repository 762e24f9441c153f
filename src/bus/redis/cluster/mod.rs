//! Both Redis backends on a Redis Cluster, over sharded pub/sub.
//!
//! # Keys and channels
//!
//! Every key and channel of a topic carries the topic as its hash tag ([`names`]), so they live
//! in the topic's slot and one script can number, store and announce an event atomically:
//!
//! - `{prefix}:{TOPIC}:state`: a hash with the topic's `epoch` and `seq`.
//! - `{prefix}:{TOPIC}:s`: Streams only, the topic's stream. Entry ids are `{seq}-0`, fields `t`
//!   (publish time, ms) and `f` (the frame, in its envelope).
//! - `{prefix}:{TOPIC}:i:{key}`: Streams only, the id a publish with this idempotency key got.
//! - Channel `{prefix}:{TOPIC}:t` (Pub/Sub) or `{prefix}:{TOPIC}:n` (Streams): the frame of
//!   every event, as the stream stores it.
//!
//! Each topic is numbered on its own, so the sequence numbers of a topic have no holes: a
//! receiver knows it missed an event the moment a number is skipped.
//!
//! # Lanes
//!
//! An instance keeps a [lane] per topic its clients follow: a hub of its own (ids of
//! different topics are not comparable, so each topic is its own history) and the state of the
//! topic's subscription. Messages are checked and delivered to the lane's hub as they arrive,
//! from the connection's push callback ([`push`]). A lane is [synced](sync) when it starts, when
//! the shard says the channel moved (`SUNSUBSCRIBE` pushed after a slot migration), when a
//! connection drops (a failover, say), when a message does not follow the last one delivered
//! (another epoch, a number skipped or one already delivered: the counter tells whether it is
//! real), and when the periodic check of the primaries ([`janitor`]) finds them answering again
//! after failing, or holding fewer of this instance's subscriptions than it has synced lanes.
//! Syncing subscribes (`SSUBSCRIBE`, routed to the slot's current owner) and reads the counter;
//! meanwhile the lane holds its messages back. With Streams it then reads the missed events
//! from the stream; with Pub/Sub it tells subscribers of the gap. Then the held messages go on:
//! nothing is delivered twice or out of order.
//!
//! A subscription of several topics is one subscription per lane, joined: its cursor holds a
//! position per topic (see [`Cursor`](crate::Cursor)).

mod health;
mod janitor;
mod lane;
mod names;
mod push;
mod requests;
mod resume;
mod sync;

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::Duration,
};

use ::redis::{
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    ProtocolVersion, PushInfo,
};
use tokio::{
    sync::{mpsc, Semaphore},
    time::timeout,
};

use self::{janitor::Chore, lane::Lane, names::Names};
use super::{
    backend::RedisBackend,
    config::redacted_url,
    entries::Numbering,
    presence::{Layout, RedisPresence},
    publish::{idempotency_key, Publisher, Target},
    replay::Replay,
    request::unavailable,
    scripts, RedisConfig, SubscribeMode,
};
use crate::last_event_id::ResumeFrom;
use crate::sync::lock;
use crate::{
    bus::{
        hub::{HubStats, Limits},
        presence::PresenceStore,
        Health, Subscription, Topic,
    },
    error::{BusError, BusErrorKind},
};

/// Which backend runs on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    PubSub,
    Streams,
}

/// The most lanes syncing at once (each sync is a few requests).
const MAX_SYNCS: usize = 64;

/// The backend.
pub(super) struct RedisCluster {
    core: Arc<Core>,
    /// Carries the bus's shut-down state; topics have hubs of their own.
    publisher: Publisher,
    replay: Replay,
    presence: Arc<RedisPresence<Core>>,
}

/// What the backend, the lanes' tasks and the push callback share.
pub(super) struct Core {
    kind: Kind,
    conn: ClusterConnection,
    names: Names,
    lanes: Mutex<HashMap<Topic, Arc<Lane>>>,
    limits: Limits,
    request_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    idle_ttl: Duration,
    syncs: Semaphore,
    /// Released topics, for the janitor; bounded by the subscriptions, like the interest
    /// counts it mirrors.
    janitor: mpsc::UnboundedSender<Chore>,
    /// Lanes whose last sync attempt failed.
    failing: AtomicUsize,
    /// Why the cluster is unhealthy, while it is.
    problem: Mutex<Option<String>>,
    /// Why the last check of the primaries failed, while it does.
    unreachable: Mutex<Option<String>>,
    closed: AtomicBool,
}

impl RedisCluster {
    /// Connects to the cluster and starts the janitor.
    pub(super) async fn connect(
        config: RedisConfig,
        kind: Kind,
        limits: Limits,
    ) -> Result<Self, BusError> {
        check(&config)?;
        let slot: Arc<OnceLock<Weak<Core>>> = Arc::new(OnceLock::new());
        let client = client(&config, slot.clone())?;
        let seeds = config
            .nodes
            .iter()
            .map(|url| redacted_url(url))
            .collect::<Vec<_>>()
            .join(", ");
        let conn = open(&client, &seeds, config.connect_timeout).await?;
        let (janitor, chores) = mpsc::unbounded_channel();
        let core = Arc::new(Core::new(&config, kind, limits, conn, janitor));
        let _ = slot.set(Arc::downgrade(&core));
        // A cluster that answers the connection but not commands is not usable.
        core.subscriptions().await.map_err(unavailable)?;
        janitor::start(&core, chores, config.unsubscribe_delay);
        tracing::info!(nodes = %seeds, ?kind, "connected to the Redis Cluster");
        let (script, stores) = match kind {
            Kind::PubSub => (&*scripts::CLUSTER_PUBSUB, false),
            Kind::Streams => (&*scripts::CLUSTER_STREAMS, true),
        };
        let presence = RedisPresence::new(core.clone(), &config, Layout::Cluster);
        Ok(Self {
            presence: Arc::new(presence),
            core,
            publisher: Publisher::new(script, &config, stores),
            replay: Replay::new(
                config.replay_budget,
                config.replay_wait,
                Numbering::PerTopic,
            ),
        })
    }
}

/// Refuses what a cluster cannot do.
fn check(config: &RedisConfig) -> Result<(), BusError> {
    if config.mode == SubscribeMode::Pattern {
        return Err(unavailable(
            "pattern mode is not available on a Redis Cluster: sharded pub/sub has no pattern \
             form; use the interest mode",
        ));
    }
    if config.prefix.contains(['{', '}']) {
        return Err(unavailable(
            "the prefix of a Redis Cluster bus must not contain `{` or `}`: topics are the hash \
             tags of their keys",
        ));
    }
    Ok(())
}

/// Connects to the cluster through `client` (seeded with `seeds`, for messages).
async fn open(
    client: &ClusterClient,
    seeds: &str,
    limit: Duration,
) -> Result<ClusterConnection, BusError> {
    let failed = |why: String| {
        unavailable(format!(
            "cannot connect to the Redis Cluster at {seeds}: {why}"
        ))
    };
    match timeout(limit, client.get_async_connection()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_elapsed) => Err(failed(format!("no answer within {limit:?}"))),
    }
}

/// A RESP3 client whose pushes go to the core in `slot`, once it is there.
fn client(
    config: &RedisConfig,
    slot: Arc<OnceLock<Weak<Core>>>,
) -> Result<ClusterClient, BusError> {
    ClusterClientBuilder::new(config.nodes.clone())
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.publish_timeout)
        .push_sender(move |info: PushInfo| -> Result<(), Infallible> {
            if let Some(core) = slot.get().and_then(Weak::upgrade) {
                core.on_push(info);
            }
            Ok(())
        })
        .build()
        .map_err(|e| {
            BusError::with_source(
                BusErrorKind::Unavailable(format!("invalid Redis Cluster URL: {e}")),
                e,
            )
        })
}

impl Core {
    fn new(
        config: &RedisConfig,
        kind: Kind,
        limits: Limits,
        conn: ClusterConnection,
        janitor: mpsc::UnboundedSender<Chore>,
    ) -> Self {
        let channel_kind = match kind {
            Kind::PubSub => "t",
            Kind::Streams => "n",
        };
        Self {
            kind,
            conn,
            names: Names {
                prefix: config.prefix.clone(),
                channel_kind,
            },
            lanes: Mutex::new(HashMap::new()),
            limits,
            request_timeout: config.publish_timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            idle_ttl: config.idle_ttl(),
            syncs: Semaphore::new(MAX_SYNCS),
            janitor,
            failing: AtomicUsize::new(0),
            problem: Mutex::new(None),
            unreachable: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }
}

impl RedisBackend for RedisCluster {
    type Route = Core;

    fn route(&self) -> &Core {
        &self.core
    }

    fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn target(&self, topic: &Topic) -> Target {
        let names = &self.core.names;
        let stores = self.publisher.stores();
        Target {
            state: names.state(topic),
            channel: names.channel(topic),
            stream: stores.then(|| names.stream(topic)),
            idempotency: stores.then(|| names.idempotency(topic, &idempotency_key())),
            clock: None,
        }
    }

    async fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> Result<Subscription, BusError> {
        self.subscribe_lanes(topics, resume).await
    }

    fn health(&self) -> Health {
        self.core.health()
    }

    fn shutdown(&self) {
        self.core.closed.store(true, Ordering::SeqCst);
        let _ = self.core.janitor.send(Chore::Close);
        for lane in lock(&self.core.lanes).values() {
            lane.hub.close();
        }
    }

    fn stats(&self) -> HubStats {
        let lanes = lock(&self.core.lanes);
        let mut total = HubStats::default();
        for lane in lanes.values() {
            let stats = lane.hub.stats();
            total.topics += stats.topics;
            total.subscriptions += stats.subscriptions;
            total.history_events += stats.history_events;
            total.history_bytes += stats.history_bytes;
        }
        total
    }

    fn presence(&self) -> Arc<dyn PresenceStore> {
        self.presence.clone()
    }
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("kind", &self.core.kind)
            .field("prefix", &self.core.names.prefix)
            .field("topics", &lock(&self.core.lanes).len())
            .finish()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Sync tasks retrying against an unreachable cluster stop too.
        self.core.closed.store(true, Ordering::SeqCst);
        let _ = self.core.janitor.send(Chore::Close);
    }
}
