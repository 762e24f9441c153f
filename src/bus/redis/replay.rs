//! Reading history from the streams for resuming subscribers: shared reads, and the budget
//! that bounds them.
//!
//! A read of one topic (a flight) runs in a task of its own and is shared: a resume of the same
//! topic joins a flight that has not sent its first request yet (widening its range), or one
//! already under way whose range covers what the resume needs. A resume needs the topic's
//! entries after its cursor up to the topic's last event known at registration (see
//! `Registration::known`); those were in Redis before the resume registered (they were
//! delivered to the hub, or precede listening, and Redis stores an event before it announces
//! it), so a flight planned to read at least that far has read them all.
//!
//! The budget counts the stream entries that flights have asked for (while a request is out)
//! or hold (until the flight is over), per instance. A flight takes a page's worth before each
//! request, less when the budget runs low (down to a minimum). For its first page it waits up
//! to the configured time (still open to more resumes joining it meanwhile); later pages do not
//! wait, so flights holding budget never wait on each other. When the budget cannot give a page,
//! the flight fails and every resume waiting on it gets an error for which
//! [`BusError::is_overloaded`] is true (`503` with `Retry-After`): a burst of resumes costs some
//! latency, then retries, never unbounded memory. Once read, a replay belongs to its
//! subscription (bounded by the retention of its topics) and no longer counts.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::{
    connection::Shared,
    streams::{unavailable, Core, Entry, PAGE},
};
use crate::{
    bus::{
        queue::{lock, Item},
        Topic,
    },
    error::{BusError, BusErrorKind},
    last_event_id::EventId,
};

/// The smallest read a flight makes when the budget runs low; with less left, it fails.
const MIN_PAGE: usize = 16;

/// Reads for resumes on one instance.
pub(super) struct Replay {
    inner: Arc<Inner>,
}

struct Inner {
    budget: Arc<Semaphore>,
    page: usize,
    /// How long a flight may wait for budget for its first page.
    wait: Duration,
    flights: Mutex<HashMap<Topic, Arc<Flight>>>,
}

/// One shared read of a topic's stream.
struct Flight {
    plan: Mutex<Plan>,
    outcome: watch::Sender<Option<Outcome>>,
}

/// The range a flight reads: the entries after `after`, up to `until` and the first one beyond
/// (whose `p` tells whether anything before it is missing).
struct Plan {
    after: u64,
    until: u64,
    started: bool,
}

type Outcome = Result<Arc<TopicRead>, Failure>;

#[derive(Debug, Clone)]
enum Failure {
    Overloaded,
    Unavailable(String),
}

/// What a flight read.
#[derive(Debug)]
struct TopicRead {
    exists: bool,
    /// When the stream does not exist: the highest sequence number an expired event can have.
    horizon: u64,
    /// In sequence order, up to the plan's `until`.
    entries: Vec<Entry>,
    /// The epoch and `p` of the first entry beyond `until`.
    next: Option<(u32, u64)>,
}

impl Replay {
    /// A replay reader with a budget of `budget` stream entries, waiting at most `wait` for it.
    pub(super) fn new(budget: usize, wait: Duration) -> Self {
        let budget = budget.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                budget: Arc::new(Semaphore::new(budget)),
                page: PAGE.min(budget),
                wait,
                flights: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The events of each topic numbered in `(after, until]` (its `until`) of `epoch`, in
    /// sequence order across topics; `None` when some of them are gone (trimmed, or expired with
    /// their stream).
    pub(super) async fn read(
        &self,
        core: &Arc<Core>,
        shared: &Arc<Shared>,
        topics: &[(Topic, u64)],
        after: u64,
        epoch: u32,
    ) -> Result<Option<VecDeque<Item>>, BusError> {
        // Every flight is joined (or started) before waiting on any, so they run side by side.
        let waits: Vec<_> = topics
            .iter()
            .map(|(topic, until)| (self.join(core, shared, topic, after, *until), *until))
            .collect();
        let mut events = Vec::new();
        let mut complete = true;
        for (mut wait, until) in waits {
            let outcome = match wait.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone().expect("waited for it"),
                Err(_) => Err(Failure::Unavailable("reading history was cut short".into())),
            };
            let read = match outcome {
                Ok(read) => read,
                Err(Failure::Overloaded) => return Err(BusError::new(BusErrorKind::Overloaded)),
                Err(Failure::Unavailable(reason)) => return Err(unavailable(reason)),
            };
            complete &= collect(&read, after, until, epoch, &mut events);
        }
        if !complete {
            return Ok(None);
        }
        if topics.len() > 1 {
            events.sort_unstable_by_key(|(seq, _)| *seq);
        }
        Ok(Some(
            events
                .into_iter()
                .map(|(seq, frame)| Item::Event(EventId::new(epoch, seq), frame))
                .collect(),
        ))
    }

