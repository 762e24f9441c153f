//! This instance's subscriptions per topic, counted as subscriptions open and close, and the
//! watchers that learn which topics' counts changed.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, Weak},
};

use tokio::sync::Notify;

use crate::{bus::Topic, sync::lock};

/// Subscriptions per topic on this instance.
#[derive(Debug, Default)]
pub(crate) struct LocalCounts {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Topics with at least one subscription, and how many.
    topics: HashMap<Topic, usize>,
    /// Told of every change; a watcher whose task ended is dropped at the next change.
    watchers: Vec<Weak<Watcher>>,
}

/// Learns which topics' counts changed since it last looked.
#[derive(Debug, Default)]
pub(crate) struct Watcher {
    changed: Mutex<HashSet<Topic>>,
    notify: Notify,
}

impl Watcher {
    /// Completes when a count changed since the last [`take`](Self::take) (at once if one did
    /// while nobody waited).
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }

    /// The topics whose count changed since the last call.
    pub(crate) fn take(&self) -> HashSet<Topic> {
        std::mem::take(&mut *lock(&self.changed))
    }

    /// Marks `topics` as changed (again: a write that failed, to be retried).
    pub(crate) fn mark(&self, topics: impl IntoIterator<Item = Topic>) {
        lock(&self.changed).extend(topics);
        self.notify.notify_one();
    }
}

impl LocalCounts {
    /// A watcher told of every change from now on, for as long as it lives.
    pub(crate) fn watch(&self) -> Arc<Watcher> {
        let watcher = Arc::new(Watcher::default());
        lock(&self.state).watchers.push(Arc::downgrade(&watcher));
        watcher
    }

    /// The subscriptions to `topic` on this instance.
    pub(crate) fn count(&self, topic: &Topic) -> usize {
        lock(&self.state).topics.get(topic).copied().unwrap_or(0)
    }

    /// The counts of `topics` (zero for a topic nobody follows).
    pub(crate) fn counts_of(&self, topics: impl IntoIterator<Item = Topic>) -> Vec<(Topic, usize)> {
        let state = lock(&self.state);
        topics
            .into_iter()
            .map(|topic| {
                let n = state.topics.get(&topic).copied().unwrap_or(0);
                (topic, n)
            })
            .collect()
    }

    /// Every topic followed on this instance, with its count.
    pub(crate) fn all(&self) -> Vec<(Topic, usize)> {
        let state = lock(&self.state);
        state.topics.iter().map(|(t, n)| (t.clone(), *n)).collect()
    }

    /// Counts a subscription of `topics` until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, topics: &[Topic]) -> Entered {
        self.change(topics, true);
        Entered {
            counts: self.clone(),
            topics: topics.to_vec(),
        }
    }

    fn change(&self, topics: &[Topic], up: bool) {
        let mut state = lock(&self.state);
        for topic in topics {
            if up {
                *state.topics.entry(topic.clone()).or_insert(0) += 1;
            } else if let Some(n) = state.topics.get_mut(topic) {
                *n -= 1;
                if *n == 0 {
                    state.topics.remove(topic);
                }
            }
        }
        state.watchers.retain(|watcher| match watcher.upgrade() {
            Some(watcher) => {
                watcher.mark(topics.iter().cloned());
                true
            }
            None => false,
        });
    }
}

/// A subscription counted in [`LocalCounts`]; dropping it counts the subscription out.
#[derive(Debug)]
pub(crate) struct Entered {
    counts: Arc<LocalCounts>,
    topics: Vec<Topic>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.counts.change(&self.topics, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<Topic> {
        names.iter().map(|n| Topic::new(n).unwrap()).collect()
    }

    #[test]
    fn counts_follow_subscriptions_and_watchers_hear_of_changes() {
        let counts = Arc::new(LocalCounts::default());
        let watcher = counts.watch();
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        let first = counts.enter(&topics(&["a", "b"]));
        let second = counts.enter(&topics(&["a"]));
        assert_eq!((counts.count(&a), counts.count(&b)), (2, 1));
        assert_eq!(watcher.take(), HashSet::from([a.clone(), b.clone()]));
        drop(first);
        assert_eq!((counts.count(&a), counts.count(&b)), (1, 0));
        assert_eq!(counts.all(), vec![(a.clone(), 1)]);
        assert_eq!(watcher.take(), HashSet::from([a.clone(), b.clone()]));
        drop(second);
        assert_eq!(counts.all(), vec![]);
        assert_eq!(counts.counts_of([a.clone()]), vec![(a, 0)]);
    }

    #[test]
    fn a_dropped_watcher_is_forgotten() {
        let counts = Arc::new(LocalCounts::default());
        drop(counts.watch());
        let kept = counts.watch();
        drop(counts.enter(&topics(&["a"])));
        assert_eq!(lock(&counts.state).watchers.len(), 1);
        assert_eq!(kept.take().len(), 1);
    }
}
