//! The Redis Pub/Sub backend.
//!
//! Each instance keeps one RESP3 connection to Redis. It carries the publishes (a Lua script
//! that numbers the event and publishes it) and the subscription, whose messages the connection
//! hands to a callback in the order Redis sent them; the callback delivers them to the hub
//! directly. A background task (the supervisor) owns the subscription state: it subscribes to
//! topics as local clients start following them, unsubscribes when they stop, checks the
//! connection, and reconnects when it breaks.
//!
//! Ordering after a (re)connect: the new connection subscribes first, then reads the counter.
//! Messages that arrive meanwhile are held back; once the counter is read, the hub is told about
//! the gap (or the new epoch), and only then are the held messages delivered, so subscribers see
//! the gap before any event published after it.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use ::redis::{
    aio::MultiplexedConnection, AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, RedisResult, Script, Value,
};
use bytes::{Bytes, BytesMut};
use tokio::{
    sync::{mpsc, oneshot},
    time::{timeout, Instant, MissedTickBehavior},
};

use super::{RedisConfig, SubscribeMode};
use crate::{
    bus::{
        backend::{Backend, BoxFuture},
        hub::{Hub, Limits},
        queue::lock,
        random_u32, random_u64, GapReason, Health, Published, Subscription, Topic,
    },
    error::{BusError, BusErrorKind},
    event::{finish_frame, Event},
    last_event_id::EventId,
};

/// Numbers an event and publishes it, atomically.
///
/// KEYS[1]: the state hash. ARGV[1]: an epoch to adopt if the hash has none; ARGV[2]: the
/// channel; ARGV[3]: the encoded event without its id line. Returns `{epoch, seq}`. The sequence
/// number is read back as the string Redis stores, which stays exact beyond 2^53 (Lua numbers
/// are doubles).
const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
local seq = redis.call('HGET', KEYS[1], 'seq')
redis.call('PUBLISH', ARGV[2], ARGV[3] .. 'id: ' .. epoch .. '-' .. seq .. '\n\n')
return {epoch, seq}
";

/// Reads the epoch (adopting ARGV[1] if there is none) and the last sequence number.
const STATE_SCRIPT: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
return {state[1], state[2] or '0'}
";

/// How often an idle connection is checked with `PING` (a server that hangs without closing the
/// connection is noticed this way).
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The least time between two warnings about local-only publishes during one outage.
const LOCAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The most commands the supervisor handles in one batch (one `SUBSCRIBE` for all of them).
const MAX_BATCH: usize = 1024;

/// The backend: a handle on the shared state. The supervisor task holds the other handle.
pub(crate) struct RedisPubSub {
    core: Arc<Core>,
}

/// What the backend, the supervisor and the connection's message callback share.
struct Core {
    hub: Hub,
    names: Names,
    mode: SubscribeMode,
    publish_timeout: Duration,
    publish_script: Script,
    link: Mutex<Link>,
    commands: mpsc::UnboundedSender<Command>,
}

/// The channel and key names of one prefix.
struct Names {
    state_key: String,
    channel_prefix: String,
    pattern: String,
}

/// The state of the connection, as publishers and the message callback see it.
#[derive(Default)]
struct Link {
    /// Counts connection attempts; messages from an older connection are ignored.
    generation: u64,
    /// The connection, while it is up and subscribed.
    conn: Option<MultiplexedConnection>,
    /// Messages held back while a new connection is being set up.
    held: Option<Vec<Received>>,
    /// Why the connection is down, while it is.
    problem: Option<String>,
    /// Whether the hub is numbering local-only events in an epoch of its own.
    local_epoch: bool,
    /// Local-only publishes during the current outage.
    local_published: u64,
    last_local_warning: Option<Instant>,
}

/// An event received from Redis.
struct Received {
    topic: Topic,
    id: EventId,
    frame: Bytes,
}

/// What the backend, the subscriptions and the connection tell the supervisor.
enum Command {
    /// Listen to these topics, then drop `ready`.
    Want {
        topics: Vec<Topic>,
        ready: oneshot::Sender<()>,
    },
    /// A subscription of these topics ended.
    Release { topics: Vec<Topic> },
    /// The connection of this generation closed.
    Lost { generation: u64 },
    /// The bus shut down: stop listening, keep the connection for publishing.
    Close,
    /// The bus was dropped: close the connection and end the task.
    Stop,
}

