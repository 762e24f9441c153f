//! Both Redis backends on a Redis Cluster, over sharded pub/sub.
//!
//! # Keys and channels
//!
//! Every key and channel of a topic carries the topic as its hash tag, so they live in the
//! topic's slot and one script can number, store and announce an event atomically:
//!
//! - `{prefix}:{TOPIC}:state`: a hash with the topic's `epoch` and `seq`.
//! - `{prefix}:{TOPIC}:s`: Streams only, the topic's stream. Entry ids are `{seq}-0`, fields `t`
//!   (publish time, ms) and `f` (the frame, in its [envelope](super::envelope)).
//! - `{prefix}:{TOPIC}:i:{key}`: Streams only, the id a publish with this idempotency key got.
//! - Channel `{prefix}:{TOPIC}:t` (Pub/Sub) or `{prefix}:{TOPIC}:n` (Streams): the frame of
//!   every event, as the stream stores it.
//!
//! Each topic is numbered on its own, so the sequence numbers of a topic have no holes: a
//! receiver knows it missed an event the moment a number is skipped.
//!
//! # Lanes
//!
//! An instance keeps a lane per topic its clients follow: a [`Hub`] of its own (ids of
//! different topics are not comparable, so each topic is its own history) and the state of the
//! topic's subscription. Messages are delivered to the lane's hub as they arrive, from the
//! connection's push callback. A lane is *synced* (see [`Core::sync`]) when it starts, when the
//! shard says the channel moved (`SUNSUBSCRIBE` pushed after a slot migration), when a
//! connection drops (a failover, say), when a number is skipped on Streams, when a live message
//! is numbered at or below the last one delivered (the counter went back: the lane starts a new
//! epoch for the topic), and when the periodic check of the primaries finds them answering
//! again after failing, or holding fewer of this instance's subscriptions than it has synced
//! lanes. Syncing subscribes (`SSUBSCRIBE`, routed to the slot's
//! current owner) and reads the counter; meanwhile the lane holds its messages back. With
//! Streams it then reads the missed events from the stream; with Pub/Sub it tells subscribers
//! of the gap. Then the held messages go on: nothing is delivered twice or out of order.
//!
//! A subscription of several topics is one subscription per lane, joined: its cursor holds a
//! position per topic (see [`Cursor`](crate::Cursor)).

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::Duration,
};

use ::redis::{
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{
        MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
    },
    ProtocolVersion, PushInfo, PushKind, RedisResult, Script, ScriptInvocation, Value,
};
use bytes::Bytes;
use tokio::{
    sync::{mpsc, watch, Semaphore},
    time::{timeout, Instant, MissedTickBehavior},
};

use super::{
    connection::{backoff, frame_id, parse_state, sleep_until, take_due, timed, Backlog},
    envelope, replicated, RedisConfig, SubscribeMode, IDEMPOTENCY_KEY,
};
use crate::{
    bus::{
        backend::{Backend, BoxFuture},
        hub::{Hub, HubStats, Limits, Resume},
        queue::{lock, Item},
        random_u32, random_u64, GapReason, Health, Published, ResetReason, ResumeStatus,
        Subscription, Topic,
    },
    error::{BusError, BusErrorKind},
    event::Event,
    last_event_id::{Cursor, EventId},
};

/// Which backend runs on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    PubSub,
    Streams,
}

/// Reads a topic's epoch (adopting `ARGV[1]` if it has none) and last sequence number.
///
/// KEYS: 1 the state. ARGV: 1 an epoch, 2 the idle TTL (ms).
const STATE_SCRIPT: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
return {state[1], state[2] or '0'}
";

/// Starts a new epoch for a topic whose counter went back (a failover lost events the old
/// primary had acknowledged), unless another instance did already.
///
/// KEYS: 1 the state. ARGV: 1 the epoch that went back, 2 the new epoch, 3 the idle TTL (ms).
/// Returns the epoch and last sequence number, as [`STATE_SCRIPT`] does.
const NEW_EPOCH_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
return {state[1], state[2] or '0'}
";

/// Pub/Sub: numbers an event and announces it, atomically.
///
/// KEYS: 1 the state. ARGV: 1 an epoch to adopt if there is none, 2 the channel, 3 the encoded
/// event without its id line, 4 the envelope's line, 5 the idle TTL (ms). Returns
/// `{epoch, seq}`.
const PUBSUB_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
local seq = redis.call('HGET', KEYS[1], 'seq')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SPUBLISH', ARGV[2], ARGV[4] .. ARGV[3] .. 'id: ' .. epoch .. '-' .. seq .. '\n\n')
return {epoch, seq}
";

/// Streams: numbers, stores, trims and announces an event, atomically.
///
/// KEYS: 1 the state, 2 the stream, 3 the idempotency key. ARGV: 1 an epoch to adopt if there
/// is none, 2 the channel, 3 the encoded event without its id line, 4 the envelope's line, 5
/// the count limit, 6 the age limit (ms), 7 the idle TTL (ms), 8 how long to remember the
/// idempotency key (s; `0`: not at all). Returns `{epoch, seq, repeated}`.
///
/// Trimming by age looks at the oldest entry; once it is an eighth of the limit too old, a
/// binary search over the sequence numbers (a topic's are contiguous, and publish times grow
/// with them) finds the first entry young enough, and everything before it goes. The newest
/// entry always stays, so the stream shows the topic's last event until the key expires.
/// Sequence numbers of one topic stay far below 2^53, where Lua's numbers are exact.
const STREAMS_SCRIPT: &str = r"
if ARGV[8] ~= '0' then
  local done = redis.call('GET', KEYS[3])
  if done then
    local e, s = string.match(done, '^(%x+)-(%d+)$')
    if e then return {e, s, 1} end
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
local seq = redis.call('HGET', KEYS[1], 'seq')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local frame = ARGV[4] .. ARGV[3] .. 'id: ' .. epoch .. '-' .. seq .. '\n\n'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0', 't', now, 'f', frame)
local max_age = tonumber(ARGV[6])
local function seq_of(entry) return tonumber(string.match(entry[1], '^(%d+)')) end
local function old(entry) return now - tonumber(entry[2][2]) > max_age end
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if head and now - tonumber(head[2][2]) > max_age + max_age / 8 then
  local lo, hi = seq_of(head), tonumber(seq)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('XRANGE', KEYS[2], mid .. '-0', '+', 'COUNT', 1)[1]
    if old(entry) then lo = seq_of(entry) + 1 else hi = mid end
  end
  redis.call('XTRIM', KEYS[2], 'MINID', lo .. '-0')
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
if ARGV[8] ~= '0' then
  redis.call('SET', KEYS[3], epoch .. '-' .. seq, 'EX', ARGV[8])
