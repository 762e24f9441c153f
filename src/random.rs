//! Random numbers, where unpredictability matters little (epochs, jitter, spreading timers).

/// A random 32-bit number, from the standard library's randomly seeded hasher.
pub(crate) fn u32() -> u32 {
    u64() as u32
}

pub(crate) fn u64() -> u64 {
    use std::{
        collections::hash_map::RandomState,
        hash::{BuildHasher, Hasher},
        sync::atomic::{AtomicU64, Ordering},
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
