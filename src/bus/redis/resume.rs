//! Resuming a subscription from a cursor with the streams: the protocol every Streams backend
//! follows (one server, and each topic's lane on a cluster).
//!
//! 1. Listen to the topics (the caller did).
//! 2. Register: the hub answers from its local history if it can; otherwise it registers the
//!    subscriber and notes the watermark `W`, the highest sequence number delivered so far.
//!    Events above `W` reach the new subscriber's queue (deliveries are in sequence order).
//! 3. If the cursor is above `W` (this instance is behind, or the id is not one Redis issued),
//!    or of another epoch (this instance may not have caught up with Redis losing its state),
//!    catch up with Redis once and register again; if Redis cannot be asked, the resume fails
//!    as unavailable.
//! 4. The replay is `(cursor, W]` of every topic, read from the streams
//!    ([`Replay`]) and merged by sequence number; per topic the read stops at the topic's last
//!    event known at registration (none lies between that and `W`). Since deliveries are in
//!    sequence order, that is every event once.

use std::{collections::VecDeque, future::Future, sync::Arc};

use super::replay::{Pages, Replay};
use crate::{
    bus::{
        hub::{Registration, Resume},
        ResetReason, ResumeStatus, Subscription, Topic,
    },
    error::BusError,
    last_event_id::EventId,
};

/// What a backend offers a resume of some topics.
pub(super) trait Resumable: Sync {
    /// Registers a subscriber from `cursor` (step 2).
    fn register(&self, cursor: EventId) -> Result<Resume, BusError>;

    /// Catches up with Redis, so that what it issued is known here (step 3).
    fn catch_up(&self) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// Resumes `topics` from `cursor`; see the module documentation.
pub(super) async fn resume_from_cursor<P: Pages>(
    backend: &impl Resumable,
    replay: &Replay,
    pages: &Arc<P>,
    topics: &[Topic],
    cursor: EventId,
) -> Result<Subscription, BusError> {
    let mut caught_up = false;
    loop {
        let registration = match backend.register(cursor)? {
            Resume::Done(joined) => {
                let subscription = Subscription::from(joined);
                let stale = subscription.status() == ResumeStatus::Reset(ResetReason::UnknownEpoch);
                if stale && !caught_up {
                    drop(subscription);
                    backend.catch_up().await?;
                    caught_up = true;
                    continue;
                }
                return Ok(subscription);
            }
            Resume::Pending(registration) => registration,
        };
        if cursor.sequence() > registration.watermark() {
            if !caught_up {
                drop(registration);
                backend.catch_up().await?;
                caught_up = true;
                continue;
            }
            // Redis has not issued this id (yet).
            return Ok(reset(registration, ResetReason::UnknownId));
        }
        return finish(registration, replay, pages, topics, cursor).await;
    }
}

/// Finishes `registration` with the events after `cursor` read from the streams (step 4).
async fn finish<P: Pages>(
    registration: Registration,
    replay: &Replay,
    pages: &Arc<P>,
    topics: &[Topic],
    cursor: EventId,
) -> Result<Subscription, BusError> {
    let ranges: Vec<(Topic, u64)> = topics
        .iter()
        .cloned()
        .zip(registration.known().iter().copied())
        .collect();
    let epoch = registration.epoch();
    let read = replay
        .read(pages, &ranges, cursor.sequence(), epoch)
        .await?;
    Ok(match read {
        Some(replay) => {
            let status = ResumeStatus::Resumed {
                replayed: replay.len(),
            };
            registration.finish(replay, status, cursor).into()
        }
        None => reset(registration, ResetReason::HistoryExpired),
    })
}

/// Starts the subscription from the watermark, with a reset saying why.
fn reset(registration: Registration, reason: ResetReason) -> Subscription {
    let start = EventId::new(registration.epoch(), registration.watermark());
    registration
        .finish(VecDeque::new(), ResumeStatus::Reset(reason), start)
        .into()
}
