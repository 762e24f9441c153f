//! The Pub/Sub backend on one server: the shared connection carries the publishes (a script
//! that numbers the event and publishes it) and the subscription, whose messages
//! [`receive`] checks and delivers.

mod local;
mod receive;

use std::{fmt, sync::Arc};

use self::receive::Receive;
use super::{names::Names, supervisor, OneServer, Wiring};
use crate::last_event_id::{one_position, ResumeFrom};
use crate::sync::lock;
use crate::{
    bus::{
        hub::{Hub, Limits},
        redis::{publish::Publisher, scripts, RedisConfig, SubscribeMode},
        Published, Subscription, Topic,
    },
    error::BusError,
    event::Event,
};

/// The wiring: what the connection's messages are delivered to, and how it publishes.
pub(in crate::bus::redis) struct PubSub {
    receive: Arc<Receive>,
    mode: SubscribeMode,
}

/// Connects, listens (in pattern mode), reads the state and starts the supervisor.
pub(in crate::bus::redis) async fn connect(
    config: RedisConfig,
    limits: Limits,
) -> Result<OneServer<PubSub>, BusError> {
    let hears_all = config.mode == SubscribeMode::Pattern;
    let hub = Hub::new(crate::random::u32(), hears_all, limits);
    let state_key = Names::new(&config.prefix, "t").state;
    let receive = Receive::new(hub, state_key, config.publish_timeout);
    let conn = supervisor::connect(&config, config.mode, "t", receive.clone()).await?;
    let hub = receive.hub.clone();
    let publisher = Publisher::new(&scripts::PUBSUB, &config, false);
    let wiring = PubSub {
        receive,
        mode: config.mode,
    };
    Ok(OneServer::new(conn, hub, publisher, wiring, &config))
}

impl Wiring for PubSub {
    fn publish_locally(&self, topic: &Topic, event: &Event) -> Option<Published> {
        let body = event.encode_body(0);
        let mut local = lock(&self.receive.local);
        Some(local.publish(&self.receive.hub, topic, body))
    }

    fn hears_all(&self) -> bool {
        self.mode == SubscribeMode::Pattern
    }

    /// From this instance's own history.
    async fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> Result<Subscription, BusError> {
        self.receive
            .hub
            .subscribe(topics, one_position(resume))
            .map(Subscription::from)
    }
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub").field("mode", &self.mode).finish()
    }
}
