//! The numbering of events as Redis holds it: a hash with the `epoch` (8 hex digits) and `seq`,
//! the last sequence number, per namespace on one server and per topic on a cluster.

use std::time::Duration;

use ::redis::aio::ConnectionLike;

use super::{
    request::{millis, timed},
    scripts,
};
use crate::last_event_id::EventId;

/// An epoch and the last sequence number issued in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    pub(super) epoch: u32,
    pub(super) seq: u64,
}

impl State {
    /// Parses the epoch and sequence number the scripts answer with.
    pub(super) fn parse(epoch: &str, seq: &str) -> Option<Self> {
        if epoch.len() != 8 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            epoch: u32::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The id of the last event.
    pub(super) fn id(self) -> EventId {
        EventId::new(self.epoch, self.seq)
    }
}

/// An epoch for Redis to adopt when it has none.
pub(super) fn fresh_epoch() -> String {
    format!("{:08x}", crate::random::u32())
}

/// Reads the state hash `key` within `limit`, starting an epoch when it has none (which expires
/// after `expire`, on a cluster).
pub(super) async fn read(
    conn: &mut (impl ConnectionLike + Send),
    key: &str,
    expire: Option<Duration>,
    limit: Duration,
) -> Result<State, String> {
    let mut invocation = scripts::STATE.prepare_invoke();
    invocation.key(key).arg(fresh_epoch());
    if let Some(expire) = expire {
        invocation.arg(millis(expire));
    }
    let what = format!("reading the state in {key}");
    let reading = invocation.invoke_async::<(String, String)>(conn);
    let (epoch, seq) = timed("Redis", &what, limit, reading).await?;
    State::parse(&epoch, &seq).ok_or_else(|| format!("unexpected content in the Redis key {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let state = |e, s| State::parse(e, s).map(|s| (s.epoch, s.seq));
        assert_eq!(state("0000002a", "0"), Some((0x2a, 0)));
        assert_eq!(
            state("ffffffff", "18446744073709551615"),
            Some((u32::MAX, u64::MAX))
        );
        for (epoch, seq) in [
            ("2a", "1"),
            ("+000002a", "1"),
            ("0000002a", "-1"),
            ("0000002a", "+1"),
            ("0000002a", ""),
            ("0000002a", "18446744073709551616"),
        ] {
            assert_eq!(state(epoch, seq), None, "{epoch} {seq}");
        }
    }
}
