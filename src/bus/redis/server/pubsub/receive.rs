//! What a Pub/Sub instance does with what it hears.
//!
//! Messages are delivered to the hub as they arrive, from the connection's push callback, once
//! [`validate`] found them to be event frames of the current epoch with a plausible number.
//! Otherwise the number is checked against the counter, read on the same connection (so the
//! answer comes after the message): meanwhile later messages wait, in order, and are then
//! judged in turn. A message that fails is dropped; one that could not be checked (Redis did not
//! answer) is dropped too, and subscribers are told of a gap. After a reconnect the hub is told
//! about the gap (or the new epoch) before any message the new connection heard.

use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ::redis::aio::MultiplexedConnection;
use bytes::Bytes;

use super::local::LocalOnly;
use crate::bus::{
    hub::Hub,
    redis::{
        held::HeldMessages,
        server::connection::Receiver,
        state::{self, State},
        validate::{self, Checked, Known, Verdict, FAR_AHEAD},
    },
    GapReason, Topic,
};
use crate::sync::lock;

/// The most messages, and bytes of them, that wait for a check of the counter. Past either,
/// they are dropped and subscribers are told of a gap.
const MAX_WAITING: usize = 8_192;
const MAX_WAITING_BYTES: usize = 64 << 20;

type Waiting = HeldMessages<(Topic, Checked), MAX_WAITING, MAX_WAITING_BYTES>;

/// The connection's [`Receiver`] for Pub/Sub, and the local fan-out it delivers to.
pub(super) struct Receive {
    me: Weak<Receive>,
    pub(super) hub: Hub,
    /// Local-only publishing while the connection is down. Locked after the connection's link
    /// and after `check` (publishers check the connection, then publish locally; a reconnect
    /// ends local-only publishing under the link's lock).
    pub(super) local: Mutex<LocalOnly>,
    check: Mutex<Check>,
    state_key: String,
    request_timeout: Duration,
}

/// What the instance knows of the numbering, and the messages waiting for a check.
struct Check {
    known: Known,
    /// While a number is checked: the messages that came after it.
    waiting: Option<Waiting>,
    /// Counts connections: a check begun on an older one is void.
    round: u64,
}

impl Receive {
    pub(super) fn new(hub: Hub, state_key: String, request_timeout: Duration) -> Arc<Self> {
        let known = Known {
            epoch: hub.epoch(),
            seq: 0,
        };
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            hub,
            local: Mutex::new(LocalOnly::default()),
            check: Mutex::new(Check {
                known,
                waiting: None,
                round: 0,
            }),
            state_key,
            request_timeout,
        })
    }

    /// Delivers `checked` if it can be believed as it is; otherwise holds everything from here
    /// on and starts a check.
    fn judge(
        &self,
        check: &mut Check,
        topic: Topic,
        checked: Checked,
        conn: &MultiplexedConnection,
    ) {
        if let Some(waiting) = &mut check.waiting {
            let len = checked.frame.len();
            waiting.hold((topic, checked), len);
            return;
        }
        match check.known.judge(checked.id, FAR_AHEAD) {
            Verdict::Believe => {
                check.known.saw(checked.id.sequence());
                self.deliver(&topic, checked);
            }
            Verdict::Ask => {
                check.waiting = Some(Waiting::default());
                if let Some(me) = self.me.upgrade() {
                    let round = check.round;
                    tokio::spawn(me.verify(round, topic, checked, conn.clone()));
                }
            }
        }
    }

    fn deliver(&self, topic: &Topic, checked: Checked) {
        let Checked { id, frame, meta } = checked;
        let _span = meta.deliver_span(topic, id).entered();
        // A new epoch (confirmed by the counter) means Redis lost its state while we stayed
        // connected.
        self.hub.deliver_in_epoch(topic, id, frame, meta.age());
    }

    /// Checks `suspect` against the counter, then judges the messages that waited.
    async fn verify(
        self: Arc<Self>,
        round: u64,
        topic: Topic,
        suspect: Checked,
        mut conn: MultiplexedConnection,
    ) {
        let limit = self.request_timeout;
        let counter = state::read(&mut conn, &self.state_key, None, limit).await;
        let mut check = lock(&self.check);
        if check.round != round {
            return;
        }
        let waiting = check.waiting.take().unwrap_or_default();
        match counter {
            Ok(counter) => self.settle(&mut check, topic, suspect, counter),
            Err(reason) => {
                tracing::warn!(%reason, "could not check an event's number; telling subscribers");
                self.hub
                    .gap(None, check.known.seq, GapReason::BrokerDisconnected);
            }
        }
        if waiting.overflowed() {
            self.hub
                .gap(None, check.known.seq, GapReason::BrokerDisconnected);
        }
        for (topic, checked) in waiting.into_messages() {
            self.judge(&mut check, topic, checked, &conn);
        }
    }

    /// Delivers or rejects `suspect` by the counter read after it.
    fn settle(&self, check: &mut Check, topic: Topic, suspect: Checked, counter: State) {
        match validate::confirm(suspect.id, counter) {
            Ok(()) => {
                check.known = Known {
                    epoch: counter.epoch,
                    seq: counter.seq,
                };
                self.deliver(&topic, suspect);
            }
            Err(rejection) => {
                if counter.epoch == check.known.epoch {
                    check.known.saw(counter.seq);
                }
                validate::reject(&topic, rejection);
            }
        }
    }
}

impl Receiver for Receive {
    fn message(&self, topic: Topic, payload: Bytes, conn: &MultiplexedConnection) {
        match validate::frame(payload) {
            Ok(checked) => self.judge(&mut lock(&self.check), topic, checked, conn),
            Err(rejection) => validate::reject(&topic, rejection),
        }
    }

    fn connected(&self, state: State, topics: &[Topic]) {
        let mut check = lock(&self.check);
        // Messages waiting for a check went with the old connection: the gap below covers them.
        check.round += 1;
        check.waiting = None;
        check.known = Known {
            epoch: state.epoch,
            seq: state.seq,
        };
        let mut local = lock(&self.local);
        if self.hub.epoch() != state.epoch {
            // First connection, Redis lost its state, or local-only events were numbered in an
            // epoch of this instance meanwhile.
            self.hub.new_epoch(state.epoch, state.seq);
        } else {
            self.hub.gap(None, state.seq, GapReason::BrokerDisconnected);
        }
        for topic in topics {
            self.hub.listening(topic, state.seq);
        }
        local.end();
    }

    fn listening(&self, state: State, topics: &[Topic]) {
        let mut check = lock(&self.check);
        if self.hub.epoch() != state.epoch {
            self.hub.new_epoch(state.epoch, state.seq);
        }
        if check.known.epoch == state.epoch {
            check.known.saw(state.seq);
        } else {
            check.known = Known {
                epoch: state.epoch,
                seq: state.seq,
            };
        }
        for topic in topics {
            self.hub.listening(topic, state.seq);
        }
    }

    fn not_listening(&self, topic: &Topic) {
        self.hub.not_listening(topic);
    }
}
