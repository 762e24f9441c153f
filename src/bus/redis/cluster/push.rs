//! The connection's pushes: messages on the lanes' channels, checked and delivered as they
//! arrive, and the notices that call for a sync.

use std::sync::Arc;

use ::redis::{PushInfo, PushKind, Value};
use bytes::Bytes;

use super::{
    lane::{hold, Held, LaneState},
    Core,
};
use crate::sync::lock;
use crate::{
    bus::redis::validate::{self, Known, Verdict, NEXT},
    last_event_id::EventId,
};

impl Core {
    pub(super) fn on_push(self: &Arc<Self>, info: PushInfo) {
        let PushInfo { kind, data } = info;
        let mut data = data.into_iter();
        match kind {
            PushKind::SMessage | PushKind::Message => {
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    if let Some(topic) = self.names.topic_of(&channel) {
                        // Takes over the buffer the message was read into: no copy.
                        self.message(topic, Bytes::from(payload));
                    }
                }
            }
            PushKind::SUnsubscribe => {
                // Our own unsubscribes come after the lane is gone; any other means the
                // topic's slot moved.
                if let Some(Value::BulkString(channel)) = data.next() {
                    let lane = self
                        .names
                        .topic_of(&channel)
                        .and_then(|topic| lock(&self.lanes).get(topic).cloned());
                    if let Some(lane) = lane {
                        tracing::debug!(topic = %lane.topic, "sharded channel moved; subscribing again");
                        self.resync(&lane);
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::debug!("a Redis Cluster connection closed; syncing every topic");
                self.resync_all();
            }
            _ => {}
        }
    }

    /// A message on a topic's channel.
    fn message(self: &Arc<Self>, topic: &str, payload: Bytes) {
        let Some(lane) = lock(&self.lanes).get(topic).cloned() else {
            return;
        };
        let checked = match validate::frame(payload) {
            Ok(checked) => checked,
            Err(rejection) => return validate::reject(&lane.topic, rejection),
        };
        let mut state = lock(&lane.state);
        if let Some(held) = &mut state.held {
            hold(held, checked);
            return;
        }
        match judge_live(&mut state, checked.id) {
            Live::Deliver => lane.deliver(&mut state, checked),
            Live::Drop => {}
            Live::Sync => {
                let mut held = Held::default();
                hold(&mut held, checked);
                state.held = Some(held);
                self.start_sync(&lane, &mut state);
            }
        }
    }
}

/// What to do with a live message.
enum Live {
    Deliver,
    /// A late message of an epoch the lane left.
    Drop,
    /// Hold it and sync first.
    Sync,
}

/// Judges a live message: delivered when it follows what the lane delivered; a sync comes first
/// for another epoch, a number skipped (lost, or not issued), or one at or below the last one
/// delivered (the counter may have gone back).
fn judge_live(state: &mut LaneState, id: EventId) -> Live {
    if state.abandoned == Some(id.epoch()) {
        return Live::Drop;
    }
    let Some(epoch) = state.epoch else {
        return Live::Sync;
    };
    if id.sequence() <= state.delivered && id.epoch() == epoch {
        state.rewound = true;
        return Live::Sync;
    }
    let known = Known {
        epoch,
        seq: state.delivered,
    };
    match known.judge(id, NEXT) {
        Verdict::Believe => Live::Deliver,
        Verdict::Ask => Live::Sync,
    }
}