end
redis.call('SPUBLISH', ARGV[2], frame)
return {epoch, seq, 0}
";

/// How often the bus checks every primary: that it answers, and that the connection to it
/// still holds the subscriptions this instance made (a node that hangs without closing its
/// connection, a connection replaced without notice, or pushes that never came, are noticed
/// this way).
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The most lanes syncing at once (each sync is a few requests).
const MAX_SYNCS: usize = 64;

/// The most messages, and bytes of them, a lane holds back while it syncs. Past either it
/// drops them and syncs again: Streams reads them from the stream, Pub/Sub signals a gap.
const MAX_HELD_MESSAGES: usize = 1_024;
const MAX_HELD_BYTES: usize = 4 << 20;

/// Syncs in a row a lane makes for messages held meanwhile before it drops those that still do
/// not follow its events.
const MAX_ROUNDS: u32 = 3;

/// Stream entries read per request.
const PAGE: usize = 256;

/// The backend.
pub(crate) struct RedisCluster {
    core: Arc<Core>,
    /// Carries the bus's shut-down state; topics have hubs of their own.
    root: Hub,
    publish_script: Script,
    publish_timeout: Duration,
    max_len: usize,
    max_age: Duration,
    idempotency_ttl: Duration,
    replicas: usize,
    replica_timeout: Duration,
}

/// What the backend, the lanes' tasks and the push callback share.
struct Core {
    kind: Kind,
    conn: ClusterConnection,
    names: Names,
    lanes: Mutex<HashMap<Topic, Arc<Lane>>>,
    limits: Limits,
    request_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    idle_ttl: Duration,
    state_script: Script,
    new_epoch_script: Script,
    syncs: Semaphore,
    /// Stream entries that resumes may hold while reading (Streams).
    replay_budget: Arc<Semaphore>,
    replay_page: usize,
    replay_wait: Duration,
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

/// One topic's subscription on this instance.
struct Lane {
    topic: Topic,
    hub: Hub,
    state: Mutex<LaneState>,
    /// Counts finished syncs; 0 until the first.
    synced: watch::Sender<u64>,
}

#[derive(Default)]
struct LaneState {
    /// The topic's epoch, once read.
    epoch: Option<u32>,
    /// The last sequence number delivered to the hub (or known to be lost).
    delivered: u64,
    /// The epoch this lane left because the topic's counter went back: its late messages are
    /// dropped.
    abandoned: Option<u32>,
    /// A live message was numbered at or below `delivered`: the counter went back.
    rewound: bool,
    /// Messages held back until a sync is over; `Some` from the moment one is due.
    held: Option<Held>,
    /// Whether a sync task runs.
    syncing: bool,
    /// A sync was asked for while one ran: it goes another round.
    again: bool,
    /// Whether the last sync attempt failed (counted in `Core::failing`).
    failing: bool,
    /// Local subscriptions.
    interest: usize,
    /// The lane was dropped (idle, or the bus shut down).
    removed: bool,
}

/// Messages held back while a lane syncs.
type Held = Backlog<Bytes, MAX_HELD_MESSAGES, MAX_HELD_BYTES>;

/// How a round of a lane's sync ended.
enum Round {
    /// The lane delivers live again.
    Live,
    /// Another round was asked for, or messages were dropped while holding them.
    Again,
    /// Held messages do not follow the events read.
    Unfit,
}

/// What the janitor task does.
enum Chore {
    /// A topic lost its last local subscriber.
    Release(Topic),
    /// The bus shut down: drop every lane and stop listening.
    Close,
}

/// The names of one prefix's keys and channels.
struct Names {
    prefix: String,
    channel_kind: &'static str,
}

impl Names {
    fn key(&self, topic: &Topic, suffix: &str) -> String {
        format!("{}:{{{}}}:{suffix}", self.prefix, topic.as_str())
    }

    fn state(&self, topic: &Topic) -> String {
        self.key(topic, "state")
    }

    fn stream(&self, topic: &Topic) -> String {
        self.key(topic, "s")
    }

    fn channel(&self, topic: &Topic) -> String {
        self.key(topic, self.channel_kind)
    }

    /// The topic a channel belongs to, as a name; lanes are looked up by it, so a message
    /// costs no allocation. Only names of lanes (valid topics) ever match.
    fn topic_of<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let rest = rest.strip_prefix(b":{")?;
        let rest = rest.strip_suffix(self.channel_kind.as_bytes())?;
        let name = rest.strip_suffix(b"}:")?;
        std::str::from_utf8(name).ok()
    }
}

