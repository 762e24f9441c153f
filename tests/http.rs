//! The SSE layer over real HTTP on 127.0.0.1, with the in-process bus.

mod support;

use std::time::Duration;

use support::http::{request, serve, SseClient};
use tower_sse::{Event, EventBus, SseLayer};

fn status_json(frame: &support::http::Frame) -> serde_json::Value {
    assert!(frame.is_status(), "expected a status event, got {frame:?}");
    serde_json::from_str(frame.data()).unwrap()
}

#[tokio::test]
async fn events_arrive_in_order_with_ids() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let mut client = SseClient::connect(server.addr, "/events/orders", None).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.headers["content-type"], "text/event-stream");
    assert_eq!(client.headers["cache-control"], "no-cache");
    assert_eq!(client.headers["x-accel-buffering"], "no");

    let head = client.next_event().await.unwrap();
    assert_eq!(status_json(&head)["status"], "fresh");
    let retry = head.retry.expect("a retry field");
    assert!((3000..=5000).contains(&retry), "retry {retry}");

    let mut ids = Vec::new();
    for i in 0..100 {
        let event = Event::new(format!("event {i}"));
        ids.push(bus.publish("orders", event).await.unwrap().id());
    }
    for (i, id) in ids.iter().enumerate() {
        let frame = client.next_event().await.unwrap();
        assert_eq!(frame.data(), format!("event {i}"));
        assert_eq!(frame.id.as_deref(), Some(&*id.to_string()));
    }
    assert!(ids.windows(2).all(|w| w[0].sequence() < w[1].sequence()));
}

#[tokio::test]
async fn subscription_is_live_when_the_head_arrives() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    // Many rounds: a race between "head sent" and "subscribed" would show up.
    for round in 0..50 {
        let topic = format!("live{round}");
        let mut client = SseClient::connect(server.addr, &format!("/events/{topic}"), None).await;
        assert_eq!(client.status, 200);
        bus.publish(&topic, Event::new("first")).await.unwrap();
        assert!(client.next_event().await.unwrap().is_status());
        assert_eq!(client.next_event().await.unwrap().data(), "first");
    }
}

#[tokio::test]
async fn several_topics_on_one_stream() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=a&topic=b%3Ax", None).await;
    assert_eq!(client.status, 200);
    client.next_event().await.unwrap();
    bus.publish("a", Event::new("1")).await.unwrap();
    bus.publish("other", Event::new("not mine")).await.unwrap();
    bus.publish("b:x", Event::new("2").event("kind").unwrap())
        .await
        .unwrap();
    let first = client.next_event().await.unwrap();
    let second = client.next_event().await.unwrap();
    assert_eq!(first.data(), "1");
    assert_eq!(second.data(), "2");
    assert_eq!(second.event.as_deref(), Some("kind"));
}

/// Reads `n` events after the status event and returns the last id.
async fn read_events(client: &mut SseClient, n: usize) -> (Vec<String>, String) {
    let mut data = Vec::new();
    let mut last = String::new();
    for _ in 0..n {
        let frame = client.next_event().await.unwrap();
        data.push(frame.data().to_owned());
        last = frame.id.unwrap();
    }
    (data, last)
}

#[tokio::test]
async fn resume_single_topic_replays_exactly_the_missed_events() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let mut client = SseClient::connect(server.addr, "/events/t", None).await;
    client.next_event().await.unwrap();
    for i in 0..5 {
        bus.publish("t", Event::new(i.to_string())).await.unwrap();
    }
    let (_, last) = read_events(&mut client, 3).await;
    drop(client);
    for i in 5..8 {
        bus.publish("t", Event::new(i.to_string())).await.unwrap();
    }

    let mut client = SseClient::connect(server.addr, "/events/t", Some(&last)).await;
    let head = client.next_event().await.unwrap();
    let status = status_json(&head);
    assert_eq!(status["status"], "resumed");
    assert_eq!(status["replayed"], 5);
    let (data, _) = read_events(&mut client, 5).await;
    assert_eq!(data, ["3", "4", "5", "6", "7"]);
    // Then live, with nothing twice.
    bus.publish("t", Event::new("8")).await.unwrap();
    assert_eq!(client.next_event().await.unwrap().data(), "8");

    // The query parameter works too (for clients that cannot set headers).
    let path = format!("/events/t?last_event_id={last}");
    let mut client = SseClient::connect(server.addr, &path, None).await;
    assert_eq!(
        status_json(&client.next_event().await.unwrap())["replayed"],
        6
    );
}

