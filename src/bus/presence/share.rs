//! The task that shares this instance's counts with the other instances through a
//! [`PresenceStore`]: changed counts at most every [`FLUSH_GAP`], every count every third of
//! the store's TTL, and at shutdown the withdrawal of them all.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior},
};

use super::{
    counts::{LocalCounts, Watcher},
    PresenceStore,
};
use crate::bus::Topic;

/// The least time between two writes of changed counts: however many subscriptions come and
/// go, an instance writes at most four times a second, besides its heartbeat.
pub(crate) const FLUSH_GAP: Duration = Duration::from_millis(250);

/// How long after a failed write the next is tried.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// How often every count is written again: a third of the TTL, so that two writes may fail
/// before a live instance's counts expire.
pub(crate) fn heartbeat(ttl: Duration) -> Duration {
    ttl / 3
}

/// The sharing task, seen from the bus.
#[derive(Debug)]
pub(crate) struct Sharing {
    done: watch::Receiver<bool>,
}

impl Sharing {
    /// Starts sharing `counts` through `store`, until `closing` turns true or its sender is
    /// dropped; then the counts are withdrawn. Must be called within a Tokio runtime.
    pub(crate) fn start(
        store: Arc<dyn PresenceStore>,
        counts: Arc<LocalCounts>,
        closing: watch::Receiver<bool>,
    ) -> Self {
        let (done, wait) = watch::channel(false);
        let sharer = Sharer {
            watcher: counts.watch(),
            store,
            counts,
            written: HashSet::new(),
            next: Instant::now(),
            failing: false,
        };
        tokio::spawn(sharer.run(closing, done));
        Self { done: wait }
    }

    /// Completes once the counts were withdrawn (or the withdrawal failed).
    pub(crate) async fn closed(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|&done| done).await;
    }
}

/// Completes when `closing` turns true or its sender is dropped.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|&closing| closing).await;
}

struct Sharer {
    store: Arc<dyn PresenceStore>,
    counts: Arc<LocalCounts>,
    watcher: Arc<Watcher>,
    /// Topics this instance may have a count for in the store.
    written: HashSet<Topic>,
    /// When the next write of changed counts may go out.
    next: Instant,
    /// Whether the last write failed.
    failing: bool,
}

