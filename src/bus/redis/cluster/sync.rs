//! Syncing a lane: subscribe (again), read the topic's counter, catch up to it, then pass on
//! the messages held meanwhile, each checked against the counter. Rounds repeat until the held
//! messages follow the events delivered; after [`MAX_ROUNDS`], those that still do not are not
//! events of the topic's history and are rejected.

use std::sync::Arc;

use super::{
    lane::{hold, Held, Lane, LaneState},
    Core, Kind,
};
use crate::{
    bus::redis::{
        backoff::backoff,
        entries::PAGE,
        replay::Pages,
        state::State,
        validate::{self, Checked, Rejection},
    },
    last_event_id::EventId,
    sync::lock,
};

/// Syncs in a row a lane makes for messages held meanwhile before it rejects those that still
/// do not follow its events.
const MAX_ROUNDS: u32 = 3;

/// How a round of a lane's sync ended.
enum Round {
    /// The lane delivers live again.
    Live,
    /// Another round was asked for, or messages were dropped while holding them.
    Again,
    /// Held messages do not follow the events read.
    Unfit,
}

impl Core {
    /// Syncs the lane until a sync succeeds, with backoff between attempts.
    pub(super) async fn sync_task(self: Arc<Self>, lane: Arc<Lane>) {
        let Ok(_permit) = self.syncs.acquire().await else {
            return;
        };
        let mut attempt: u32 = 0;
        let mut rounds: u32 = 0;
        loop {
            if self.sync_over(&lane) {
                return;
            }
            let lenient = rounds >= MAX_ROUNDS;
            match self.sync(&lane, lenient).await {
                Ok(Round::Live) => return,
                Ok(Round::Again) => attempt = 0,
                Ok(Round::Unfit) => {
                    attempt = 0;
                    rounds += 1;
                }
                Err(reason) => {
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(topic = %lane.topic, %reason, attempt, "syncing a topic with the Redis Cluster failed; retrying");
                    }
                    self.set_failing(&mut lock(&lane.state), Some(reason));
                    tokio::time::sleep(backoff(self.backoff_min, self.backoff_max, attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Whether the lane was dropped or the bus closed: then the sync ends.
    fn sync_over(&self, lane: &Lane) -> bool {
        let mut state = lock(&lane.state);
        let over = state.removed || self.closed.load(std::sync::atomic::Ordering::SeqCst);
        if over {
            state.syncing = false;
            state.held = None;
            self.set_failing(&mut state, None);
        }
        over
    }

    /// One round: subscribe, read the counter, catch up to it, then pass the held messages on.
    async fn sync(&self, lane: &Arc<Lane>, lenient: bool) -> Result<Round, String> {
        // This round answers every request made before it subscribes.
        lock(&lane.state).again = false;
        let channel = self.names.channel(&lane.topic);
        let mut conn = self.conn.clone();
        self.request("SSUBSCRIBE", conn.ssubscribe(&channel))
            .await?;
        let (counter, went_back) = self.counter(lane).await?;
        if let Some(from) = self.adopt(lane, counter, went_back) {
            self.fill(lane, counter.epoch, from, counter.seq).await?;
        }
        Ok(self.release_held(lane, counter, lenient))
    }

    /// Reads the topic's counter, and starts a new epoch when it went back below what was
    /// delivered (a failover lost events). Says whether it did.
    async fn counter(&self, lane: &Lane) -> Result<(State, bool), String> {
        let counter = self.read_state(&lane.topic).await?;
        let (went_back, stale) = {
            let mut state = lock(&lane.state);
            let rewound = std::mem::take(&mut state.rewound);
            let went_back = state.epoch == Some(counter.epoch) && counter.seq < state.delivered;
            (went_back, rewound && !went_back)
        };
        if stale {
            // A live message numbered at or below what was delivered, while the counter did
            // not go back: not an event of this history.
            validate::reject(&lane.topic, Rejection::Stale);
        }
        if !went_back {
            return Ok((counter, false));
        }
        tracing::warn!(
            topic = %lane.topic,
            counter = counter.seq,
            "the topic's counter went back (a failover lost events); starting a new epoch"
        );
        let fresh = self.start_epoch(&lane.topic, counter.epoch).await?;
        Ok((fresh, true))
    }

    /// Brings the lane into the counter's epoch; where to fill from (Streams), if anywhere.
    fn adopt(&self, lane: &Lane, counter: State, went_back: bool) -> Option<u64> {
        let State { epoch, seq } = counter;
        let mut state = lock(&lane.state);
        match state.epoch {
            None => {
                // First sync: the topic is heard from here on.
                lane.hub.new_epoch(epoch, seq);
                lane.hub.listening(&lane.topic, seq);
                state.epoch = Some(epoch);
                state.delivered = seq;
                None
            }
            Some(known) if known != epoch => {
                // The topic's state expired or was lost, or its counter went back: a new
                // history.
                if went_back {
                    state.abandoned = Some(known);
                }
                state.epoch = Some(epoch);
                let from = match self.kind {
                    Kind::PubSub => seq,
                    Kind::Streams => 0,
                };
                lane.hub.new_epoch(epoch, from);
                state.delivered = from;
                (self.kind == Kind::Streams).then_some(0)
            }
            Some(_) if seq <= state.delivered => None,
            // Pub/Sub: the held messages go on, then a gap for what was not heard.
            Some(_) => (self.kind == Kind::Streams).then_some(state.delivered),
        }
    }

    /// Passes the held messages on, checked against `counter`; the lane is live again when all
    /// of them followed.
    fn release_held(&self, lane: &Lane, counter: State, lenient: bool) -> Round {
        let mut state = lock(&lane.state);
        if std::mem::take(&mut state.again) {
            // Asked for while this round ran (the slot may have moved after it subscribed).
            return Round::Again;
        }
        let held = state.held.take().unwrap_or_default();
        if held.overflowed() {
            state.held = Some(Held::default());
            return Round::Again;
        }
        let mut messages = held.into_messages().into_iter();
        while let Some(checked) = messages.next() {
            match self.judge_held(lane, &mut state, checked.id, counter) {
                Ok(true) => lane.deliver(&mut state, checked),
                Ok(false) => {}
                Err(rejection) if lenient => validate::reject(&lane.topic, rejection),
                Err(_) => {
                    let mut rest = Held::default();
                    hold(&mut rest, checked);
                    messages.for_each(|checked| hold(&mut rest, checked));
                    state.held = Some(rest);
                    return Round::Unfit;
                }
            }
        }
        self.settle(lane, &mut state, counter.seq);
        state.syncing = false;
        self.set_failing(&mut state, None);
        drop(state);
        lane.synced.send_modify(|n| *n += 1);
        Round::Live
    }

    /// Judges a held message by the counter read in this round: whether to deliver it (after a
    /// gap, on Pub/Sub, for numbers skipped within the counter: they were lost) or drop it as
    /// heard before, or why it does not follow what the lane delivered.
    fn judge_held(
        &self,
        lane: &Lane,
        state: &mut LaneState,
        id: EventId,
        counter: State,
    ) -> Result<bool, Rejection> {
        if state.abandoned == Some(id.epoch()) {
            return Ok(false);
        }
        if state.epoch != Some(id.epoch()) {
            return Err(Rejection::Epoch);
        }
        let seq = id.sequence();
        if seq <= state.delivered {
            // Heard before listening began, or read from the stream already.
            return Ok(false);
        }
        if seq > counter.seq {
            // Published after the counter was read: it must follow what was delivered (on
            // Pub/Sub, up to the counter: what was not heard of that is lost).
            let last = match self.kind {
                Kind::PubSub => state.delivered.max(counter.seq),
                Kind::Streams => state.delivered,
            };
            if seq != last + 1 {
                return Err(Rejection::Ahead);
            }
            self.settle(lane, state, counter.seq);
        }
        Ok(true)
    }

    /// Pub/Sub: the events up to the counter that were not heard are lost.
    fn settle(&self, lane: &Lane, state: &mut LaneState, counter: u64) {
        if self.kind == Kind::PubSub && state.delivered < counter {
            lane.gap(counter);
            state.delivered = counter;
        }
    }

    /// Streams: delivers the topic's events in `(from, until]` of `epoch` from its stream, with
    /// a gap for those that are gone (trimmed, or refused).
    async fn fill(&self, lane: &Lane, epoch: u32, from: u64, until: u64) -> Result<(), String> {
        let mut after = from;
        while after < until {
            let page = self.read_page(&lane.topic, after, PAGE).await?;
            let full = page.read >= PAGE;
            after = page.last.unwrap_or(after).max(after);
            let mut state = lock(&lane.state);
            for entry in page.entries {
                if entry.seq > until {
                    break;
                }
                if entry.epoch != epoch || entry.seq <= state.delivered {
                    continue;
                }
                let id = EventId::new(epoch, entry.seq);
                let (frame, meta) = (entry.frame, entry.meta);
                lane.deliver(&mut state, Checked { id, frame, meta });
            }
            if !full || after >= until {
                // Trimmed (or expired) up to the end: what is left is lost.
                if state.delivered < until {
                    lane.gap(until);
                    state.delivered = until;
                }
                break;
            }
        }
        Ok(())
    }
}