/// A subscription's interest in its topics, released when the subscription is dropped.
struct Interest {
    topics: Vec<Topic>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let topics = std::mem::take(&mut self.topics);
        let _ = self.commands.send(Command::Release { topics });
    }
}

impl RedisPubSub {
    /// Connects, listens (in pattern mode), reads the state and starts the supervisor.
    pub(crate) async fn connect(config: RedisConfig, limits: Limits) -> Result<Self, BusError> {
        let client = open_client(&config.url)?;
        let address = client.get_connection_info().addr().to_string();
        let (commands, receiver) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            hub: Hub::new(random_u32(), config.mode == SubscribeMode::Pattern, limits),
            names: Names::new(&config.prefix),
            mode: config.mode,
            publish_timeout: config.publish_timeout,
            publish_script: Script::new(PUBLISH_SCRIPT),
            link: Mutex::new(Link::default()),
            commands,
        });
        let mut supervisor = Supervisor {
            core: core.clone(),
            client,
            address,
            commands: receiver,
            connect_timeout: config.connect_timeout,
            request_timeout: config.publish_timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            unsubscribe_delay: config.unsubscribe_delay,
            state_script: Script::new(STATE_SCRIPT),
            generation: 0,
            conn: None,
            interest: HashMap::new(),
            subscribed: HashSet::new(),
            idle: HashMap::new(),
            closing: false,
        };
        if let Err(reason) = supervisor.connect().await {
            return Err(BusError::new(BusErrorKind::Unavailable(reason)));
        }
        tokio::spawn(supervisor.run());
        Ok(Self { core })
    }
}

/// Parses the URL and forces RESP3, which delivers subscription messages as pushes on a
/// connection that also serves commands.
fn open_client(url: &str) -> Result<Client, BusError> {
    let invalid = |e: ::redis::RedisError| {
        BusError::with_source(
            BusErrorKind::Unavailable(format!("invalid Redis URL: {e}")),
            e,
        )
    };
    let info = url.into_connection_info().map_err(invalid)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings)).map_err(invalid)
}

impl Backend for RedisPubSub {
    fn publish(&self, topic: Topic, event: Event) -> BoxFuture<'_, Result<Published, BusError>> {
        Box::pin(self.core.publish(topic, event))
    }

    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: Option<String>,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(async move {
            let core = &self.core;
            if core.mode == SubscribeMode::Pattern {
                return core.hub.subscribe(topics, resume.as_deref());
            }
            if core.hub.is_closed() {
                return Err(BusError::new(BusErrorKind::Closed));
            }
            // Made before the request, so the interest is released even if this future is
            // dropped while it waits.
            let interest = Interest {
                topics: topics.clone(),
                commands: core.commands.clone(),
            };
            let (ready, wait) = oneshot::channel();
            let want = Command::Want {
                topics: topics.clone(),
                ready,
            };
            if core.commands.send(want).is_ok() {
                // Dropped without a value once the topics are listened to, or once the
                // connection is known to be down (they are listened to when it is back).
                let _ = wait.await;
            }
            let subscription = core.hub.subscribe(topics, resume.as_deref())?;
            Ok(subscription.with_guard(Box::new(interest)))
        })
    }

    fn health(&self) -> Health {
        match &lock(&self.core.link).problem {
            Some(problem) => Health::unhealthy(problem.clone()),
            None => Health::healthy(),
        }
    }

    fn shutdown(&self) {
        let _ = self.core.commands.send(Command::Close);
    }

    fn hub(&self) -> &Hub {
        &self.core.hub
    }
}

impl Drop for RedisPubSub {
    fn drop(&mut self) {
        let _ = self.core.commands.send(Command::Stop);
    }
}

impl fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = lock(&self.core.link).conn.is_some();
        f.debug_struct("RedisPubSub")
            .field("mode", &self.core.mode)
            .field("state_key", &self.core.names.state_key)
            .field("connected", &connected)
            .finish()
    }
}