impl RedisCluster {
    /// Connects to the cluster and starts the janitor.
    pub(crate) async fn connect(
        config: RedisConfig,
        kind: Kind,
        limits: Limits,
    ) -> Result<Self, BusError> {
        if config.mode == SubscribeMode::Pattern {
            return Err(unavailable(
                "pattern mode is not available on a Redis Cluster: sharded pub/sub has no \
                 pattern form; use the interest mode",
            ));
        }
        if config.prefix.contains(['{', '}']) {
            return Err(unavailable(
                "the prefix of a Redis Cluster bus must not contain `{` or `}`: topics are the \
                 hash tags of their keys",
            ));
        }
        let slot: Arc<OnceLock<Weak<Core>>> = Arc::new(OnceLock::new());
        let pushes = slot.clone();
        let client = ClusterClientBuilder::new(config.nodes.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.publish_timeout)
            .push_sender(move |info: PushInfo| -> Result<(), Infallible> {
                if let Some(core) = pushes.get().and_then(Weak::upgrade) {
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
            })?;
        let seeds = config
            .nodes
            .iter()
            .map(|url| super::redacted_url(url))
            .collect::<Vec<_>>()
            .join(", ");
        let conn = match timeout(config.connect_timeout, client.get_async_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(unavailable(format!(
                    "cannot connect to the Redis Cluster at {seeds}: {e}"
                )))
            }
            Err(_elapsed) => {
                return Err(unavailable(format!(
                    "cannot connect to the Redis Cluster at {seeds}: no answer within {:?}",
                    config.connect_timeout
                )))
            }
        };
        let (janitor, chores) = mpsc::unbounded_channel();
        let budget = config.replay_budget.clamp(1, Semaphore::MAX_PERMITS);
        let core = Arc::new(Core {
            kind,
            conn,
            names: Names {
                prefix: config.prefix.clone(),
                channel_kind: match kind {
                    Kind::PubSub => "t",
                    Kind::Streams => "n",
                },
            },
            lanes: Mutex::new(HashMap::new()),
            limits,
            request_timeout: config.publish_timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            idle_ttl: config.stream_idle_ttl.max(config.stream_max_age),
            state_script: Script::new(STATE_SCRIPT),
            new_epoch_script: Script::new(NEW_EPOCH_SCRIPT),
            syncs: Semaphore::new(MAX_SYNCS),
            replay_budget: Arc::new(Semaphore::new(budget)),
            replay_page: PAGE.min(budget),
            replay_wait: config.replay_wait,
            janitor,
            failing: AtomicUsize::new(0),
            problem: Mutex::new(None),
            unreachable: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let _ = slot.set(Arc::downgrade(&core));
        // A cluster that answers the connection but not commands is not usable.
        core.subscriptions().await.map_err(unavailable)?;
        tokio::spawn(Janitor::new(&core, chores, config.unsubscribe_delay).run());
        tracing::info!(nodes = %seeds, ?kind, "connected to the Redis Cluster");
        Ok(Self {
            core,
            root: Hub::new(random_u32(), false, limits),
            publish_script: Script::new(match kind {
                Kind::PubSub => PUBSUB_SCRIPT,
                Kind::Streams => STREAMS_SCRIPT,
            }),
            publish_timeout: config.publish_timeout,
            max_len: config.stream_max_len,
            max_age: config.stream_max_age,
            idempotency_ttl: config.idempotency_ttl,
            replicas: config.replicas,
            replica_timeout: config.replica_timeout,
        })
    }

    async fn publish(&self, topic: Topic, event: Event) -> Result<Published, BusError> {
        let body = event.encode_body(0);
        let names = &self.core.names;
        let mut invocation = self.publish_script.prepare_invoke();
        invocation.key(names.state(&topic));
        let epoch = format!("{:08x}", random_u32());
        let remember = self.core.kind == Kind::Streams && !self.idempotency_ttl.is_zero();
        match self.core.kind {
            Kind::PubSub => {
                invocation
                    .arg(epoch)
                    .arg(names.channel(&topic))
                    .arg(&body[..])
                    .arg(envelope::seal())
                    .arg(millis(self.core.idle_ttl));
            }
            Kind::Streams => {
                let key = IDEMPOTENCY_KEY
                    .try_with(Clone::clone)
                    .unwrap_or_else(|_| format!("{:016x}{:016x}", random_u64(), random_u64()));
                let remember_secs = if remember {
                    self.idempotency_ttl.as_millis().div_ceil(1000)
                } else {
                    0
                };
                invocation
                    .key(names.stream(&topic))
                    .key(names.key(&topic, &format!("i:{key}")))
                    .arg(epoch)
                    .arg(names.channel(&topic))
                    .arg(&body[..])
                    .arg(envelope::seal())
                    .arg(self.max_len)
                    .arg(millis(self.max_age))
                    .arg(millis(self.core.idle_ttl))
                    .arg(remember_secs);
            }
        }
        // With the key remembered, a publish whose answer did not come is sent once more: if the
        // first one ran after all, the second finds the key and answers with its id.
        let attempts = if remember { 2 } else { 1 };
        let mut last = BusError::new(BusErrorKind::Timeout);
        for _ in 0..attempts {
            let mut conn = self.core.conn.clone();
            let reply = timeout(
                self.publish_timeout,
                invocation.invoke_async::<Vec<String>>(&mut conn),
            )
            .await;
            let reply = match reply {
                Err(_elapsed) => {
                    last = BusError::new(BusErrorKind::Timeout);
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(BusError::with_source(
                        BusErrorKind::Unavailable(format!(
                            "publishing to the Redis Cluster failed: {e}"
                        )),
                        e,
                    ))
                }
                Ok(Ok(reply)) => reply,
            };
            let state = match reply.as_slice() {
                [epoch, seq, ..] => parse_state(epoch, seq),
                _ => None,
            };
            let Some((epoch, seq)) = state else {
                return Err(unavailable(format!(
                    "unexpected content in the Redis key {}",
                    names.state(&topic)
                )));
            };
            if self.core.kind == Kind::Streams && self.replicas > 0 {
                // On the connection the script ran on: the topic's primary.
                let route = Route::with_key(names.state(&topic), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let mut wait = ::redis::cmd("WAIT");
                wait.arg(self.replicas).arg(millis(self.replica_timeout));
                let waiting = async {
                    let reply = conn.route_command(wait, routing).await?;
                    ::redis::from_redis_value::<i64>(reply).map_err(::redis::RedisError::from)
                };
                replicated(self.publish_timeout, self.replicas, waiting).await?;
            }
            return Ok(Published::new(EventId::new(epoch, seq), false));
        }
        Err(last)
    }

    async fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: Option<String>,
    ) -> Result<Subscription, BusError> {
        if self.root.is_closed() {
            return Err(BusError::new(BusErrorKind::Closed));
        }
        let lanes: Vec<Arc<Lane>> = topics.iter().map(|t| self.core.want(t)).collect();
        let interest = Interest {
            core: Arc::downgrade(&self.core),
            lanes: lanes.clone(),
        };
        // One deadline for all: when the cluster is down, a stream of several topics waits
        // no longer than one of one topic.
        let deadline = Instant::now() + self.core.request_timeout;
        for lane in &lanes {
            wait_listening(lane, deadline).await;
        }
        let cursors: Vec<Option<String>> = match (&resume, lanes.len()) {
            (None, _) => vec![None; lanes.len()],
            (Some(raw), 1) => vec![Some(raw.clone())],
            (Some(raw), n) => match Cursor::parse_per_topic(raw, n) {
                Some(ids) => ids.iter().map(|id| Some(id.to_string())).collect(),
                // Each topic then starts over with a reset saying the id was invalid.
                None => vec![Some(String::new()); n],
            },
        };
        let mut parts = Vec::with_capacity(lanes.len());
        for (lane, cursor) in lanes.iter().zip(cursors) {
            parts.push(self.core.subscribe_lane(lane, cursor).await?);
        }
        let subscription = if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Subscription::per_topic(parts)
        };
        Ok(subscription.with_guard(Box::new(interest)))
    }
}

impl Backend for RedisCluster {
    fn publish(&self, topic: Topic, event: Event) -> BoxFuture<'_, Result<Published, BusError>> {
        Box::pin(self.publish(topic, event))
    }

    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: Option<String>,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(self.subscribe(topics, resume))
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