    /// Joins a flight of `topic` that covers `(after, until]`, or starts one.
    fn join(
        &self,
        core: &Arc<Core>,
        shared: &Arc<Shared>,
        topic: &Topic,
        after: u64,
        until: u64,
    ) -> watch::Receiver<Option<Outcome>> {
        let mut flights = lock(&self.inner.flights);
        if let Some(flight) = flights.get(topic) {
            let mut plan = lock(&flight.plan);
            if !plan.started {
                plan.after = plan.after.min(after);
                plan.until = plan.until.max(until);
                return flight.outcome.subscribe();
            }
            if plan.after <= after && plan.until >= until {
                return flight.outcome.subscribe();
            }
        }
        let (outcome, wait) = watch::channel(None);
        let flight = Arc::new(Flight {
            plan: Mutex::new(Plan {
                after,
                until,
                started: false,
            }),
            outcome,
        });
        flights.insert(topic.clone(), flight.clone());
        tokio::spawn(fly(
            self.inner.clone(),
            core.clone(),
            shared.clone(),
            topic.clone(),
            flight,
        ));
        wait
    }
}

/// Runs a flight and hands its outcome to everyone who joined it.
async fn fly(
    inner: Arc<Inner>,
    core: Arc<Core>,
    shared: Arc<Shared>,
    topic: Topic,
    flight: Arc<Flight>,
) {
    // While the flight waits for budget, more resumes can join it.
    let outcome = match first_permit(&inner).await {
        Some(permit) => {
            let (after, until) = {
                let mut plan = lock(&flight.plan);
                plan.started = true;
                (plan.after, plan.until)
            };
            read_topic(&inner, &core, &shared, &topic, after, until, permit).await
        }
        None => Err(Failure::Overloaded),
    };
    if matches!(outcome, Err(Failure::Overloaded)) {
        tracing::debug!(%topic, "replay budget exhausted; resumes of the topic are refused");
    }
    {
        let mut flights = lock(&inner.flights);
        if flights.get(&topic).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(&topic);
        }
    }
    flight.outcome.send_replace(Some(outcome.map(Arc::new)));
}

/// Budget for the first page: what is there, or else what comes within the wait.
async fn first_permit(inner: &Inner) -> Option<OwnedSemaphorePermit> {
    if let Some(permit) = try_permit(inner) {
        return Some(permit);
    }
    if inner.wait.is_zero() {
        return None;
    }
    let page = u32::try_from(inner.page).expect("at most the semaphore's maximum");
    let acquiring = inner.budget.clone().acquire_many_owned(page);
    match tokio::time::timeout(inner.wait, acquiring).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

/// A page's worth of budget, or what is left when that is less (but not a trickle), at once.
fn try_permit(inner: &Inner) -> Option<OwnedSemaphorePermit> {
    let left = inner.budget.available_permits();
    let size = inner.page.min(left.max(MIN_PAGE.min(inner.page)));
    let size = u32::try_from(size).expect("at most a page");
    inner.budget.clone().try_acquire_many_owned(size).ok()
}

async fn read_topic(
    inner: &Inner,
    core: &Core,
    shared: &Shared,
    topic: &Topic,
    after: u64,
    until: u64,
    first: OwnedSemaphorePermit,
) -> Result<TopicRead, Failure> {
    // Held until the read is over.
    let mut permits: Option<OwnedSemaphorePermit> = None;
    let mut entries = Vec::new();
    let mut next = None;
    let mut cursor = after;
    let mut first = Some(first);
    loop {
        // Later pages do not wait: a flight holding budget must not block on more.
        let mut permit = match first.take() {
            Some(permit) => permit,
            None => try_permit(inner).ok_or(Failure::Overloaded)?,
        };
        let size = permit.num_permits();
        let mut conn = shared
            .connection()
            .ok_or_else(|| Failure::Unavailable("not connected to Redis".to_owned()))?;
        let page = core
            .read_page(&mut conn, topic, cursor, size)
            .await
            .map_err(Failure::Unavailable)?;
        // Keep what the entries take; give back the rest of the page.
        drop(permit.split(size - page.entries.len().min(size)));
        match &mut permits {
            Some(held) => held.merge(permit),
            None => permits = Some(permit),
        }
        if !page.exists {
            if cursor != after {
                return Err(Failure::Unavailable(format!(
                    "the stream of {topic} expired while it was read"
                )));
            }
            return Ok(TopicRead {
                exists: false,
                horizon: page.horizon,
                entries,
                next,
            });
        }
        let full = page.entries.len() >= size;
        for entry in page.entries {
            cursor = entry.seq;
            if entry.seq > until {
                next = Some((entry.epoch, entry.prev));
                break;
            }
            entries.push(entry);
        }
        if next.is_some() || !full {
            break;
        }
    }
    drop(permits);
    Ok(TopicRead {
        exists: true,
        horizon: 0,
        entries,
        next,
    })
}

/// Adds the events of `read` in `(after, until]` of `epoch` to `events`; false when some are
/// gone. Entries of another epoch do not belong to this history (a stream left over from before
/// Redis lost its state, or one this instance has not caught up with): they count as absent.
fn collect(
    read: &TopicRead,
    after: u64,
    until: u64,
    epoch: u32,
    events: &mut Vec<(u64, Bytes)>,
) -> bool {
    if !read.exists {
        return read.horizon <= after;
    }
    let mut first_prev = None;
    for entry in &read.entries {
        if entry.epoch != epoch || entry.seq <= after {
            continue;
        }
        first_prev.get_or_insert(entry.prev);
        if entry.seq <= until {
            events.push((entry.seq, entry.frame.clone()));
        }
    }
    let first_prev = first_prev.or(read.next.and_then(|(e, prev)| (e == epoch).then_some(prev)));
    // The topic's event before the first one after `after` must be at or before it.
    first_prev.is_none_or(|prev| prev <= after)
}
