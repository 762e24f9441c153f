//! The supervisor: the background task that owns the connection and the subscription state
//! (see [`connection`](super::connection)). This file handles a live connection; losing it and
//! connecting again are in [`reconnect`].

mod reconnect;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use ::redis::{aio::MultiplexedConnection, Client, RedisResult, Value};
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use super::{
    connection::{open_client, Command, Handle, Link, Receiver, Shared},
    names::Names,
};
use crate::{
    bus::{
        redis::{idle::IdleTopics, request::timed, state, RedisConfig, SubscribeMode},
        Topic,
    },
    error::{BusError, BusErrorKind},
};

/// How often an idle connection is checked with `PING` (a server that hangs without closing the
/// connection is noticed this way).
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The most commands the supervisor handles in one batch (one `SUBSCRIBE` for all of them).
const MAX_BATCH: usize = 1024;

/// Connects, listens (in pattern mode), reads the state, tells `receiver`, and starts the
/// supervisor. `channel_kind` names the channels: `{prefix}:{channel_kind}:{topic}`.
pub(super) async fn connect<R: Receiver>(
    config: &RedisConfig,
    mode: SubscribeMode,
    channel_kind: &str,
    receiver: Arc<R>,
) -> Result<Handle, BusError> {
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
        generation: 0,
        conn: None,
        interest: HashMap::new(),
        subscribed: HashSet::new(),
        idle: IdleTopics::default(),
        closing: false,
    };
    if let Err(reason) = supervisor.connect().await {
        return Err(BusError::new(BusErrorKind::Unavailable(reason)));
    }
    tokio::spawn(supervisor.run());
    Ok(Handle::new(shared))
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
    /// The generation of the current connection.
    generation: u64,
    conn: Option<MultiplexedConnection>,
    /// Local subscriptions per topic (interest mode).
    interest: HashMap<Topic, usize>,
    /// Topics the connection is subscribed to (interest mode).
    subscribed: HashSet<Topic>,
    /// Subscribed topics nobody follows any more.
    idle: IdleTopics,
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
            let wake = tokio::select! {
                command = self.commands.recv() => Wake::Command(command),
                () = self.idle.next_due() => Wake::Idle,
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
                    topics.into_iter().for_each(|t| self.want(t, &mut fresh));
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
        if *count == 1 && !self.idle.remove(&topic) && !self.subscribed.contains(&topic) {
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
        let channels = self.channels(&topics);
        self.request("SUBSCRIBE", conn.subscribe(channels.as_slice()))
            .await?;
        let state = self.read_state(&mut conn).await?;
        // Every event of these topics numbered above the state's was published after the
        // subscription took effect, so it will be heard.
        self.receiver.listening(state, &topics);
        self.subscribed.extend(topics);
        Ok(())
    }

    /// Unsubscribes from the idle topics whose delay is over.
    async fn unsubscribe_idle(&mut self) -> Result<(), Interrupt> {
        let due = self.idle.take_due();
        self.unsubscribe(due).await.map_err(Interrupt::Lost)
    }

    async fn unsubscribe(&mut self, topics: Vec<Topic>) -> Result<(), String> {
        if topics.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone().expect("serving a connection");
        let channels = self.channels(&topics);
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
                let pattern = self.shared.names.pattern.as_str();
                self.request("PUNSUBSCRIBE", conn.punsubscribe(pattern))
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

    fn channels(&self, topics: &[Topic]) -> Vec<String> {
        topics
            .iter()
            .map(|t| self.shared.names.channel(t))
            .collect()
    }

    async fn read_state(&self, conn: &mut MultiplexedConnection) -> Result<state::State, String> {
        state::read(conn, &self.shared.names.state, None, self.request_timeout).await
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
