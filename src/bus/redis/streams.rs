//! The Redis Streams backend: every event is kept in a Redis stream per topic, so any instance
//! can resume any client, and connected clients miss nothing when a connection drops.
//!
//! # Keys
//!
//! - `{prefix}:state`: the hash with the `epoch` and the global `seq`, as for Pub/Sub.
//! - `{prefix}:s:{topic}`: the topic's stream. Entry ids are `{seq}-0` (the global sequence
//!   number is increasing, so it is a valid stream id), fields `f` (the complete frame, with its
//!   `id:` line) and `p` (the topic's previous event: see below).
//! - `{prefix}:clock`: a sorted set of checkpoints, sequence numbers scored with the time they
//!   were published at (at most one per [`clock_step`]), which lets the scripts turn "older than
//!   a duration" into "numbered below a sequence number".
//! - `{prefix}:i:{key}`: the id a publish with this idempotency key got, for a few minutes.
//! - Channel `{prefix}:n:{topic}`: one notification per event, `{p} {frame}`.
//!
//! # The previous event (`p`)
//!
//! Since the counter is global, the sequence numbers of one topic jump; `p` says where the
//! previous event of the same topic is, so a reader can tell whether it has it:
//!
//! - `123`: the topic's previous event is 123 exactly.
//! - `~123`: the topic's stream did not exist (never, or it expired after being idle): its
//!   previous event, if any, is numbered below 123, because a stream expires only
//!   [`stream_idle_ttl`](super::RedisConfig::stream_idle_ttl) after its last event and 123 is
//!   the first checkpoint after that long ago.
//!
//! A resume from cursor `c` misses nothing of a topic exactly when the first entry after `c`
//! has `p <= c`, or no entry follows `c` (the newest entry of a stream is never trimmed, so an
//! existing stream always shows the topic's last event). When the stream does not exist, the
//! same bound is computed at read time.
//!
//! # Trimming
//!
//! The publish script trims by count (`MAXLEN ~ N`) and by age: with sequence-numbered entry
//! ids, `MINID` cannot express time directly, so the script looks up the newest checkpoint at
//! least the maximum age old and trims below its sequence number (`MINID ~`). Both are
//! approximate (whole macro nodes), so a topic keeps at least its limits and some more. Every
//! publish sets the stream's expiry to the idle TTL, so the keys of idle topics vanish.
//!
//! # Epochs
//!
//! When the state hash is gone, the next publish (or state read) starts a new epoch. A stream
//! or clock left over from the old one is deleted by the first publish that meets it (the
//! epoch is in each entry's `id:` line); until then, readers ignore entries of another epoch.
//!
//! # Live delivery
//!
//! Notifications travel over the shared connection (`super::connection`), subscribed per topic.
//! They pass through one task, the pipeline, which delivers to the hub in sequence order and
//! keeps the last sequence number delivered per topic. When a notification's exact `p` is above
//! it, the pipeline reads the missing entries from the stream (`XRANGE` with an exclusive start,
//! paged) before going on. After a reconnect it reads every live topic from there up to the
//! counter read after resubscribing (merged by sequence number across topics), so subscribers
//! see a contiguous sequence; only events trimmed meanwhile become a [`GapReason`] gap, and so
//! does an event found numbered below one already delivered (subscribers of several topics
//! could not get it in order).
//!
//! # Resume
//!
//! The protocol (see [`RedisStreams::resume`]): listen to the topics; then, under the gate the
//! pipeline holds while it delivers, either answer from the hub's local history or register the
//! subscriber and note the watermark `W`, the highest sequence number delivered so far. Events
//! above `W` reach the new subscriber's queue; the replay is read from the streams as
//! `(cursor, W]`. Since deliveries are in sequence order, that is every event once.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ::redis::{aio::MultiplexedConnection, Script, Value};
use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    time::timeout,
};

use super::{
    connection::{frame_id, parse_state, read_state, state_script, Handle, Receiver, Shared},
    envelope::{self, Meta},
    replay::Replay,
    replicated, RedisConfig, SubscribeMode, IDEMPOTENCY_KEY,
};
use crate::{
    bus::{
        backend::{Backend, BoxFuture},
        hub::{Hub, Limits, Resume},
        queue::lock,
        random_u32, random_u64, GapReason, Health, Published, ResetReason, ResumeStatus,
        Subscription, Topic,
    },
    error::{BusError, BusErrorKind},
    event::Event,
    last_event_id::EventId,
};

/// Numbers, stores, trims and announces an event, atomically.
///
/// KEYS: 1 the state hash, 2 the topic's stream, 3 the clock, 4 the idempotency key.
/// ARGV: 1 an epoch to adopt if the hash has none, 2 the channel, 3 the encoded event without
/// its id line, 4 the count limit, 5 the age limit (ms), 6 the idle TTL (ms), 7 the clock step
/// (ms), 8 how long to remember the idempotency key (s; `0`: not at all), 9 the line of the
/// event's [envelope](super::envelope), which the stored frame starts with.
///
/// Returns `{epoch, seq, repeated}`; `repeated` is 1 when the key was seen before, and the
/// ids are the ones the first publish got. Sequence numbers are handled as the strings Redis
/// stores, never as Lua numbers (doubles), so they stay exact.
const PUBLISH_SCRIPT: &str = r"
if ARGV[8] ~= '0' then
  local done = redis.call('GET', KEYS[4])
  if done then
    local e, s = string.match(done, '^(%x+)-(%d+)$')
    if e then return {e, s, 1} end
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[3])
end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
local seq = redis.call('HGET', KEYS[1], 'seq')
local newest_checkpoint = redis.call('ZRANGE', KEYS[3], -1, -1)[1]
if newest_checkpoint and tonumber(newest_checkpoint) >= tonumber(seq) then
  -- Left over from an epoch that ended.
  redis.call('DEL', KEYS[3])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[6])