    fn hub(&self) -> &Hub {
        &self.root
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

/// A subscription's interest in its topics' lanes.
struct Interest {
    core: Weak<Core>,
    lanes: Vec<Arc<Lane>>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        for lane in &self.lanes {
            let mut state = lock(&lane.state);
            state.interest = state.interest.saturating_sub(1);
            if state.interest == 0 && !state.removed {
                let _ = core.janitor.send(Chore::Release(lane.topic.clone()));
            }
        }
    }
}

impl Core {
    /// The connection's pushes: messages, and the notices that call for a sync.
    fn on_push(self: &Arc<Self>, info: PushInfo) {
        let PushInfo { kind, data } = info;
        let mut data = data.into_iter();
        match kind {
            PushKind::SMessage | PushKind::Message => {
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    if let Some(topic) = self.names.topic_of(&channel) {
                        // Takes over the buffer the message was read into: no copy.
                        self.message(topic, Bytes::from(payload));
                    }
                }
            }
            PushKind::SUnsubscribe => {
                // Our own unsubscribes come after the lane is gone; any other means the
                // topic's slot moved.
                if let Some(Value::BulkString(channel)) = data.next() {
                    let lane = self
                        .names
                        .topic_of(&channel)
                        .and_then(|topic| lock(&self.lanes).get(topic).cloned());
                    if let Some(lane) = lane {
                        tracing::debug!(topic = %lane.topic, "sharded channel moved; subscribing again");
                        self.resync(&lane);
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::debug!("a Redis Cluster connection closed; syncing every topic");
                self.resync_all();
            }
            _ => {}
        }
    }

    /// A message on a topic's channel.
    fn message(self: &Arc<Self>, topic: &str, payload: Bytes) {
        let Some(lane) = lock(&self.lanes).get(topic).cloned() else {
            return;
        };
        let mut state = lock(&lane.state);
        if let Some(held) = &mut state.held {
            held.hold_bytes(payload);
            return;
        }
        if let Err(payload) = self.accept(&lane, &mut state, payload, true) {
            let mut held = Held::default();
            held.hold_bytes(payload);
            state.held = Some(held);
            self.start_sync(&lane, &mut state);
        }
    }

    /// Delivers a message that follows what the lane delivered; gives it back when a sync must
    /// come first (another epoch, on Streams a skipped number, or a `live` message numbered at
    /// or below the last one delivered: the counter went back). Messages held during a sync
    /// are not `live`: the sync may have read them from the stream already.
    fn accept(
        &self,
        lane: &Lane,
        state: &mut LaneState,
        payload: Bytes,
        live: bool,
    ) -> Result<(), Bytes> {
        let (meta, frame) = envelope::open(payload.clone());
        let Some(id) = frame_id(&frame) else {
            tracing::debug!(topic = %lane.topic, "ignoring a message that is not an event frame");
            return Ok(());
        };
        if state.abandoned == Some(id.epoch()) {
            return Ok(());
        }
        if state.epoch != Some(id.epoch()) {
            return Err(payload);
        }
        let seq = id.sequence();
        if seq <= state.delivered {
            if live {
                state.rewound = true;
                return Err(payload);
            }
            return Ok(());
        }
        if seq > state.delivered + 1 {
            if self.kind == Kind::Streams {
                return Err(payload);
            }
            lane.hub.gap(
                Some(std::slice::from_ref(&lane.topic)),
                seq - 1,
                GapReason::BrokerDisconnected,
            );
        }
        state.delivered = seq;
        let _span = meta.deliver_span(&lane.topic, id).entered();
        lane.hub.deliver(&lane.topic, seq, frame, meta.age());
        Ok(())
    }

    /// Counts a subscriber of `topic`, creating (and syncing) its lane if needed.
    fn want(self: &Arc<Self>, topic: &Topic) -> Arc<Lane> {
        let mut lanes = lock(&self.lanes);
        let lane = lanes
            .entry(topic.clone())
            .or_insert_with(|| {
                Arc::new(Lane {
                    topic: topic.clone(),
                    hub: Hub::new(random_u32(), false, self.limits),
                    state: Mutex::new(LaneState::default()),
                    synced: watch::Sender::new(0),
                })
            })
            .clone();
        // Counted under the map's lock, so the janitor cannot drop the lane meanwhile.
        let mut state = lock(&lane.state);
        drop(lanes);
        state.interest += 1;
        if state.epoch.is_none() && state.held.is_none() {
            state.held = Some(Held::default());
            self.start_sync(&lane, &mut state);
        }
        drop(state);
        lane
    }

    /// Starts a sync of `lane`, holding its messages from now on.
    fn resync(self: &Arc<Self>, lane: &Arc<Lane>) {
        let mut state = lock(&lane.state);
        if state.removed {
            return;
        }
        state.held.get_or_insert_with(Held::default);
        self.start_sync(lane, &mut state);
    }

    fn resync_all(self: &Arc<Self>) {
        let lanes: Vec<Arc<Lane>> = lock(&self.lanes).values().cloned().collect();
        for lane in &lanes {
            self.resync(lane);
        }
    }

    /// Spawns the lane's sync task, or when it runs, has it go another round. The lane must
    /// hold its messages.
    fn start_sync(self: &Arc<Self>, lane: &Arc<Lane>, state: &mut LaneState) {
        if state.removed {
            return;
        }
        if state.syncing {
            state.again = true;
            return;
        }
        state.syncing = true;
        tokio::spawn(self.clone().sync_task(lane.clone()));
    }

    /// Syncs the lane until a sync succeeds, with backoff between attempts.
    async fn sync_task(self: Arc<Self>, lane: Arc<Lane>) {
        let Ok(_permit) = self.syncs.acquire().await else {
            return;
        };
        let mut attempt: u32 = 0;
        let mut rounds: u32 = 0;
        loop {
            {
                let mut state = lock(&lane.state);
                if state.removed || self.closed.load(Ordering::SeqCst) {
                    state.syncing = false;
                    state.held = None;
                    self.set_failing(&mut state, None);
                    return;
                }
            }
            // Held messages that still do not fit after a few rounds are not events of this
            // topic's history (nothing but the scripts should publish on its channel).
            let lenient = rounds >= MAX_ROUNDS;
            match self.sync(&lane, lenient).await {
                Ok(Round::Live) => return,
                Ok(Round::Again) => attempt = 0,
                Ok(Round::Unfit) => {
                    attempt = 0;
                    rounds += 1;
                }
                Err(reason) => {
                    if attempt % 10 == 0 {
                        tracing::warn!(topic = %lane.topic, %reason, attempt, "syncing a topic with the Redis Cluster failed; retrying");
                    }
                    self.set_failing(&mut lock(&lane.state), Some(reason));
                    tokio::time::sleep(backoff(self.backoff_min, self.backoff_max, attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// One sync: subscribe, read the counter, catch up to it, then pass the held messages on.
    /// Says whether the lane is live again or needs another round.
    async fn sync(&self, lane: &Arc<Lane>, lenient: bool) -> Result<Round, String> {
        // This round answers every request made before it subscribes.
        lock(&lane.state).again = false;
        let channel = self.names.channel(&lane.topic);
        let mut conn = self.conn.clone();
        self.request("SSUBSCRIBE", conn.ssubscribe(&channel))
            .await?;
        let (mut epoch, mut seq) = self.read_state(&lane.topic).await?;
        let went_back = {
            let mut state = lock(&lane.state);
            let rewound = std::mem::take(&mut state.rewound);
            state.epoch == Some(epoch) && (rewound || seq < state.delivered)
        };
        if went_back {
            tracing::warn!(
                topic = %lane.topic,
                counter = seq,
                "the topic's counter went back (a failover lost events); starting a new epoch"
            );
            (epoch, seq) = self.start_epoch(&lane.topic, epoch).await?;
        }

        let from = {
            let mut state = lock(&lane.state);
            match state.epoch {
                None => {
                    // First sync: the topic is heard from here on.
                    lane.hub.new_epoch(epoch, seq);
                    lane.hub.listening(&lane.topic, seq);
                    state.epoch = Some(epoch);
                    state.delivered = seq;
                    None
                }
                Some(known) if known != epoch => {
                    // The topic's state expired or was lost, or its counter went back: a new
                    // history.
                    if went_back {
                        state.abandoned = Some(known);
                    }
                    state.epoch = Some(epoch);
                    match self.kind {
                        Kind::PubSub => {
                            lane.hub.new_epoch(epoch, seq);
                            state.delivered = seq;
                            None
                        }
                        Kind::Streams => {
                            lane.hub.new_epoch(epoch, 0);
                            state.delivered = 0;
                            Some(0)
                        }
                    }
                }
                Some(_) if seq <= state.delivered => None,
                Some(_) => match self.kind {
                    Kind::PubSub => {
                        lane.hub.gap(
                            Some(std::slice::from_ref(&lane.topic)),
                            seq,
                            GapReason::BrokerDisconnected,
                        );
                        state.delivered = seq;
                        None
                    }
                    Kind::Streams => Some(state.delivered),
                },
            }
        };
        if let Some(from) = from {
            self.fill(lane, epoch, from, seq).await?;
        }

        let mut state = lock(&lane.state);
        if std::mem::take(&mut state.again) {
            // Asked for while this round ran (the slot may have moved after it subscribed).
            return Ok(Round::Again);
        }
        let held = state.held.take().unwrap_or_default();
        if held.overflowed {
            state.held = Some(Held::default());
            return Ok(Round::Again);
        }
        let mut messages = held.messages.into_iter();
        while let Some(payload) = messages.next() {
            if let Err(payload) = self.accept(lane, &mut state, payload, false) {
                if lenient {
                    tracing::debug!(topic = %lane.topic, "dropping a message that does not follow the topic's events");
                    continue;
                }
                let mut rest = Held::default();
                rest.hold_bytes(payload);
                messages.for_each(|p| rest.hold_bytes(p));
                state.held = Some(rest);
                return Ok(Round::Unfit);
            }
        }
        state.syncing = false;
        self.set_failing(&mut state, None);
        drop(state);
        lane.synced.send_modify(|n| *n += 1);
        Ok(Round::Live)
    }

    /// Streams: delivers the topic's events in `(from, until]` of `epoch` from its stream, with
    /// a gap for those that were trimmed.
    async fn fill(&self, lane: &Lane, epoch: u32, from: u64, until: u64) -> Result<(), String> {
        let mut after = from;
        while after < until {
            let page = self.read_page(&lane.topic, after, PAGE).await?;
            let full = page.len() >= PAGE;
            let mut state = lock(&lane.state);
            for (seq, frame) in page {
                after = seq;
                if seq > until {
                    break;
                }
                if frame_id(&frame).map(|id| id.epoch()) != Some(epoch) || seq <= state.delivered {
                    continue;
                }
                if seq > state.delivered + 1 {
                    lane.hub.gap(
                        Some(std::slice::from_ref(&lane.topic)),
                        seq - 1,
                        GapReason::BrokerDisconnected,
                    );
                }
                state.delivered = seq;
                let (meta, frame) = envelope::open(frame);
                let _span = meta
                    .deliver_span(&lane.topic, EventId::new(epoch, seq))
                    .entered();
                lane.hub.deliver(&lane.topic, seq, frame, meta.age());
            }
            if !full || after >= until {
                // Trimmed (or expired) up to the end: what is left is lost.
                if state.delivered < until {
                    lane.hub.gap(
                        Some(std::slice::from_ref(&lane.topic)),
                        until,
                        GapReason::BrokerDisconnected,
                    );
                    state.delivered = until;
                }
                break;
            }
        }
        Ok(())
    }

    /// Up to `count` entries of the topic's stream after `after`: sequence numbers and frames
    /// (still in their envelopes).
    async fn read_page(
        &self,
        topic: &Topic,
        after: u64,
        count: usize,
    ) -> Result<Vec<(u64, Bytes)>, String> {
        let mut conn = self.conn.clone();
        let mut command = ::redis::cmd("XRANGE");
        command
            .arg(self.names.stream(topic))
            .arg(format!("({after}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let reading = command.query_async::<Value>(&mut conn);
        let reply = self
            .request(&format!("reading the stream of {topic}"), reading)
            .await?;
        parse_entries(reply).ok_or_else(|| format!("unexpected content in the stream of {topic}"))
    }

    /// Reads a topic's epoch (starting one if it has none) and last sequence number.
    async fn read_state(&self, topic: &Topic) -> Result<(u32, u64), String> {
        let mut invocation = self.state_script.prepare_invoke();
        invocation
            .key(self.names.state(topic))
            .arg(format!("{:08x}", random_u32()))
            .arg(millis(self.idle_ttl));
        self.state_request(topic, "reading a topic's state", invocation)
            .await
    }

    /// Replaces the topic's epoch `stale` with a new one (see [`NEW_EPOCH_SCRIPT`]).
    async fn start_epoch(&self, topic: &Topic, stale: u32) -> Result<(u32, u64), String> {
        let fresh = std::iter::repeat_with(random_u32)
            .find(|&e| e != stale)
            .expect("an endless iterator");
        let mut invocation = self.new_epoch_script.prepare_invoke();
        invocation
            .key(self.names.state(topic))
            .arg(format!("{stale:08x}"))
            .arg(format!("{fresh:08x}"))
            .arg(millis(self.idle_ttl));
        self.state_request(topic, "starting a topic's epoch", invocation)
            .await
    }

    /// Runs a script that answers with a topic's epoch and last sequence number.
    async fn state_request(
        &self,
        topic: &Topic,
        what: &str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<(u32, u64), String> {
        let mut conn = self.conn.clone();
        let (epoch, seq): (String, String) = self
            .request(what, invocation.invoke_async(&mut conn))
            .await?;
        parse_state(&epoch, &seq).ok_or_else(|| {
            format!(
                "unexpected content in the Redis key {}",
                self.names.state(topic)
            )
        })
    }

    /// Subscribes to one lane's hub, resuming from `cursor`.
    async fn subscribe_lane(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        cursor: Option<String>,
    ) -> Result<Subscription, BusError> {
        let topics = vec![lane.topic.clone()];
        let parsed = cursor.as_deref().map(str::parse::<EventId>);
        match (self.kind, parsed) {
            (Kind::Streams, Some(Ok(cursor))) => self.resume(lane, cursor).await,
            _ => lane.hub.subscribe(topics, cursor.as_deref()),
        }
    }

    /// Streams: resumes one topic from `cursor`, from the hub's history when it reaches back
    /// far enough, otherwise from the stream (see the Streams backend for the protocol: events
    /// above the registration's watermark reach the queue, the replay is read up to it).
    async fn resume(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        cursor: EventId,
    ) -> Result<Subscription, BusError> {
        let mut caught_up = false;
        loop {
            let registration = match lane
                .hub
                .resume_or_register(vec![lane.topic.clone()], cursor)?
            {
                Resume::Done(subscription) => {
                    let stale =
                        subscription.status() == ResumeStatus::Reset(ResetReason::UnknownEpoch);
                    if stale && !caught_up {
                        drop(subscription);
                        self.catch_up(lane).await?;
                        caught_up = true;
                        continue;
                    }
                    return Ok(subscription);
                }
                Resume::Pending(registration) => registration,
            };
            let epoch = registration.epoch();
            let watermark = registration.watermark();
            if cursor.sequence() > watermark {
                if !caught_up {
                    drop(registration);
                    self.catch_up(lane).await?;
                    caught_up = true;
                    continue;
                }
                let status = ResumeStatus::Reset(ResetReason::UnknownId);
                let start = EventId::new(epoch, watermark);
                return Ok(registration.finish(VecDeque::new(), status, start));
            }
            let until = registration.known()[0];
            return Ok(
                match self
                    .replay(&lane.topic, epoch, cursor.sequence(), until)
                    .await?
                {
                    Some(replay) => {
                        let status = ResumeStatus::Resumed {
                            replayed: replay.len(),
                        };
                        registration.finish(replay, status, cursor)
                    }
                    None => {
                        let status = ResumeStatus::Reset(ResetReason::HistoryExpired);
                        let start = EventId::new(epoch, watermark);
                        registration.finish(VecDeque::new(), status, start)
                    }
                },
            );
        }
    }

    /// Makes the lane deliver everything up to the topic's counter as it is now, so an id
    /// another instance handed out is known here.
    async fn catch_up(self: &Arc<Self>, lane: &Arc<Lane>) -> Result<(), BusError> {
        let (epoch, seq) = self.read_state(&lane.topic).await.map_err(unavailable)?;
        let behind = {
            let state = lock(&lane.state);
            state.epoch != Some(epoch) || state.delivered < seq
        };
        if !behind {
            return Ok(());
        }
        let mut synced = lane.synced.subscribe();
        let before = *synced.borrow_and_update();
        self.resync(lane);
        let waiting = async { synced.wait_for(|&n| n > before).await.map(drop) };
        match timeout(self.request_timeout, waiting).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(unavailable("the event bus was dropped")),
            Err(_elapsed) => Err(unavailable(
                "events from Redis are still being caught up with; try again",
            )),
        }
    }

    /// The events of `topic` numbered in `(after, until]` of `epoch`, read from its stream
    /// within the replay budget; `None` when some are gone.
    async fn replay(
        &self,
        topic: &Topic,
        epoch: u32,
        after: u64,
        until: u64,
    ) -> Result<Option<VecDeque<Item>>, BusError> {
        let mut items = VecDeque::new();
        let mut cursor = after;
        let mut held = None;
        while cursor < until {
            let want = usize::try_from(until - cursor)
                .unwrap_or(usize::MAX)
                .min(self.replay_page);
            let want = u32::try_from(want).expect("at most a page");
            let budget = self.replay_budget.clone();
            let overloaded = || BusError::new(BusErrorKind::Overloaded);
            // Only the first page waits: a read holding budget must not block on more.
            let permit = if held.is_none() {
                match timeout(self.replay_wait, budget.acquire_many_owned(want)).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(overloaded()),
                }
            } else {
                budget
                    .try_acquire_many_owned(want)
                    .map_err(|_| overloaded())?
            };
            let page = self
                .read_page(topic, cursor, want as usize)
                .await
                .map_err(unavailable)?;
            if page.is_empty() {
                break;
            }
            for (seq, frame) in page {
                if seq > until {
                    cursor = until;
                    break;
                }
                let (_meta, frame) = envelope::open(frame);
                if frame_id(&frame).map(|id| id.epoch()) != Some(epoch) {
                    continue;
                }
                if seq != cursor + 1 {
                    // Trimmed: the resume cannot be complete.
                    return Ok(None);
                }
                cursor = seq;
                items.push_back(Item::Event(EventId::new(epoch, seq), frame));
            }
            match &mut held {
                None => held = Some(permit),
                Some(held) => held.merge(permit),
            }
        }
        Ok((cursor >= until).then_some(items))
    }

    /// How many sharded channels this instance's connections to the primaries are subscribed
    /// to (`ssub` of `CLIENT INFO`, summed); fails unless every primary answers.
    async fn subscriptions(&self) -> Result<usize, String> {
        let mut conn = self.conn.clone();
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let mut command = ::redis::cmd("CLIENT");
        command.arg("INFO");
        let reply = self
            .request("CLIENT INFO", conn.route_command(command, routing))
            .await?;
        let replies: Vec<Value> = match reply {
            Value::Map(pairs) => pairs.into_iter().map(|(_node, reply)| reply).collect(),
            other => vec![other],
        };
        let mut total = 0;
        for reply in replies {
            let info = match reply {
                Value::BulkString(text) => text,
                Value::VerbatimString { text, .. } => text.into_bytes(),
                Value::ServerError(e) => return Err(format!("CLIENT INFO failed: {e:?}")),
                other => return Err(format!("unexpected reply to CLIENT INFO: {other:?}")),
            };
            total += sharded_subscriptions(&info)
                .ok_or_else(|| "CLIENT INFO did not say how many channels".to_owned())?;
        }
        Ok(total)
    }

    /// Records whether the lane's last sync attempt failed, and why.
    fn set_failing(&self, state: &mut LaneState, reason: Option<String>) {
        match (state.failing, reason) {
            (false, Some(reason)) => {
                state.failing = true;
                self.failing.fetch_add(1, Ordering::SeqCst);
                *lock(&self.problem) = Some(reason);
            }
            (true, Some(reason)) => *lock(&self.problem) = Some(reason),
            (true, None) => {
                state.failing = false;
                self.failing.fetch_sub(1, Ordering::SeqCst);
            }
            (false, None) => {}
        }
    }

    fn health(&self) -> Health {
        if let Some(reason) = lock(&self.unreachable).clone() {
            return Health::unhealthy(reason);
        }
        if self.failing.load(Ordering::SeqCst) == 0 {
            return Health::healthy();
        }
        let problem = lock(&self.problem).clone();
        Health::unhealthy(problem.unwrap_or_else(|| "the Redis Cluster is unreachable".to_owned()))
    }

    /// Runs a request with the request timeout.
    async fn request<T>(
        &self,
        what: &str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        timed("the Redis Cluster", what, self.request_timeout, request).await
    }
}

/// The task that unsubscribes from topics nobody follows any more, and checks the cluster.
struct Janitor {
    core: Weak<Core>,
    chores: mpsc::UnboundedReceiver<Chore>,
    delay: Duration,
    idle: HashMap<Topic, Instant>,
}

impl Janitor {
    fn new(core: &Arc<Core>, chores: mpsc::UnboundedReceiver<Chore>, delay: Duration) -> Self {
        Self {
            core: Arc::downgrade(core),
            chores,
            delay,
            idle: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let mut check = tokio::time::interval_at(Instant::now() + CHECK_INTERVAL, CHECK_INTERVAL);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next = self.idle.values().min().copied();
            tokio::select! {
                chore = self.chores.recv() => match chore {
                    Some(Chore::Release(topic)) => {
                        self.idle.insert(topic, Instant::now() + self.delay);
                    }
                    Some(Chore::Close) | None => break,
                },
                () = sleep_until(next) => self.drop_idle().await,
                _ = check.tick() => self.check().await,
            }
        }
        if let Some(core) = self.core.upgrade() {
            let lanes: Vec<Arc<Lane>> = lock(&core.lanes).drain().map(|(_, lane)| lane).collect();
            for lane in &lanes {
                core.forget(lane).await;
            }
        }
    }

    /// Drops the lanes whose delay is over and that nobody followed again meanwhile.
    async fn drop_idle(&mut self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        for topic in take_due(&mut self.idle) {
            let lane = {
                let mut lanes = lock(&core.lanes);
                let idle = lanes
                    .get(&topic)
                    .is_some_and(|lane| lock(&lane.state).interest == 0);
                if idle {
                    lanes.remove(&topic)
                } else {
                    None
                }
            };
            if let Some(lane) = lane {
                core.forget(&lane).await;
            }
        }
    }

    /// Checks the primaries, and syncs every lane when they answer again after failing, or
    /// when they hold fewer of this instance's subscriptions than it has synced lanes.
    async fn check(&mut self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        // Counted first: a lane synced before the question is subscribed when it is asked.
        let expected = lock(&core.lanes)
            .values()
            .filter(|lane| {
                let state = lock(&lane.state);
                !state.syncing && !state.removed && state.epoch.is_some()
            })
            .count();
        let answer = core.subscriptions().await;
        let was_down = lock(&core.unreachable).is_some();
        match answer {
            Ok(_) if was_down => {
                *lock(&core.unreachable) = None;
                // Pushes may have been lost with the connection that failed.
                core.resync_all();
            }
            Ok(held) if held < expected => {
                tracing::debug!(
                    held,
                    expected,
                    "the cluster holds fewer subscriptions than expected; syncing every topic"
                );
                core.resync_all();
            }
            Ok(_) => {}
            Err(reason) => {
                if !was_down {
                    tracing::warn!(%reason, "the Redis Cluster does not answer");
                }
                *lock(&core.unreachable) = Some(reason);
            }
        }
    }
}

impl Core {
    /// Stops listening to a lane that was taken out of the map.
    async fn forget(&self, lane: &Lane) {
        {
            let mut state = lock(&lane.state);
            state.removed = true;
            state.held = None;
            self.set_failing(&mut state, None);
        }
        lane.hub.close();
        let channel = self.names.channel(&lane.topic);
        let mut conn = self.conn.clone();
        if let Err(reason) = self
            .request("SUNSUBSCRIBE", conn.sunsubscribe(&channel))
            .await
        {
            tracing::debug!(topic = %lane.topic, %reason, "unsubscribing failed");
        }
    }
}

/// Waits until the lane synced once, or until `deadline` (the cluster is down: the subscription
/// starts anyway and hears the topic once the sync succeeds).
async fn wait_listening(lane: &Lane, deadline: Instant) {
    let mut synced = lane.synced.subscribe();
    let waiting = async { synced.wait_for(|&n| n > 0).await.map(drop) };
    let _ = tokio::time::timeout_at(deadline, waiting).await;
}

/// Parses an `XRANGE` reply into sequence numbers and frames.
fn parse_entries(reply: Value) -> Option<Vec<(u64, Bytes)>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return None;
        };
        let mut parts = parts.into_iter();
        let (Some(Value::BulkString(id)), Some(fields)) = (parts.next(), parts.next()) else {
            return None;
        };
        let seq = std::str::from_utf8(id.strip_suffix(b"-0")?)
            .ok()?
            .parse()
            .ok()?;
        let fields = match fields {
            Value::Array(fields) => fields,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        let mut fields = fields.into_iter();
        let mut frame = None;
        while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
            (fields.next(), fields.next())
        {
            if name == b"f" {
                frame = Some(Bytes::from(value));
            }
        }
        out.push((seq, frame?));
    }
    Some(out)
}

/// The `ssub=` count of a `CLIENT INFO` line.
fn sharded_subscriptions(info: &[u8]) -> Option<usize> {
    let info = std::str::from_utf8(info).ok()?;
    info.split_ascii_whitespace()
        .find_map(|field| field.strip_prefix("ssub="))?
        .parse()
        .ok()
}

fn unavailable(reason: impl Into<String>) -> BusError {
    BusError::new(BusErrorKind::Unavailable(reason.into()))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_topic_as_hash_tag() {
        let names = Names {
            prefix: "app".to_owned(),
            channel_kind: "n",
        };
        let topic = Topic::new("org:orders").unwrap();
        assert_eq!(names.state(&topic), "app:{org:orders}:state");
        assert_eq!(names.stream(&topic), "app:{org:orders}:s");
        let channel = names.channel(&topic);
        assert_eq!(channel, "app:{org:orders}:n");
        assert_eq!(names.topic_of(channel.as_bytes()), Some(topic.as_str()));
        assert_eq!(names.topic_of(b"app:{org:orders}:t"), None);
        assert_eq!(names.topic_of(b"other:{x}:n"), None);
    }

    #[test]
    fn client_info() {
        let info = b"id=3 addr=127.0.0.1:1 flags=P db=0 sub=0 psub=0 ssub=12 multi=-1\n";
        assert_eq!(sharded_subscriptions(info), Some(12));
        assert_eq!(sharded_subscriptions(b"id=3 sub=1"), None);
    }

    #[test]
    fn stream_entries() {
        let entry = |id: &str, frame: &str| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"t".to_vec()),
                    Value::BulkString(b"1".to_vec()),
                    Value::BulkString(b"f".to_vec()),
                    Value::BulkString(frame.as_bytes().to_vec()),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            entry("7-0", "data: a\n\n"),
            entry("8-0", "data: b\n\n"),
        ]);
        let entries = parse_entries(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0, 8);
        assert_eq!(&entries[1].1[..], b"data: b\n\n");
        assert!(parse_entries(Value::Array(vec![entry("7-1", "x")])).is_none());
    }
}
