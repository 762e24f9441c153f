//! The events a hub keeps for resume: per topic, bounded by count, bytes and age; across all
//! topics, bounded in bytes, the oldest evicted first.
//!
//! Every topic's history is in sequence order, and a hub numbers (or receives) events in
//! sequence order across topics, so the event with the lowest sequence number among the front
//! events of all topics is the oldest the hub holds. [`Oldest`] finds it without scanning every
//! topic: a min-heap with one live entry per topic that has history, corrected lazily when a
//! topic's front moved for other reasons.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use super::Topic;

/// How much history a hub keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    pub(crate) events: usize,
    pub(crate) age: Duration,
    pub(crate) bytes: usize,
    /// Bytes across all topics.
    pub(crate) total_bytes: usize,
}

/// One stored event.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) at: Instant,
    pub(crate) frame: Bytes,
}

/// One topic's history, in sequence order.
#[derive(Debug, Default)]
pub(crate) struct TopicHistory {
    events: VecDeque<Stored>,
    bytes: usize,
    /// The sequence number of this topic's live entry in [`Oldest`], if it has one.
    heap_seq: Option<u64>,
}

impl TopicHistory {
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.events.back().map(|s| s.seq)
    }

    /// The stored events numbered above `after`.
    pub(crate) fn after(&self, after: u64) -> impl Iterator<Item = &Stored> {
        let start = self.events.partition_point(|s| s.seq <= after);
        self.events.range(start..)
    }

    /// Appends an event, which must be numbered above every stored one.
    pub(crate) fn push(&mut self, stored: Stored) {
        self.bytes += stored.frame.len();
        self.events.push_back(stored);
    }

    /// Removes the oldest event; returns its sequence number and size.
    pub(crate) fn pop_front(&mut self) -> Option<(u64, usize)> {
        let front = self.events.pop_front()?;
        self.bytes -= front.frame.len();
        Some((front.seq, front.frame.len()))
    }

    /// Whether the oldest event breaks the per-topic limits at `now`.
    pub(crate) fn front_expired(&self, limits: &HistoryLimits, now: Instant) -> bool {
        self.events.front().is_some_and(|front| {
            self.events.len() > limits.events
                || self.bytes > limits.bytes
                || now.saturating_duration_since(front.at) > limits.age
        })
    }

    fn front(&self) -> Option<&Stored> {
        self.events.front()
    }

    /// Drops every event (the history is no longer complete or of another epoch).
    #[cfg(feature = "redis")]
    pub(crate) fn clear(&mut self) -> usize {
        let bytes = self.bytes;
        *self = Self {
            heap_seq: self.heap_seq,
            ..Self::default()
        };
        bytes
    }
}

/// Finds the oldest event across topics; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Oldest {
    heap: BinaryHeap<Reverse<(u64, Topic)>>,
}

impl Oldest {
    /// Records that `history` (of `topic`) got its first event, or needs its entry back.
    pub(crate) fn track(&mut self, topic: &Topic, history: &mut TopicHistory) {
        if history.heap_seq.is_none() {
            if let Some(seq) = history.front().map(|front| front.seq) {
                history.heap_seq = Some(seq);
                self.heap.push(Reverse((seq, topic.clone())));
            }
        }
    }

    /// The topic holding the oldest event, and when that event was stored. `history` finds a
    /// topic's history in an entry of `topics`. Stale entries met on the way are dropped or
    /// corrected.
    pub(crate) fn find<T>(
        &mut self,
        topics: &mut HashMap<Topic, T>,
        history: fn(&mut T) -> &mut TopicHistory,
    ) -> Option<(Topic, Instant)> {
        loop {
            let Reverse((seq, topic)) = self.heap.peek()?.clone();
            let live = topics
                .get_mut(&topic)
                .map(history)
                .filter(|h| h.heap_seq == Some(seq));
            let Some(h) = live else {
                // The topic is gone, or this is not its live entry.
                self.heap.pop();
                continue;
            };
            match h.front() {
                Some(front) if front.seq == seq => return Some((topic, front.at)),
                // Its front moved (or it is empty): replace the entry.
                _ => self.advance(&topic, h),
            }
        }
    }

    /// After the front event of `topic` (the one [`find`](Self::find) found) was removed: its
    /// next event takes its place.
    pub(crate) fn advance(&mut self, topic: &Topic, history: &mut TopicHistory) {
        self.heap.pop();
        history.heap_seq = None;
        self.track(topic, history);
    }

    /// Drops stale entries when they outnumber the live ones (topics come and go).
    pub(crate) fn compact(&mut self, live: usize, mut has_entry: impl FnMut(&Topic, u64) -> bool) {
        if self.heap.len() > 2 * live + 64 {
            self.heap
                .retain(|Reverse((seq, topic))| has_entry(topic, *seq));
        }
    }

    /// Whether `history` has its live entry at `seq` (for [`compact`](Self::compact)).
    pub(crate) fn is_entry(history: &TopicHistory, seq: u64) -> bool {
        history.heap_seq == Some(seq)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(seq: u64, len: usize) -> Stored {
        Stored {
            seq,
            at: Instant::now(),
            frame: Bytes::from(vec![0; len]),
        }
    }

    /// Pops the oldest event across `topics`.
    fn pop_oldest(oldest: &mut Oldest, topics: &mut HashMap<Topic, TopicHistory>) -> Option<u64> {
        let (topic, _) = oldest.find(topics, |h| h)?;
        let history = topics.get_mut(&topic).unwrap();
        let (seq, _) = history.pop_front().unwrap();
        oldest.advance(&topic, history);
        Some(seq)
    }

    #[test]
    fn finds_the_oldest_across_topics() {
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        let mut topics = HashMap::from([(a.clone(), TopicHistory::default())]);
        topics.insert(b.clone(), TopicHistory::default());
        let mut oldest = Oldest::default();
        for (topic, seq) in [(&a, 1), (&b, 2), (&a, 3), (&b, 4), (&b, 5)] {
            let h = topics.get_mut(topic).unwrap();
            h.push(store(seq, 1));
            oldest.track(topic, h);
        }
        // A per-topic limit drops b's front behind the heap's back.
        topics.get_mut(&b).unwrap().pop_front();
        let order: Vec<_> = std::iter::from_fn(|| pop_oldest(&mut oldest, &mut topics)).collect();
        assert_eq!(order, [1, 3, 4, 5]);
        assert_eq!(oldest.len(), 0);
    }

    #[test]
    fn stale_entries_of_removed_topics_are_compacted() {
        let mut oldest = Oldest::default();
        for i in 0..200 {
            let topic = Topic::new(&format!("t{i}")).unwrap();
            let mut h = TopicHistory::default();
            h.push(store(i, 1));
            oldest.track(&topic, &mut h);
        }
        // Every topic went away.
        oldest.compact(0, |_, _| false);
        assert_eq!(oldest.len(), 0);
    }
}