local step = tonumber(ARGV[7])

local prev
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last then
  local frame
  for i = 1, #last[2], 2 do
    if last[2][i] == 'f' then frame = last[2][i + 1] end
  end
  if frame and string.find(string.sub(frame, -40), 'id: ' .. epoch .. '-', 1, true) then
    prev = string.sub(last[1], 1, -3)
  else
    -- Left over from an epoch that ended: none of it belongs to this history.
    redis.call('DEL', KEYS[2])
  end
end
if not prev then
  local after = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. (now - idle), '+inf', 'LIMIT', 0, 1)[1]
  prev = '~' .. (after or seq)
end

local frame = ARGV[9] .. ARGV[3] .. 'id: ' .. epoch .. '-' .. seq .. '\n\n'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'f', frame, 'p', prev)
local cutoff = redis.call('ZREVRANGEBYSCORE', KEYS[3], now - tonumber(ARGV[5]), '-inf', 'LIMIT', 0, 1)[1]
if cutoff then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', cutoff .. '-0')
end
redis.call('PEXPIRE', KEYS[2], idle)

local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if not newest[2] or now - tonumber(newest[2]) >= step then
  redis.call('ZADD', KEYS[3], now, seq)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - idle - 2 * step))
  redis.call('PEXPIRE', KEYS[3], idle + 2 * step)
end

redis.call('PUBLISH', ARGV[2], prev .. ' ' .. frame)
if ARGV[8] ~= '0' then
  redis.call('SET', KEYS[4], epoch .. '-' .. seq, 'EX', ARGV[8])
end
return {epoch, seq, 0}
";

/// Reads a page of a topic's stream.
///
/// KEYS: 1 the stream, 2 the clock, 3 the state hash. ARGV: 1 read after this sequence number
/// (exclusive), 2 at most this many entries, 3 the idle TTL (ms).
///
/// Returns `{1, entries}` when the stream exists. Otherwise `{0, entries, after, seq}`: `after`
/// is the first checkpoint newer than the idle TTL (any event of the topic is numbered below
/// it), or false when there is none; then the current `seq` bounds them.
const READ_SCRIPT: &str = r"
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {1, entries}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local after = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. (now - tonumber(ARGV[3])), '+inf', 'LIMIT', 0, 1)[1]
return {0, entries, after or false, redis.call('HGET', KEYS[3], 'seq') or '0'}
";

/// How many entries one read of a stream asks for.
pub(super) const PAGE: usize = 256;

/// The backend.
pub(crate) struct RedisStreams {
    conn: Handle,
    core: Arc<Core>,
    /// Into the pipeline, for synchronisation points.
    pipeline: mpsc::UnboundedSender<Input>,
    replay: Replay,
    publish_script: Script,
    state_script: Script,
    publish_timeout: Duration,
    idempotency_ttl: Duration,
    max_len: usize,
    max_age: Duration,
    replicas: usize,
    replica_timeout: Duration,
}

/// What the backend, the pipeline and the replay reads share.
pub(super) struct Core {
    pub(super) hub: Hub,
    /// Held by the pipeline around every change it makes to the hub, and by resumes around
    /// registering: a registration sees the hub between two deliveries, never in the middle of
    /// one (a gap and the event after it, say).
    gate: Mutex<()>,
    pub(super) keys: Keys,
    read_script: Script,
    pub(super) idle_ttl: Duration,
    pub(super) request_timeout: Duration,
}

/// The key names of one prefix.
pub(super) struct Keys {
    state: String,
    stream_prefix: String,
    clock: String,
    idempotency_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            state: format!("{prefix}:state"),
            stream_prefix: format!("{prefix}:s:"),
            clock: format!("{prefix}:clock"),
            idempotency_prefix: format!("{prefix}:i:"),
        }
    }

    fn stream(&self, topic: &Topic) -> String {
        format!("{}{}", self.stream_prefix, topic.as_str())
    }
}

/// The time between two clock checkpoints: a thousandth of the idle TTL, at least a second.
/// The clock holds about a thousand entries, and bounds derived from it are that coarse.
fn clock_step(idle_ttl: Duration) -> Duration {
    (idle_ttl / 1024).max(Duration::from_secs(1))
}

/// What the connection tells the pipeline, in the order of the connection's traffic.
enum Input {
    /// A notification.
    Notice(Topic, Bytes),
    /// A (re)connection subscribed to `topics` and read the state.
    Connected {
        epoch: u32,
        seq: u64,
        topics: Vec<Topic>,
    },
    /// `topics` are heard from above `seq` on.
    Listening {
        epoch: u32,
        seq: u64,
        topics: Vec<Topic>,
    },
    /// `topic` is no longer heard.
    NotListening(Topic),
    /// Every notification sent before the state was read (when given) is ahead of this; reply
    /// once they are delivered.
    Sync {
        state: Option<(u32, u64)>,
        done: oneshot::Sender<()>,
    },
}

