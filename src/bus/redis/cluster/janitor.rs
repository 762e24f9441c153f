//! The janitor: the task that unsubscribes from topics nobody follows any more, and checks
//! every primary: that it answers, and that the connection to it still holds the subscriptions
//! this instance made (a node that hangs without closing its connection, a connection replaced
//! without notice, or pushes that never came, are noticed this way).

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use super::{lane::Lane, Core};
use crate::bus::{redis::idle::IdleTopics, Topic};
use crate::sync::lock;

/// How often the janitor checks the primaries.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What the janitor does.
pub(super) enum Chore {
    /// A topic lost its last local subscriber.
    Release(Topic),
    /// The bus shut down: drop every lane and stop listening.
    Close,
}

struct Janitor {
    core: Weak<Core>,
    chores: mpsc::UnboundedReceiver<Chore>,
    delay: Duration,
    idle: IdleTopics,
}

/// Starts the janitor of `core`; released topics are unsubscribed `delay` later.
pub(super) fn start(core: &Arc<Core>, chores: mpsc::UnboundedReceiver<Chore>, delay: Duration) {
    let janitor = Janitor {
        core: Arc::downgrade(core),
        chores,
        delay,
        idle: IdleTopics::default(),
    };
    tokio::spawn(janitor.run());
}

impl Janitor {
    async fn run(mut self) {
        let mut check = tokio::time::interval_at(Instant::now() + CHECK_INTERVAL, CHECK_INTERVAL);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                chore = self.chores.recv() => match chore {
                    Some(Chore::Release(topic)) => {
                        self.idle.insert(topic, Instant::now() + self.delay);
                    }
                    Some(Chore::Close) | None => break,
                },
                () = self.idle.next_due() => self.drop_idle().await,
                _ = check.tick() => self.check().await,
            }
        }
        if let Some(core) = self.core.upgrade() {
            let lanes: Vec<Arc<Lane>> = lock(&core.lanes).drain().map(|(_, lane)| lane).collect();
            for lane in &lanes {
                core.forget(lane).await;
            }
        }
    }

    /// Drops the lanes whose delay is over and that nobody followed again meanwhile.
    async fn drop_idle(&mut self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        for topic in self.idle.take_due() {
            let lane = {
                let mut lanes = lock(&core.lanes);
                let idle = lanes
                    .get(&topic)
                    .is_some_and(|lane| lock(&lane.state).interest == 0);
                if idle {
                    lanes.remove(&topic)
                } else {
                    None
                }
            };
            if let Some(lane) = lane {
                core.forget(&lane).await;
            }
        }
    }

    /// Checks the primaries, and syncs every lane when they answer again after failing, or
    /// when they hold fewer of this instance's subscriptions than it has synced lanes.
    async fn check(&mut self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        // Counted first: a lane synced before the question is subscribed when it is asked.
        let expected = lock(&core.lanes)
            .values()
            .filter(|lane| {
                let state = lock(&lane.state);
                !state.syncing && !state.removed && state.epoch.is_some()
            })
            .count();
        let answer = core.subscriptions().await;
        let was_down = lock(&core.unreachable).is_some();
        match answer {
            Ok(_) if was_down => {
                *lock(&core.unreachable) = None;
                // Pushes may have been lost with the connection that failed.
                core.resync_all();
            }
            Ok(held) if held < expected => {
                tracing::debug!(
                    held,
                    expected,
                    "the cluster holds fewer subscriptions than expected; syncing every topic"
                );
                core.resync_all();
            }
            Ok(_) => {}
            Err(reason) => {
                if !was_down {
                    tracing::warn!(%reason, "the Redis Cluster does not answer");
                }
                *lock(&core.unreachable) = Some(reason);
            }
        }
    }
}

impl Core {
    /// `topic` lost its last local subscriber: the janitor drops its lane after the delay.
    pub(super) fn release(&self, topic: &Topic) {
        let _ = self.janitor.send(Chore::Release(topic.clone()));
    }

    /// Stops listening to a lane that was taken out of the map.
    async fn forget(&self, lane: &Lane) {
        {
            let mut state = lock(&lane.state);
            state.removed = true;
            state.held = None;
            self.set_failing(&mut state, None);
        }
        lane.hub.close();
        let channel = self.names.channel(&lane.topic);
        let mut conn = self.conn.clone();
        if let Err(reason) = self
            .request("SUNSUBSCRIBE", conn.sunsubscribe(&channel))
            .await
        {
            tracing::debug!(topic = %lane.topic, %reason, "unsubscribing failed");
        }
    }
}
