//! Delivery under heavy and hostile load, over real sockets: a client reading as fast as it
//! can is never throttled, a client that stops reading costs bounded memory and is let go,
//! history is bounded across topics, and replays are budgeted.

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
    http::{request_with, SseClient},
    load::{connections_to, proc_status, stalled_client, Publisher, MIB},
};
use tower_sse::{Event, EventBus, SseLayer};

/// Reads `total` events numbered `0 ..` from `client`, checking their order; the count so far
/// goes to `received`.
async fn read_all(mut client: SseClient, total: usize, received: Arc<AtomicUsize>) -> SseClient {
    for i in 0..total {
        let frame = client.next_event().await.unwrap_or_else(|| {
            panic!("the stream ended after {i} of {total} events");
        });
        assert!(
            frame.data().starts_with(&format!("{i} ")),
            "event {i}: {:.40} {:?}",
            frame.data(),
            frame.comments
        );
        received.store(i + 1, Ordering::Release);
    }
    client
}

/// Event data of `len` bytes starting with `i `.
fn numbered(i: usize, len: usize) -> Bytes {
    let mut data = format!("{i} ");
    data.extend(std::iter::repeat_n('x', len - data.len()));
    Bytes::from(data)
}

/// 3 000 events of 8 KiB published at about 2 500 a second (20 MiB/s) while a client reads as
/// fast as it can: the write delay must not throttle the backlog that forms, or the reader
/// falls a queue behind and is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_as_fast_as_it_can_gets_every_event_of_a_burst() {
    const TOTAL: usize = 3_000;
    let bus = EventBus::memory();
    let server = support::http::serve(SseLayer::new(bus.clone()).public()).await;
    let mut reader = SseClient::connect(server.addr, "/events/big", None).await;
    assert!(reader.next_event().await.unwrap().is_status());
    let received = Arc::new(AtomicUsize::new(0));
    let reading = tokio::spawn(read_all(reader, TOTAL, received.clone()));

    let data = String::from_utf8(numbered(0, 8 * 1024).to_vec()).unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for batch in 0..TOTAL / 25 {
        tick.tick().await;
        for i in batch * 25..(batch + 1) * 25 {
            let data = format!("{i} {}", &data[2..]);
            bus.publish("big", Event::new(data)).await.unwrap();
        }
    }
    let mut reader = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("every event read in time")
        .unwrap();
    assert_eq!(received.load(Ordering::Acquire), TOTAL);
    // Still connected: the next event arrives too.
    bus.publish("big", Event::new(format!("{TOTAL} end")))
        .await
        .unwrap();
    let next = reader.next_event().await.expect("still connected");
    assert!(next.data().starts_with(&format!("{TOTAL} ")), "{next:?}");
}

/// One client stops reading (a 4 KiB receive buffer, never read) while another reads, and
/// 300 events of 1 MiB go to their topic. The reader gets all 300; the server holds at most the
/// stalled client's queue bound (8 MiB), the topic's history (4 MiB) and what is in flight, so
/// it grows far less than the 300 MiB it was sent; and the stalled connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_costs_bounded_memory_while_a_fast_one_gets_everything() {
    const TOTAL: usize = 300;
    const BOUND: u64 = 64 * MIB;
    let demo = Demo::start(&[]);
    let pid = demo.pid();
    let stalled = stalled_client(demo.addr, "/events/huge", 4096).await;
    let stalled_at = stalled.local_addr().unwrap();
    let started = std::time::Instant::now();
    while connections_to(pid, stalled_at) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut reader = SseClient::connect(demo.addr, "/events/huge", None).await;
    assert!(reader.next_event().await.unwrap().is_status());
    let received = Arc::new(AtomicUsize::new(0));
    let reading = tokio::spawn(read_all(reader, TOTAL, received.clone()));

    let mut publisher = Publisher::connect(demo.addr).await;
    assert_eq!(
        publisher
            .publish("warm-up", numbered(0, MIB as usize))
            .await,
        202
    );
    let before = proc_status(pid, "VmRSS:");
    for i in 0..TOTAL {
        // As fast as the reader takes them: a reader more than its queue's 8 MiB behind would
        // be cut off too (a machine busy with other work can starve it for a moment).
        while i - received.load(Ordering::Acquire) > 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            publisher.publish("huge", numbered(i, MIB as usize)).await,
            202
        );
    }
    tokio::time::timeout(Duration::from_secs(120), reading)
        .await
        .expect("every event read in time")
        .unwrap();
    let peak = proc_status(pid, "VmHWM:");
    eprintln!(
        "server memory: {} KiB before, peak {} KiB",
        before / 1024,
        peak / 1024
    );
    assert!(
        peak.saturating_sub(before) <= BOUND,
        "the server grew by {} KiB at its peak",
        peak.saturating_sub(before) / 1024
    );
    // The server closes the stalled connection (its write timeout, 30 s by default).
    while connections_to(pid, stalled_at) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stalled connection is still open after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("stalled connection closed after {:?}", started.elapsed());
    drop(stalled);
}

