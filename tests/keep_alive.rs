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
    // ...then a comment, within two intervals (the bus's tick comes round about once per
    // interval, at a random point of it).
    let comment = tokio::time::timeout(Duration::from_secs(31), next_chunk(&mut stream));
    assert_eq!(comment.await.expect("a keep-alive comment"), ":\n\n");

    // An event restarts the interval.
    tokio::time::sleep(Duration::from_secs(10)).await;
    bus.publish("t", Event::new("x")).await.unwrap();
    assert!(next_chunk(&mut stream).await.starts_with("data: x\n"));
    assert!(
        tokio::time::timeout(Duration::from_secs(14), stream.frame())
            .await
            .is_err()
    );
    let comment = tokio::time::timeout(Duration::from_secs(31), next_chunk(&mut stream));
    assert_eq!(comment.await.expect("a keep-alive comment"), ":\n\n");
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

/// A waker that records that it was woken.
#[derive(Default)]
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Keep-alives of many streams come from the bus's one tick: each idle stream, polled only when
/// woken (as a server does), gets one comment per interval, the streams spread over it.
#[tokio::test(start_paused = true)]
async fn many_idle_streams_each_get_one_comment_per_interval() {
    use std::{pin::Pin, sync::atomic::Ordering, sync::Arc, task::Context};

    use http_body::Body;

    let bus = EventBus::memory();
    let mut streams = Vec::new();
    for _ in 0..200 {
        let sub = bus.subscribe(["t"], None).await.unwrap();
        let stream = EventStream::new(sub).keep_alive(Some(Duration::from_secs(15)));
        streams.push((stream, Arc::new(Flag::default())));
    }
    let mut counts = vec![0; streams.len()];
    let mut first_second = std::collections::HashSet::new();
    for second in 0..150 {
        for (i, (stream, flag)) in streams.iter_mut().enumerate() {
            // The first poll starts the stream; later ones only when woken.
            if second > 0 && !flag.0.swap(false, Ordering::SeqCst) {
                continue;
            }
            let waker = std::task::Waker::from(flag.clone());
            let mut cx = Context::from_waker(&waker);
            while let std::task::Poll::Ready(Some(frame)) =
                Pin::new(&mut *stream).poll_frame(&mut cx)
            {
                let data = frame.unwrap().into_data().unwrap();
                if second > 0 {
                    assert_eq!(data, ":\n\n");
                    if counts[i] == 0 {
                        first_second.insert(second);
                    }
                    counts[i] += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // 150 s of a 15 s interval: about nine each, depending on where its round started.
    assert!(counts.iter().all(|&n| (8..=10).contains(&n)), "{counts:?}");
    // Not in lockstep.
    assert!(first_second.len() > 5, "{first_second:?}");
}
