//! The in-process bus through its public API.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::bus::next;
use tower_sse::{Event, EventBus, Message, ResetReason, ResumeStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_seen_in_id_order_across_topics() {
    let bus = EventBus::builder().queue_capacity(100_000).memory();
    let topics: [&'static str; 4] = ["a", "b", "c", "d"];
    let mut sub = bus.subscribe(topics, None).await.unwrap();
    let per_topic = 2_000;
    let publishers: Vec<_> = topics
        .iter()
        .map(|&topic| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..per_topic {
                    bus.publish(topic, Event::new(i.to_string())).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut last = 0;
    for _ in 0..per_topic * topics.len() {
        match next(&mut sub).await {
            Message::Event(e) => {
                assert!(e.id().sequence() > last, "{} after {last}", e.id());
                last = e.id().sequence();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sub.last_event_id().event_id().unwrap().sequence(), last);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_cut_off_and_holds_nothing() {
    let bus = EventBus::builder()
        .queue_capacity(16)
        .history_events(10)
        .memory();
    let mut idle = bus.subscribe(["t"], None).await.unwrap();
    let mut active = bus.subscribe(["t"], None).await.unwrap();
    for i in 0..10_000 {
        bus.publish("t", Event::new(format!("{i:>1000}")))
            .await
            .unwrap();
        if let Message::Event(_) = next(&mut active).await {
        } else {
            panic!("the active subscriber lost events");
        }
    }
    // When its queue overflowed, what it held was freed: all it gets is the notice. Its client
    // resumes from its last id.
    assert_eq!(next(&mut idle).await, Message::Lagged);
    assert!(idle.next().await.is_none());
    // History is bounded too.
    let stats = bus.stats();
    assert_eq!(stats.history_events, 10);
    assert!(stats.history_bytes < 20 * 1024, "{stats:?}");
}

#[tokio::test]
async fn resume_status_is_reported_on_the_subscription() {
    let bus = EventBus::memory();
    let first = bus.publish("t", Event::new("1")).await.unwrap().id();
    bus.publish("t", Event::new("2")).await.unwrap();
    let sub = bus
        .subscribe(["t"], Some(&first.to_string()))
        .await
        .unwrap();
    assert_eq!(sub.status(), ResumeStatus::Resumed { replayed: 1 });
    let sub = bus.subscribe(["t"], Some("nonsense")).await.unwrap();
    assert_eq!(sub.status(), ResumeStatus::Reset(ResetReason::InvalidId));
    let sub = bus.subscribe(["t"], None).await.unwrap();
    assert_eq!(sub.status(), ResumeStatus::Fresh);
}

#[tokio::test]
async fn history_expires_by_age() {
    let bus = EventBus::builder()
        .history_age(Duration::from_millis(50))
        .memory();
    let old = bus.publish("t", Event::new("old")).await.unwrap().id();
    bus.publish("t", Event::new("newer")).await.unwrap();
    // Age is wall-clock time here (history uses std's Instant); wait it out, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let sub = bus.subscribe(["t"], Some(&old.to_string())).await.unwrap();
        if sub.status() == ResumeStatus::Reset(ResetReason::HistoryExpired) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "history never expired"
        );
    }
}

#[tokio::test]
async fn topic_lists_are_validated() {
    let bus = EventBus::builder().max_topics(2).memory();
    let no_topics: [&str; 0] = [];
    assert!(bus
        .subscribe(no_topics, None)
        .await
        .unwrap_err()
        .is_bad_topic_list());
    assert!(bus
        .subscribe(["a", "b", "c"], None)
        .await
        .unwrap_err()
        .is_bad_topic_list());
    // Duplicates count once.
    let sub = bus.subscribe(["a", "a", "b"], None).await.unwrap();
    assert_eq!(sub.topics().len(), 2);
    let err = bus.subscribe(["ok", "not ok"], None).await.unwrap_err();
    assert!(err.is_invalid_topic() && err.is_client_error(), "{err}");
    assert_eq!(err.status_code(), 400);
}

#[tokio::test]
async fn every_event_says_its_topic_live_and_replayed() {
    let bus = EventBus::memory();
    let mut sub = bus.subscribe(["a", "b"], None).await.unwrap();
    let first = bus.publish("b", Event::new("1")).await.unwrap().id();
    bus.publish("a", Event::new("2")).await.unwrap();
    bus.publish("b", Event::new("3")).await.unwrap();
    let topic_of = |m: Message| match m {
        Message::Event(e) => format!("{}={}", e.topic(), e.data()),
        other => panic!("{other:?}"),
    };
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(topic_of(next(&mut sub).await));
    }
    assert_eq!(live, ["b=1", "a=2", "b=3"]);
    let mut resumed = bus
        .subscribe(["a", "b"], Some(&first.to_string()))
        .await
        .unwrap();
    let mut replayed = Vec::new();
    for _ in 0..2 {
        replayed.push(topic_of(next(&mut resumed).await));
    }
    assert_eq!(replayed, ["a=2", "b=3"]);
}
