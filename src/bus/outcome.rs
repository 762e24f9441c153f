//! What publishing and health checks return.

use crate::last_event_id::EventId;

/// The result of a successful [`EventBus::publish`](crate::EventBus::publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    id: EventId,
    local_only: bool,
}

impl Published {
    pub(crate) fn new(id: EventId, local_only: bool) -> Self {
        Self { id, local_only }
    }

    /// The id assigned to the event; subscribers see the same id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// True when the event reached only this instance's subscribers, because the connection to
    /// the broker was down. Other instances never see it.
    pub fn is_local_only(&self) -> bool {
        self.local_only
    }
}

/// Whether the bus's backend is connected, from [`EventBus::health`](crate::EventBus::health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    problem: Option<String>,
}

impl Health {
    pub(crate) fn healthy() -> Self {
        Self { problem: None }
    }

    pub(crate) fn unhealthy(problem: impl Into<String>) -> Self {
        Self {
            problem: Some(problem.into()),
        }
    }

    /// True when the backend is connected and subscriptions are served.
    pub fn is_healthy(&self) -> bool {
        self.problem.is_none()
    }

    /// What is wrong, when unhealthy.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}
