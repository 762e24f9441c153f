//! The envelope of an event in Redis, and the spans of its delivery.
//!
//! # The envelope's line
//!
//! `:@t=MICROS tp=TRACEPARENT\n`, in front of the frame: when the event was published
//! (microseconds since the Unix epoch, by the publisher's clock) and, with the feature
//! `opentelemetry`, the publisher's W3C trace context. It reads as a comment, and no frame this
//! crate encodes starts with `:@` (comments start with `: `), so a frame without the line is told
//! apart. Fields are `key=value`, separated by one space; unknown keys are skipped, so later
//! versions can add some. Clients never see the line: receivers split it off.
//!
//! # Spans
//!
//! Where an event reaches an instance through Redis, its delivery to that instance's
//! subscribers runs in a `tower_sse.deliver` span (level `debug`, fields `topic` and `id`, like
//! the publish's `tower_sse.publish` span), so logs of one event join on its id. With the
//! feature `opentelemetry`, the delivery span becomes a child of the publish span: one trace
//! shows the publish and its deliveries on every instance.
//!
//! The trace context is the W3C `traceparent` (version `00`), read and written with the
//! OpenTelemetry API's ids. OpenTelemetry's `TraceContextPropagator` is not used: it lives in
//! the SDK, which a library should not make its users depend on, and the global propagator
//! would carry nothing until every application installed one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::Span;

use crate::{bus::Topic, last_event_id::EventId};

/// How far a publish time may lie from this instance's clock and still be used to measure
/// latency (clocks of two machines differ; a time beyond this is taken as wrong).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What the envelope says about an event.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Meta {
    /// When it was published, in microseconds since the Unix epoch.
    published: Option<u64>,
    #[cfg(feature = "opentelemetry")]
    parent: Option<opentelemetry::trace::SpanContext>,
}

/// The envelope's line for an event published now, in the current span.
pub(super) fn seal() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    #[cfg(feature = "opentelemetry")]
    if let Some(parent) = otel::current() {
        return format!(":@t={micros} tp={}\n", otel::traceparent(&parent));
    }
    format!(":@t={micros}\n")
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
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(parent) = field.strip_prefix(b"tp=") {
            meta.parent = otel::parse(parent);
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
        let Some(published) = UNIX_EPOCH.checked_add(Duration::from_micros(micros)) else {
            return Duration::ZERO;
        };
        match SystemTime::now().duration_since(published) {
            Ok(ago) if ago <= MAX_CLOCK_SKEW => ago,
            _ => Duration::ZERO,
        }
    }

    /// The span of the event's delivery on this instance, a child of its publish.
    pub(super) fn deliver_span(&self, topic: &Topic, id: EventId) -> Span {
        let span = tracing::debug_span!("tower_sse.deliver", topic = %topic, id = %id);
        #[cfg(feature = "opentelemetry")]
        if let Some(parent) = &self.parent {
            if !span.is_disabled() {
                otel::adopt(&span, parent.clone());
            }
        }
        span
    }
}

/// The W3C trace context, through the OpenTelemetry API.
#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::{
        trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
        Context,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The context of the current span, when the OpenTelemetry layer tracks it.
    pub(super) fn current() -> Option<SpanContext> {
        let span = Span::current();
        if span.is_disabled() {
            return None;
        }
        let context = span.context().span().span_context().clone();
        context.is_valid().then_some(context)
    }

    /// `00-{trace id}-{span id}-{flags}`.
    pub(super) fn traceparent(context: &SpanContext) -> String {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    }

    /// Parses a `traceparent` of version `00`: lowercase hex, ids not all zero.
    pub(super) fn parse(raw: &[u8]) -> Option<SpanContext> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut parts = text.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, len| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let shaped = version == "00" && lower_hex(trace, 32) && lower_hex(span, 16);
        if parts.next().is_some() || !shaped || !lower_hex(flags, 2) {
            return None;
        }
        let context = SpanContext::new(
            TraceId::from_hex(trace).ok()?,
            SpanId::from_hex(span).ok()?,
            TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
            true,
            TraceState::default(),
        );
        context.is_valid().then_some(context)
    }

    /// Makes `span` a child of the remote context `parent`.
    pub(super) fn adopt(span: &Span, parent: SpanContext) {
        // Fails only without the OpenTelemetry layer, where there is nothing to link.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

        #[test]
        fn round_trip() {
            let parsed = parse(SAMPLE.as_bytes()).unwrap();
            assert_eq!(traceparent(&parsed), SAMPLE);
            assert!(parsed.is_sampled());
            assert!(parsed.is_remote());
        }

        #[test]
        fn refuses_what_is_not_a_traceparent() {
            let bad = [
                "",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ];
            for s in bad {
                assert_eq!(parse(s.as_bytes()), None, "{s:?}");
            }
        }
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
        #[cfg(feature = "opentelemetry")]
        assert_eq!(
            meta.parent.as_ref().map(otel::traceparent).as_deref(),
            Some(parent)
        );
        // Years ago: not used for latency.
        assert_eq!(meta.age(), Duration::ZERO);
    }

    #[test]
    fn publish_times_out_of_range_are_not_used() {
        let (meta, _) = open(Bytes::from_static(b":@t=18446744073709551615\ndata: x\n\n"));
        assert_eq!(meta.published, Some(u64::MAX));
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
