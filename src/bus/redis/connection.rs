//! The connection machinery both Redis backends share.
//!
//! Each instance keeps one RESP3 connection to Redis. It carries the requests (publishing,
//! reading) and the subscription, whose messages the connection hands to a callback in the
//! order Redis sent them, interleaved with the replies in that same order. A background task
//! (the supervisor) owns the subscription state: it subscribes to topics as local clients start
//! following them, unsubscribes when they stop, checks the connection, and reconnects when it
//! breaks. What a message means, and what to do about the counter read after subscribing, is up
//! to the backend, through [`Receiver`].
//!
//! Ordering after a (re)connect: the new connection subscribes first, then reads the counter.
//! Messages that arrive meanwhile are held back; once the counter is read, the backend is told
//! ([`Receiver::connected`]), and only then are the held messages passed on, so whatever the
//! backend does about the outage comes before any event published after it.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use ::redis::{
    aio::MultiplexedConnection, AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, RedisResult, Script, Value,
};
use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    time::{timeout, Instant, MissedTickBehavior},
};

use super::{RedisConfig, SubscribeMode};
use crate::{
    bus::{queue::lock, random_u32, random_u64, Health, Topic},
    error::{BusError, BusErrorKind},
    last_event_id::EventId,
};

/// Reads the epoch (adopting `ARGV[1]` if there is none) and the last sequence number.
const STATE_SCRIPT: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
return {state[1], state[2] or '0'}
";

/// How often an idle connection is checked with `PING` (a server that hangs without closing the
/// connection is noticed this way).
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The most commands the supervisor handles in one batch (one `SUBSCRIBE` for all of them).
const MAX_BATCH: usize = 1024;

/// What a backend does with what the connection hears. Every method is called in the order of
/// the connection's traffic: a message Redis sent before a reply is passed on before the
/// supervisor acts on that reply.
pub(super) trait Receiver: Send + Sync + 'static {
    /// A message on the channel of `topic`.
    fn message(&self, topic: Topic, payload: Bytes);

    /// A (re)connection subscribed to `topics` (none in pattern mode), then read the state:
    /// the epoch and the last sequence number. Called before the messages held meanwhile are
    /// passed to [`message`](Self::message), and before publishers can use the connection.
    fn connected(&self, epoch: u32, seq: u64, topics: &[Topic]);

    /// The connection subscribed to `topics`, then read the state: every event of them numbered
    /// above `seq` will be heard.
    fn listening(&self, epoch: u32, seq: u64, topics: &[Topic]);

    /// The connection no longer listens to `topic` (or will not listen to it again after a
    /// reconnect).
    fn not_listening(&self, topic: &Topic);
}

/// What the backend and the supervisor share.
pub(super) struct Shared {
    pub(super) names: Names,
    pub(super) link: Mutex<Link>,
    /// Not bounded by a capacity, but by the subscriptions: each sends one `Want` when it starts
    /// and one `Release` when it ends, and the rest are one per connection or shutdown.
    commands: mpsc::UnboundedSender<Command>,
}

/// The state of the connection, as requests and the message callback see it.
#[derive(Default)]
pub(super) struct Link {
    /// Counts connection attempts; messages from an older connection are ignored.
    generation: u64,
    /// The connection, while it is up and subscribed.
    pub(super) conn: Option<MultiplexedConnection>,
    /// Messages held back while a new connection is being set up.
    held: Option<Held>,
    /// Why the connection is down, while it is.
    problem: Option<String>,
}

/// The most messages held back while a connection is set up (one subscribe and one state read,
/// each bounded by the request timeout), and the most bytes of them. Past either, the attempt
/// fails and a later one starts over: what a reconnect misses is filled in or signalled anyway.
const MAX_HELD_MESSAGES: usize = 8_192;
const MAX_HELD_BYTES: usize = 64 << 20;

/// Messages held back while a new connection is being set up.
type Held = Backlog<(Topic, Bytes), MAX_HELD_MESSAGES, MAX_HELD_BYTES>;

/// Messages held back until something is ready for them: at most `MESSAGES` of them and `BYTES`
/// of payload. Past either, it drops them all and remembers that it did.
pub(super) struct Backlog<T, const MESSAGES: usize, const BYTES: usize> {
    pub(super) messages: Vec<T>,
    bytes: usize,
    /// Whether a message was dropped for lack of room.
    pub(super) overflowed: bool,
}

impl<T, const MESSAGES: usize, const BYTES: usize> Default for Backlog<T, MESSAGES, BYTES> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            bytes: 0,
            overflowed: false,
        }
    }
}

