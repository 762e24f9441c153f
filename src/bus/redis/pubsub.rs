//! The Redis Pub/Sub backend.
//!
//! The connection ([`super::connection`]) carries the publishes (a Lua script that numbers the
//! event and publishes it) and the subscription; its messages are delivered to the hub as they
//! arrive. After a reconnect the hub is told about the gap (or the new epoch) before any message
//! the new connection heard.

use std::{fmt, sync::Arc, time::Duration};

use ::redis::Script;
use bytes::{Bytes, BytesMut};
use tokio::time::{timeout, Instant};

use super::{
    connection::{frame_id, parse_state, Handle, Receiver},
    envelope, RedisConfig, SubscribeMode,
};
use crate::{
    bus::{
        backend::{Backend, BoxFuture},
        hub::{Hub, Limits},
        queue::lock,
        random_u32, GapReason, Health, Published, Subscription, Topic,
    },
    error::{BusError, BusErrorKind},
    event::{finish_frame, Event},
    last_event_id::EventId,
};

/// Numbers an event and publishes it, atomically.
///
/// `KEYS[1]`: the state hash. `ARGV[1]`: an epoch to adopt if the hash has none; `ARGV[2]`: the
/// channel; `ARGV[3]`: the encoded event without its id line; `ARGV[4]`: the line of its
/// [envelope](super::envelope). Returns `{epoch, seq}`. The sequence
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
redis.call('PUBLISH', ARGV[2], ARGV[4] .. ARGV[3] .. 'id: ' .. epoch .. '-' .. seq .. '\n\n')
return {epoch, seq}
";

/// The least time between two warnings about local-only publishes during one outage.
const LOCAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The backend: the connection and what its messages are delivered to.
pub(crate) struct RedisPubSub {
    conn: Handle,
    core: Arc<Core>,
    mode: SubscribeMode,
    publish_timeout: Duration,
    publish_script: Script,
}

/// What the backend and the connection's message callback share.
struct Core {
    hub: Hub,
    /// Local-only publishing while the connection is down. Locked after the connection's link
    /// (publishers check the connection, then publish locally; a reconnect ends local-only
    /// publishing under the link's lock).
    local: std::sync::Mutex<LocalOnly>,
}

#[derive(Default)]
struct LocalOnly {
    /// Whether the hub is numbering local-only events in an epoch of its own.
    epoch: bool,
    /// Local-only publishes during the current outage.
    published: u64,
    last_warning: Option<Instant>,
}

impl RedisPubSub {
    /// Connects, listens (in pattern mode), reads the state and starts the supervisor.
    pub(crate) async fn connect(config: RedisConfig, limits: Limits) -> Result<Self, BusError> {
        let core = Arc::new(Core {
            hub: Hub::new(random_u32(), config.mode == SubscribeMode::Pattern, limits),
            local: std::sync::Mutex::new(LocalOnly::default()),
        });
        let conn = Handle::connect(&config, config.mode, "t", core.clone()).await?;
        Ok(Self {
            conn,
            core,
            mode: config.mode,
            publish_timeout: config.publish_timeout,
            publish_script: Script::new(PUBLISH_SCRIPT),
        })
    }

    async fn publish(&self, topic: Topic, event: Event) -> Result<Published, BusError> {
        let body = event.encode_body(0);
        let mut conn = {
            let link = self.conn.link();
            match &link.conn {
                Some(conn) => conn.clone(),
                None => return Ok(self.core.publish_locally(&topic, body)),
            }
        };
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(&self.conn.names.state_key)
            .arg(format!("{:08x}", random_u32()))
            .arg(self.conn.names.channel(&topic))
            .arg(&body[..])
            .arg(envelope::seal());
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
                    self.conn.names.state_key
                )))),
            },
        }
    }
}

impl Backend for RedisPubSub {
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
            if self.mode == SubscribeMode::Pattern {
                return hub.subscribe(topics, resume.as_deref());
            }
            if hub.is_closed() {
                return Err(BusError::new(BusErrorKind::Closed));
            }
            let interest = self.conn.want(topics.clone()).await;
            let subscription = hub.subscribe(topics, resume.as_deref())?;
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

impl fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = self.conn.link().conn.is_some();
        f.debug_struct("RedisPubSub")
            .field("mode", &self.mode)
            .field("state_key", &self.conn.names.state_key)
            .field("connected", &connected)
            .finish()
    }
}

impl Core {
    /// Delivers an event to this instance's subscribers only, while the connection is down.
    /// Called under the connection's link lock.
    ///
    /// Such events cannot take numbers from Redis, and numbers made up here could collide with
    /// the ones Redis hands out meanwhile, so they are numbered in an epoch of this instance,
    /// which ends when the connection is back.
    fn publish_locally(&self, topic: &Topic, mut body: BytesMut) -> Published {
        let mut local = lock(&self.local);
        if !local.epoch {
            local.epoch = true;
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
        local.published += 1;
        let now = Instant::now();
        let due = local
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= LOCAL_WARNING_INTERVAL);
        if due {
            local.last_warning = Some(now);
            tracing::warn!(
                %topic,
                local_only = local.published,
                "Redis is unreachable: event delivered to this instance's subscribers only"
            );
        }
        Published::new(id, true)
    }
}

impl Receiver for Core {
    fn message(&self, topic: Topic, payload: Bytes) {
        // All local subscribers share the buffer the message was read into.
        let (meta, frame) = envelope::open(payload);
        let Some(id) = frame_id(&frame) else {
            tracing::debug!(%topic, "ignoring a message that is not an event frame with an id");
            return;
        };
        let _span = meta.deliver_span(&topic, id).entered();
        // A new epoch means Redis lost its state while we stayed connected.
        self.hub.deliver_in_epoch(&topic, id, frame, meta.age());
    }

    fn connected(&self, epoch: u32, seq: u64, topics: &[Topic]) {
        let mut local = lock(&self.local);
        if self.hub.epoch() != epoch {
            // First connection, Redis lost its state, or local-only events were numbered in an
            // epoch of this instance meanwhile.
            self.hub.new_epoch(epoch, seq);
        } else {
            self.hub.gap(None, seq, GapReason::BrokerDisconnected);
        }
        for topic in topics {
            self.hub.listening(topic, seq);
        }
        local.epoch = false;
        local.last_warning = None;
        let published = std::mem::take(&mut local.published);
        if published > 0 {
            tracing::warn!(
                local_only = published,
                "connected to Redis again; events published meanwhile reached this instance only"
            );
        }
    }

    fn listening(&self, epoch: u32, seq: u64, topics: &[Topic]) {
        if self.hub.epoch() != epoch {
            self.hub.new_epoch(epoch, seq);
        }
        for topic in topics {
            self.hub.listening(topic, seq);
        }
    }

    fn not_listening(&self, topic: &Topic) {
        self.hub.not_listening(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