/// The connection's [`Receiver`]: forwards everything to the pipeline, in order, except
/// notifications past the backlog.
struct Feed {
    pipeline: mpsc::UnboundedSender<Input>,
    backlog: Arc<Backlog>,
}

/// The most bytes of notifications waiting for the pipeline.
const MAX_BACKLOG_BYTES: usize = 64 << 20;

/// How long the pipeline waits before reading the state again, when catching up failed.
const CATCH_UP_RETRY: Duration = Duration::from_millis(200);

/// Notifications on their way to the pipeline. Other inputs are not counted: there are as many
/// as subscriptions change, whatever the rate of events.
struct Backlog {
    notices: AtomicUsize,
    bytes: AtomicUsize,
    max_notices: usize,
    /// Set when a notification was dropped; the pipeline then reads from the streams.
    overflowed: AtomicBool,
}

impl Backlog {
    /// Counts a notification in, unless the backlog is full.
    fn admit(&self, len: usize) -> bool {
        // One producer (the connection's callback), so checking and then adding is exact on
        // that side; the pipeline only takes away.
        if self.notices.load(Ordering::Relaxed) >= self.max_notices
            || self.bytes.load(Ordering::Relaxed) + len > MAX_BACKLOG_BYTES
        {
            self.overflowed.store(true, Ordering::Release);
            return false;
        }
        self.notices.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        true
    }

