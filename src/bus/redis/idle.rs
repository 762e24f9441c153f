//! Topics nobody follows any more, each with the time to stop listening to it.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::bus::Topic;

#[derive(Debug, Default)]
pub(super) struct IdleTopics {
    due: HashMap<Topic, Instant>,
}

impl IdleTopics {
    /// Stops listening to `topic` at `at`, unless it is taken back before.
    pub(super) fn insert(&mut self, topic: Topic, at: Instant) {
        self.due.insert(topic, at);
    }

    /// Takes `topic` back; whether it was idle.
    pub(super) fn remove(&mut self, topic: &Topic) -> bool {
        self.due.remove(topic).is_some()
    }

    pub(super) fn clear(&mut self) {
        self.due.clear();
    }

    /// Waits until the next topic is due (forever when none is idle).
    pub(super) async fn next_due(&self) {
        match self.due.values().min() {
            Some(&at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Removes and returns the topics whose time has come.
    pub(super) fn take_due(&mut self) -> Vec<Topic> {
        let now = Instant::now();
        let due: Vec<Topic> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in &due {
            self.due.remove(topic);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn topics_fall_due_in_time() {
        let mut idle = IdleTopics::default();
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        idle.insert(a.clone(), Instant::now() + Duration::from_secs(1));
        idle.insert(b.clone(), Instant::now() + Duration::from_secs(5));
        assert!(idle.take_due().is_empty());
        idle.next_due().await;
        assert_eq!(idle.take_due(), std::slice::from_ref(&a));
        assert!(idle.remove(&b));
        assert!(!idle.remove(&a));
    }
}
