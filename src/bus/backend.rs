//! The seam between the [`EventBus`](super::EventBus) handle and what carries events.

use std::{fmt, future::Future, pin::Pin};

use super::{hub::HubStats, presence::PresenceStore, Health, Published, Subscription, Topic};
use crate::{error::BusError, event::Event, last_event_id::ResumeFrom};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend provides. Every backend delivers to local subscribers through its hub (or
/// hubs); the backends differ in how events get from a publisher to the hubs of all instances.
pub(crate) trait Backend: fmt::Debug + Send + Sync + 'static {
    /// Assigns the event its id, encodes it once and carries it to every instance.
    fn publish(&self, topic: Topic, event: Event) -> BoxFuture<'_, Result<Published, BusError>>;

    /// Registers a subscriber; `topics` are sorted and unique. The subscription must be live
    /// when the future completes.
    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> BoxFuture<'_, Result<Subscription, BusError>>;

    /// Whether the backend's connections are up.
    fn health(&self) -> Health;

    /// Refuses new subscriptions, ends open ones, and releases the backend's connections and
    /// tasks.
    fn shutdown(&self);

    /// Where the presence counts of a backend of many instances are shared; `None` when this
    /// instance is the whole bus.
    fn presence(&self) -> Option<std::sync::Arc<dyn PresenceStore>> {
        None
    }

    /// Counts of the local fan-out's state.
    fn stats(&self) -> HubStats;
}