    fn release(&self, len: usize) {
        self.notices.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

impl Receiver for Feed {
    fn message(&self, topic: Topic, payload: Bytes) {
        if self.backlog.admit(payload.len()) {
            let _ = self.pipeline.send(Input::Notice(topic, payload));
        }
    }

    fn connected(&self, epoch: u32, seq: u64, topics: &[Topic]) {
        let topics = topics.to_vec();
        let _ = self.pipeline.send(Input::Connected { epoch, seq, topics });
    }

    fn listening(&self, epoch: u32, seq: u64, topics: &[Topic]) {
        let topics = topics.to_vec();
        let _ = self.pipeline.send(Input::Listening { epoch, seq, topics });
    }

    fn not_listening(&self, topic: &Topic) {
        let _ = self.pipeline.send(Input::NotListening(topic.clone()));
    }
}

impl RedisStreams {
    /// Connects, starts the supervisor and the pipeline, and waits until the pipeline knows the
    /// epoch.
    pub(crate) async fn connect(config: RedisConfig, limits: Limits) -> Result<Self, BusError> {
        let (pipeline, inputs) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog {
            notices: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_notices: config.notification_backlog,
            overflowed: AtomicBool::new(false),
        });
        let feed = Arc::new(Feed {
            pipeline: pipeline.clone(),
            backlog: backlog.clone(),
        });
        let idle_ttl = config.stream_idle_ttl.max(config.stream_max_age);
        let core = Arc::new(Core {
            hub: Hub::new(random_u32(), false, limits),
            gate: Mutex::new(()),
            keys: Keys::new(&config.prefix),
            read_script: Script::new(READ_SCRIPT),
            idle_ttl,
            request_timeout: config.publish_timeout,
        });
        let conn = Handle::connect(&config, SubscribeMode::Interest, "n", feed).await?;
        let task = Pipeline {
            core: core.clone(),
            shared: conn.shared(),
            inputs,
            backlog,
            state_script: state_script(),
            last: HashMap::new(),
            watermark: 0,
        };
        tokio::spawn(task.run());
        let backend = Self {
            conn,
            core: core.clone(),
            pipeline,
            replay: Replay::new(config.replay_budget, config.replay_wait),
            publish_script: Script::new(PUBLISH_SCRIPT),
            state_script: state_script(),
            publish_timeout: config.publish_timeout,
            idempotency_ttl: config.idempotency_ttl,
            replicas: config.replicas,
            replica_timeout: config.replica_timeout,
            max_len: config.stream_max_len.max(1),
            max_age: config.stream_max_age,
        };
        // The first connection's state is on its way through the pipeline.
        backend.wait_for_pipeline(None).await?;
        Ok(backend)
    }

    /// Waits until the pipeline handled everything before this point (and, with a state read on
    /// the connection, every notification sent before it).
    async fn wait_for_pipeline(&self, state: Option<(u32, u64)>) -> Result<(), BusError> {
        let (done, wait) = oneshot::channel();
        let _ = self.pipeline.send(Input::Sync { state, done });
        match timeout(self.publish_timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(unavailable("the event bus was dropped")),
            Err(_elapsed) => Err(unavailable(
                "events from Redis are still being caught up with; try again",
            )),
        }
    }

    /// Reads the state on the subscribed connection, whose replies come after the notifications
    /// Redis sent before them, then waits until the pipeline delivered those: afterwards the
    /// hub knows every event numbered up to the returned one, of the topics listened to.
    async fn sync(&self) -> Result<(u32, u64), BusError> {
        let mut conn = self
            .conn
            .connection()
            .ok_or_else(|| unavailable("not connected to Redis"))?;
        let reading = read_state(&self.state_script, &self.conn.names, &mut conn);
        let (epoch, seq) = match timeout(self.publish_timeout, reading).await {
            Ok(Ok(state)) => state,
            Ok(Err(reason)) => return Err(unavailable(reason)),
            Err(_elapsed) => return Err(BusError::new(BusErrorKind::Timeout)),
        };
        self.wait_for_pipeline(Some((epoch, seq))).await?;
        Ok((epoch, seq))
    }

    async fn publish(&self, topic: Topic, event: Event) -> Result<Published, BusError> {
        let body = event.encode_body(0);
        let remember = !self.idempotency_ttl.is_zero();
        let key = IDEMPOTENCY_KEY
            .try_with(Clone::clone)
            .unwrap_or_else(|_| format!("{:016x}{:016x}", random_u64(), random_u64()));
        let keys = &self.core.keys;
        let stream = keys.stream(&topic);
        let idempotency_key = format!("{}{key}", keys.idempotency_prefix);
        let channel = self.conn.names.channel(&topic);
        let step = clock_step(self.core.idle_ttl);
        let remember_secs = if remember {
            self.idempotency_ttl.as_millis().div_ceil(1000)
        } else {
            0
        };
        // With the key remembered, a publish whose answer did not come is sent once more: if the
        // first one ran after all, the second finds the key and answers with its id.
        let attempts = if remember { 2 } else { 1 };
        let sealed = envelope::seal();
        let mut failure = None;
        for attempt in 1..=attempts {
            let Some(mut conn) = self.conn.connection() else {
                return Err(failure.unwrap_or_else(|| unavailable("not connected to Redis")));
            };
            let mut invocation = self.publish_script.prepare_invoke();
            invocation
                .key(&keys.state)
                .key(&stream)
                .key(&keys.clock)
                .key(&idempotency_key)
                .arg(format!("{:08x}", random_u32()))
                .arg(&channel)
                .arg(&body[..])
                .arg(self.max_len)
                .arg(millis(self.max_age))
                .arg(millis(self.core.idle_ttl))
                .arg(millis(step))
                .arg(remember_secs)
                .arg(&sealed);
            let reply = timeout(
                self.publish_timeout,
                invocation.invoke_async::<(String, String, i64)>(&mut conn),
            )
            .await;
            let error = match reply {
                Ok(Ok((epoch, seq, _repeated))) => {
                    let Some((epoch, seq)) = parse_state(&epoch, &seq) else {
                        return Err(unavailable(format!(
                            "unexpected content in the Redis key {}",
                            keys.state
                        )));
                    };
                    if self.replicas > 0 {
                        let mut wait = ::redis::cmd("WAIT");
                        wait.arg(self.replicas).arg(millis(self.replica_timeout));
                        let waiting = wait.query_async::<i64>(&mut conn);
                        replicated(self.publish_timeout, self.replicas, waiting).await?;
                    }
                    return Ok(Published::new(EventId::new(epoch, seq), false));
                }
                Err(_elapsed) => BusError::new(BusErrorKind::Timeout),
                Ok(Err(e)) => {
                    let retry = e.is_connection_dropped() || e.is_io_error() || e.is_timeout();
                    let error = BusError::with_source(
                        BusErrorKind::Unavailable(format!("publishing to Redis failed: {e}")),
                        e,
                    );
                    if !retry {
                        return Err(error);
                    }
                    error
                }
            };
            if attempt < attempts {
                tracing::debug!(%topic, %error, "publish not confirmed; sending it again");
            }
            failure = Some(error);
        }
        Err(failure.expect("at least one attempt"))
    }

    /// Subscribes with a resume point; see the module documentation.
    ///
    /// 1. The topics are listened to (the caller did that).
    /// 2. Under the gate, the hub answers from its local history if it can. Otherwise it
    ///    registers the subscriber and reports the watermark `W`: events numbered above it are
    ///    delivered later, in order, so they reach the new subscriber's queue.
    /// 3. If the cursor is above `W` (this instance is behind, or the id is not one Redis
    ///    issued), or of another epoch (this instance may not have caught up with a restart of
    ///    Redis), the instance first catches up with Redis ([`sync`](Self::sync)) and tries again.
    /// 4. The replay is `(cursor, W]` of every topic, read from the streams (shared with
    ///    concurrent resumes of the same topic, within the replay budget) and merged by sequence
    ///    number. Entries above `W` are left to the queue, so nothing comes twice. (Per topic the
    ///    read stops at the topic's last event known at registration: none of it lies between
    ///    that and `W`.)
    async fn resume(&self, topics: Vec<Topic>, cursor: EventId) -> Result<Subscription, BusError> {
        let hub = &self.core.hub;
        let mut synced = false;
        loop {
            let attempt = {
                let _gate = lock(&self.core.gate);
                hub.resume_or_register(topics.clone(), cursor)?
            };
            let registration = match attempt {
                Resume::Done(subscription) => {
                    let stale =
                        subscription.status() == ResumeStatus::Reset(ResetReason::UnknownEpoch);
                    if stale && !synced && self.sync().await.is_ok() {
                        synced = true;
                        continue;
                    }
                    return Ok(subscription);
                }
                Resume::Pending(registration) => registration,
            };
            let epoch = registration.epoch();
            let watermark = registration.watermark();
            if cursor.sequence() > watermark {
                if !synced {
                    drop(registration);
                    self.sync().await?;
                    synced = true;
                    continue;
                }
                // Redis has not issued this id (yet).
                let status = ResumeStatus::Reset(ResetReason::UnknownId);
                let start = EventId::new(epoch, watermark);
                return Ok(registration.finish(VecDeque::new(), status, start));
            }
            let ranges: Vec<(Topic, u64)> = topics
                .iter()
                .cloned()
                .zip(registration.known().iter().copied())
                .collect();
            let read = self
                .replay
                .read(
                    &self.core,
                    &self.conn.shared(),
                    &ranges,
                    cursor.sequence(),
                    epoch,
                )
                .await?;
            return Ok(match read {
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
            });
        }
    }
}

impl Backend for RedisStreams {
    fn publish(&self, topic: Topic, event: Event) -> BoxFuture<'_, Result<Published, BusError>> {
        Box::pin(self.publish(topic, event))
    }

    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: Option<String>,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(async move {
            let hub = &self.core.hub;
            if hub.is_closed() {
                return Err(BusError::new(BusErrorKind::Closed));
            }
            let interest = self.conn.want(topics.clone()).await;
            let cursor = resume.as_deref().map(str::parse::<EventId>);
            let subscription = match cursor {
                Some(Ok(cursor)) => self.resume(topics, cursor).await?,
                // Fresh, or an id this bus never issues.
                _ => hub.subscribe(topics, resume.as_deref())?,
            };
            Ok(subscription.with_guard(Box::new(interest)))
        })
    }

    fn health(&self) -> Health {
        self.conn.health()
    }

    fn shutdown(&self) {
        self.conn.close();
    }

    fn hub(&self) -> &Hub {
        &self.core.hub
    }
}

