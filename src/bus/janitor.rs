//! The periodic tick of a hub: history ages out and stalled subscribers end even when nothing
//! is published.
//!
//! One task per hub, ticking once a second, holding the hub weakly: it ends with the hub. It is
//! started by the first hub operation that runs inside a Tokio runtime (a hub may be built
//! outside one).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::time::{Instant, MissedTickBehavior};

/// How often the tick runs.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// Whether a hub's tick is running.
#[derive(Debug, Default)]
pub(crate) struct Started(AtomicBool);

impl Started {
    /// Whether the tick was started.
    pub(crate) fn is_running(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Spawns the tick unless it runs already or no runtime is at hand. `tick` runs once per
    /// [`TICK`]; the task ends when it returns `None`.
    pub(crate) fn start(&self, tick: impl FnMut(Instant) -> Option<()> + Send + 'static) {
        if self.0.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.0.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(run(tick));
    }
}

async fn run(mut tick: impl FnMut(Instant) -> Option<()>) {
    let mut interval = tokio::time::interval_at(Instant::now() + TICK, TICK);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let now = interval.tick().await;
        if tick(now).is_none() {
            return;
        }
    }
}
