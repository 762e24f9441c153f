//! Reading history from the streams for resuming subscribers: shared reads, and the budget that
//! bounds them. One server and a cluster read the same way; they differ only in how they read a
//! page ([`Pages`]) and how a topic is numbered.
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
//! request, less when the budget runs low (down to [`MIN_PAGE`]). For its first page it waits
//! up to the configured time (still open to more resumes joining it meanwhile); later pages do
//! not wait, so flights holding budget never wait on each other. When the budget cannot give a
//! page, the flight fails and every resume waiting on it gets an error for which
//! [`BusError::is_overloaded`] is true (`503` with `Retry-After`): a burst of resumes costs some
//! latency, then retries, never unbounded memory. Once read, a replay belongs to its
//! subscription (bounded by the retention of its topics) and no longer counts.
//!
//! A replay is complete when every event it owes is there: the chain of previous events holds
//! from the cursor on (an entry trimmed or refused breaks it), and, where a topic is numbered
//! without holes, the entries reach the end of the range.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::{
    entries::{Entry, Numbering, Page, PAGE},
    request::unavailable,
};
use crate::sync::lock;
use crate::{
    bus::{queue::Item, EncodedEvent, Topic},
    error::{BusError, BusErrorKind},
    last_event_id::EventId,
};

/// The smallest read a flight makes when the budget runs low; with less left, it fails.
pub(super) const MIN_PAGE: usize = 16;

/// How a backend reads a page of a topic's stream.
pub(super) trait Pages: Send + Sync + 'static {
    /// Up to `count` entries of `topic` after `after`.
    fn read_page(
        &self,
        topic: &Topic,
        after: u64,
        count: usize,
    ) -> impl Future<Output = Result<Page, String>> + Send;
}

/// Reads for resumes on one instance.
pub(super) struct Replay {
    inner: Arc<Inner>,
}

struct Inner {
    budget: Arc<Semaphore>,
    page: usize,
    /// How long a flight may wait for budget for its first page.
    wait: Duration,
    numbering: Numbering,
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
    /// The epoch and previous event of the first entry beyond `until`.
    next: Option<(u32, u64)>,
}

impl Replay {
    /// A replay reader with a budget of `budget` stream entries, waiting at most `wait` for it.
    pub(super) fn new(budget: usize, wait: Duration, numbering: Numbering) -> Self {
        let budget = budget.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                budget: Arc::new(Semaphore::new(budget)),
                page: PAGE.min(budget),
                wait,
                numbering,
                flights: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The events of each topic numbered in `(after, until]` (its `until`) of `epoch`, in
    /// sequence order across topics; `None` when some of them are gone (trimmed, refused, or
    /// expired with their stream).
    pub(super) async fn read<P: Pages>(
        &self,
        pages: &Arc<P>,
        topics: &[(Topic, u64)],
        after: u64,
        epoch: u32,
    ) -> Result<Option<VecDeque<Item>>, BusError> {
        // Every flight is joined (or started) before waiting on any, so they run side by side.
        let waits: Vec<_> = topics
            .iter()
            .map(|(topic, until)| (self.join(pages, topic, after, *until), topic, *until))
            .collect();
        let mut events = Vec::new();
        let mut complete = true;
        for (mut wait, topic, until) in waits {
            let outcome = match wait.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone().expect("waited for it"),
                Err(_) => Err(Failure::Unavailable("reading history was cut short".into())),
            };
            let read = match outcome {
                Ok(read) => read,
                Err(Failure::Overloaded) => return Err(BusError::new(BusErrorKind::Overloaded)),
                Err(Failure::Unavailable(reason)) => return Err(unavailable(reason)),
            };
            let range = Range {
                after,
                until,
                epoch,
            };
            complete &= range.collect(topic, &read, self.inner.numbering, &mut events);
        }
        if !complete {
            return Ok(None);
        }
        if topics.len() > 1 {
            events.sort_unstable_by_key(|event| event.id().sequence());
        }
        Ok(Some(events.into_iter().map(Item::Event).collect()))
    }

    /// Joins a flight of `topic` that covers `(after, until]`, or starts one.
    fn join<P: Pages>(
        &self,
        pages: &Arc<P>,
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
        let run = fly(self.inner.clone(), pages.clone(), topic.clone(), flight);
        tokio::spawn(run);
        wait
    }
}

