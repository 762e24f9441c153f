//! What the Streams backend on one server offers the [resume protocol](crate::bus::redis::resume):
//! registering under the pipeline's gate, and catching up by reading the counter on the
//! subscribed connection and waiting for the pipeline to deliver up to it.

use super::Streams;
use crate::sync::lock;
use crate::{
    bus::{
        hub::Resume,
        redis::{resume::Resumable, state::State},
        Topic,
    },
    error::BusError,
    last_event_id::EventId,
};

/// A resume of `topics` on the backend.
pub(super) struct Resuming<'a> {
    pub(super) backend: &'a Streams,
    pub(super) topics: &'a [Topic],
}

impl Resumable for Resuming<'_> {
    fn register(&self, cursor: EventId) -> Result<Resume, BusError> {
        let core = &self.backend.core;
        let _gate = lock(&core.gate);
        core.hub.resume_or_register(self.topics.to_vec(), cursor)
    }

    async fn catch_up(&self) -> Result<(), BusError> {
        self.backend.sync().await.map(|_: State| ())
    }
}