impl Sharer {
    async fn run(mut self, mut closing: watch::Receiver<bool>, done: watch::Sender<bool>) {
        let beat = heartbeat(self.store.ttl());
        let mut heartbeat = tokio::time::interval_at(Instant::now() + beat, beat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watcher = self.watcher.clone();
        loop {
            let beat = tokio::select! {
                () = closed(&mut closing) => break,
                _ = heartbeat.tick() => true,
                () = watcher.changed() => false,
            };
            if !beat {
                // Changes that come meanwhile go out with this one.
                tokio::select! {
                    () = closed(&mut closing) => break,
                    () = tokio::time::sleep_until(self.next) => {}
                }
            }
            self.flush(beat).await;
        }
        self.withdraw().await;
        let _ = done.send(true);
    }

    /// Writes the changed counts, or with `all` every count (and the changed ones).
    async fn flush(&mut self, all: bool) {
        let changed = self.watcher.take();
        let mut batch: HashMap<Topic, usize> = match all {
            true => self.counts.all().into_iter().collect(),
            false => HashMap::new(),
        };
        let more = changed.into_iter().filter(|t| !batch.contains_key(t));
        let more = self.counts.counts_of(more);
        batch.extend(more);
        // A topic that went to zero before its count was ever written needs no write.
        batch.retain(|topic, n| *n > 0 || self.written.contains(topic));
        if batch.is_empty() {
            return;
        }
        let batch: Vec<(Topic, usize)> = batch.into_iter().collect();
        self.next = Instant::now() + FLUSH_GAP;
        let written = batch.iter().filter(|(_, n)| *n > 0);
        self.written.extend(written.map(|(t, _)| t.clone()));
        match self.store.write(&batch).await {
            Ok(()) => {
                for (topic, _) in batch.iter().filter(|(_, n)| *n == 0) {
                    self.written.remove(topic);
                }
                if std::mem::take(&mut self.failing) {
                    tracing::info!("presence counts are written again");
                }
            }
            Err(reason) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(%reason, "cannot write presence counts; retrying");
                }
                self.watcher.mark(batch.into_iter().map(|(t, _)| t));
                self.next = Instant::now() + RETRY;
            }
        }
    }

    /// Removes every count this instance may have written.
    async fn withdraw(&mut self) {
        let batch: Vec<(Topic, usize)> = self.written.drain().map(|t| (t, 0)).collect();
        if batch.is_empty() {
            return;
        }
        if let Err(reason) = self.store.write(&batch).await {
            tracing::warn!(
                %reason,
                "cannot withdraw presence counts at shutdown; they expire with their TTL"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    };

    use super::*;
    use crate::{bus::backend::BoxFuture, sync::lock};

    /// When a batch was written, and its counts.
    type Write = (Instant, Vec<(Topic, usize)>);

    /// A store that records what it is asked to write, and fails when told to.
    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<Write>>,
        fail: AtomicBool,
    }

    impl PresenceStore for Recorder {
        fn write<'a>(&'a self, counts: &'a [(Topic, usize)]) -> BoxFuture<'a, Result<(), String>> {
            let mut counts = counts.to_vec();
            counts.sort();
            lock(&self.writes).push((Instant::now(), counts));
            let failed = self.fail.load(Ordering::SeqCst);
            Box::pin(async move {
                if failed {
                    Err("down".to_owned())
                } else {
                    Ok(())
                }
            })
        }

        fn others<'a>(&'a self, _topic: &'a Topic) -> BoxFuture<'a, Result<u64, String>> {
            Box::pin(async { Ok(0) })
        }

        fn ttl(&self) -> Duration {
            Duration::from_secs(30)
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<Write> {
            std::mem::take(&mut *lock(&self.writes))
        }
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    fn start() -> (
        Arc<Recorder>,
        Arc<LocalCounts>,
        watch::Sender<bool>,
        Sharing,
    ) {
        let store = Arc::new(Recorder::default());
        let counts = Arc::new(LocalCounts::default());
        let (closing, receiver) = watch::channel(false);
        let sharing = Sharing::start(store.clone(), counts.clone(), receiver);
        (store, counts, closing, sharing)
    }

    #[tokio::test(start_paused = true)]
    async fn churn_is_written_at_most_every_flush_gap_with_the_latest_counts() {
        let (store, counts, _closing, _sharing) = start();
        let topics: Vec<Topic> = (0..100).map(|i| topic(&format!("t{i}"))).collect();
        let mut held = Vec::new();
        // 2 000 subscriptions come and go over two seconds, every millisecond.
        for i in 0..2_000 {
            held.push(counts.enter(&topics[i % 100..i % 100 + 1]));
            if i % 2 == 1 {
                held.remove(0);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(FLUSH_GAP * 2).await;
        let writes = store.take();
        assert!(writes.len() <= 2_000 / 250 + 2, "{} writes", writes.len());
        for pair in writes.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= FLUSH_GAP, "writes too close");
        }
        // The last write of each topic holds its count now.
        let mut last = HashMap::new();
        for (_, batch) in writes {
            last.extend(batch);
        }
        for topic in &topics {
            assert_eq!(
                last.get(topic).copied().unwrap_or(0),
                counts.count(topic),
                "{topic}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_count_is_written_in_one_batch_every_third_of_the_ttl() {
        let (store, counts, _closing, _sharing) = start();
        let topics: Vec<Topic> = (0..1_000).map(|i| topic(&format!("t{i}"))).collect();
        let _held = counts.enter(&topics);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(store.take().len(), 1, "the change");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let beats = store.take();
        assert_eq!(beats.len(), 3, "a heartbeat at 10, 20 and 30 s");
        for (_, batch) in beats {
            assert_eq!(batch.len(), 1_000);
            assert!(batch.iter().all(|(_, n)| *n == 1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_retried_after_a_pause() {
        let (store, counts, _closing, _sharing) = start();
        store.fail.store(true, Ordering::SeqCst);
        let _held = counts.enter(&[topic("a")]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.take().len(), 1);
        store.fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(RETRY - Duration::from_millis(200)).await;
        assert_eq!(store.take().len(), 0, "not before the pause");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let retried = store.take();
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].1, vec![(topic("a"), 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_withdraws_every_count_written() {
        let (store, counts, closing, sharing) = start();
        let held = counts.enter(&[topic("a"), topic("b")]);
        let gone = counts.enter(&[topic("c")]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(gone);
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.take();
        closing.send(true).unwrap();
        sharing.closed().await;
        let writes = store.take();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].1, vec![(topic("a"), 0), (topic("b"), 0)]);
        drop(held);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(store.take(), vec![], "nothing after the withdrawal");
    }
}
