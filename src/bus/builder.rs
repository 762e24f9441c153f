//! [`Builder`]: limits and history of an [`EventBus`](crate::EventBus), then its backend.

use std::time::Duration;

use super::{history, hub, memory, queue, EventBus};
/// Configures an [`EventBus`](crate::EventBus): limits and history first, then the backend.
///
/// Every buffer the bus keeps is bounded, in events and in bytes:
///
/// | what | bound | default |
/// | --- | --- | --- |
/// | history, per topic | [`history_events`](Self::history_events), [`history_bytes`](Self::history_bytes), [`history_age`](Self::history_age) | 1 000 events, 4 MiB, 5 min |
/// | history, all topics | [`history_total_bytes`](Self::history_total_bytes) (oldest evicted first) | 64 MiB |
/// | each subscriber's queue | [`queue_capacity`](Self::queue_capacity), [`queue_bytes`](Self::queue_bytes), [`stall_timeout`](Self::stall_timeout) | 1 024 events, 8 MiB, 30 s |
/// | everything held at once | [`max_held_bytes`](Self::max_held_bytes) | 256 MiB |
/// | replays under way | [`replay_budget`](Self::replay_budget), [`replay_wait`](Self::replay_wait) | 10 000 events and 64 MiB, 2 s |
///
/// A subscriber that breaks a bound of its queue is disconnected with its resume id
/// ([`Message::Lagged`](crate::Message::Lagged), [`Message::Stalled`](crate::Message::Stalled)); its client resumes. What `n` stalled clients
/// can pin is therefore at most `n` times the queue bounds, and never more than
/// `max_held_bytes` beyond the history: past it, every subscriber with a backlog is
/// disconnected at its next event. (A client's own socket and HTTP buffers come on top, at most
/// about one chunk each until the server's write timeout closes the connection.)
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_sse::EventBus;
///
/// let bus = EventBus::builder()
///     .history_events(10_000)
///     .history_age(Duration::from_secs(600))
///     .queue_bytes(4 << 20)
///     .memory();
/// # drop(bus);
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) limits: hub::Limits,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_topics: usize,
    pub(crate) replay_events: usize,
    pub(crate) replay_bytes: usize,
    pub(crate) replay_wait: Duration,
    pub(crate) presence_events: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            limits: hub::Limits {
                history: history::HistoryLimits {
                    events: 1_000,
                    age: Duration::from_secs(300),
                    bytes: 4 << 20,
                    total_bytes: 64 << 20,
                },
                queue: queue::QueueLimits {
                    items: 1_024,
                    bytes: 8 << 20,
                    stall: Duration::from_secs(30),
                },
                held_bytes: 256 << 20,
            },
            max_event_bytes: 1 << 20,
            max_topics: 32,
            replay_events: 10_000,
            replay_bytes: 64 << 20,
            replay_wait: Duration::from_secs(2),
            presence_events: false,
        }
    }
}

impl Builder {
    /// How many events per topic are kept for resume (default 1 000).
    pub fn history_events(mut self, n: usize) -> Self {
        self.limits.history.events = n;
        self
    }

    /// How long events are kept for resume (default 5 minutes). Expired events go within a
    /// second, whether or not anything is published.
    pub fn history_age(mut self, age: Duration) -> Self {
        self.limits.history.age = age;
        self
    }

    /// How many bytes of encoded events per topic are kept for resume (default 4 MiB).
    pub fn history_bytes(mut self, n: usize) -> Self {
        self.limits.history.bytes = n;
        self
    }

    /// How many bytes of encoded events are kept for resume across all topics (default 64 MiB);
    /// past it the oldest event of any topic goes first.
    pub fn history_total_bytes(mut self, n: usize) -> Self {
        self.limits.history.total_bytes = n;
        self
    }

    /// How many events may wait for one subscriber before it is disconnected as too slow
    /// (default 1 024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.limits.queue.items = n.max(1);
        self
    }

    /// How many bytes of events may wait for one subscriber before it is disconnected as too
    /// slow (default 8 MiB). A single event larger than this is still delivered to a
    /// subscriber with nothing waiting.
    pub fn queue_bytes(mut self, n: usize) -> Self {
        self.limits.queue.bytes = n;
        self
    }

    /// How long a subscriber may take nothing while events wait for it before it is
    /// disconnected as stalled (default 30 s): a client that stopped reading. Event streams can
    /// set their own ([`SseLayer::write_timeout`](crate::SseLayer::write_timeout)).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.limits.queue.stall = timeout;
        self
    }

    /// How many bytes of encoded events the bus may hold at once, counting an event shared by
    /// many subscribers once (default 256 MiB); past it, subscribers with a backlog are
    /// disconnected at their next event.
    pub fn max_held_bytes(mut self, n: usize) -> Self {
        self.limits.held_bytes = n;
        self
    }

    /// How many events and bytes the replays of resumes answered from this instance's memory
    /// may have under way at once (default 10 000 events and 64 MiB). A resume that does not
    /// fit within [`replay_wait`](Self::replay_wait) fails as overloaded (`503` with
    /// `Retry-After` from the layer).
    pub fn replay_budget(mut self, events: usize, bytes: usize) -> Self {
        self.replay_events = events;
        self.replay_bytes = bytes;
        self
    }

    /// How long a resume waits for replay budget (default 2 s).
    pub fn replay_wait(mut self, wait: Duration) -> Self {
        self.replay_wait = wait;
        self
    }

    /// The largest event data accepted by [`EventBus::publish`](crate::EventBus::publish), in bytes (default 1 MiB).
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }

    /// The most topics one subscription may name (default 32).
    pub fn max_topics(mut self, n: usize) -> Self {
        self.max_topics = n.max(1);
        self
    }

    /// Publishes an `sse-presence` event to `{topic}@presence` whenever a topic's count of
    /// subscriptions on this instance changes (default off; see [`presence`](super::presence)).
    pub fn presence_events(mut self, on: bool) -> Self {
        self.presence_events = on;
        self
    }

    /// Builds an in-process bus: fan-out and bounded history within this process, no setup.
    pub fn memory(self) -> EventBus {
        let backend = memory::Memory::new(self.limits);
        EventBus::from_backend(Box::new(backend), &self)
    }
}