/// 200 events of 1 MiB to 200 topics nobody follows: history across topics is bounded
/// (64 MiB by default), however many topics there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_across_topics_is_bounded() {
    const BOUND: u64 = 128 * MIB;
    let demo = Demo::start(&[]);
    let pid = demo.pid();
    let mut publisher = Publisher::connect(demo.addr).await;
    assert_eq!(
        publisher
            .publish("warm-up", numbered(0, MIB as usize))
            .await,
        202
    );
    let published_id = |answer: String| answer.split('"').nth(3).unwrap().to_owned();
    let (_, _, answer) = support::http::request(demo.addr, "POST", "/publish/probe", "x").await;
    let probe = published_id(answer);
    let before = proc_status(pid, "VmRSS:");
    for i in 0..199 {
        let topic = format!("t{i}");
        assert_eq!(
            publisher.publish(&topic, numbered(i, MIB as usize)).await,
            202
        );
    }
    let data = String::from_utf8(numbered(199, MIB as usize).to_vec()).unwrap();
    let (_, _, answer) = support::http::request(demo.addr, "POST", "/publish/t199", &data).await;
    let last = published_id(answer);
    let after = proc_status(pid, "VmRSS:");
    let peak = proc_status(pid, "VmHWM:");
    eprintln!(
        "server memory: {} KiB before, {} KiB after, peak {} KiB",
        before / 1024,
        after / 1024,
        peak / 1024
    );
    assert!(
        peak.saturating_sub(before) <= BOUND,
        "the server grew by {} KiB at its peak",
        peak.saturating_sub(before) / 1024
    );
    // The oldest went first: the first topic cannot be resumed from before its event, the last
    // one can.
    let mut first = SseClient::connect(demo.addr, "/events/t0", Some(&probe)).await;
    let status = first.next_event().await.unwrap();
    assert_eq!(
        status.data(),
        r#"{"status":"reset","reason":"history-expired"}"#
    );
    let mut latest = SseClient::connect(demo.addr, "/events/t199", Some(&last)).await;
    let status = latest.next_event().await.unwrap();
    assert_eq!(status.data(), r#"{"status":"resumed","replayed":0}"#);
}

/// A resume point whose events left history for the bound across topics gets `reset` with
/// `history-expired`, never a silent `resumed`; one still covered resumes.
#[tokio::test]
async fn a_resume_point_evicted_across_topics_is_a_reset() {
    let bus = EventBus::builder().history_total_bytes(64 * 1024).memory();
    let server = support::http::serve(SseLayer::new(bus.clone()).public()).await;
    let before_a = bus.publish("warm-up", Event::new("x")).await.unwrap().id();
    bus.publish("a", Event::new("only event of a"))
        .await
        .unwrap();
    let before_b = bus.publish("b", Event::new("x")).await.unwrap().id();
    for _ in 0..16 {
        bus.publish("b", Event::new("y".repeat(8 * 1024)))
            .await
            .unwrap();
    }
    let resume = before_a.to_string();
    let mut client = SseClient::connect(server.addr, "/events/a", Some(&resume)).await;
    let status = client.next_event().await.unwrap();
    assert_eq!(
        status.data(),
        r#"{"status":"reset","reason":"history-expired"}"#
    );
    // b's newest events are still there.
    let last = bus.publish("b", Event::new("z")).await.unwrap().id();
    let mut resumed = SseClient::connect(server.addr, "/events/b", Some(&last.to_string())).await;
    let status = resumed.next_event().await.unwrap();
    assert_eq!(status.data(), r#"{"status":"resumed","replayed":0}"#);
    let _ = before_b;
}

/// Past the replay budget, a resume waits the replay wait and then gets `503` with
/// `Retry-After`; once the first replay has gone out, resumes go through again.
#[tokio::test]
async fn replays_past_the_budget_get_503() {
    let bus = EventBus::builder()
        .replay_budget(100, 64 << 20)
        .replay_wait(Duration::from_millis(200))
        .memory();
    let server = support::http::serve(SseLayer::new(bus.clone()).public()).await;
    let start = bus.publish("t", Event::new("start")).await.unwrap().id();
    for i in 0..200 {
        bus.publish("t", Event::new(format!("{i} {}", "x".repeat(16 * 1024))))
            .await
            .unwrap();
    }
    let resume = start.to_string();
    // 3 MiB to replay to a client that does not read: the replay stays under way.
    let path = format!("/events/t?last_event_id={resume}");
    let stalled = stalled_client(server.addr, &path, 4096).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, headers, body) = request_with(
        server.addr,
        "GET",
        "/events/t",
        &[("last-event-id", &resume)],
        "",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("replay"), "{body}");

    // Once that client is gone, its budget is back.
    drop(stalled);
    let mut again = None;
    for _ in 0..50 {
        let client = SseClient::connect(server.addr, "/events/t", Some(&resume)).await;
        if client.status == 200 {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = again.expect("a resume goes through once the budget is back");
    let status = again.next_event().await.unwrap();
    assert_eq!(status.data(), r#"{"status":"resumed","replayed":200}"#);
}

/// A client that stops reading while events keep coming is let go after the write timeout,
/// with what it held released, while a client that reads stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_let_go_after_the_write_timeout() {
    let bus = EventBus::memory();
    let layer = SseLayer::new(bus.clone())
        .public()
        .write_timeout(Duration::from_millis(500));
    let server = support::http::serve(layer).await;
    let _stalled = stalled_client(server.addr, "/events/t", 4096).await;
    let mut reader = SseClient::connect(server.addr, "/events/t", None).await;
    assert!(reader.next_event().await.unwrap().is_status());
    assert_eq!(bus.stats().subscriptions, 2);

    let data = "x".repeat(16 * 1024);
    let mut sent = 0;
    let started = std::time::Instant::now();
    while bus.stats().subscriptions == 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stalled client was never let go"
        );
        bus.publish("t", Event::new(format!("{sent} {data}")))
            .await
            .unwrap();
        sent += 1;
        let frame = reader.next_event().await.expect("the reader stays");
        assert!(frame.data().starts_with(&format!("{} ", sent - 1)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("let go after {:?} and {sent} events", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(500));
    // What remains held is the topic's history, not a queue for the stalled client.
    let stats = bus.stats();
    assert!(
        stats.held_bytes <= stats.history_bytes + 64 * 1024,
        "{stats:?}"
    );
    bus.publish("t", Event::new("after")).await.unwrap();
    assert_eq!(reader.next_event().await.unwrap().data(), "after");
}
