//! The connection both one-server backends share, as the backend and the subscriptions see it.
//!
//! Each instance keeps one RESP3 connection to Redis. It carries the requests (publishing,
//! reading) and the subscription, whose messages the connection hands to a callback in the
//! order Redis sent them, interleaved with the replies in that same order. A background task,
//! the [supervisor](super::supervisor), owns the subscription state: it subscribes to topics as
//! local clients start following them, unsubscribes when they stop, checks the connection, and
//! reconnects when it breaks. What a message means is up to the backend, through [`Receiver`].
//!
//! Ordering after a (re)connect: the new connection subscribes first, then reads the counter.
//! Messages that arrive meanwhile are held back; once the counter is read, the backend is told
//! ([`Receiver::connected`]), and only then are the held messages passed on, so whatever the
//! backend does about the outage comes before any event published after it.

use std::sync::{Arc, Mutex, MutexGuard};

use ::redis::{
    aio::MultiplexedConnection, Client, Cmd, IntoConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisResult, Value,
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::names::Names;
use crate::sync::lock;
use crate::{
    bus::{
        redis::{held::HeldMessages, publish::Route, state::State},
        Health, Topic,
    },
    error::{BusError, BusErrorKind},
};

/// What a backend does with what the connection hears. Every method is called in the order of
/// the connection's traffic: a message Redis sent before a reply is passed on before the
/// supervisor acts on that reply.
pub(super) trait Receiver: Send + Sync + 'static {
    /// A message on the channel of `topic`, heard on `conn`.
    fn message(&self, topic: Topic, payload: Bytes, conn: &MultiplexedConnection);

    /// A (re)connection subscribed to `topics` (none in pattern mode), then read `state`.
    /// Called before the messages held meanwhile are passed to [`message`](Self::message), and
    /// before publishers can use the connection.
    fn connected(&self, state: State, topics: &[Topic]);

    /// The connection subscribed to `topics`, then read `state`: every event of them numbered
    /// above it will be heard.
    fn listening(&self, state: State, topics: &[Topic]);

    /// The connection no longer listens to `topic` (or will not listen to it again after a
    /// reconnect).
    fn not_listening(&self, topic: &Topic);
}

/// What the backend and the supervisor share.
pub(in crate::bus::redis) struct Shared {
    pub(super) names: Names,
    pub(super) link: Mutex<Link>,
    /// Not bounded by a capacity, but by the subscriptions: each sends one `Want` when it starts
    /// and one `Release` when it ends, and the rest are one per connection or shutdown.
    pub(super) commands: mpsc::UnboundedSender<Command>,
}

/// The most messages held back while a connection is set up (one subscribe and one state read,
/// each bounded by the request timeout), and the most bytes of them. Past either, the attempt
/// fails and a later one starts over: what a reconnect misses is filled in or signalled anyway.
pub(super) const MAX_HELD_MESSAGES: usize = 8_192;
pub(super) const MAX_HELD_BYTES: usize = 64 << 20;

/// Messages held back while a new connection is set up.
pub(super) type Held = HeldMessages<(Topic, Bytes), MAX_HELD_MESSAGES, MAX_HELD_BYTES>;

/// The state of the connection, as requests and the message callback see it.
#[derive(Default)]
pub(super) struct Link {
    /// Counts connection attempts; messages from an older connection are ignored.
    pub(super) generation: u64,
    /// The connection, while it is up and subscribed.
    pub(super) conn: Option<MultiplexedConnection>,
    /// Messages held back while a new connection is being set up.
    pub(super) held: Option<Held>,
    /// Why the connection is down, while it is.
    pub(super) problem: Option<String>,
}

/// What the backend, the subscriptions and the connection tell the supervisor.
pub(super) enum Command {
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
pub(in crate::bus::redis) struct Handle {
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
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
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
    pub(super) fn on_push(&self, receiver: &dyn Receiver, generation: u64, info: PushInfo) {
        let PushInfo { kind, data } = info;
        let mut data = data.into_iter();
        let (channel, payload) = match kind {
            PushKind::Message => (data.next(), data.next()),
            PushKind::PMessage => (data.nth(1), data.next()),
            PushKind::Disconnection => return self.disconnected(generation),
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
        let Link { held, conn, .. } = &mut *link;
        match (held, conn) {
            (Some(held), _) => {
                let len = payload.len();
                held.hold((topic, payload), len);
            }
            (None, Some(conn)) => receiver.message(topic, payload, conn),
            // The connection is lost: the reconnect fills in or signals what it missed.
            (None, None) => {}
        }
    }

    /// Requests stop using the connection at once; the supervisor reconnects.
    fn disconnected(&self, generation: u64) {
        let mut link = self.link();
        if link.generation == generation && link.conn.take().is_some() {
            link.problem = Some("connection to Redis lost; reconnecting".to_owned());
        }
        drop(link);
        let _ = self.commands.send(Command::Lost { generation });
    }
}

/// Publishes go over the connection, and wait for replicas on it.
impl Route for Shared {
    type Conn = MultiplexedConnection;

    fn connection(&self) -> Option<MultiplexedConnection> {
        Shared::connection(self)
    }

    async fn wait(
        &self,
        conn: &mut MultiplexedConnection,
        _state_key: &str,
        wait: Cmd,
    ) -> RedisResult<i64> {
        wait.query_async(conn).await
    }
}

/// Parses the URL and forces RESP3, which delivers subscription messages as pushes on a
/// connection that also serves commands.
pub(super) fn open_client(url: &str) -> Result<Client, BusError> {
    if cfg!(not(feature = "tls")) && url.starts_with("rediss://") {
        return Err(BusError::new(BusErrorKind::Unavailable(
            "invalid Redis URL: `rediss://` (TLS) needs the `tls` feature of tower-sse".into(),
        )));
    }
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
