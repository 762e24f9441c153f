//! Event ids, which double as resume cursors.
//!
//! An id is `EPOCH-SEQUENCE`: the epoch (8 hex digits) names one history of the bus, and the
//! sequence number orders every event of that history, across all topics. So the id of the last
//! event a client saw on a stream carrying several topics is enough to resume all of them: the
//! client missed exactly the events of those topics with a higher sequence number.
//!
//! When the history is lost (the process restarted, or Redis came back empty), the epoch
//! changes, and an id from the old epoch is recognised as such instead of being mistaken for a
//! position in the new history.

use std::{fmt, str::FromStr};

use crate::error::InvalidEventId;

/// The longest `Last-Event-ID` value looked at; longer values are invalid without being parsed.
pub(crate) const MAX_ID_LEN: usize = 64;

/// The id of a published event, and the cursor to resume after it.
///
/// # Example
///
/// ```
/// use tower_sse::EventId;
///
/// let id: EventId = "0a1b2c3d-42".parse()?;
/// assert_eq!(id.sequence(), 42);
/// assert_eq!(id.to_string(), "0a1b2c3d-42");
/// assert!("42".parse::<EventId>().is_err());
/// # Ok::<_, tower_sse::InvalidEventId>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    epoch: u32,
    seq: u64,
}

impl EventId {
    pub(crate) fn new(epoch: u32, seq: u64) -> Self {
        Self { epoch, seq }
    }

    /// The history this id belongs to.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The position of the event in its history.
    pub fn sequence(&self) -> u64 {
        self.seq
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{}", self.epoch, self.seq)
    }
}

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = InvalidEventId::new;
        if s.len() > MAX_ID_LEN {
            return Err(err());
        }
        let (epoch, seq) = s.split_once('-').ok_or_else(err)?;
        if epoch.len() != 8 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let epoch = u32::from_str_radix(epoch, 16).map_err(|_| err())?;
        let seq = seq.parse().map_err(|_| err())?;
        Ok(Self { epoch, seq })
    }
}

/// Where a subscription stands: the value a client sends as `Last-Event-ID` to resume it.
///
/// On most buses this is the [`EventId`] of the last event seen, since one sequence orders
/// every topic. On a [Redis Cluster](crate::RedisConfig::cluster) bus each topic is numbered on
/// its own shard, so a stream of several topics stands at one position per topic: its cursor
/// lists them, comma-separated, in the order of the stream's sorted topics, and that list is
/// the `id:` the stream writes after each event.
///
/// # Example
///
/// ```
/// use tower_sse::{Cursor, EventId};
///
/// let id: EventId = "0a1b2c3d-42".parse()?;
/// let cursor = Cursor::from(id);
/// assert_eq!(cursor.to_string(), "0a1b2c3d-42");
/// assert_eq!(cursor.event_id(), Some(id));
/// # Ok::<_, tower_sse::InvalidEventId>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor(Position);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Position {
    One(EventId),
    PerTopic(Box<[EventId]>),
}

impl Cursor {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn per_topic(ids: &[EventId]) -> Self {
        Self(Position::PerTopic(ids.into()))
    }

    /// The id this cursor consists of, unless it holds one position per topic.
    pub fn event_id(&self) -> Option<EventId> {
        match &self.0 {
            Position::One(id) => Some(*id),
            Position::PerTopic(_) => None,
        }
    }

    /// Its positions: one, or one per topic.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn positions(&self) -> &[EventId] {
        match &self.0 {
            Position::One(id) => std::slice::from_ref(id),
            Position::PerTopic(ids) => ids,
        }
    }
}

/// The most positions a cursor may hold: far more than the topics of one stream.
const MAX_POSITIONS: usize = 1024;

impl FromStr for Cursor {
    type Err = InvalidEventId;

    /// One id, or one per topic separated by commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains(',') {
            return s.parse::<EventId>().map(Self::from);
        }
        if s.len() > MAX_POSITIONS * (MAX_ID_LEN + 1) {
            return Err(InvalidEventId::new());
        }
        let ids = s
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Position::PerTopic(ids.into())))
    }
}

/// A resume point as a client sent it, parsed once at the edge: none, a cursor, or something no
/// bus issues.
pub(crate) type ResumeFrom = Option<Result<Cursor, InvalidEventId>>;

/// A resume point that must be one id (a bus numbering all its topics together): a cursor of one
/// position per topic is not one it issues.
pub(crate) fn one_position(resume: ResumeFrom) -> Option<Result<EventId, InvalidEventId>> {
    resume.map(|r| r.and_then(|cursor| cursor.event_id().ok_or_else(InvalidEventId::new)))
}

/// Writes a cursor of one position per topic, as it goes on the wire, without building one.
pub(crate) fn write_per_topic(ids: &[EventId], out: &mut impl fmt::Write) -> fmt::Result {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{id}")?;
    }
    Ok(())
}

impl From<EventId> for Cursor {
    fn from(id: EventId) -> Self {
        Self(Position::One(id))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Position::One(id) => write!(f, "{id}"),
            Position::PerTopic(ids) => write_per_topic(ids, f),
        }
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = EventId::new(0xdead_beef, 12);
        assert_eq!(id.to_string(), "deadbeef-12");
        assert_eq!("deadbeef-12".parse::<EventId>().unwrap(), id);
        assert_eq!(
            "00000000-18446744073709551615".parse::<EventId>().unwrap(),
            EventId::new(0, u64::MAX)
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "-",
            "12",
            "deadbeef-",
            "deadbee-1",
            "deadbeefa-1",
            "deadbeef--1",
            "deadbeef-+1",
            "xxxxxxxx-1",
            "deadbeef-18446744073709551616",
            "deadbeef-1 ",
            "deadbeef-1\u{0}",
            "déadbeef-1",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(10_000).parse::<EventId>().is_err());
    }

    #[test]
    fn cursors_per_topic() {
        let ids = [EventId::new(1, 2), EventId::new(0xab, 0)];
        let cursor = Cursor::per_topic(&ids);
        assert_eq!(cursor.to_string(), "00000001-2,000000ab-0");
        assert_eq!(cursor.event_id(), None);
        let parsed: Cursor = "00000001-2,000000ab-0".parse().unwrap();
        assert_eq!(parsed.positions(), &ids[..]);
        assert_eq!(parsed, cursor);
        let one: Cursor = "00000001-2".parse().unwrap();
        assert_eq!(one.positions(), &ids[..1]);
        for bad in [
            "00000001-2,",
            "00000001-2,,000000ab-0",
            "00000001-2;000000ab-0",
            "",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
        let long = vec!["00000001-2"; 10_000].join(",");
        assert!(long.parse::<Cursor>().is_err());
        // A bus numbering all topics together takes one position only.
        assert_eq!(one_position(Some(Ok(one))), Some(Ok(ids[0])));
        assert!(matches!(one_position(Some(Ok(parsed))), Some(Err(_))));
    }
}