#[tokio::test]
async fn resume_several_topics_from_one_id() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let path = "/events?topic=a&topic=b";
    let mut client = SseClient::connect(server.addr, path, None).await;
    client.next_event().await.unwrap();
    bus.publish("a", Event::new("a1")).await.unwrap();
    bus.publish("b", Event::new("b1")).await.unwrap();
    let (_, last) = read_events(&mut client, 2).await;
    drop(client);
    bus.publish("b", Event::new("b2")).await.unwrap();
    bus.publish("c", Event::new("c1")).await.unwrap();
    bus.publish("a", Event::new("a2")).await.unwrap();

    let mut client = SseClient::connect(server.addr, path, Some(&last)).await;
    assert_eq!(
        status_json(&client.next_event().await.unwrap())["status"],
        "resumed"
    );
    let (data, _) = read_events(&mut client, 2).await;
    assert_eq!(data, ["b2", "a2"]);
}

#[tokio::test]
async fn resume_points_that_cannot_be_honoured_are_signalled() {
    let bus = EventBus::builder().history_events(3).memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            bus.publish("t", Event::new(i.to_string()))
                .await
                .unwrap()
                .id(),
        );
    }
    let epoch = ids[0].to_string().split('-').next().unwrap().to_owned();
    let other_epoch = if epoch == "00000000" {
        "00000001"
    } else {
        "00000000"
    };

    let cases = [
        ("garbage".to_owned(), "invalid-id"),
        ("\u{7f}".to_owned(), "invalid-id"),
        (format!("{other_epoch}-3"), "unknown-epoch"),
        (format!("{epoch}-999"), "unknown-id"),
        (ids[2].to_string(), "history-expired"),
    ];
    for (id, reason) in cases {
        let path = format!("/events/t?last_event_id={}", urlencode(&id));
        let mut client = SseClient::connect(server.addr, &path, None).await;
        assert_eq!(client.status, 200, "{id:?}");
        let head = client.next_event().await.unwrap();
        let status = status_json(&head);
        assert_eq!(status["status"], "reset", "{id:?}");
        assert_eq!(status["reason"], reason, "{id:?}");
        // The status event carries the cursor to resume from: the current position.
        assert_eq!(head.id.as_deref(), Some(&*ids.last().unwrap().to_string()));
        ids.push(bus.publish("t", Event::new("live")).await.unwrap().id());
        assert_eq!(client.next_event().await.unwrap().data(), "live");
    }

    // Within the history: resumed.
    let recent = ids[ids.len() - 2].to_string();
    let mut client = SseClient::connect(server.addr, "/events/t", Some(&recent)).await;
    assert_eq!(
        status_json(&client.next_event().await.unwrap())["status"],
        "resumed"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_fresh_stream_can_resume_from_its_status_id() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    bus.publish("t", Event::new("before")).await.unwrap();
    let mut client = SseClient::connect(server.addr, "/events/t", None).await;
    let head = client.next_event().await.unwrap();
    drop(client);
    bus.publish("t", Event::new("in the gap")).await.unwrap();
    let mut client = SseClient::connect(server.addr, "/events/t", head.id.as_deref()).await;
    assert_eq!(
        status_json(&client.next_event().await.unwrap())["status"],
        "resumed"
    );
    assert_eq!(client.next_event().await.unwrap().data(), "in the gap");
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_others_get_everything() {
    let bus = EventBus::builder().queue_capacity(32).memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    // The slow client sends its request and then does not read.
    let mut slow = SseClient::connect(server.addr, "/events/t", None).await;
    let mut fast = SseClient::connect(server.addr, "/events/t", None).await;
    fast.next_event().await.unwrap();

    // 32 MiB in all: more than the slow client's socket buffers and its queue can hold. The
    // fast client reads as it goes.
    let payload = "x".repeat(16 * 1024);
    let total = 2_000;
    for i in 0..total {
        bus.publish("t", Event::new(format!("{i} {payload}")))
            .await
            .unwrap();
        if i % 8 == 7 {
            for j in i - 7..=i {
                let frame = fast.next_event().await.unwrap();
                assert!(frame.data().starts_with(&format!("{j} ")), "event {j}");
            }
        }
    }

    // The slow client got a contiguous prefix, then a comment saying why, then the end.
    assert!(slow.next_event().await.unwrap().is_status());
    let mut received = 0;
    let mut last_id = None;
    let end = loop {
        let frame = slow.next_frame().await.expect("the reason before the end");
        if frame.data.is_some() {
            assert!(frame.data().starts_with(&format!("{received} ")));
            received += 1;
            last_id = frame.id.clone();
        } else if !frame.comments.is_empty() && !frame.comments[0].is_empty() {
            break frame.comments[0].clone();
        }
    };
    assert!(received < total, "the slow client was never cut off");
    assert!(end.contains("fell too far behind"), "{end}");
    assert!(end.contains(&last_id.unwrap_or_default()), "{end}");
    assert!(slow.next_frame().await.is_none());
}

#[tokio::test]
async fn shutdown_ends_streams_and_refuses_new_ones() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let mut client = SseClient::connect(server.addr, "/events/t", None).await;
    client.next_event().await.unwrap();
    bus.publish("t", Event::new("1")).await.unwrap();
    assert_eq!(client.next_event().await.unwrap().data(), "1");

    bus.shutdown();
    let end = client.next_frame().await.unwrap();
    assert!(end.comments[0].contains("shutting down"), "{end:?}");
    assert!(client.next_frame().await.is_none());

    let (status, headers, body) = request(server.addr, "GET", "/events/t", "").await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("shutting down"), "{body}");
    assert!(!bus.health().is_healthy());
}

