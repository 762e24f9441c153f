//! What one bus may hold and send at once: the bytes of event frames it keeps, and the replays
//! under way.
//!
//! ## Held bytes
//!
//! Every frame a hub delivers is wrapped so that its size counts toward the bus's held bytes
//! from the moment it reaches the hub until the last copy of it is dropped: in history, in
//! subscribers' queues, in replays, in a response body not yet written. A frame shared by many
//! subscribers counts once. Past the budget, the hub sheds: a push into a queue that already has
//! a backlog ends that subscriber (it resumes from its last id), so the slowest let go first
//! and memory stops growing with them.
//!
//! ## Replay budget
//!
//! A resume answered from this instance's memory replays events that are already held, so what
//! needs bounding is the burst of sending them: a replay takes budget (events and bytes) before
//! its subscription is handed out, waiting up to a configured time, and gives it back as its
//! events are taken by the stream. Past the budget, the subscription fails as
//! [`BusError::is_overloaded`] (`503` with `Retry-After`).

use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{BusError, BusErrorKind};

/// The bytes of frames a bus holds; see the module docs.
#[derive(Clone)]
pub(crate) struct Held {
    inner: Arc<HeldInner>,
}

struct HeldInner {
    bytes: AtomicUsize,
    max: usize,
}

/// The owner of an accounted frame: gives its size back when the last copy goes.
struct Accounted {
    frame: Bytes,
    held: Arc<HeldInner>,
}

impl AsRef<[u8]> for Accounted {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for Accounted {
    fn drop(&mut self) {
        self.held
            .bytes
            .fetch_sub(self.frame.len(), Ordering::Relaxed);
    }
}

impl Held {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(HeldInner {
                bytes: AtomicUsize::new(0),
                max,
            }),
        }
    }

    /// `frame`, counted until its last copy is dropped.
    pub(crate) fn account(&self, frame: Bytes) -> Bytes {
        self.inner.bytes.fetch_add(frame.len(), Ordering::Relaxed);
        Bytes::from_owner(Accounted {
            frame,
            held: self.inner.clone(),
        })
    }

    /// Whether the bus holds more than its budget.
    pub(crate) fn is_over(&self) -> bool {
        self.bytes() > self.inner.max
    }

    /// The bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.inner.bytes.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("bytes", &self.bytes())
            .field("max", &self.inner.max)
            .finish()
    }
}

/// The replays one bus may send at once; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct ReplayBudget {
    events: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_events: usize,
    max_bytes: usize,
    wait: Duration,
}

/// Budget taken by one replay, given back as its events are taken.
#[derive(Debug)]
pub(crate) struct ReplayPermit {
    events: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
}

impl ReplayBudget {
    pub(crate) fn new(events: usize, bytes: usize, wait: Duration) -> Self {
        let events = events.clamp(1, Semaphore::MAX_PERMITS);
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            events: Arc::new(Semaphore::new(events)),
            bytes: Arc::new(Semaphore::new(bytes)),
            max_events: events,
            max_bytes: bytes,
            wait,
        }
    }

    /// Takes budget for a replay of `events` events and `bytes` bytes, waiting up to the
    /// configured time. A replay larger than the whole budget takes all of it.
    pub(crate) async fn take(&self, events: usize, bytes: usize) -> Result<ReplayPermit, BusError> {
        let events = events.min(self.max_events) as u32;
        let bytes = bytes.min(self.max_bytes).min(u32::MAX as usize) as u32;
        let both = async {
            let e = self.events.clone().acquire_many_owned(events).await;
            let b = self.bytes.clone().acquire_many_owned(bytes).await;
            e.ok().zip(b.ok())
        };
        match tokio::time::timeout(self.wait, both).await {
            Ok(Some((events, bytes))) => Ok(ReplayPermit { events, bytes }),
            _ => {
                crate::metrics::replay_refused();
                Err(BusError::new(BusErrorKind::Overloaded))
            }
        }
    }
}

impl ReplayPermit {
    /// Moves the budget of `events` events and `bytes` bytes (as far as this holds them) into a
    /// permit of its own; `None` for an empty part.
    pub(crate) fn split(&mut self, events: usize, bytes: usize) -> Option<ReplayPermit> {
        if events == 0 {
            return None;
        }
        let events = self.events.split(events.min(self.events.num_permits()))?;
        let bytes = self.bytes.split(bytes.min(self.bytes.num_permits()))?;
        Some(ReplayPermit { events, bytes })
    }

    /// Keeps no more budget than a replay of `events` events and `bytes` bytes needs, giving
    /// back the rest.
    pub(crate) fn keep(&mut self, events: usize, bytes: usize) {
        let extra = self.events.num_permits().saturating_sub(events);
        drop(self.events.split(extra));
        let extra = self.bytes.num_permits().saturating_sub(bytes);
        drop(self.bytes.split(extra));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_counts_until_its_last_copy_goes() {
        let held = Held::new(10);
        let frame = held.account(Bytes::from_static(b"0123456789ab"));
        assert_eq!(held.bytes(), 12);
        assert!(held.is_over());
        let copy = frame.slice(2..4);
        drop(frame);
        assert_eq!(held.bytes(), 12);
        assert_eq!(&copy[..], b"23");
        drop(copy);
        assert_eq!(held.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn replays_past_the_budget_are_refused_after_the_wait() {
        let budget = ReplayBudget::new(10, 1 << 20, Duration::from_secs(2));
        let mut first = budget.take(8, 100).await.unwrap();
        let refused = budget.take(4, 100).await.unwrap_err();
        assert!(refused.is_overloaded());
        // Given back as the replay is taken.
        first.keep(2, 0);
        let _second = budget.take(4, 100).await.unwrap();
        // One larger than the whole budget waits for all of it.
        drop(first);
        assert!(budget.take(100, 10).await.is_err());
    }
}
