//! What the connection tells the Streams pipeline, in the order of the connection's traffic,
//! and the bound on notifications waiting for it.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use ::redis::aio::MultiplexedConnection;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::bus::{
    redis::{server::connection::Receiver, state::State},
    Topic,
};

/// The most bytes of notifications waiting for the pipeline.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// What the connection and the backend tell the pipeline.
pub(super) enum Input {
    /// A notification.
    Notice(Topic, Bytes),
    /// A (re)connection subscribed to `topics` and read the state.
    Connected { state: State, topics: Vec<Topic> },
    /// `topics` are heard from above the state's number on.
    Listening { state: State, topics: Vec<Topic> },
    /// `topic` is no longer heard.
    NotListening(Topic),
    /// Every notification sent before the state was read (when given) is ahead of this; reply
    /// once they are delivered.
    Sync {
        state: Option<State>,
        done: oneshot::Sender<()>,
    },
}

/// Notifications on their way to the pipeline. Other inputs are not counted: there are as many
/// as subscriptions change, whatever the rate of events.
pub(super) struct QueuedNotices {
    notices: AtomicUsize,
    bytes: AtomicUsize,
    pub(super) max_notices: usize,
    /// Set when a notification was dropped; the pipeline then reads from the streams.
    pub(super) overflowed: AtomicBool,
}

impl QueuedNotices {
    pub(super) fn new(max_notices: usize) -> Self {
        Self {
            notices: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_notices,
            overflowed: AtomicBool::new(false),
        }
    }

    /// Counts a notification in, unless the queue is full.
    fn admit(&self, len: usize) -> bool {
        // One producer (the connection's callback), so checking and then adding is exact on
        // that side; the pipeline only takes away.
        if self.notices.load(Ordering::Relaxed) >= self.max_notices
            || self.bytes.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES
        {
            self.overflowed.store(true, Ordering::Release);
            return false;
        }
        self.notices.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        true
    }

    /// Counts a notification out, as the pipeline takes it.
    pub(super) fn release(&self, len: usize) {
        self.notices.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// The connection's [`Receiver`]: forwards everything to the pipeline, in order, except
/// notifications past the queue's bound.
pub(super) struct Feed {
    pub(super) pipeline: mpsc::UnboundedSender<Input>,
    pub(super) queued: Arc<QueuedNotices>,
}

impl Receiver for Feed {
    fn message(&self, topic: Topic, payload: Bytes, _conn: &MultiplexedConnection) {
        if self.queued.admit(payload.len()) {
            let _ = self.pipeline.send(Input::Notice(topic, payload));
        }
    }

    fn connected(&self, state: State, topics: &[Topic]) {
        let topics = topics.to_vec();
        let _ = self.pipeline.send(Input::Connected { state, topics });
    }

    fn listening(&self, state: State, topics: &[Topic]) {
        let topics = topics.to_vec();
        let _ = self.pipeline.send(Input::Listening { state, topics });
    }

    fn not_listening(&self, topic: &Topic) {
        let _ = self.pipeline.send(Input::NotListening(topic.clone()));
    }
}
