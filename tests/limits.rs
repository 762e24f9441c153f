//! Limits over real HTTP on 127.0.0.1: the open-stream limit, the demo's limit options, and
//! a client that stops reading while a lot is published.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use support::{
    demo::Demo,
    http::{request, SseClient},
    load::{proc_status, Publisher, MIB},
};
use tower_sse::{Event, EventBus, SseLayer};

#[tokio::test]
async fn past_the_limit_streams_get_503_and_the_first_ones_keep_working() {
    let bus = EventBus::memory();
    let server = support::http::serve(SseLayer::new(bus.clone()).public().max_streams(50)).await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let client = SseClient::connect(server.addr, "/events/t", None).await;
        match client.status.as_u16() {
            200 => open.push(client),
            503 => {
                let retry = client.headers["retry-after"].to_str().unwrap();
                assert!(retry.parse::<u64>().is_ok_and(|s| s > 0), "{retry}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((open.len(), refused), (50, 10));
    for client in &mut open {
        assert!(client.next_event().await.unwrap().is_status());
    }
    let published = bus.publish("t", Event::new("to all 50")).await.unwrap();
    for client in &mut open {
        let event = client.next_event().await.unwrap();
        assert_eq!(event.data(), "to all 50");
        assert_eq!(event.id, Some(published.id().to_string()));
    }
}

#[tokio::test]
async fn the_demo_limits_connections_and_event_size() {
    let demo = Demo::start(&["--max-connections", "2", "--max-event-bytes", "100"]);
    let mut a = SseClient::connect(demo.addr, "/events/t", None).await;
    let _b = SseClient::connect(demo.addr, "/events/t", None).await;
    let (status, headers, body) = request(demo.addr, "GET", "/events/t", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));

    let (status, _, body) = request(demo.addr, "POST", "/publish/t", &"x".repeat(101)).await;
    assert_eq!(status, 413, "{body}");
    let (status, _, body) = request(demo.addr, "POST", "/publish/t", &"x".repeat(100)).await;
    assert_eq!(status, 202, "{body}");
    a.next_event().await.unwrap();
    assert_eq!(a.next_event().await.unwrap().data(), "x".repeat(100));
}

/// 24 MiB go to a topic with two subscribers, one of which never reads. What the server may
/// hold for the stalled one is bounded by its queue (1 024 events by default) and the topic's
/// history (1 000 events or 4 MiB), which share their frames: with 2 KiB events about 4 MiB.
/// Buffering everything it was sent would take more than 20 MiB, even after the kernel's
/// socket buffers took their share. The bound of 12 MiB lies between, with room for the
/// allocator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_leaves_memory_bounded_and_the_other_gets_everything() {
    const EVENT: usize = 2048;
    const TOTAL: usize = 12 * 1024;
    const BOUND: u64 = 12 * MIB;

    let demo = Demo::start(&[]);
    let pid = demo.pid();
    let mut stalled = SseClient::connect(demo.addr, "/events/big", None).await;
    let mut reader = SseClient::connect(demo.addr, "/events/big", None).await;
    assert_eq!(
        (stalled.status.as_u16(), reader.status.as_u16()),
        (200, 200)
    );
    reader.next_event().await.unwrap();

    let received = Arc::new(AtomicUsize::new(0));
    let reading = tokio::spawn({
        let received = received.clone();
        async move {
            for i in 0..TOTAL {
                let frame = reader.next_event().await.expect("every event");
                let data = frame.data();
                assert!(
                    data.starts_with(&format!("{i} ")),
                    "event {i}: {:.20}",
                    data
                );
                assert_eq!(data.len(), EVENT, "event {i}");
                received.store(i + 1, Ordering::Release);
            }
        }
    });

    let mut publisher = Publisher::connect(demo.addr).await;
    // A first event, so what a first publish allocates once is in the baseline.
    assert_eq!(publisher.publish("warm-up", Bytes::from("x")).await, 202);
    let before = proc_status(pid, "VmRSS:");

    let work = async {
        for i in 0..TOTAL {
            // The reader must not fall a queue behind: it would be cut off too.
            while i - received.load(Ordering::Acquire) > 256 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut data = format!("{i} ");
            data.extend(std::iter::repeat_n('x', EVENT - data.len()));
            assert_eq!(publisher.publish("big", Bytes::from(data)).await, 202);
        }
        reading.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(240), work)
        .await
        .expect("24 MiB published and read in time");

    let peak = proc_status(pid, "VmHWM:");
    let after = proc_status(pid, "VmRSS:");
    eprintln!(
        "server memory: {} KiB before, {} KiB after, peak {} KiB",
        before / 1024,
        after / 1024,
        peak / 1024
    );
    assert!(
        peak.saturating_sub(before) < BOUND,
        "the server grew by {} KiB at its peak while a client stalled",
        peak.saturating_sub(before) / 1024
    );

    // The stalled client got a contiguous prefix, then the reason it was cut off.
    assert!(stalled.next_event().await.unwrap().is_status());
    let mut got = 0;
    let end = loop {
        let frame = stalled
            .next_frame()
            .await
            .expect("the reason before the end");
        if frame.data.is_some() {
            assert!(frame.data().starts_with(&format!("{got} ")));
            got += 1;
        } else if let Some(comment) = frame.comments.iter().find(|c| !c.is_empty()) {
            break comment.clone();
        }
    };
    assert!(got < TOTAL, "the stalled client was never cut off");
    assert!(end.contains("fell too far behind"), "{end}");
}