impl fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = self.conn.link().conn.is_some();
        f.debug_struct("RedisStreams")
            .field("state_key", &self.core.keys.state)
            .field("connected", &connected)
            .field("max_len", &self.max_len)
            .field("max_age", &self.max_age)
            .field("idle_ttl", &self.core.idle_ttl)
            .finish()
    }
}

pub(super) fn unavailable(reason: impl Into<String>) -> BusError {
    BusError::new(BusErrorKind::Unavailable(reason.into()))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One entry of a topic's stream.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) epoch: u32,
    /// The highest sequence number the topic's previous event can have.
    pub(super) prev: u64,
    /// Whether `prev` is the previous event itself, not a bound.
    exact: bool,
    /// The frame, out of its envelope.
    pub(super) frame: Bytes,
    meta: Meta,
}

/// One page of a topic's stream.
#[derive(Debug)]
pub(super) struct Page {
    pub(super) exists: bool,
    pub(super) entries: Vec<Entry>,
    /// When the stream does not exist: the highest sequence number an expired event of the
    /// topic can have.
    pub(super) horizon: u64,
}

impl Core {
    /// Reads up to `count` entries of `topic` after `after`.
    pub(super) async fn read_page(
        &self,
        conn: &mut MultiplexedConnection,
        topic: &Topic,
        after: u64,
        count: usize,
    ) -> Result<Page, String> {
        let mut invocation = self.read_script.prepare_invoke();
        invocation
            .key(self.keys.stream(topic))
            .key(&self.keys.clock)
            .key(&self.keys.state)
            .arg(after)
            .arg(count)
            .arg(millis(self.idle_ttl));
        let reading = invocation.invoke_async::<Value>(conn);
        let reply = match timeout(self.request_timeout, reading).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(format!("reading the stream of {topic} failed: {e}")),
            Err(_elapsed) => {
                return Err(format!(
                    "Redis did not answer reading the stream of {topic} within {:?}",
                    self.request_timeout
                ))
            }
        };
        parse_page(reply).ok_or_else(|| format!("unexpected content in the stream of {topic}"))
    }
}

fn parse_page(reply: Value) -> Option<Page> {
    let Value::Array(items) = reply else {
        return None;
    };
    let mut items = items.into_iter();
    let exists = matches!(items.next()?, Value::Int(1));
    let Value::Array(raw) = items.next()? else {
        return None;
    };
    let entries = raw
        .into_iter()
        .map(parse_entry)
        .collect::<Option<Vec<_>>>()?;
    let horizon = if exists {
        0
    } else {
        let after = items.next()?;
        let seq = items.next()?;
        let Value::BulkString(seq) = seq else {
            return None;
        };
        let seq = number(&seq)?;
        match after {
            // A checkpoint above the counter is left over from an epoch that ended.
            Value::BulkString(after) => match number(&after)? {
                after if after <= seq => after.saturating_sub(1),
                _ => seq,
            },
            _ => seq,
        }
    };
    Some(Page {
        exists,
        entries,
        horizon,
    })
}

