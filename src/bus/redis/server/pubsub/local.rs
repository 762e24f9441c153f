//! Publishing while the connection is down: events reach this instance's subscribers only.
//!
//! Such events cannot take numbers from Redis, and numbers made up here could collide with the
//! ones Redis hands out meanwhile, so they are numbered in an epoch of this instance, which ends
//! when the connection is back (subscribers are told of the lost history both times).

use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::{
    bus::{hub::Hub, Published, Topic},
    event::finish_frame,
};

/// The least time between two warnings about local-only publishes during one outage.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct LocalOnly {
    /// Whether the hub is numbering local-only events in an epoch of its own.
    epoch: bool,
    /// Local-only publishes during the current outage.
    published: u64,
    last_warning: Option<Instant>,
}

impl LocalOnly {
    /// Delivers an event to `hub`'s subscribers only. Called under the connection's link lock.
    pub(super) fn publish(&mut self, hub: &Hub, topic: &Topic, mut body: BytesMut) -> Published {
        if !self.epoch {
            self.epoch = true;
            let current = hub.epoch();
            let epoch = std::iter::repeat_with(crate::random::u32)
                .find(|&e| e != current)
                .expect("an endless iterator");
            hub.new_epoch(epoch, 0);
        }
        let id = hub.publish_next(topic, |id| {
            finish_frame(&mut body, Some(&id.to_string()));
            body.split().freeze()
        });
        self.published += 1;
        let now = Instant::now();
        let due = self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARNING_INTERVAL);
        if due {
            self.last_warning = Some(now);
            tracing::warn!(
                %topic,
                local_only = self.published,
                "Redis is unreachable: event delivered to this instance's subscribers only"
            );
        }
        Published::new(id, true)
    }

    /// The connection is back: local-only publishing ends (the hub has Redis's epoch again).
    pub(super) fn end(&mut self) {
        self.epoch = false;
        self.last_warning = None;
        let published = std::mem::take(&mut self.published);
        if published > 0 {
            tracing::warn!(
                local_only = published,
                "connected to Redis again; events published meanwhile reached this instance only"
            );
        }
    }
}
