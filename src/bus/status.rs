//! How a subscription started, and why events may have been lost.

/// How a subscription started, from [`Subscription::status`](crate::Subscription::status). The SSE stream tells the client
/// in its first event (see the crate docs, "Resume status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeStatus {
    /// No resume point was given.
    Fresh,
    /// Every event after the resume point was replayed (`replayed` of them); nothing was missed.
    Resumed {
        /// How many events were replayed.
        replayed: usize,
    },
    /// The resume point could not be honoured; the subscription starts fresh and events may
    /// have been missed.
    Reset(ResetReason),
}

impl ResumeStatus {
    /// The word used on the wire: `fresh`, `resumed` or `reset`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Resumed { .. } => "resumed",
            Self::Reset(_) => "reset",
        }
    }
}

/// Why a resume point could not be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetReason {
    /// The id is not one this bus issues.
    InvalidId,
    /// The id belongs to a history that no longer exists (the server or broker restarted and
    /// lost it).
    UnknownEpoch,
    /// The id is newer than any event this instance knows of.
    UnknownId,
    /// The history this instance holds does not reach back to the id (it was trimmed, or this
    /// instance was not listening to a topic at that time).
    HistoryExpired,
}

impl ResetReason {
    /// The word used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidId => "invalid-id",
            Self::UnknownEpoch => "unknown-epoch",
            Self::UnknownId => "unknown-id",
            Self::HistoryExpired => "history-expired",
        }
    }
}

/// Why events may have been lost in the middle of a subscription ([`Message::Gap`](crate::Message::Gap)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapReason {
    /// The connection to the broker dropped; events published meanwhile were not received.
    BrokerDisconnected,
    /// The broker lost its state (for example it restarted without persistence); ids start a
    /// new history.
    HistoryLost,
}

impl GapReason {
    /// The word used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BrokerDisconnected => "broker-disconnected",
            Self::HistoryLost => "history-lost",
        }
    }
}