fn parse_entry(raw: Value) -> Option<Entry> {
    let Value::Array(parts) = raw else {
        return None;
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (parts.next(), parts.next())
    else {
        return None;
    };
    let seq = number(id.strip_suffix(b"-0")?).filter(|&seq| seq > 0)?;
    let mut frame = None;
    let mut prev = None;
    let mut fields = fields.into_iter();
    while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
        (fields.next(), fields.next())
    {
        match &name[..] {
            b"f" => frame = Some(envelope::open(Bytes::from(value))),
            b"p" => prev = Some(value),
            _ => {}
        }
    }
    let (meta, frame) = frame?;
    let (prev, exact) = parse_prev(&prev?)?;
    let epoch = frame_id(&frame)?.epoch();
    Some(Entry {
        seq,
        epoch,
        prev,
        exact,
        frame,
        meta,
    })
}

/// Parses the `p` of an entry or notification: the highest sequence number the topic's
/// previous event can have, and whether it is that event exactly.
fn parse_prev(raw: &[u8]) -> Option<(u64, bool)> {
    match raw.strip_prefix(b"~") {
        Some(bound) => Some((number(bound)?.saturating_sub(1), false)),
        None => Some((number(raw)?, true)),
    }
}

/// Splits a notification into its `p` and its frame, out of its envelope (sharing the buffer).
fn parse_notice(payload: &Bytes) -> Option<(u64, bool, Meta, Bytes)> {
    let space = payload.iter().position(|&b| b == b' ')?;
    let (prev, exact) = parse_prev(&payload[..space])?;
    let (meta, frame) = envelope::open(payload.slice(space + 1..));
    Some((prev, exact, meta, frame))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The task that delivers what the connection hears to the hub, in sequence order, filling in
/// from the streams what it did not hear.
struct Pipeline {
    core: Arc<Core>,
    shared: Arc<Shared>,
    inputs: mpsc::UnboundedReceiver<Input>,
    backlog: Arc<Backlog>,
    state_script: Script,
    /// Per topic listened to: every event of it numbered up to this was delivered (or precedes
    /// the moment listening began).
    last: HashMap<Topic, u64>,
    /// The highest sequence number delivered to the hub (or known to need no delivery); the
    /// hub's own watermark is the same, changed only here, under the gate.
    watermark: u64,
}

/// The reading position of one topic during a fill.
struct FillCursor {
    topic: Topic,
    /// The last event of the topic delivered before the fill.
    baseline: u64,
    /// No event of the topic up to here can be missing, except one a `p` names exactly: up to
    /// the pipeline's watermark, every event of a topic listened to was delivered. (A stream
    /// recreated after expiring bounds its previous event only roughly; anything it had up to
    /// here was heard.)
    settled: u64,
    /// The next page starts after this.
    after: u64,
    buffer: VecDeque<Entry>,
    exhausted: bool,
    /// Whether the first entry after the baseline was looked at.
    checked: bool,
    /// A gap to announce before the next entry delivered (the events up to it are gone).
    gap: Option<u64>,
    /// A gap to announce at the end (the stream is gone).
    end_gap: Option<u64>,
}

impl Pipeline {
    async fn run(mut self) {
        while let Some(input) = self.inputs.recv().await {
            match input {
                Input::Notice(topic, payload) => {
                    self.backlog.release(payload.len());
                    self.notice(topic, payload).await;
                }
                Input::Connected { epoch, seq, topics } => {
                    self.connected(epoch, seq, topics).await;
                }
                Input::Listening { epoch, seq, topics } => {
                    self.adopt_epoch(epoch, seq);
                    let _gate = lock(&self.core.gate);
                    for topic in topics {
                        let last = self.last.entry(topic.clone()).or_insert(seq);
                        *last = (*last).max(seq);
                        self.core.hub.listening(&topic, seq);
                    }
                    self.watermark = self.watermark.max(seq);
                }
                Input::NotListening(topic) => {
                    self.last.remove(&topic);
                    let _gate = lock(&self.core.gate);
                    self.core.hub.not_listening(&topic);
                }
                Input::Sync { state, done } => {
                    if let Some((epoch, seq)) = state {
                        self.adopt_epoch(epoch, seq);
                        let _gate = lock(&self.core.gate);
                        self.core.hub.advance(seq);
                        self.watermark = self.watermark.max(seq);
                    }
                    let _ = done.send(());
                }
            }
            if self.backlog.overflowed.swap(false, Ordering::Acquire) {
                self.catch_up().await;
            }
        }
    }

    /// Notifications were dropped past the backlog: reads the state on the subscribed
    /// connection (every notification sent before it was queued or dropped by then) and fills
    /// every topic listened to up to it from the streams. Notifications still queued are then
    /// skipped as delivered.
    async fn catch_up(&mut self) {
        tracing::warn!(
            backlog = self.backlog.max_notices,
            "notifications of new events came faster than they were delivered; reading the rest from Redis"
        );
        loop {
            // Without a connection, the reconnect fills in what was missed.
            let Some(mut conn) = self.shared.connection() else {
                return;
            };
            let reading = read_state(&self.state_script, &self.shared.names, &mut conn);
            match timeout(self.core.request_timeout, reading).await {
                Ok(Ok((epoch, seq))) => {
                    let topics = self.last.keys().cloned().collect();
                    self.connected(epoch, seq, topics).await;
                    return;
                }
                Ok(Err(reason)) => tracing::warn!(%reason, "could not read the bus state"),
                Err(_elapsed) => tracing::warn!("Redis did not answer reading the bus state"),
            }
            tokio::time::sleep(CATCH_UP_RETRY).await;
        }
    }

    /// Starts over when Redis numbers in another epoch: the hub drops its history and tells
    /// every subscriber; numbering restarts after `seq`.
    fn adopt_epoch(&mut self, epoch: u32, seq: u64) {
        let hub = &self.core.hub;
        if hub.epoch() == epoch {
            return;
        }
        let _gate = lock(&self.core.gate);
        hub.new_epoch(epoch, seq);
        self.watermark = seq;
        for last in self.last.values_mut() {
            *last = seq;
        }
    }

    async fn notice(&mut self, topic: Topic, payload: Bytes) {
        let Some((prev, exact, meta, frame)) = parse_notice(&payload) else {
            tracing::debug!(%topic, "ignoring a message that is not an event notification");
            return;
        };
        let Some(id) = frame_id(&frame) else {
            tracing::debug!(%topic, "ignoring a notification without an event id");
            return;
        };
        let seq = id.sequence();
        if seq == 0 {
            // Redis numbers from 1.
            return;
        }
        self.adopt_epoch(id.epoch(), seq - 1);
        if let Some(&last) = self.last.get(&topic) {
            if seq <= last {
                // Delivered already, by a fill.
                return;
            }
            if exact && prev > last {
                // The topic's previous event did not come through: read what is missing.
                self.fill(vec![(topic.clone(), last)], seq - 1, false).await;
            }
        }
        // Otherwise the topic's listening point is still on its way: this event was published
        // after the subscription took effect, and is the first one heard.
        self.deliver(&topic, id, frame, meta, None);
    }

    /// Delivers one event (after announcing a gap before it, if any), unless an event with a
    /// higher number was delivered already: then subscribers of several topics could not see
    /// it in order, and it becomes a gap.
    fn deliver(&mut self, topic: &Topic, id: EventId, frame: Bytes, meta: Meta, gap: Option<u64>) {
        let hub = &self.core.hub;
        let topics = std::slice::from_ref(topic);
        let seq = id.sequence();
        let _span = meta.deliver_span(topic, id).entered();
        let _gate = lock(&self.core.gate);
        if let Some(at) = gap {
            hub.gap(Some(topics), at.min(seq - 1), GapReason::BrokerDisconnected);
        }
        if seq > self.watermark {
            hub.deliver(topic, seq, frame, meta.age());
            self.watermark = seq;
        } else {
            tracing::warn!(%topic, seq, "an event arrived too late to be delivered in order");
            hub.gap(Some(topics), seq, GapReason::BrokerDisconnected);
        }
        let last = self.last.entry(topic.clone()).or_insert(seq);
        *last = (*last).max(seq);
    }

    /// A (re)connection is ready: in the same epoch, read what every live topic missed.
    async fn connected(&mut self, epoch: u32, seq: u64, topics: Vec<Topic>) {
        let hub = self.core.hub.clone();
        if hub.epoch() != epoch {
            // First connection, or Redis lost its state: no history to fill from.
            self.adopt_epoch(epoch, seq);
            let _gate = lock(&self.core.gate);
            for topic in topics {
                self.last.insert(topic.clone(), seq);
                hub.listening(&topic, seq);
            }
            hub.advance(seq);
            self.watermark = self.watermark.max(seq);
            return;
        }
        let ranges = {
            let _gate = lock(&self.core.gate);
            topics
                .iter()
                .map(|topic| {
                    let after = match self.last.get(topic) {
                        Some(&last) => last,
                        None => {
                            // Subscribed to while disconnected: its subscribers started at the
                            // watermark.
                            hub.listening(topic, self.watermark);
                            self.watermark
                        }
                    };
                    (topic.clone(), after)
                })
                .collect()
        };
        self.fill(ranges, seq, true).await;
        for topic in topics {
            let last = self.last.entry(topic).or_insert(seq);
            *last = (*last).max(seq);
        }
    }

    /// Reads the entries of each topic after its start, up to `until`, and delivers them in
    /// sequence order across topics. Events that are gone (trimmed, or their stream expired)
    /// become gaps; so does everything left when reading fails. With `advance`, every topic is
    /// complete up to `until` afterwards.
    async fn fill(&mut self, ranges: Vec<(Topic, u64)>, until: u64, advance: bool) {
        let epoch = self.core.hub.epoch();
        let watermark = self.watermark;
        let mut cursors: Vec<FillCursor> = ranges
            .into_iter()
            .filter(|(_, after)| *after < until)
            .map(|(topic, after)| FillCursor {
                topic,
                baseline: after,
                settled: after.max(watermark),
                after,
                buffer: VecDeque::new(),
                exhausted: false,
                checked: false,
                gap: None,
                end_gap: None,
            })
            .collect();
        let mut failure = None;
        'merge: loop {
            // Every topic that may have more needs an entry at hand before the lowest is known.
            while let Some(cursor) = cursors
                .iter_mut()
                .find(|c| c.buffer.is_empty() && !c.exhausted)
            {
                let Some(mut conn) = self.shared.connection() else {
                    failure = Some("the connection to Redis dropped".to_owned());
                    break 'merge;
                };
                match self
                    .core
                    .read_page(&mut conn, &cursor.topic, cursor.after, PAGE)
                    .await
                {
                    Ok(page) => cursor.take(page, until, epoch),
                    Err(reason) => {
                        failure = Some(reason);
                        break 'merge;
                    }
                }
            }
            let next = cursors
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.buffer.front().map(|e| (e.seq, i)))
                .min();
            let Some((_, i)) = next else {
                break;
            };
            let cursor = &mut cursors[i];
            let entry = cursor.buffer.pop_front().expect("looked at above");
            let gap = cursor.gap.take();
            let topic = cursor.topic.clone();
            let id = EventId::new(entry.epoch, entry.seq);
            self.deliver(&topic, id, entry.frame, entry.meta, gap);
        }
        if let Some(reason) = &failure {
            tracing::warn!(%reason, "could not read missed events from Redis; telling subscribers");
        }
        let hub = &self.core.hub;
        let _gate = lock(&self.core.gate);
        for cursor in &cursors {
            let at = if failure.is_some() && !(cursor.exhausted && cursor.buffer.is_empty()) {
                Some(until)
            } else {
                cursor.end_gap.or(cursor.gap)
            };
            if let Some(at) = at {
                hub.gap(
                    Some(std::slice::from_ref(&cursor.topic)),
                    at.min(until),
                    GapReason::BrokerDisconnected,
                );
            }
            if advance {
                let last = self.last.entry(cursor.topic.clone()).or_insert(until);
                *last = (*last).max(until);
            }
        }
        if advance {
            hub.advance(until);
            self.watermark = self.watermark.max(until);
        }
    }
}

