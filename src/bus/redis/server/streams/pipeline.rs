//! The pipeline: the task that delivers what the connection hears to the hub, in sequence
//! order, checking every notification and filling in from the streams what it did not hear
//! (see [`fill`](super::fill)).

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    feed::{Input, QueuedNotices},
    pages::StreamPages,
    Core,
};
use crate::sync::lock;
use crate::{
    bus::{
        redis::{
            envelope::Meta,
            state::{self, State},
            validate::{self, Checked, Known, Verdict, FAR_AHEAD},
        },
        GapReason, Topic,
    },
    last_event_id::EventId,
};

/// How long the pipeline waits before reading the state again, when catching up failed.
const CATCH_UP_RETRY: Duration = Duration::from_millis(200);

pub(super) struct Pipeline {
    pub(super) core: Arc<Core>,
    pub(super) pages: Arc<StreamPages>,
    pub(super) inputs: mpsc::UnboundedReceiver<Input>,
    pub(super) queued: Arc<QueuedNotices>,
    /// Per topic listened to: every event of it numbered up to this was delivered (or precedes
    /// the moment listening began).
    pub(super) last: HashMap<Topic, u64>,
    /// The highest sequence number delivered to the hub (or known to need no delivery); the
    /// hub's own watermark is the same, changed only here, under the gate.
    pub(super) watermark: u64,
    /// The highest counter read in the current epoch.
    pub(super) counter: u64,
}

impl Pipeline {
    pub(super) async fn run(mut self) {
        while let Some(input) = self.inputs.recv().await {
            match input {
                Input::Notice(topic, payload) => {
                    self.queued.release(payload.len());
                    self.notice(topic, payload).await;
                }
                Input::Connected { state, topics } => self.connected(state, topics).await,
                Input::Listening { state, topics } => self.listening(state, topics),
                Input::NotListening(topic) => {
                    self.last.remove(&topic);
                    let _gate = lock(&self.core.gate);
                    self.core.hub.not_listening(&topic);
                }
                Input::Sync { state, done } => {
                    if let Some(state) = state {
                        self.adopt_epoch(state.epoch, state.seq);
                        self.counter = self.counter.max(state.seq);
                        let _gate = lock(&self.core.gate);
                        self.core.hub.advance(state.seq);
                        self.watermark = self.watermark.max(state.seq);
                    }
                    let _ = done.send(());
                }
            }
            if self.queued.overflowed.swap(false, Ordering::Acquire) {
                tracing::warn!(
                    backlog = self.queued.max_notices,
                    "notifications of new events came faster than they were delivered; \
                     reading the rest from Redis"
                );
                self.catch_up().await;
            }
        }
    }

    fn listening(&mut self, state: State, topics: Vec<Topic>) {
        self.adopt_epoch(state.epoch, state.seq);
        self.counter = self.counter.max(state.seq);
        let _gate = lock(&self.core.gate);
        for topic in topics {
            let last = self.last.entry(topic.clone()).or_insert(state.seq);
            *last = (*last).max(state.seq);
            self.core.hub.listening(&topic, state.seq);
        }
        self.watermark = self.watermark.max(state.seq);
    }

    /// Reads the state on the subscribed connection (every notification sent before it was
    /// queued or dropped by then) and fills every topic listened to up to it from the streams.
    /// Notifications still queued are then skipped as delivered.
    async fn catch_up(&mut self) {
        loop {
            // Without a connection, the reconnect fills in what was missed.
            let Some(result) = self.read_counter().await else {
                return;
            };
            match result {
                Ok(state) => {
                    let topics = self.last.keys().cloned().collect();
                    self.connected(state, topics).await;
                    return;
                }
                Err(reason) => tracing::warn!(%reason, "could not read the bus state"),
            }
            tokio::time::sleep(CATCH_UP_RETRY).await;
        }
    }

    /// Reads the counter on the subscribed connection; `None` without one.
    async fn read_counter(&self) -> Option<Result<State, String>> {
        let shared = &self.pages.shared;
        let mut conn = shared.connection()?;
        Some(state::read(&mut conn, &shared.names.state, None, self.pages.timeout).await)
    }

    /// Starts over when Redis numbers in another epoch: the hub drops its history and tells
    /// every subscriber; numbering restarts after `seq`.
    pub(super) fn adopt_epoch(&mut self, epoch: u32, seq: u64) {
        let hub = &self.core.hub;
        if hub.epoch() == epoch {
            return;
        }
        let _gate = lock(&self.core.gate);
        hub.new_epoch(epoch, seq);
        self.watermark = seq;
        self.counter = seq;
        for last in self.last.values_mut() {
            *last = seq;
        }
    }

