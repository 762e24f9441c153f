//! The backends on one Redis server: a shared [`connection`] kept up by a [`supervisor`], and
//! two thin wirings of it, [`pubsub`] and [`streams`], joined into one backend by [`OneServer`].
//!
//! Everything lives under the prefix (see [`names`]): `{prefix}:state` is the hash with the
//! namespace's `epoch` and `seq`, one counter for every topic; Pub/Sub announces on
//! `{prefix}:t:{topic}`, Streams on `{prefix}:n:{topic}` and stores in `{prefix}:s:{topic}`.

mod connection;
mod names;
pub(super) mod pubsub;
pub(super) mod streams;
mod supervisor;

use std::{fmt, future::Future, sync::Arc};

use self::connection::{Handle, Shared};
use crate::{bus::hub::HubStats, last_event_id::ResumeFrom};
use crate::{
    bus::{
        hub::Hub,
        presence::PresenceStore,
        redis::{
            backend::RedisBackend,
            presence::{Layout, RedisPresence},
            publish::{Publisher, Target},
            RedisConfig,
        },
        Health, Published, Subscription, Topic,
    },
    error::{BusError, BusErrorKind},
    event::Event,
};

/// What a backend on one server adds to the shared connection.
pub(super) trait Wiring: fmt::Debug + Send + Sync + 'static {
    /// While the connection is known to be down: delivers to this instance's subscribers only,
    /// or `None` when publishing must fail instead.
    fn publish_locally(&self, topic: &Topic, event: &Event) -> Option<Published>;

    /// Whether the connection hears every topic (Pub/Sub's pattern mode): then subscribing
    /// asks nothing of it.
    fn hears_all(&self) -> bool;

    /// Subscribes to the local fan-out, resuming from `resume` as the backend can, once the
    /// connection listens to `topics`.
    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> impl Future<Output = Result<Subscription, BusError>> + Send;
}

/// A backend on one server: the connection, the local fan-out, how it publishes, and a wiring.
pub(super) struct OneServer<W> {
    conn: Handle,
    hub: Hub,
    publisher: Publisher,
    wiring: W,
    presence: Arc<RedisPresence<Shared>>,
}

impl<W: Wiring> OneServer<W> {
    fn new(conn: Handle, hub: Hub, publisher: Publisher, wiring: W, config: &RedisConfig) -> Self {
        let presence = RedisPresence::new(conn.shared(), config, Layout::OneServer);
        Self {
            conn,
            hub,
            publisher,
            wiring,
            presence: Arc::new(presence),
        }
    }
}

impl<W: Wiring> RedisBackend for OneServer<W> {
    type Route = Shared;

    fn route(&self) -> &Shared {
        &self.conn
    }

    fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn target(&self, topic: &Topic) -> Target {
        self.conn.names.target(topic, self.publisher.stores())
    }

    fn publish_locally(&self, topic: &Topic, event: &Event) -> Option<Published> {
        // Under the link's lock: a reconnect ends local-only publishing under it too.
        let link = self.conn.link();
        match link.conn {
            None => self.wiring.publish_locally(topic, event),
            Some(_) => None,
        }
    }

    async fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> Result<Subscription, BusError> {
        if self.hub.is_closed() {
            return Err(BusError::new(BusErrorKind::Closed));
        }
        if self.wiring.hears_all() {
            return self.wiring.subscribe(topics, resume).await;
        }
        // Registered before the request: released even if this future is dropped.
        let interest = self.conn.want(topics.clone()).await;
        let subscription = self.wiring.subscribe(topics, resume).await?;
        Ok(subscription.with_guard(Box::new(interest)))
    }

    fn health(&self) -> Health {
        self.conn.health()
    }

    fn shutdown(&self) {
        self.hub.close();
        self.conn.close();
    }

    fn stats(&self) -> HubStats {
        self.hub.stats()
    }

    fn presence(&self) -> Arc<dyn PresenceStore> {
        self.presence.clone()
    }
}

impl<W: Wiring> fmt::Debug for OneServer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneServer")
            .field("state_key", &self.conn.names.state)
            .field("connected", &self.conn.link().conn.is_some())
            .field("wiring", &self.wiring)
            .finish()
    }
}
