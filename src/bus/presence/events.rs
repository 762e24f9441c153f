//! Presence events: when a topic's count on this instance changes, its new total goes to the
//! topic's companion, at most once a second per topic.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::{sync::watch, task::JoinSet, time::Instant};

use super::{counts::Watcher, Presence};
use crate::{
    bus::{EventBus, Inner, Topic},
    event::Event,
};

/// What a topic's name ends with to make its companion: `{topic}@presence`.
pub const PRESENCE_SUFFIX: &str = "@presence";

/// The type of presence events.
pub const PRESENCE_EVENT: &str = "sse-presence";

/// The least time between two events of one topic.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// The most events being read and published at once.
const PARALLEL: usize = 32;

/// The companion of `topic`, or `None` when `topic` is a companion itself (its followers get
/// no events of their own) or the companion's name would be too long.
pub(crate) fn companion(topic: &Topic) -> Option<Topic> {
    let name = topic.as_str();
    if name.ends_with(PRESENCE_SUFFIX) {
        return None;
    }
    Topic::new(&format!("{name}{PRESENCE_SUFFIX}")).ok()
}

/// The event announcing `presence` on its topic's companion.
pub(crate) fn event(presence: &Presence) -> Event {
    let data = format!(
        "{{\"topic\":\"{}\",\"subscribers\":{}}}",
        presence.topic().as_str(),
        presence.subscribers()
    );
    Event::reserved(PRESENCE_EVENT, data)
}

/// Starts the task that sends the events of the bus `bus`, until `closing` turns true or the
/// bus is dropped. Must be called within a Tokio runtime.
pub(crate) fn start(bus: Weak<Inner>, watcher: Arc<Watcher>, closing: watch::Receiver<bool>) {
    let announcer = Announcer {
        bus,
        watcher,
        due: HashMap::new(),
        sent: HashMap::new(),
    };
    tokio::spawn(announcer.run(closing));
}

struct Announcer {
    bus: Weak<Inner>,
    watcher: Arc<Watcher>,
    /// Topics whose event is pending, and when it may go.
    due: HashMap<Topic, Instant>,
    /// When the last event of a topic went, for the topics of the last second.
    sent: HashMap<Topic, Instant>,
}

impl Announcer {
    async fn run(mut self, mut closing: watch::Receiver<bool>) {
        let watcher = self.watcher.clone();
        loop {
            let wake = self.due.values().min().copied();
            tokio::select! {
                _ = closing.wait_for(|&closing| closing) => return,
                () = watcher.changed() => {}
                () = sleep_until(wake) => {}
            }
            let now = Instant::now();
            self.note_changes(now);
            let ready = self.take_ready(now);
            if ready.is_empty() {
                continue;
            }
            let Some(inner) = self.bus.upgrade() else {
                return;
            };
            announce(EventBus { inner }, ready).await;
        }
    }

    /// Schedules an event for each topic that changed, no sooner than [`EVERY`] after its last.
    fn note_changes(&mut self, now: Instant) {
        for topic in self.watcher.take() {
            if companion(&topic).is_none() {
                continue;
            }
            let at = self
                .sent
                .get(&topic)
                .map_or(now, |last| (*last + EVERY).max(now));
            self.due.entry(topic).or_insert(at);
        }
    }

    /// The topics whose event may go now, recorded as sent.
    fn take_ready(&mut self, now: Instant) -> Vec<Topic> {
        let mut ready = Vec::new();
        self.due.retain(|topic, at| {
            let go = *at <= now;
            if go {
                ready.push(topic.clone());
            }
            !go
        });
        self.sent
            .retain(|_, at| now.saturating_duration_since(*at) < EVERY);
        self.sent
            .extend(ready.iter().map(|topic| (topic.clone(), now)));
        ready
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the totals of `topics` and publishes their events, [`PARALLEL`] at a time.
async fn announce(bus: EventBus, topics: Vec<Topic>) {
    let mut running = JoinSet::new();
    for topic in topics {
        if running.len() >= PARALLEL {
            running.join_next().await;
        }
        running.spawn(announce_one(bus.clone(), topic));
    }
    while running.join_next().await.is_some() {}
}

async fn announce_one(bus: EventBus, topic: Topic) {
    let Some(companion) = companion(&topic) else {
        return;
    };
    let presence = bus.inner.presence.read(topic).await;
    // A count of this instance alone would tell every follower something false.
    if !presence.is_complete() {
        return;
    }
    if let Err(error) = bus.publish(companion, event(&presence)).await {
        tracing::debug!(topic = %presence.topic(), %error, "cannot publish a presence event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions() {
        let topic = Topic::new("room:1").unwrap();
        assert_eq!(companion(&topic).unwrap().as_str(), "room:1@presence");
        assert_eq!(companion(&companion(&topic).unwrap()), None);
        let longest = Topic::new(&"x".repeat(256 - PRESENCE_SUFFIX.len())).unwrap();
        assert!(companion(&longest).is_some());
        let too_long = Topic::new(&"x".repeat(256 - PRESENCE_SUFFIX.len() + 1)).unwrap();
        assert_eq!(companion(&too_long), None);
    }

    #[test]
    fn the_event_names_the_topic_and_its_total() {
        let presence = Presence::new(Topic::new("room:1").unwrap(), 5, true);
        assert_eq!(
            &event(&presence).encode()[..],
            b"event: sse-presence\ndata: {\"topic\":\"room:1\",\"subscribers\":5}\n\n"
        );
    }
}