    async fn notice(&mut self, topic: Topic, payload: Bytes) {
        let (prev, checked) = match validate::notice(&payload) {
            Ok(notice) => notice,
            Err(rejection) => return validate::reject(&topic, rejection),
        };
        if !self.believe(&topic, &checked).await {
            return;
        }
        let Checked { id, frame, meta } = checked;
        let seq = id.sequence();
        self.adopt_epoch(id.epoch(), seq - 1);
        if let Some(&last) = self.last.get(&topic) {
            if seq <= last {
                // Delivered already, by a fill.
                return;
            }
            if prev.exact && prev.seq > last {
                // The topic's previous event did not come through: read what is missing.
                self.fill(vec![(topic.clone(), last)], seq - 1, false).await;
            }
        }
        // Otherwise the topic's listening point is still on its way: this event was published
        // after the subscription took effect, and is the first one heard.
        self.deliver(&topic, id, frame, meta, None);
    }

    /// Whether a notification's number can be believed: at once, or once the counter (read
    /// after it arrived) confirms it. When the counter cannot be read, the notification is
    /// dropped and the pipeline catches up from the streams instead.
    async fn believe(&mut self, topic: &Topic, checked: &Checked) -> bool {
        let known = Known {
            epoch: self.core.hub.epoch(),
            seq: self.watermark.max(self.counter),
        };
        if known.judge(checked.id, FAR_AHEAD) == Verdict::Believe {
            return true;
        }
        match self.read_counter().await {
            Some(Ok(counter)) => {
                if counter.epoch == known.epoch {
                    self.counter = self.counter.max(counter.seq);
                }
                let confirmed = validate::confirm(checked.id, counter);
                if let Err(rejection) = confirmed {
                    validate::reject(topic, rejection);
                }
                confirmed.is_ok()
            }
            Some(Err(reason)) => {
                tracing::warn!(%reason, "could not check an event's number; reading from Redis");
                self.catch_up().await;
                false
            }
            None => false,
        }
    }

    /// Delivers one event (after announcing a gap before it, if any), unless an event with a
    /// higher number was delivered already: then subscribers of several topics could not see
    /// it in order, and it becomes a gap.
    pub(super) fn deliver(
        &mut self,
        topic: &Topic,
        id: EventId,
        frame: Bytes,
        meta: Meta,
        gap: Option<u64>,
    ) {
        let hub = &self.core.hub;
        let topics = std::slice::from_ref(topic);
        let seq = id.sequence();
        let _span = meta.deliver_span(topic, id).entered();
        let _gate = lock(&self.core.gate);
        if let Some(at) = gap {
            hub.gap(Some(topics), at.min(seq - 1), GapReason::BrokerDisconnected);
        }
        if seq > self.watermark {
            hub.deliver(topic, seq, frame, meta.age());
            self.watermark = seq;
        } else {
            tracing::warn!(%topic, seq, "an event arrived too late to be delivered in order");
            hub.gap(Some(topics), seq, GapReason::BrokerDisconnected);
        }
        let last = self.last.entry(topic.clone()).or_insert(seq);
        *last = (*last).max(seq);
    }

    /// A (re)connection is ready: in the same epoch, read what every live topic missed.
    async fn connected(&mut self, state: State, topics: Vec<Topic>) {
        let hub = self.core.hub.clone();
        if hub.epoch() != state.epoch {
            // First connection, or Redis lost its state: no history to fill from.
            self.adopt_epoch(state.epoch, state.seq);
            let _gate = lock(&self.core.gate);
            for topic in topics {
                self.last.insert(topic.clone(), state.seq);
                hub.listening(&topic, state.seq);
            }
            hub.advance(state.seq);
            self.watermark = self.watermark.max(state.seq);
            return;
        }
        self.counter = self.counter.max(state.seq);
        let ranges = {
            let _gate = lock(&self.core.gate);
            topics
                .iter()
                .map(|topic| {
                    let after = match self.last.get(topic) {
                        Some(&last) => last,
                        None => {
                            // Subscribed to while disconnected: its subscribers started at the
                            // watermark.
                            hub.listening(topic, self.watermark);
                            self.watermark
                        }
                    };
                    (topic.clone(), after)
                })
                .collect()
        };
        self.fill(ranges, state.seq, true).await;
        for topic in topics {
            let last = self.last.entry(topic).or_insert(state.seq);
            *last = (*last).max(state.seq);
        }
    }
}
