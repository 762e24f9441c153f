//! A lane: one topic's subscription on this instance, its hub, and what it delivered.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use super::Core;
use crate::bus::{
    hub::Hub,
    redis::{held::HeldMessages, validate::Checked},
    GapReason, Topic,
};
use crate::sync::lock;

/// The most messages, and bytes of them, a lane holds back while it syncs. Past either it
/// drops them and syncs again: Streams reads them from the stream, Pub/Sub signals a gap.
const MAX_HELD_MESSAGES: usize = 1_024;
const MAX_HELD_BYTES: usize = 4 << 20;

/// Messages held back while a lane syncs, already checked for their layout.
pub(super) type Held = HeldMessages<Checked, MAX_HELD_MESSAGES, MAX_HELD_BYTES>;

/// One topic's subscription on this instance.
pub(super) struct Lane {
    pub(super) topic: Topic,
    pub(super) hub: Hub,
    pub(super) state: Mutex<LaneState>,
    /// Counts finished syncs; 0 until the first.
    pub(super) synced: watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct LaneState {
    /// The topic's epoch, once read.
    pub(super) epoch: Option<u32>,
    /// The last sequence number delivered to the hub (or known to be lost).
    pub(super) delivered: u64,
    /// The epoch this lane left because the topic's counter went back: its late messages are
    /// dropped.
    pub(super) abandoned: Option<u32>,
    /// A live message was numbered at or below `delivered`: the counter may have gone back.
    pub(super) rewound: bool,
    /// Messages held back until a sync is over; `Some` from the moment one is due.
    pub(super) held: Option<Held>,
    /// Whether a sync task runs.
    pub(super) syncing: bool,
    /// A sync was asked for while one ran: it goes another round.
    pub(super) again: bool,
    /// Whether the last sync attempt failed (counted in `Core::failing`).
    pub(super) failing: bool,
    /// Local subscriptions.
    pub(super) interest: usize,
    /// The lane was dropped (idle, or the bus shut down).
    pub(super) removed: bool,
}

/// Holds `checked` back in `held`.
pub(super) fn hold(held: &mut Held, checked: Checked) {
    let len = checked.frame.len();
    held.hold(checked, len);
}

impl Lane {
    /// Delivers `checked`, the event after the last one delivered (or after a gap up to
    /// `checked`'s number, announced first).
    pub(super) fn deliver(&self, state: &mut LaneState, checked: Checked) {
        let Checked { id, frame, meta } = checked;
        let seq = id.sequence();
        if seq > state.delivered + 1 {
            self.gap(seq - 1);
        }
        state.delivered = seq;
        let _span = meta.deliver_span(&self.topic, id).entered();
        self.hub.deliver(&self.topic, seq, frame, meta.age());
    }

    /// Events of the topic up to `at` may be lost.
    pub(super) fn gap(&self, at: u64) {
        let topics = std::slice::from_ref(&self.topic);
        self.hub
            .gap(Some(topics), at, GapReason::BrokerDisconnected);
    }
}

/// A subscription's interest in its topics' lanes.
pub(super) struct Interest {
    pub(super) core: Weak<Core>,
    pub(super) lanes: Vec<Arc<Lane>>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        for lane in &self.lanes {
            let mut state = lock(&lane.state);
            state.interest = state.interest.saturating_sub(1);
            if state.interest == 0 && !state.removed {
                core.release(&lane.topic);
            }
        }
    }
}

impl Core {
    /// Counts a subscriber of `topic`, creating (and syncing) its lane if needed.
    pub(super) fn want(self: &Arc<Self>, topic: &Topic) -> Arc<Lane> {
        let mut lanes = lock(&self.lanes);
        let lane = lanes
            .entry(topic.clone())
            .or_insert_with(|| {
                Arc::new(Lane {
                    topic: topic.clone(),
                    hub: Hub::new(crate::random::u32(), false, self.limits),
                    state: Mutex::new(LaneState::default()),
                    synced: watch::Sender::new(0),
                })
            })
            .clone();
        // Counted under the map's lock, so the janitor cannot drop the lane meanwhile.
        let mut state = lock(&lane.state);
        drop(lanes);
        state.interest += 1;
        if state.epoch.is_none() && state.held.is_none() {
            state.held = Some(Held::default());
            self.start_sync(&lane, &mut state);
        }
        drop(state);
        lane
    }

    /// Starts a sync of `lane`, holding its messages from now on.
    pub(super) fn resync(self: &Arc<Self>, lane: &Arc<Lane>) {
        let mut state = lock(&lane.state);
        if state.removed {
            return;
        }
        state.held.get_or_insert_with(Held::default);
        self.start_sync(lane, &mut state);
    }

    pub(super) fn resync_all(self: &Arc<Self>) {
        let lanes: Vec<Arc<Lane>> = lock(&self.lanes).values().cloned().collect();
        for lane in &lanes {
            self.resync(lane);
        }
    }

    /// Spawns the lane's sync task, or when it runs, has it go another round. The lane must
    /// hold its messages.
    pub(super) fn start_sync(self: &Arc<Self>, lane: &Arc<Lane>, state: &mut LaneState) {
        if state.removed {
            return;
        }
        if state.syncing {
            state.again = true;
            return;
        }
        state.syncing = true;
        tokio::spawn(self.clone().sync_task(lane.clone()));
    }
}
