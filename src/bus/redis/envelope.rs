//! The envelope of an event in Redis: a first line before the frame, which clients never see.
//!
//! `:@t=MICROS tp=TRACEPARENT\n`: when the event was published (microseconds since the Unix
//! epoch, by the publisher's clock) and, when there is one, the publisher's trace context. It
//! reads as a comment, and no frame this crate encodes starts with `:@` (comments start with
//! `: `), so a frame without the line is told apart. Fields are `key=value`, separated by one
//! space; unknown keys are skipped, so later versions can add some.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::Span;

use crate::{
    bus::Topic,
    last_event_id::EventId,
    trace::{deliver_span, TraceParent},
};

/// How far a publish time may lie from this instance's clock and still be used to measure
/// latency (clocks of two machines differ; a time beyond this is taken as wrong).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What the envelope says about an event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    /// When it was published, in microseconds since the Unix epoch.
    published: Option<u64>,
    parent: Option<TraceParent>,
}

/// The envelope's line for an event published now, in the current span.
pub(super) fn seal() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    match TraceParent::current() {
        Some(parent) => format!(":@t={micros} tp={parent}\n"),
        None => format!(":@t={micros}\n"),
    }
}

/// Splits the envelope's line off `frame` (sharing the buffer). A frame without one is returned
/// whole, with nothing known about it.
pub(super) fn open(frame: Bytes) -> (Meta, Bytes) {
    if !frame.starts_with(b":@") {
        return (Meta::default(), frame);
    }
    let Some(end) = memchr::memchr(b'\n', &frame) else {
        return (Meta::default(), frame);
    };
    let mut meta = Meta::default();
    for field in frame[2..end].split(|&b| b == b' ') {
        if let Some(micros) = field.strip_prefix(b"t=") {
            meta.published = std::str::from_utf8(micros)
                .ok()
                .and_then(|s| s.parse().ok());
        } else if let Some(parent) = field.strip_prefix(b"tp=") {
            meta.parent = TraceParent::parse(parent);
        }
    }
    (meta, frame.slice(end + 1..))
}

impl Meta {
    /// How long ago the event was published, by this instance's clock (zero when the publish
    /// time is unknown or implausible).
    pub(super) fn age(&self) -> Duration {
        let Some(micros) = self.published else {
            return Duration::ZERO;
        };
        let published = UNIX_EPOCH + Duration::from_micros(micros);
        match SystemTime::now().duration_since(published) {
            Ok(ago) if ago <= MAX_CLOCK_SKEW => ago,
            _ => Duration::ZERO,
        }
    }

    /// The span of the event's delivery on this instance, a child of its publish.
    pub(super) fn deliver_span(&self, topic: &Topic, id: EventId) -> Span {
        deliver_span(topic, id, self.parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_what_it_seals() {
        let frame = format!("{}data: x\nid: 00000001-1\n\n", seal());
        let (meta, rest) = open(Bytes::from(frame));
        assert_eq!(&rest[..], b"data: x\nid: 00000001-1\n\n");
        assert!(meta.age() < Duration::from_secs(5));
    }

    #[test]
    fn reads_every_field() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let frame = format!(":@t=1700000000000000 x=later tp={parent}\ndata: x\n\n");
        let (meta, rest) = open(Bytes::from(frame));
        assert_eq!(&rest[..], b"data: x\n\n");
        assert_eq!(meta.published, Some(1_700_000_000_000_000));
        assert_eq!(meta.parent.map(|p| p.to_string()).as_deref(), Some(parent));
        // Years ago: not used for latency.
        assert_eq!(meta.age(), Duration::ZERO);
    }

    #[test]
    fn frames_without_an_envelope_pass_whole() {
        for frame in [&b": a comment\ndata: x\n\n"[..], b"data: x\n\n", b":@t=1"] {
            let (meta, rest) = open(Bytes::from_static(frame));
            assert_eq!(meta, Meta::default());
            assert_eq!(&rest[..], frame);
        }
        let (meta, rest) = open(Bytes::from_static(b":@t=junk tp=junk\ndata: x\n\n"));
        assert_eq!(meta, Meta::default());
        assert_eq!(&rest[..], b"data: x\n\n");
    }
}