impl<T, const MESSAGES: usize, const BYTES: usize> Backlog<T, MESSAGES, BYTES> {
    /// Holds `message`, whose payload is `len` bytes long, if there is room.
    pub(super) fn hold(&mut self, message: T, len: usize) {
        if self.overflowed || self.messages.len() >= MESSAGES || self.bytes + len > BYTES {
            self.overflowed = true;
            self.messages = Vec::new();
            return;
        }
        self.bytes += len;
        self.messages.push(message);
    }
}

impl<const MESSAGES: usize, const BYTES: usize> Backlog<Bytes, MESSAGES, BYTES> {
    /// Holds a payload if there is room.
    pub(super) fn hold_bytes(&mut self, payload: Bytes) {
        let len = payload.len();
        self.hold(payload, len);
    }
}

/// The channel and key names of one prefix.
pub(super) struct Names {
    pub(super) state_key: String,
    channel_prefix: String,
    pattern: String,
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
    /// The bus shut down: stop listening, keep the connection for requests.
    Close,
    /// The bus was dropped: close the connection and end the task.
    Stop,
}

/// A subscription's interest in its topics, released when the subscription is dropped.
pub(super) struct Interest {
    topics: Vec<Topic>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let topics = std::mem::take(&mut self.topics);
        let _ = self.commands.send(Command::Release { topics });
    }
}

/// The backend's handle on the connection. Dropping it closes the connection and ends the
/// supervisor.
pub(super) struct Handle {
    shared: Arc<Shared>,
}

impl std::ops::Deref for Handle {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shared.commands.send(Command::Stop);
    }
}

impl Handle {
    /// Connects, listens (in pattern mode), reads the state, tells `receiver`, and starts the
    /// supervisor. `channel_kind` names the channels: `{prefix}:{channel_kind}:{topic}`.
    pub(super) async fn connect<R: Receiver>(
        config: &RedisConfig,
        mode: SubscribeMode,
        channel_kind: &str,
        receiver: Arc<R>,
    ) -> Result<Self, BusError> {
        let client = open_client(&config.url)?;
        let address = client.get_connection_info().addr().to_string();
        let (commands, receiver_of_commands) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            names: Names::new(&config.prefix, channel_kind),
            link: Mutex::new(Link::default()),
            commands,
        });
        let mut supervisor = Supervisor {
            shared: shared.clone(),
            receiver,
            client,
            address,
            mode,
            commands: receiver_of_commands,
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
        Ok(Self { shared })
    }

    /// The shared state, for tasks of the backend that outlive no handle.
    pub(super) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