/// Runs a flight and hands its outcome to everyone who joined it.
async fn fly<P: Pages>(inner: Arc<Inner>, pages: Arc<P>, topic: Topic, flight: Arc<Flight>) {
    // While the flight waits for budget, more resumes can join it.
    let outcome = match first_permit(&inner).await {
        Some(permit) => {
            let (after, until) = {
                let mut plan = lock(&flight.plan);
                plan.started = true;
                (plan.after, plan.until)
            };
            read_topic(&inner, &*pages, &topic, after, until, permit).await
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
    let size = page_size(inner.page, inner.budget.available_permits());
    let size = u32::try_from(size).expect("at most a page");
    inner.budget.clone().try_acquire_many_owned(size).ok()
}

/// How much of the budget to ask for a page when `left` is available: a page, or what is left,
/// but never less than the smallest read.
fn page_size(page: usize, left: usize) -> usize {
    page.min(left.max(MIN_PAGE.min(page)))
}

/// Reads `topic` after `after` up to `until` and the first entry beyond, page by page, each
/// page within the budget.
async fn read_topic(
    inner: &Inner,
    pages: &impl Pages,
    topic: &Topic,
    after: u64,
    until: u64,
    first: OwnedSemaphorePermit,
) -> Result<TopicRead, Failure> {
    // Held until the read is over.
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut read = TopicRead {
        exists: true,
        horizon: 0,
        entries: Vec::new(),
        next: None,
    };
    let mut cursor = after;
    let mut first = Some(first);
    loop {
        // Later pages do not wait: a flight holding budget must not block on more.
        let mut permit = match first.take() {
            Some(permit) => permit,
            None => try_permit(inner).ok_or(Failure::Overloaded)?,
        };
        let size = permit.num_permits();
        let page = pages
            .read_page(topic, cursor, size)
            .await
            .map_err(Failure::Unavailable)?;
        // Keep what the entries take; give back the rest of the page.
        drop(permit.split(size - page.entries.len().min(size)));
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        if !page.exists && cursor != after {
            let reason = format!("the stream of {topic} expired while it was read");
            return Err(Failure::Unavailable(reason));
        }
        let full = page.read >= size;
        cursor = page.last.unwrap_or(cursor).max(cursor);
        if read.take(page, until) || !full {
            return Ok(read);
        }
    }
}

impl TopicRead {
    /// Takes in a page; true when the read is over (the stream is gone, or an entry beyond
    /// `until` came).
    fn take(&mut self, page: Page, until: u64) -> bool {
        if !page.exists {
            self.exists = false;
            self.horizon = page.horizon;
            return true;
        }
        for entry in page.entries {
            if entry.seq > until {
                self.next = Some((entry.epoch, entry.prev.seq));
                return true;
            }
            self.entries.push(entry);
        }
        false
    }
}

/// What one resume owes of a topic: the events in `(after, until]` of `epoch`.
struct Range {
    after: u64,
    until: u64,
    epoch: u32,
}

impl Range {
    /// Adds the events of `read` in the range to `events`; false when some are gone. Entries of
    /// another epoch do not belong to this history (a stream left over from before Redis lost
    /// its state, or one this instance has not caught up with): they count as absent.
    fn collect(
        &self,
        topic: &Topic,
        read: &TopicRead,
        numbering: Numbering,
        events: &mut Vec<EncodedEvent>,
    ) -> bool {
        if !read.exists {
            return read.horizon <= self.after;
        }
        // Every event of the topic up to here is accounted for.
        let mut last = self.after;
        for entry in &read.entries {
            if entry.epoch != self.epoch || entry.seq <= self.after {
                continue;
            }
            if entry.prev.seq > last {
                return false;
            }
            let id = EventId::new(self.epoch, entry.seq);
            events.push(EncodedEvent::new(id, topic.clone(), entry.frame.clone()));
            last = entry.seq;
        }
        let linked = match read.next {
            Some((epoch, prev)) => epoch != self.epoch || prev <= last,
            None => true,
        };
        let reached = numbering == Numbering::Global || last >= self.until;
        linked && reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::redis::validate::Prev;

    #[test]
    fn pages_shrink_when_the_budget_runs_low() {
        assert_eq!(page_size(256, 10_000), 256);
        assert_eq!(page_size(256, 100), 100);
        assert_eq!(page_size(256, 3), MIN_PAGE);
        assert_eq!(page_size(8, 3), 8);
    }

    fn entry(seq: u64, prev: u64) -> Entry {
        Entry {
            seq,
            epoch: 1,
            prev: Prev {
                seq: prev,
                exact: true,
            },
            frame: bytes::Bytes::new(),
            meta: Default::default(),
        }
    }

    fn read(entries: Vec<Entry>, next: Option<(u32, u64)>) -> TopicRead {
        TopicRead {
            exists: true,
            horizon: 0,
            entries,
            next,
        }
    }

    fn collect(read: &TopicRead, after: u64, until: u64, numbering: Numbering) -> Option<Vec<u64>> {
        let range = Range {
            after,
            until,
            epoch: 1,
        };
        let mut events = Vec::new();
        let topic = Topic::new("t").unwrap();
        range
            .collect(&topic, read, numbering, &mut events)
            .then(|| events.iter().map(|e| e.id().sequence()).collect())
    }

    #[test]
    fn complete_when_the_chain_holds() {
        let whole = read(vec![entry(5, 3), entry(9, 5)], Some((1, 9)));
        assert_eq!(collect(&whole, 3, 9, Numbering::Global), Some(vec![5, 9]));
        assert_eq!(collect(&whole, 4, 9, Numbering::Global), Some(vec![5, 9]));
        // Trimmed before 5, or an entry between refused.
        assert_eq!(collect(&whole, 2, 9, Numbering::Global), None);
        let holed = read(vec![entry(5, 3), entry(9, 7)], None);
        assert_eq!(collect(&holed, 3, 9, Numbering::Global), None);
        let beyond = read(vec![entry(5, 3)], Some((1, 7)));
        assert_eq!(collect(&beyond, 3, 6, Numbering::Global), None);
        let empty = read(vec![], Some((1, 3)));
        assert_eq!(collect(&empty, 3, 3, Numbering::Global), Some(vec![]));
    }

    #[test]
    fn per_topic_numbers_must_reach_the_end() {
        let short = read(vec![entry(4, 3), entry(5, 4)], None);
        assert_eq!(collect(&short, 3, 5, Numbering::PerTopic), Some(vec![4, 5]));
        assert_eq!(collect(&short, 3, 6, Numbering::PerTopic), None);
        assert_eq!(collect(&short, 3, 6, Numbering::Global), Some(vec![4, 5]));
    }
}
