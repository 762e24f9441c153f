//! Locks that carry on after a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, carrying on after a panic elsewhere poisoned it: every critical section here
/// leaves the state consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