impl Core {
    async fn publish(&self, topic: Topic, event: Event) -> Result<Published, BusError> {
        let body = event.encode_body(0);
        let mut conn = {
            let mut link = lock(&self.link);
            match &link.conn {
                Some(conn) => conn.clone(),
                None => return Ok(self.publish_locally(&mut link, &topic, body)),
            }
        };
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(&self.names.state_key)
            .arg(format!("{:08x}", random_u32()))
            .arg(self.names.channel(&topic))
            .arg(&body[..]);
        let reply = timeout(
            self.publish_timeout,
            invocation.invoke_async::<(String, String)>(&mut conn),
        )
        .await;
        match reply {
            Err(_elapsed) => Err(BusError::new(BusErrorKind::Timeout)),
            Ok(Err(e)) => Err(BusError::with_source(
                BusErrorKind::Unavailable(format!("publishing to Redis failed: {e}")),
                e,
            )),
            Ok(Ok((epoch, seq))) => match parse_state(&epoch, &seq) {
                Some((epoch, seq)) => Ok(Published::new(EventId::new(epoch, seq), false)),
                None => Err(BusError::new(BusErrorKind::Unavailable(format!(
                    "unexpected content in the Redis key {}",
                    self.names.state_key
                )))),
            },
        }
    }

    /// Delivers an event to this instance's subscribers only, while the connection is down.
    ///
    /// Such events cannot take numbers from Redis, and numbers made up here could collide with
    /// the ones Redis hands out meanwhile, so they are numbered in an epoch of this instance,
    /// which ends when the connection is back.
    fn publish_locally(&self, link: &mut Link, topic: &Topic, mut body: BytesMut) -> Published {
        if !link.local_epoch {
            link.local_epoch = true;
            let current = self.hub.epoch();
            let epoch = std::iter::repeat_with(random_u32)
                .find(|&e| e != current)
                .expect("an endless iterator");
            self.hub.new_epoch(epoch, 0);
        }
        let id = self.hub.publish_next(topic, |id| {
            finish_frame(&mut body, Some(&id.to_string()));
            body.split().freeze()
        });
        link.local_published += 1;
        let now = Instant::now();
        let due = link
            .last_local_warning
            .is_none_or(|at| now.duration_since(at) >= LOCAL_WARNING_INTERVAL);
        if due {
            link.last_local_warning = Some(now);
            tracing::warn!(
                %topic,
                local_only = link.local_published,
                "Redis is unreachable: event delivered to this instance's subscribers only"
            );
        }
        Published::new(id, true)
    }

    /// The connection's push callback: subscription messages and the disconnection notice.
    fn on_push(&self, generation: u64, info: PushInfo) {
        let PushInfo { kind, data } = info;
        let mut data = data.into_iter();
        let (channel, payload) = match kind {
            PushKind::Message => (data.next(), data.next()),
            PushKind::PMessage => (data.nth(1), data.next()),
            PushKind::Disconnection => {
                // Publishers stop using the connection at once; the supervisor reconnects.
                let mut link = lock(&self.link);
                if link.generation == generation && link.conn.take().is_some() {
                    link.problem = Some("connection to Redis lost; reconnecting".to_owned());
                }
                drop(link);
                let _ = self.commands.send(Command::Lost { generation });
                return;
            }
            _ => return,
        };
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (channel, payload)
        else {
            return;
        };
        let Some(topic) = self.names.topic_of(&channel) else {
            return;
        };
        // Takes over the buffer the message was read into: no copy, and all local subscribers
        // share it.
        let frame = Bytes::from(payload);
        let Some(id) = frame_id(&frame) else {
            tracing::debug!(%topic, "ignoring a message that is not an event frame with an id");
            return;
        };
        let received = Received { topic, id, frame };
        let mut link = lock(&self.link);
        if link.generation != generation {
            return;
        }
        match &mut link.held {
            Some(held) => held.push(received),
            None => self.deliver(received),
        }
    }

    fn deliver(&self, received: Received) {
        let Received { topic, id, frame } = received;
        if id.epoch() != self.hub.epoch() {
            // Redis lost its state while we stayed connected; the publisher started a new epoch.
            self.hub
                .new_epoch(id.epoch(), id.sequence().saturating_sub(1));
        }
        self.hub.deliver(&topic, id.sequence(), frame);
    }
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            state_key: format!("{prefix}:state"),
            channel_prefix: format!("{prefix}:t:"),
            pattern: format!("{}:t:*", escape_glob(prefix)),
        }
    }

    fn channel(&self, topic: &Topic) -> String {
        let mut channel = String::with_capacity(self.channel_prefix.len() + topic.as_str().len());
        channel.push_str(&self.channel_prefix);
        channel.push_str(topic.as_str());
        channel
    }

    fn topic_of(&self, channel: &[u8]) -> Option<Topic> {
        let name = channel.strip_prefix(self.channel_prefix.as_bytes())?;
        Topic::new(std::str::from_utf8(name).ok()?).ok()
    }
}

