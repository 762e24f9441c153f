//! Keep-alive and the first frame, on the body itself with paused time.

use std::time::Duration;

use http_body_util::BodyExt;
use tower_sse::{Event, EventBus, EventStream};

async fn next_chunk(stream: &mut EventStream) -> String {
    let frame = stream.frame().await.unwrap().unwrap();
    String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comment_when_idle_and_not_before() {
    let bus = EventBus::memory();
    let sub = bus.subscribe(["t"], None).await.unwrap();
    let mut stream = EventStream::new(sub)
        .keep_alive(Some(Duration::from_secs(15)))
        .retry(Some(Duration::from_secs(3)), Duration::ZERO);
    let head = next_chunk(&mut stream).await;
    assert!(
        head.starts_with("retry: 3000\nevent: sse-status\n"),
        "{head}"
    );

    // Nothing within the interval...
    assert!(
        tokio::time::timeout(Duration::from_secs(14), stream.frame())
            .await
            .is_err()
    );
    // ...then a comment.
    assert_eq!(next_chunk(&mut stream).await, ":\n\n");

    // An event restarts the interval.
    tokio::time::sleep(Duration::from_secs(10)).await;
    bus.publish("t", Event::new("x")).await.unwrap();
    assert!(next_chunk(&mut stream).await.starts_with("data: x\n"));
    assert!(
        tokio::time::timeout(Duration::from_secs(14), stream.frame())
            .await
            .is_err()
    );
    assert_eq!(next_chunk(&mut stream).await, ":\n\n");
}

#[tokio::test(start_paused = true)]
async fn no_keep_alive_when_disabled() {
    let bus = EventBus::memory();
    let sub = bus.subscribe(["t"], None).await.unwrap();
    let mut stream = EventStream::new(sub)
        .keep_alive(None)
        .retry(None, Duration::ZERO);
    let head = next_chunk(&mut stream).await;
    assert!(head.starts_with("event: sse-status\n"), "{head}");
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), stream.frame())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn backlog_is_written_in_one_chunk() {
    let bus = EventBus::memory();
    let sub = bus.subscribe(["t"], None).await.unwrap();
    for i in 0..10 {
        bus.publish("t", Event::new(i.to_string())).await.unwrap();
    }
    let mut stream = EventStream::new(sub);
    let chunk = next_chunk(&mut stream).await;
    // The status event and all ten events arrive together.
    assert_eq!(chunk.matches("\n\n").count(), 11, "{chunk}");
}

#[tokio::test]
async fn retry_has_jitter() {
    let bus = EventBus::memory();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let sub = bus.subscribe(["t"], None).await.unwrap();
        let mut stream =
            EventStream::new(sub).retry(Some(Duration::from_secs(1)), Duration::from_secs(1));
        let head = next_chunk(&mut stream).await;
        let retry: u64 = head
            .strip_prefix("retry: ")
            .and_then(|r| r.split('\n').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!((1000..=2000).contains(&retry), "{retry}");
        seen.insert(retry);
    }
    assert!(seen.len() > 1, "every client got the same delay");
}
