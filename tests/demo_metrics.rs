//! The demo's `GET /metrics`: Prometheus text after a subscribe, a publish and a resume.

mod support;

use support::{
    demo::Demo,
    http::{request, SseClient},
};

/// The value of the sample `name` (with its labels, as written) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn the_demo_serves_prometheus_metrics() {
    let demo = Demo::start(&["--max-connections", "2"]);
    let mut client = SseClient::connect(demo.addr, "/events/m", None).await;
    assert_eq!(client.status, 200);
    assert!(client.next_event().await.unwrap().is_status());
    let (status, _, body) = request(demo.addr, "POST", "/publish/m", "hello").await;
    assert_eq!(status, 202, "{body}");
    let event = client.next_event().await.unwrap();
    assert_eq!(event.data(), "hello");
    // A resume, and a refusal past the limit of two streams.
    let resumed = SseClient::connect(demo.addr, "/events/m", event.id.as_deref()).await;
    assert_eq!(resumed.status, 200);
    let refused = SseClient::connect(demo.addr, "/events/m", None).await;
    assert_eq!(refused.status, 503);

    let (status, headers, text) = request(demo.addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{headers:?}"
    );
    for line in [
        "# TYPE sse_events_published_total counter",
        "# TYPE sse_events_delivered_total counter",
        "# TYPE sse_streams_open gauge",
        "# TYPE sse_resumes_total counter",
        "# HELP sse_events_published_total Events published through this instance.",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    let expect = [
        ("sse_events_published_total", 1.0),
        ("sse_events_delivered_total", 1.0),
        ("sse_streams_open", 2.0),
        (r#"sse_resumes_total{outcome="fresh"}"#, 1.0),
        (r#"sse_resumes_total{outcome="resumed"}"#, 1.0),
        (r#"sse_streams_refused_total{reason="limit"}"#, 1.0),
        ("sse_topics", 1.0),
        ("sse_subscriptions", 2.0),
        ("sse_history_events", 1.0),
        // One write carried a live event (replayed events have no arrival time).
        ("sse_delivery_latency_seconds_count", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }

    // Closed streams leave the gauge.
    drop(client);
    drop(resumed);
    let mut open = None;
    for _ in 0..200 {
        let (_, _, text) = request(demo.addr, "GET", "/metrics", "").await;
        open = sample(&text, "sse_streams_open");
        if open == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open, Some(0.0));
}
