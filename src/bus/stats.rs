//! [`BusStats`]: a snapshot of an instance's bus state.

/// A snapshot of an instance's bus state, from [`EventBus::stats`](crate::EventBus::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Topics with subscribers or history on this instance.
    pub topics: usize,
    /// Topic subscriptions on this instance (a stream of three topics counts three times).
    pub subscriptions: usize,
    /// Events held in history for resume.
    pub history_events: usize,
    /// Bytes of encoded events held in history.
    pub history_bytes: usize,
    /// Bytes of encoded events held anywhere (history, queues, replays, bodies not yet
    /// written), each event counted once however many subscribers share it.
    pub held_bytes: usize,
}
