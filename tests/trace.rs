//! Trace context across instances: a publish on one instance and the deliveries it causes on
//! another belong to one OpenTelemetry trace, carried through a real `redis-server`.
#![cfg(all(feature = "redis", feature = "opentelemetry"))]

mod support;

use std::{
    future::Future,
    sync::{Arc, Mutex, OnceLock},
};

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use support::bus::{next_event, publish, text, wait_until, within};
use support::redis::RedisServer;
use tower_sse::{EventBus, EventId, RedisConfig};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Keeps every finished span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

/// The finished spans of this test binary, whose tests run at once (they tell their spans apart
/// by trace id).
fn spans() -> &'static Collect {
    static SPANS: OnceLock<Collect> = OnceLock::new();
    SPANS.get_or_init(|| {
        let collect = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collect.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only subscriber of this binary");
        collect
    })
}

fn finished(trace: TraceId, name: &str) -> Vec<SpanData> {
    spans()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.span_context.trace_id() == trace && s.name == name)
        .cloned()
        .collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Publishes on `a` inside a request span, receives on `b`, and checks that the delivery on `b`
/// is a child of the publish, in the request's trace. Returns the id published.
async fn publish_and_follow(a: &EventBus, b: &EventBus, topic: &str) -> EventId {
    spans();
    let mut sub = b.subscribe([topic], None).await.unwrap();
    let request = tracing::info_span!("request");
    let trace = request.context().span().span_context().trace_id();
    assert_ne!(
        trace,
        TraceId::INVALID,
        "the OpenTelemetry layer is installed"
    );

    let id = publish(a, topic, "traced").instrument(request).await;
    let event = next_event(&mut sub).await;
    assert_eq!(event.id(), id);
    assert_eq!(
        text(&event),
        format!("data: traced\nid: {id}\n\n"),
        "the envelope's line never reaches clients"
    );

    wait_until("the delivery span has ended", || {
        !finished(trace, "tower_sse.deliver").is_empty()
    })
    .await;
    let publishes = finished(trace, "tower_sse.publish");
    let [publish_span] = &publishes[..] else {
        panic!("one publish span in the trace: {publishes:?}");
    };
    assert_eq!(attribute(publish_span, "id"), Some(id.to_string()));
    assert_eq!(attribute(publish_span, "topic").as_deref(), Some(topic));

    let deliveries = finished(trace, "tower_sse.deliver");
    assert!(!deliveries.is_empty());
    for deliver in &deliveries {
        assert_eq!(
            deliver.parent_span_id,
            publish_span.span_context.span_id(),
            "the delivery is a child of the publish"
        );
        assert!(
            deliver.parent_span_is_remote,
            "its parent came through Redis"
        );
        assert_eq!(attribute(deliver, "id"), Some(id.to_string()));
        assert_eq!(attribute(deliver, "topic").as_deref(), Some(topic));
    }
    assert_ne!(publish_span.parent_span_id, SpanId::INVALID);
    id
}

#[tokio::test]
async fn pubsub_deliveries_join_the_trace_of_their_publish() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let connect = || EventBus::builder().redis_pubsub(RedisConfig::new(server.url()));
    let a = within("connecting", connect()).await.unwrap();
    let b = within("connecting", connect()).await.unwrap();
    publish_and_follow(&a, &b, "traced-pubsub").await;
}

#[tokio::test]
async fn streams_deliveries_join_the_trace_of_their_publish() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let connect = || EventBus::builder().redis_streams(RedisConfig::new(server.url()));
    let a = within("connecting", connect()).await.unwrap();
    let b = within("connecting", connect()).await.unwrap();
    let first = publish(&a, "traced-streams", "before").await;
    let id = publish_and_follow(&a, &b, "traced-streams").await;

    // Replayed from the stream on an instance that heard none of it: out of the envelope too.
    let c = within("connecting", connect()).await.unwrap();
    let resume = first.to_string();
    let mut sub = c
        .subscribe(["traced-streams"], Some(&resume))
        .await
        .unwrap();
    let event = next_event(&mut sub).await;
    assert_eq!(text(&event), format!("data: traced\nid: {id}\n\n"));
}