/// Escapes the characters `PSUBSCRIBE` patterns treat specially.
fn escape_glob(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The id of a frame published by [`PUBLISH_SCRIPT`]: its last line before the blank one.
fn frame_id(frame: &[u8]) -> Option<EventId> {
    let rest = frame.strip_suffix(b"\n\n")?;
    let start = rest.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let id = rest[start..].strip_prefix(b"id: ")?;
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Parses the epoch (8 hex digits) and sequence number the scripts return.
fn parse_state(epoch: &str, seq: &str) -> Option<(u32, u64)> {
    if epoch.len() != 8 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u32::from_str_radix(epoch, 16).ok()?, seq.parse().ok()?))
}

/// Why the supervisor stopped serving the current connection.
enum Interrupt {
    /// The bus was dropped.
    Stop,
    /// The connection is unusable, for this reason.
    Lost(String),
}

/// What woke the supervisor up.
enum Wake {
    Command(Option<Command>),
    Idle,
    Ping,
}

/// The background task that owns the connection and the subscription state.
struct Supervisor {
    core: Arc<Core>,
    client: Client,
    /// `host:port`, for messages (the URL may hold a password).
    address: String,
    commands: mpsc::UnboundedReceiver<Command>,
    connect_timeout: Duration,
    request_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    unsubscribe_delay: Duration,
    state_script: Script,
    /// The generation of the current connection.
    generation: u64,
    conn: Option<MultiplexedConnection>,
    /// Local subscriptions per topic (interest mode).
    interest: HashMap<Topic, usize>,
    /// Topics the connection is subscribed to (interest mode).
    subscribed: HashSet<Topic>,
    /// Subscribed topics nobody follows any more, with the time to unsubscribe.
    idle: HashMap<Topic, Instant>,
    /// The bus shut down: listen to nothing.
    closing: bool,
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            let interrupt = if self.conn.is_some() {
                self.serve().await
            } else {
                match self.reconnect().await {
                    Ok(()) => continue,
                    Err(interrupt) => interrupt,
                }
            };
            match interrupt {
                Interrupt::Stop => break,
                Interrupt::Lost(reason) => self.lost(reason),
            }
        }
        self.conn = None;
        let mut link = lock(&self.core.link);
        link.generation += 1;
        link.conn = None;
        link.held = None;
        link.problem = Some("the event bus was dropped".to_owned());
    }

    /// Handles commands, unsubscribes idle topics and checks the connection, until it breaks.
    async fn serve(&mut self) -> Interrupt {
        let start = Instant::now() + PING_INTERVAL;
        let mut ping = tokio::time::interval_at(start, PING_INTERVAL);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_idle = self.idle.values().min().copied();
            let wake = tokio::select! {
                command = self.commands.recv() => Wake::Command(command),
                () = sleep_until(next_idle) => Wake::Idle,
                _ = ping.tick() => Wake::Ping,
            };
            let result = match wake {
                Wake::Command(Some(command)) => self.handle_batch(command).await,
                Wake::Command(None) => Err(Interrupt::Stop),
                Wake::Idle => self.unsubscribe_idle().await,
                Wake::Ping => self.ping().await,
            };
            if let Err(interrupt) = result {
                return interrupt;
            }
        }
    }

    /// Handles `first` and whatever else is queued, subscribing to new topics in one request.
    async fn handle_batch(&mut self, first: Command) -> Result<(), Interrupt> {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        // Dropping these tells the waiting subscribers to go ahead.
        let mut waiters = Vec::new();
        let mut fresh = Vec::new();
        let mut outcome = Ok(());
        let mut close = false;
        for command in batch {
            match command {
                Command::Want { topics, ready } => {
                    for topic in topics {
                        self.want(topic, &mut fresh);
                    }
                    waiters.push(ready);
                }
                Command::Release { topics } => topics.into_iter().for_each(|t| self.release(t)),
                Command::Lost { generation } if generation == self.generation => {
                    if outcome.is_ok() {
                        outcome = Err(Interrupt::Lost("the connection closed".to_owned()));
                    }
                }
                Command::Lost { .. } => {}
                Command::Close => {
                    // Recorded now: a reconnection must not listen again either.
                    self.closing = true;
                    close = true;
                }
                Command::Stop => outcome = Err(Interrupt::Stop),
            }
        }
        outcome?;
        if close {
            self.close().await.map_err(Interrupt::Lost)?;
        }
        fresh.retain(|topic| self.interest.contains_key(topic));
        if !fresh.is_empty() && !self.closing {
            self.listen(fresh).await.map_err(Interrupt::Lost)?;
        }
        drop(waiters);
        Ok(())
    }

    /// Counts a subscriber of `topic`; adds it to `fresh` when the connection must subscribe.
    fn want(&mut self, topic: Topic, fresh: &mut Vec<Topic>) {
        let count = self.interest.entry(topic.clone()).or_insert(0);
        *count += 1;
        if *count == 1 && self.idle.remove(&topic).is_none() && !self.subscribed.contains(&topic) {
            fresh.push(topic);
        }
    }

    /// Counts a subscriber of `topic` out; the last one makes the topic idle.
    fn release(&mut self, topic: Topic) {
        let Some(count) = self.interest.get_mut(&topic) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.interest.remove(&topic);
        if self.subscribed.contains(&topic) {
            self.idle
                .insert(topic, Instant::now() + self.unsubscribe_delay);
        } else {
            self.core.hub.not_listening(&topic);
        }
    }

    /// Subscribes to `topics` and records, once Redis confirmed, from where on they are heard.
    async fn listen(&mut self, topics: Vec<Topic>) -> Result<(), String> {
        let mut conn = self.conn.clone().expect("serving a connection");
        let channels: Vec<String> = topics.iter().map(|t| self.core.names.channel(t)).collect();
        self.request("SUBSCRIBE", conn.subscribe(channels.as_slice()))
            .await?;
        let (epoch, seq) = self.read_state(&mut conn).await?;
        let hub = &self.core.hub;
        if hub.epoch() != epoch {
            hub.new_epoch(epoch, seq);
        }
        for topic in topics {
            // Every event of the topic numbered above `seq` was published after the
            // subscription took effect, so it will be heard.
            hub.listening(&topic, seq);
            self.subscribed.insert(topic);
        }
        Ok(())
    }

    /// Unsubscribes from the idle topics whose delay is over.
    async fn unsubscribe_idle(&mut self) -> Result<(), Interrupt> {
        let now = Instant::now();
        let due: Vec<Topic> = self
            .idle
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in &due {
            self.idle.remove(topic);
        }
        self.unsubscribe(due).await.map_err(Interrupt::Lost)
    }

    async fn unsubscribe(&mut self, topics: Vec<Topic>) -> Result<(), String> {
        if topics.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone().expect("serving a connection");
        let channels: Vec<String> = topics.iter().map(|t| self.core.names.channel(t)).collect();
        self.request("UNSUBSCRIBE", conn.unsubscribe(channels.as_slice()))
            .await?;
        for topic in topics {
            self.subscribed.remove(&topic);
            self.core.hub.not_listening(&topic);
        }
        Ok(())
    }

    /// The bus shut down: stop listening; the connection stays for publishing.
    async fn close(&mut self) -> Result<(), String> {
        self.closing = true;
        self.idle.clear();
        match self.core.mode {
            SubscribeMode::Pattern => {
                let mut conn = self.conn.clone().expect("serving a connection");
                self.request(
                    "PUNSUBSCRIBE",
                    conn.punsubscribe(self.core.names.pattern.as_str()),
                )
                .await
            }
            SubscribeMode::Interest => {
                let topics = self.subscribed.iter().cloned().collect();
                self.unsubscribe(topics).await
            }
        }
    }

    async fn ping(&mut self) -> Result<(), Interrupt> {
        let mut conn = self.conn.clone().expect("serving a connection");
        self.request("PING", ::redis::cmd("PING").query_async::<Value>(&mut conn))
            .await
            .map(drop)
            .map_err(Interrupt::Lost)
    }

    /// Forgets the broken connection; the hub keeps its history until the reconnect tells it
    /// what was missed.
    fn lost(&mut self, reason: String) {
        tracing::warn!(
            address = %self.address,
            %reason,
            "lost the connection to Redis; reconnecting"
        );
        for topic in &self.subscribed {
            if !self.interest.contains_key(topic) {
                // Idle: it will not be subscribed again.
                self.core.hub.not_listening(topic);
            }
        }
        self.subscribed.clear();
        self.idle.clear();
        self.conn = None;
        let mut link = lock(&self.core.link);
        link.generation += 1;
        link.conn = None;
        link.held = None;
        link.problem = Some(format!("connection to Redis lost ({reason}); reconnecting"));
    }

    /// Tries to connect until it works, handling commands in between.
    async fn reconnect(&mut self) -> Result<(), Interrupt> {
        let mut attempt: u32 = 0;
        loop {
            let wake_at = Instant::now() + self.backoff(attempt);
            loop {
                let command = tokio::select! {
                    command = self.commands.recv() => command,
                    () = tokio::time::sleep_until(wake_at) => break,
                };
                match command {
                    Some(command) => self.handle_while_down(command)?,
                    None => return Err(Interrupt::Stop),
                }
            }
            match self.connect().await {
                Ok(()) => return Ok(()),
                Err(reason) => {
                    if attempt % 10 == 0 {
                        tracing::warn!(%reason, attempt, "reconnecting to Redis failed");
                    } else {
                        tracing::debug!(%reason, attempt, "reconnecting to Redis failed");
                    }
                    lock(&self.core.link).problem = Some(format!("{reason}; reconnecting"));
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// While disconnected, subscribers are counted and go ahead at once; the topics are
    /// subscribed to when the connection is back.
    fn handle_while_down(&mut self, command: Command) -> Result<(), Interrupt> {
        match command {
            Command::Want { topics, ready } => {
                let mut fresh = Vec::new();
                for topic in topics {
                    self.want(topic, &mut fresh);
                }
                drop(ready);
            }
            Command::Release { topics } => topics.into_iter().for_each(|t| self.release(t)),
            Command::Lost { .. } => {}
            Command::Close => self.closing = true,
            Command::Stop => return Err(Interrupt::Stop),
        }
        Ok(())
    }

    /// The delay before reconnection attempt `attempt` (from 0): doubling from the minimum up
    /// to the maximum, randomised between half and all of it.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let base = self
            .backoff_min
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max);
        let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + unit / 2.0)
    }

    /// Opens a connection, subscribes, reads the state, tells the hub what may have been
    /// missed, and makes the connection available to publishers.
    async fn connect(&mut self) -> Result<(), String> {
        let generation = {
            let mut link = lock(&self.core.link);
            link.generation += 1;
            link.held = Some(Vec::new());
            link.generation
        };
        self.generation = generation;
        let result = self.try_connect(generation).await;
        if result.is_err() {
            let mut link = lock(&self.core.link);
            if link.generation == generation {
                link.held = None;
            }
        }
        result
    }

    async fn try_connect(&mut self, generation: u64) -> Result<(), String> {
        let core = Arc::downgrade(&self.core);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_push_sender(move |info: PushInfo| -> Result<(), Infallible> {
                if let Some(core) = core.upgrade() {
                    core.on_push(generation, info);
                }
                Ok(())
            });
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let conn = match timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(format!("cannot connect to Redis at {}: {e}", self.address)),
            Err(_elapsed) => {
                return Err(format!(
                    "cannot connect to Redis at {}: no answer within {:?}",
                    self.address, self.connect_timeout
                ))
            }
        };
        let mut requests = conn.clone();
        let topics: Vec<Topic> = match self.core.mode {
            _ if self.closing => Vec::new(),
            SubscribeMode::Pattern => {
                let pattern = self.core.names.pattern.as_str();
                self.request("PSUBSCRIBE", requests.psubscribe(pattern))
                    .await?;
                Vec::new()
            }
            SubscribeMode::Interest => {
                let topics: Vec<Topic> = self.interest.keys().cloned().collect();
                if !topics.is_empty() {
                    let channels: Vec<String> =
                        topics.iter().map(|t| self.core.names.channel(t)).collect();
                    self.request("SUBSCRIBE", requests.subscribe(channels.as_slice()))
                        .await?;
                }
                topics
            }
        };
        let (epoch, seq) = self.read_state(&mut requests).await?;

        let local_published = {
            let mut link = lock(&self.core.link);
            let hub = &self.core.hub;
            if hub.epoch() != epoch {
                // First connection, Redis lost its state, or local-only events were numbered
                // in an epoch of this instance meanwhile.
                hub.new_epoch(epoch, seq);
            } else {
                hub.gap(None, seq, GapReason::BrokerDisconnected);
            }
            for topic in &topics {
                hub.listening(topic, seq);
            }
            for received in link.held.take().unwrap_or_default() {
                self.core.deliver(received);
            }
            link.conn = Some(conn.clone());
            link.problem = None;
            link.local_epoch = false;
            link.last_local_warning = None;
            std::mem::take(&mut link.local_published)
        };
        self.subscribed = topics.into_iter().collect();
        self.conn = Some(conn);
        if local_published > 0 {
            tracing::warn!(
                address = %self.address,
                local_only = local_published,
                "connected to Redis again; events published meanwhile reached this instance only"
            );
        } else {
            tracing::info!(address = %self.address, "connected to Redis");
        }
        Ok(())
    }

    /// Reads the epoch (starting one if Redis has none) and the last sequence number.
    async fn read_state(&self, conn: &mut MultiplexedConnection) -> Result<(u32, u64), String> {
        let mut invocation = self.state_script.prepare_invoke();
        invocation
            .key(&self.core.names.state_key)
            .arg(format!("{:08x}", random_u32()));
        let (epoch, seq): (String, String) = self
            .request("reading the bus state", invocation.invoke_async(conn))
            .await?;
        parse_state(&epoch, &seq).ok_or_else(|| {
            format!(
                "unexpected content in the Redis key {}",
                self.core.names.state_key
            )
        })
    }

    /// Runs a request with the request timeout; any failure means the connection is unusable.
    async fn request<T>(
        &self,
        what: &str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        match timeout(self.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("{what} failed: {e}")),
            Err(_elapsed) => Err(format!(
                "Redis did not answer {what} within {:?}",
                self.request_timeout
            )),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_id_of_a_frame() {
        let id = |frame: &[u8]| frame_id(frame).map(|id| id.to_string());
        assert_eq!(
            id(b"event: x\ndata: a\nid: 0000002a-17\n\n").as_deref(),
            Some("0000002a-17")
        );
        assert_eq!(id(b"id: deadbeef-1\n\n").as_deref(), Some("deadbeef-1"));
        assert_eq!(id(b"data: id: deadbeef-1\n\n"), None);
        assert_eq!(id(b"data: x\nid: deadbeef-1\n"), None);
        assert_eq!(id(b"data: x\nid: 7\n\n"), None);
        assert_eq!(id(b""), None);
    }

    #[test]
    fn encodes_like_the_script() {
        // The script appends `id: EPOCH-SEQ\n\n` to the body; so does `finish_frame`.
        let event = Event::new("a\nb").event("kind").unwrap();
        let mut scripted = event.encode_body(0).to_vec();
        scripted.extend_from_slice(b"id: 0000002a-17\n\n");
        assert_eq!(scripted, event.encode_with_id(Some("0000002a-17")).to_vec());
        assert_eq!(
            frame_id(&scripted),
            Some(EventId::new(0x2a, 17)),
            "receivers find the id"
        );
    }

    #[test]
    fn names() {
        let names = Names::new("app[1]*");
        assert_eq!(names.state_key, "app[1]*:state");
        assert_eq!(names.pattern, "app\\[1\\]\\*:t:*");
        let topic = Topic::new("org:orders").unwrap();
        let channel = names.channel(&topic);
        assert_eq!(channel, "app[1]*:t:org:orders");
        assert_eq!(names.topic_of(channel.as_bytes()), Some(topic));
        assert_eq!(names.topic_of(b"app[1]*:t:bad topic"), None);
        assert_eq!(names.topic_of(b"other:t:x"), None);
    }

    #[test]
    fn state_replies() {
        assert_eq!(parse_state("0000002a", "0"), Some((0x2a, 0)));
        assert_eq!(
            parse_state("ffffffff", "18446744073709551615"),
            Some((u32::MAX, u64::MAX))
        );
        assert_eq!(parse_state("2a", "1"), None);
        assert_eq!(parse_state("+000002a", "1"), None);
        assert_eq!(parse_state("0000002a", "-1"), None);
    }
}
