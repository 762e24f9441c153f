//! Subscribing on a cluster: one subscription per topic's lane, joined, each resumed from its
//! position in the cursor (Streams: by the [resume protocol](crate::bus::redis::resume)).

use std::sync::{atomic::Ordering, Arc};

use tokio::time::{timeout, Instant};

use super::{
    lane::{Interest, Lane},
    Core, Kind, RedisCluster,
};
use crate::sync::lock;
use crate::{
    bus::{
        hub::Resume,
        redis::{
            request::unavailable,
            resume::{resume_from_cursor, Resumable},
        },
        Subscription, Topic,
    },
    error::{BusError, BusErrorKind, InvalidEventId},
    last_event_id::{EventId, ResumeFrom},
};

impl RedisCluster {
    /// Subscribes to the lane of each topic, resuming each from its position in `resume`.
    pub(super) async fn subscribe_lanes(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> Result<Subscription, BusError> {
        if self.core.closed.load(Ordering::SeqCst) {
            return Err(BusError::new(BusErrorKind::Closed));
        }
        let lanes: Vec<Arc<Lane>> = topics.iter().map(|t| self.core.want(t)).collect();
        let interest = Interest {
            core: Arc::downgrade(&self.core),
            lanes: lanes.clone(),
        };
        // One deadline for all: when the cluster is down, a stream of several topics waits
        // no longer than one of one topic.
        let deadline = Instant::now() + self.core.request_timeout;
        for lane in &lanes {
            wait_listening(lane, deadline).await;
        }
        let mut parts = Vec::with_capacity(lanes.len());
        for (lane, cursor) in lanes.iter().zip(positions(resume, lanes.len())) {
            parts.push(self.subscribe_lane(lane, cursor).await?);
        }
        let subscription = if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Subscription::per_topic(parts)
        };
        Ok(subscription.with_guard(Box::new(interest)))
    }

    /// Subscribes to one lane's hub, resuming from `cursor`.
    async fn subscribe_lane(
        &self,
        lane: &Arc<Lane>,
        cursor: Option<Result<EventId, InvalidEventId>>,
    ) -> Result<Subscription, BusError> {
        let topics = vec![lane.topic.clone()];
        match (self.core.kind, cursor) {
            (Kind::Streams, Some(Ok(cursor))) => {
                let resuming = Resuming {
                    core: &self.core,
                    lane,
                };
                resume_from_cursor(&resuming, &self.replay, &self.core, &topics, cursor).await
            }
            (_, cursor) => lane.hub.subscribe(topics, cursor).map(Subscription::from),
        }
    }
}

/// Each topic's position in `resume`: one id per topic, in the order of the sorted topics.
fn positions(resume: ResumeFrom, topics: usize) -> Vec<Option<Result<EventId, InvalidEventId>>> {
    match resume {
        None => vec![None; topics],
        Some(Ok(cursor)) if cursor.positions().len() == topics => {
            cursor.positions().iter().map(|id| Some(Ok(*id))).collect()
        }
        // Each topic then starts over with a reset saying the id was invalid.
        Some(_) => vec![Some(Err(InvalidEventId::new())); topics],
    }
}

/// Waits until the lane synced once, or until `deadline` (the cluster is down: the subscription
/// starts anyway and hears the topic once the sync succeeds).
async fn wait_listening(lane: &Lane, deadline: Instant) {
    let mut synced = lane.synced.subscribe();
    let waiting = async { synced.wait_for(|&n| n > 0).await.map(drop) };
    let _ = tokio::time::timeout_at(deadline, waiting).await;
}

/// A resume of one lane.
struct Resuming<'a> {
    core: &'a Arc<Core>,
    lane: &'a Arc<Lane>,
}

impl Resumable for Resuming<'_> {
    fn register(&self, cursor: EventId) -> Result<Resume, BusError> {
        let topics = vec![self.lane.topic.clone()];
        self.lane.hub.resume_or_register(topics, cursor)
    }

    /// Makes the lane deliver everything up to the topic's counter as it is now, so an id
    /// another instance handed out is known here.
    async fn catch_up(&self) -> Result<(), BusError> {
        let (core, lane) = (self.core, self.lane);
        let counter = core.read_state(&lane.topic).await.map_err(unavailable)?;
        let behind = {
            let state = lock(&lane.state);
            state.epoch != Some(counter.epoch) || state.delivered < counter.seq
        };
        if !behind {
            return Ok(());
        }
        let mut synced = lane.synced.subscribe();
        let before = *synced.borrow_and_update();
        core.resync(lane);
        let waiting = async { synced.wait_for(|&n| n > before).await.map(drop) };
        match timeout(core.request_timeout, waiting).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(unavailable("the event bus was dropped")),
            Err(_elapsed) => Err(unavailable(
                "events from Redis are still being caught up with; try again",
            )),
        }
    }
}