impl FillCursor {
    /// Takes in a page read after `self.after`.
    fn take(&mut self, page: Page, until: u64, epoch: u32) {
        if !page.exists {
            self.exhausted = true;
            if !self.checked && page.horizon > self.settled {
                // The stream expired; events after the baseline may have gone with it.
                self.end_gap = Some(page.horizon);
            }
            self.checked = true;
            return;
        }
        if page.entries.len() < PAGE {
            self.exhausted = true;
        }
        for entry in page.entries {
            self.after = entry.seq;
            if entry.seq > until {
                self.exhausted = true;
                break;
            }
            if entry.epoch != epoch {
                // Of an epoch that ended (or one this instance has not seen yet): not ours.
                continue;
            }
            if !self.checked {
                self.checked = true;
                let floor = if entry.exact {
                    self.baseline
                } else {
                    self.settled
                };
                if entry.prev > floor {
                    self.gap = Some(entry.prev);
                }
            }
            self.buffer.push_back(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_events() {
        assert_eq!(parse_prev(b"42"), Some((42, true)));
        assert_eq!(parse_prev(b"~42"), Some((41, false)));
        assert_eq!(parse_prev(b"~0"), Some((0, false)));
        assert_eq!(parse_prev(b""), None);
        assert_eq!(parse_prev(b"~"), None);
        assert_eq!(parse_prev(b"-1"), None);
    }

    #[test]
    fn notices() {
        let payload = Bytes::from_static(b"~7 :@t=1\ndata: x\nid: 0000002a-9\n\n");
        let (prev, exact, _meta, frame) = parse_notice(&payload).unwrap();
        assert_eq!((prev, exact), (6, false));
        assert_eq!(
            &frame[..],
            b"data: x\nid: 0000002a-9\n\n",
            "out of the envelope"
        );
        assert_eq!(frame_id(&frame), Some(EventId::new(0x2a, 9)));
        assert!(parse_notice(&Bytes::from_static(b"data: x\n\n")).is_none());
    }

    #[test]
    fn pages() {
        let entry = |seq: &str, prev: &str| {
            Value::Array(vec![
                Value::BulkString(format!("{seq}-0").into_bytes()),
                Value::Array(vec![
                    Value::BulkString(b"f".to_vec()),
                    Value::BulkString(
                        format!(":@t=1\ndata: x\nid: 0000002a-{seq}\n\n").into_bytes(),
                    ),
                    Value::BulkString(b"p".to_vec()),
                    Value::BulkString(prev.as_bytes().to_vec()),
                ]),
            ])
        };
        let page = parse_page(Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![entry("5", "~3"), entry("9", "5")]),
        ]))
        .unwrap();
        assert!(page.exists);
        let seen: Vec<_> = page
            .entries
            .iter()
            .map(|e| (e.seq, e.epoch, e.prev, e.exact))
            .collect();
        assert_eq!(seen, [(5, 0x2a, 2, false), (9, 0x2a, 5, true)]);
        assert_eq!(&page.entries[0].frame[..], b"data: x\nid: 0000002a-5\n\n");

        let missing = |after: Value| {
            parse_page(Value::Array(vec![
                Value::Int(0),
                Value::Array(vec![]),
                after,
                Value::BulkString(b"70".to_vec()),
            ]))
            .unwrap()
        };
        let page = missing(Value::BulkString(b"12".to_vec()));
        assert!(!page.exists);
        assert_eq!(page.horizon, 11);
        assert_eq!(missing(Value::Nil).horizon, 70);
        assert_eq!(missing(Value::BulkString(b"99".to_vec())).horizon, 70);
    }

    #[test]
    fn clock_steps() {
        assert_eq!(clock_step(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(
            clock_step(Duration::from_secs(86_400)),
            Duration::from_secs(86_400) / 1024
        );
    }
}