impl Shared {
    /// Locks the connection state.
    pub(super) fn link(&self) -> MutexGuard<'_, Link> {
        lock(&self.link)
    }

    /// The connection, while it is up.
    pub(super) fn connection(&self) -> Option<MultiplexedConnection> {
        self.link().conn.clone()
    }

    /// Whether the connection is up, with the reason when it is not.
    pub(super) fn health(&self) -> Health {
        match &self.link().problem {
            Some(problem) => Health::unhealthy(problem.clone()),
            None => Health::healthy(),
        }
    }

    /// Asks the supervisor to listen to `topics` and waits until it does, or until the
    /// connection is known to be down (the topics are listened to when it is back). The
    /// returned interest keeps them listened to; it is registered before the request, so it is
    /// released even if this future is dropped while it waits.
    pub(super) async fn want(&self, topics: Vec<Topic>) -> Interest {
        let interest = Interest {
            topics: topics.clone(),
            commands: self.commands.clone(),
        };
        let (ready, wait) = oneshot::channel();
        if self.commands.send(Command::Want { topics, ready }).is_ok() {
            // Dropped without a value once the topics are listened to, or once the connection is
            // known to be down.
            let _ = wait.await;
        }
        interest
    }

    /// The bus shut down: stop listening; the connection stays for requests.
    pub(super) fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// The connection's push callback: subscription messages and the disconnection notice.
    fn on_push(&self, receiver: &dyn Receiver, generation: u64, info: PushInfo) {
        let PushInfo { kind, data } = info;
        let mut data = data.into_iter();
        let (channel, payload) = match kind {
            PushKind::Message => (data.next(), data.next()),
            PushKind::PMessage => (data.nth(1), data.next()),
            PushKind::Disconnection => {
                // Requests stop using the connection at once; the supervisor reconnects.
                let mut link = self.link();
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
        // Takes over the buffer the message was read into: no copy.
        let payload = Bytes::from(payload);
        let mut link = self.link();
        if link.generation != generation {
            return;
        }
        match &mut link.held {
            Some(held) => {
                let len = payload.len();
                held.hold((topic, payload), len);
            }
            None => receiver.message(topic, payload),
        }
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

impl Names {
    fn new(prefix: &str, channel_kind: &str) -> Self {
        Self {
            state_key: format!("{prefix}:state"),
            channel_prefix: format!("{prefix}:{channel_kind}:"),
            pattern: format!("{}:{channel_kind}:*", escape_glob(prefix)),
        }
    }

    /// The channel of `topic`.
    pub(super) fn channel(&self, topic: &Topic) -> String {
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

/// The id of a frame the publish scripts build: its last line before the blank one.
pub(super) fn frame_id(frame: &[u8]) -> Option<EventId> {
    let rest = frame.strip_suffix(b"\n\n")?;
    let start = rest.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let id = rest[start..].strip_prefix(b"id: ")?;
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Parses the epoch (8 hex digits) and sequence number the scripts return.
pub(super) fn parse_state(epoch: &str, seq: &str) -> Option<(u32, u64)> {
    if epoch.len() != 8 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u32::from_str_radix(epoch, 16).ok()?, seq.parse().ok()?))
}

/// Reads the epoch (starting one if Redis has none) and the last sequence number.
pub(super) async fn read_state(
    script: &Script,
    names: &Names,
    conn: &mut MultiplexedConnection,
) -> Result<(u32, u64), String> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&names.state_key)
        .arg(format!("{:08x}", random_u32()));
    let (epoch, seq): (String, String) = invocation
        .invoke_async(conn)
        .await
        .map_err(|e| format!("reading the bus state failed: {e}"))?;
    parse_state(&epoch, &seq)
        .ok_or_else(|| format!("unexpected content in the Redis key {}", names.state_key))
}

/// A script that reads the state, for backends that read it outside the supervisor.
pub(super) fn state_script() -> Script {
    Script::new(STATE_SCRIPT)
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
struct Supervisor<R> {
    shared: Arc<Shared>,
    receiver: Arc<R>,
    client: Client,
    /// `host:port`, for messages (the URL may hold a password).
    address: String,
    mode: SubscribeMode,
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

impl<R: Receiver> Supervisor<R> {
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
        let mut link = self.shared.link();
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
            self.receiver.not_listening(&topic);
        }
    }

    /// Subscribes to `topics` and tells the receiver, once Redis confirmed, from where on they
    /// are heard.
    async fn listen(&mut self, topics: Vec<Topic>) -> Result<(), String> {
        let mut conn = self.conn.clone().expect("serving a connection");
        let channels: Vec<String> = topics
            .iter()
            .map(|t| self.shared.names.channel(t))
            .collect();
        self.request("SUBSCRIBE", conn.subscribe(channels.as_slice()))
            .await?;
        let (epoch, seq) = self.read_state(&mut conn).await?;
        // Every event of these topics numbered above `seq` was published after the
        // subscription took effect, so it will be heard.
        self.receiver.listening(epoch, seq, &topics);
        self.subscribed.extend(topics);
        Ok(())
    }

    /// Unsubscribes from the idle topics whose delay is over.
    async fn unsubscribe_idle(&mut self) -> Result<(), Interrupt> {
        let due = take_due(&mut self.idle);
        self.unsubscribe(due).await.map_err(Interrupt::Lost)
    }

    async fn unsubscribe(&mut self, topics: Vec<Topic>) -> Result<(), String> {
        if topics.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone().expect("serving a connection");
        let channels: Vec<String> = topics
            .iter()
            .map(|t| self.shared.names.channel(t))
            .collect();
        self.request("UNSUBSCRIBE", conn.unsubscribe(channels.as_slice()))
            .await?;
        for topic in topics {
            self.subscribed.remove(&topic);
            self.receiver.not_listening(&topic);
        }
        Ok(())
    }

    /// The bus shut down: stop listening; the connection stays for requests.
    async fn close(&mut self) -> Result<(), String> {
        self.closing = true;
        self.idle.clear();
        match self.mode {
            SubscribeMode::Pattern => {
                let mut conn = self.conn.clone().expect("serving a connection");
                self.request(
                    "PUNSUBSCRIBE",
                    conn.punsubscribe(self.shared.names.pattern.as_str()),
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

    /// Forgets the broken connection; the backend keeps its state until the reconnect tells it
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
                self.receiver.not_listening(topic);
            }
        }
        self.subscribed.clear();
        self.idle.clear();
        self.conn = None;
        let mut link = self.shared.link();
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
                Ok(()) => {
                    crate::metrics::redis_reconnected();
                    return Ok(());
                }
                Err(reason) => {
                    if attempt % 10 == 0 {
                        tracing::warn!(%reason, attempt, "reconnecting to Redis failed");
                    } else {
                        tracing::debug!(%reason, attempt, "reconnecting to Redis failed");
                    }
                    self.shared.link().problem = Some(format!("{reason}; reconnecting"));
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
        backoff(self.backoff_min, self.backoff_max, attempt)
    }

    /// Opens a connection, subscribes, reads the state, tells the receiver, and makes the
    /// connection available to requests.
    async fn connect(&mut self) -> Result<(), String> {
        let generation = {
            let mut link = self.shared.link();
            link.generation += 1;
            link.held = Some(Held::default());
            link.generation
        };
        self.generation = generation;
        let result = self.try_connect(generation).await;
        if result.is_err() {
            let mut link = self.shared.link();
            if link.generation == generation {
                link.held = None;
            }
        }
        result
    }

    async fn try_connect(&mut self, generation: u64) -> Result<(), String> {
        let shared = Arc::downgrade(&self.shared);
        let receiver = Arc::downgrade(&self.receiver);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_push_sender(move |info: PushInfo| -> Result<(), Infallible> {
                if let (Some(shared), Some(receiver)) = (shared.upgrade(), receiver.upgrade()) {
                    shared.on_push(&*receiver, generation, info);
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
        let topics: Vec<Topic> = match self.mode {
            _ if self.closing => Vec::new(),
            SubscribeMode::Pattern => {
                let pattern = self.shared.names.pattern.as_str();
                self.request("PSUBSCRIBE", requests.psubscribe(pattern))
                    .await?;
                Vec::new()
            }
            SubscribeMode::Interest => {
                let topics: Vec<Topic> = self.interest.keys().cloned().collect();
                if !topics.is_empty() {
                    let channels: Vec<String> = topics
                        .iter()
                        .map(|t| self.shared.names.channel(t))
                        .collect();
                    self.request("SUBSCRIBE", requests.subscribe(channels.as_slice()))
                        .await?;
                }
                topics
            }
        };
        let (epoch, seq) = self.read_state(&mut requests).await?;

        {
            let mut link = self.shared.link();
            let held = link.held.take().unwrap_or_default();
            if held.overflowed {
                return Err(format!(
                    "more than {MAX_HELD_MESSAGES} messages or {} MiB arrived while connecting",
                    MAX_HELD_BYTES >> 20
                ));
            }
            self.receiver.connected(epoch, seq, &topics);
            for (topic, payload) in held.messages {
                self.receiver.message(topic, payload);
            }
            link.conn = Some(conn.clone());
            link.problem = None;
        }
        self.subscribed = topics.into_iter().collect();
        self.conn = Some(conn);
        tracing::info!(address = %self.address, "connected to Redis");
        Ok(())
    }

    async fn read_state(&self, conn: &mut MultiplexedConnection) -> Result<(u32, u64), String> {
        let reading = read_state(&self.state_script, &self.shared.names, conn);
        match timeout(self.request_timeout, reading).await {
            Ok(result) => result,
            Err(_elapsed) => Err(format!(
                "Redis did not answer reading the bus state within {:?}",
                self.request_timeout
            )),
        }
    }

    /// Runs a request with the request timeout; any failure means the connection is unusable.
    async fn request<T>(
        &self,
        what: &str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        timed("Redis", what, self.request_timeout, request).await
    }
}

/// Removes and returns the topics whose time has come.
pub(super) fn take_due(idle: &mut HashMap<Topic, Instant>) -> Vec<Topic> {
    let now = Instant::now();
    let due: Vec<Topic> = idle
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(topic, _)| topic.clone())
        .collect();
    for topic in &due {
        idle.remove(topic);
    }
    due
}

/// Runs `request` (`what`, for messages) for at most `limit`; a failure or timeout becomes a
/// one-line reason naming `server`.
pub(super) async fn timed<T>(
    server: &str,
    what: &str,
    limit: Duration,
    request: impl Future<Output = RedisResult<T>>,
) -> Result<T, String> {
    match timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Err(_elapsed) => Err(format!("{server} did not answer {what} within {limit:?}")),
    }
}

/// The delay before reconnection attempt `attempt` (from 0): doubling from `min` up to `max`,
/// randomised between half and all of it.
pub(super) fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    let base = min.checked_mul(factor).unwrap_or(max).min(max);
    let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(0.5 + unit / 2.0)
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
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
    fn names() {
        let names = Names::new("app[1]*", "t");
        assert_eq!(names.state_key, "app[1]*:state");
        assert_eq!(names.pattern, "app\\[1\\]\\*:t:*");
        let topic = Topic::new("org:orders").unwrap();
        let channel = names.channel(&topic);
        assert_eq!(channel, "app[1]*:t:org:orders");
        assert_eq!(names.topic_of(channel.as_bytes()), Some(topic));
        assert_eq!(names.topic_of(b"app[1]*:t:bad topic"), None);
        assert_eq!(names.topic_of(b"other:t:x"), None);
        let streams = Names::new("app", "n");
        assert_eq!(streams.channel(&Topic::new("x").unwrap()), "app:n:x");
        assert_eq!(streams.topic_of(b"app:t:x"), None);
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
