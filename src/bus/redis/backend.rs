//! How the Redis backends meet the bus's [`Backend`] seam: every one publishes the same way
//! (through [`Publisher`], to the [`Target`] of the topic), and subscribes with an `async fn`
//! whose future is boxed here, once.

use std::{fmt, future::Future, sync::Arc};

use super::publish::{Publisher, Route, Target};
use crate::{
    bus::{
        backend::{Backend, BoxFuture},
        hub::HubStats,
        presence::PresenceStore,
        Health, Published, Subscription, Topic,
    },
    error::BusError,
    event::Event,
    last_event_id::ResumeFrom,
};

/// A Redis backend: one server's, or a cluster's. See [`Backend`] for what each method owes.
pub(super) trait RedisBackend: fmt::Debug + Send + Sync + 'static {
    type Route: Route;

    /// The connection publishes go through.
    fn route(&self) -> &Self::Route;

    fn publisher(&self) -> &Publisher;

    /// Where a publish to `topic` goes.
    fn target(&self, topic: &Topic) -> Target;

    /// While the connection is known to be down: delivers to this instance's subscribers only,
    /// or `None` to publish through Redis anyway (and fail if it is down).
    fn publish_locally(&self, _topic: &Topic, _event: &Event) -> Option<Published> {
        None
    }

    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> impl Future<Output = Result<Subscription, BusError>> + Send;

    fn health(&self) -> Health;

    fn shutdown(&self);

    fn stats(&self) -> HubStats;

    /// Where the instances' presence counts are kept.
    fn presence(&self) -> Arc<dyn PresenceStore>;
}

impl<T: RedisBackend> Backend for T {
    fn publish(&self, topic: Topic, event: Event) -> BoxFuture<'_, Result<Published, BusError>> {
        Box::pin(async move {
            if let Some(published) = self.publish_locally(&topic, &event) {
                return Ok(published);
            }
            let target = self.target(&topic);
            let id = self
                .publisher()
                .publish(self.route(), &target, &event)
                .await?;
            Ok(Published::new(id, false))
        })
    }

    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(RedisBackend::subscribe(self, topics, resume))
    }

    fn health(&self) -> Health {
        RedisBackend::health(self)
    }

    fn shutdown(&self) {
        RedisBackend::shutdown(self);
    }

    fn stats(&self) -> HubStats {
        RedisBackend::stats(self)
    }

    fn presence(&self) -> Option<Arc<dyn PresenceStore>> {
        Some(RedisBackend::presence(self))
    }
}
