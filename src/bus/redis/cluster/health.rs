//! Whether the cluster backend is healthy: the last check of the primaries answered, and no
//! lane's last sync failed.

use std::sync::atomic::Ordering;

use super::{lane::LaneState, Core};
use crate::bus::Health;
use crate::sync::lock;

impl Core {
    /// Records whether the lane's last sync attempt failed, and why.
    pub(super) fn set_failing(&self, state: &mut LaneState, reason: Option<String>) {
        match (state.failing, reason) {
            (false, Some(reason)) => {
                state.failing = true;
                self.failing.fetch_add(1, Ordering::SeqCst);
                *lock(&self.problem) = Some(reason);
            }
            (true, Some(reason)) => *lock(&self.problem) = Some(reason),
            (true, None) => {
                state.failing = false;
                self.failing.fetch_sub(1, Ordering::SeqCst);
            }
            (false, None) => {}
        }
    }

    pub(super) fn health(&self) -> Health {
        if let Some(reason) = lock(&self.unreachable).clone() {
            return Health::unhealthy(reason);
        }
        if self.failing.load(Ordering::SeqCst) == 0 {
            return Health::healthy();
        }
        let problem = lock(&self.problem).clone();
        Health::unhealthy(problem.unwrap_or_else(|| "the Redis Cluster is unreachable".to_owned()))
    }
}