#[tokio::test]
async fn other_requests_pass_through_with_the_bus() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus).public().path("/stream/")).await;
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/events/t"),
        ("POST", "/stream/t"),
        ("GET", "/streams"),
        ("GET", "/stream/a/b"),
    ] {
        let (status, _, body) = request(server.addr, method, path, "").await;
        assert_eq!(status, 200, "{method} {path}");
        assert_eq!(body, format!("inner {method} {path}; bus: yes"));
    }
    let client = SseClient::connect(server.addr, "/stream/t", None).await;
    assert_eq!(client.headers["content-type"], "text/event-stream");
}

#[tokio::test]
async fn bad_requests_get_a_400_with_a_reason() {
    let bus = EventBus::builder().max_topics(3).memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let mut ok = SseClient::connect(server.addr, "/events/t", None).await;
    ok.next_event().await.unwrap();
    for (path, says) in [
        ("/events/a%20b", "invalid topic"),
        ("/events/a*", "'*'"),
        ("/events?topic=ok&topic=", "it is empty"),
        ("/events", "no topic given"),
        ("/events?topic=a&topic=b&topic=c&topic=d", "too many topics"),
        (&*format!("/events/{}", "x".repeat(300)), "300 characters"),
    ] {
        let (status, headers, body) = request(server.addr, "GET", path, "").await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert!(body.contains(says), "{path}: {body}");
    }
    // Other clients are not disturbed.
    bus.publish("t", Event::new("still here")).await.unwrap();
    assert_eq!(ok.next_event().await.unwrap().data(), "still here");
}

#[tokio::test]
async fn stream_limit_answers_503_with_retry_after() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public().max_streams(2)).await;
    let a = SseClient::connect(server.addr, "/events/t", None).await;
    let _b = SseClient::connect(server.addr, "/events/t", None).await;
    let (status, headers, body) = request(server.addr, "GET", "/events/t", "").await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("too many open event streams"), "{body}");
    // A closed stream frees its place.
    drop(a);
    let mut attempts = 0;
    loop {
        let c = SseClient::connect(server.addr, "/events/t", None).await;
        if c.status == 200 {
            break;
        }
        attempts += 1;
        assert!(attempts < 100, "the closed stream never freed its place");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn oversized_events_are_refused() {
    let bus = EventBus::builder().max_event_bytes(10).memory();
    let err = bus
        .publish("t", Event::new("01234567890"))
        .await
        .unwrap_err();
    assert!(err.is_too_large() && err.is_client_error());
    assert!(err.to_string().contains("limit of 10 bytes"), "{err}");
    bus.publish("t", Event::new("0123456789")).await.unwrap();
}
