//! The in-process backend: the hub alone, numbering events itself.

use super::{
    backend::{Backend, BoxFuture},
    hub::{Hub, HubStats, Limits},
    Health, Published, Subscription, Topic,
};
use crate::{
    error::BusError,
    event::{finish_frame, Event},
    last_event_id::{one_position, ResumeFrom},
};

/// Fan-out within one process, with bounded history for resume. A new process starts a new
/// epoch, so ids from a previous run are recognised as unknown.
#[derive(Debug)]
pub(crate) struct Memory {
    hub: Hub,
}

impl Memory {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            hub: Hub::new(crate::random::u32(), true, limits),
        }
    }
}

/// Room for the longest id: 8 hex digits, `-`, 20 digits.
const MAX_ID_LEN: usize = 29;

impl Backend for Memory {
    fn publish(&self, topic: Topic, event: Event) -> BoxFuture<'_, Result<Published, BusError>> {
        // Encode outside the lock; only the id line is written under it.
        let mut body = event.encode_body(MAX_ID_LEN);
        let id = self.hub.publish_next(&topic, |id| {
            let id = id.to_string();
            finish_frame(&mut body, Some(&id));
            body.split().freeze()
        });
        Box::pin(std::future::ready(Ok(Published::new(id, false))))
    }

    fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        let result = self
            .hub
            .subscribe(topics, one_position(resume))
            .map(Subscription::from);
        Box::pin(std::future::ready(result))
    }

    fn health(&self) -> Health {
        Health::healthy()
    }

    fn shutdown(&self) {
        self.hub.close();
    }

    fn stats(&self) -> HubStats {
        self.hub.stats()
    }
}
