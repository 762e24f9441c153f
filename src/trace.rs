//! The spans of publish and delivery, and the trace context that links them across instances.
//!
//! [`EventBus::publish`](crate::EventBus::publish) runs in a `tower_sse.publish` span. Where an
//! event reaches an instance through a broker, its delivery to that instance's subscribers runs
//! in a `tower_sse.deliver` span. Both have the topic and the event id as fields, so logs of one
//! event can be joined on the id. With the feature `opentelemetry`, the broker's copy of the
//! event also carries the W3C trace context of the publish span, and each delivery span becomes
//! its child: one trace shows the publish and its deliveries on every instance.

use std::fmt;

use tracing::Span;

use crate::{bus::Topic, last_event_id::EventId};

/// The span a delivery runs in, a child of the publish with the trace context `parent`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn deliver_span(topic: &Topic, id: EventId, parent: Option<TraceParent>) -> Span {
    let span = tracing::debug_span!("tower_sse.deliver", topic = %topic, id = %id);
    #[cfg(feature = "opentelemetry")]
    if let Some(parent) = parent {
        if !span.is_disabled() {
            parent.adopt(&span);
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = parent;
    span
}

/// A W3C trace context: a `traceparent` of version `00`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// The length of a `traceparent` of version `00`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) const TRACEPARENT_LEN: usize = 55;

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl TraceParent {
    /// Parses `00-{trace id: 32 hex}-{span id: 16 hex}-{flags: 2 hex}`, lowercase, with ids that
    /// are not all zero.
    pub(crate) fn parse(s: &[u8]) -> Option<Self> {
        if s.len() != TRACEPARENT_LEN || &s[..3] != b"00-" || s[35] != b'-' || s[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        let mut span_id = [0; 8];
        let mut flags = [0; 1];
        hex_decode(&s[3..35], &mut trace_id)?;
        hex_decode(&s[36..52], &mut span_id)?;
        hex_decode(&s[53..55], &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: flags[0],
        })
    }

    /// The context of the current span, when the OpenTelemetry layer tracks it.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let span = Span::current();
        if span.is_disabled() {
            return None;
        }
        let context = span.context();
        let otel = context.span();
        let context = otel.span_context();
        context.is_valid().then(|| Self {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
        })
    }

    /// Without the OpenTelemetry layer there is no context to carry.
    #[cfg(not(feature = "opentelemetry"))]
    pub(crate) fn current() -> Option<Self> {
        None
    }

    /// Makes `span` a child of this (remote) context.
    #[cfg(feature = "opentelemetry")]
    fn adopt(self, span: &Span) {
        use opentelemetry::{
            trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
            Context,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        // Fails only without the OpenTelemetry layer, where there is nothing to link.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Decodes lowercase hex digits into `out`, which must be half as long.
fn hex_decode(digits: &[u8], out: &mut [u8]) -> Option<()> {
    fn value(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        }
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trip() {
        let parsed = TraceParent::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(parsed.to_string(), SAMPLE);
        assert_eq!(parsed.flags, 1);
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
        ];
        for s in bad {
            assert_eq!(TraceParent::parse(s.as_bytes()), None, "{s:?}");
        }
    }
}
