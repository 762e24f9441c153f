//! The Redis Streams backend against real `redis-server` processes: durable resume on any
//! instance, delivery through broken connections, retention, idempotent publishing and a
//! resume storm. Mostly at the level of the `EventBus` API; one test over real HTTP.
#![cfg(feature = "redis")]

mod support;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::StreamExt;
use support::bus::{next, next_event, publish, text, wait_until, within};
use support::{
    http::{serve, SseClient},
    redis::RedisServer,
};
use tower_sse::{
    bus::redis::with_idempotency_key, Event, EventBus, EventId, GapReason, Message, RedisConfig,
    ResetReason, ResumeStatus, SseLayer, Subscription,
};

macro_rules! redis_or_skip {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::new(server.url())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .unsubscribe_delay(Duration::ZERO)
}

async fn connect_with(config: RedisConfig) -> EventBus {
    within("connecting", EventBus::builder().redis_streams(config))
        .await
        .expect("connect to the test redis-server")
}

async fn connect(server: &RedisServer) -> EventBus {
    connect_with(config(server)).await
}

/// Subscribes with `resume` and checks the status.
async fn resume(
    bus: &EventBus,
    topics: &[&str],
    resume: &EventId,
    status: ResumeStatus,
) -> Subscription {
    let cursor = resume.to_string();
    let sub = within("resuming", bus.subscribe(topics, Some(&cursor)))
        .await
        .expect("subscribe");
    assert_eq!(sub.status(), status, "resuming {topics:?} after {cursor}");
    sub
}

/// Reads `expected.len()` events and checks their ids and data.
async fn expect_events(sub: &mut Subscription, expected: &[(EventId, String)]) {
    for (id, data) in expected {
        let event = next_event(sub).await;
        assert_eq!(event.id(), *id);
        assert_eq!(text(&event), format!("data: {data}\nid: {id}\n\n"));
    }
}

fn xlen(server: &RedisServer, topic: &str) -> usize {
    let key = format!("tower-sse:s:{topic}");
    server.command(&["XLEN", &key]).parse().unwrap()
}

#[tokio::test]
async fn resume_on_another_instance() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    let b = connect(&server).await;

    let mut sub = a.subscribe(["orders"], None).await.unwrap();
    assert_eq!(sub.status(), ResumeStatus::Fresh);
    for i in 0..3 {
        let data = format!("seen {i}");
        let id = publish(&a, "orders", &data).await;
        expect_events(&mut sub, &[(id, data)]).await;
    }
    let last = sub
        .last_event_id()
        .event_id()
        .expect("one id orders every topic");
    drop(sub);

    // Published on the other instance while the client is away, among events of other topics.
    let mut missed = Vec::new();
    for i in 0..4 {
        publish(&b, "news", "unrelated").await;
        let data = format!("missed {i}");
        missed.push((publish(&b, "orders", &data).await, data));
    }

    // `b` never listened to the topic: the events come from Redis.
    let mut resumed = resume(
        &b,
        &["orders"],
        &last,
        ResumeStatus::Resumed { replayed: 4 },
    )
    .await;
    expect_events(&mut resumed, &missed).await;
    // Then live, from either instance.
    let live = publish(&a, "orders", "live").await;
    expect_events(&mut resumed, &[(live, "live".to_owned())]).await;

    // Resuming from the newest id misses nothing; unknown and invalid ids are resets.
    let sub = resume(
        &a,
        &["orders"],
        &live,
        ResumeStatus::Resumed { replayed: 0 },
    )
    .await;
    drop(sub);
    let ahead = format!("{:08x}-{}", live.epoch(), live.sequence() + 1_000)
        .parse()
        .unwrap();
    resume(
        &b,
        &["orders"],
        &ahead,
        ResumeStatus::Reset(ResetReason::UnknownId),
    )
    .await;
    let sub = b.subscribe(["orders"], Some("nonsense")).await.unwrap();
    assert_eq!(sub.status(), ResumeStatus::Reset(ResetReason::InvalidId));
}

#[tokio::test]
async fn resume_several_topics_on_another_instance() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    let b = connect(&server).await;

    let mut sub = a.subscribe(["orders", "news"], None).await.unwrap();
    let mut seen = Vec::new();
    for (topic, data) in [("orders", "o1"), ("news", "n1"), ("orders", "o2")] {
        seen.push((publish(&a, topic, data).await, data.to_owned()));
    }
    expect_events(&mut sub, &seen).await;
    let last = sub
        .last_event_id()
        .event_id()
        .expect("one id orders every topic");
    drop(sub);

    let mut missed = Vec::new();
    for (publisher, topic, data) in [
        (&b, "news", "n2"),
        (&a, "other", "x"),
        (&b, "orders", "o3"),
        (&a, "news", "n3"),
        (&b, "other", "y"),
        (&b, "orders", "o4"),
    ] {
        let id = publish(publisher, topic, data).await;
        if topic != "other" {
            missed.push((id, data.to_owned()));
        }
    }

    // One cursor resumes both topics, merged in id order.
    let mut resumed = resume(
        &b,
        &["news", "orders"],
        &last,
        ResumeStatus::Resumed { replayed: 4 },
    )
    .await;
    expect_events(&mut resumed, &missed).await;
    // Replayed from Redis, each event still says its topic.
    let mut again = resume(
        &b,
        &["news", "orders"],
        &last,
        ResumeStatus::Resumed { replayed: 4 },
    )
    .await;
    for (_, data) in &missed {
        let event = next_event(&mut again).await;
        let topic = if data.starts_with('n') {
            "news"
        } else {
            "orders"
        };
        assert_eq!(
            (event.topic().as_str(), event.data()),
            (topic, data.clone())
        );
    }

    // From the middle of the missed events.
    let mut again = resume(
        &b,
        &["orders", "news"],
        &missed[1].0,
        ResumeStatus::Resumed { replayed: 2 },
    )
    .await;
    expect_events(&mut again, &missed[2..]).await;
}

#[tokio::test]
async fn resume_over_http_on_another_instance() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let http_a = serve(SseLayer::new(a.clone()).public()).await;
    let http_b = serve(SseLayer::new(b.clone()).public()).await;

    let mut client = SseClient::connect(http_a.addr, "/events/orders", None).await;
    assert_eq!(client.status, 200);
    let status = client.next_event().await.expect("the status event");
    assert!(status.is_status(), "{status:?}");
    // The stream is live once its head arrived.
    let mut last = None;
    for data in ["one", "two"] {
        let id = publish(&b, "orders", data).await;
        let frame = client.next_event().await.expect("an event");
        assert_eq!(frame.data(), data);
        assert_eq!(frame.id.as_deref(), Some(id.to_string().as_str()));
        last = frame.id;
    }
    drop(client);

    let mut missed = Vec::new();
    for data in ["three", "four", "five"] {
        missed.push((publish(&a, "orders", data).await, data));
    }

    let last = last.unwrap();
    let mut client = SseClient::connect(http_b.addr, "/events/orders", Some(&last)).await;
    assert_eq!(client.status, 200);
    let status = client.next_event().await.expect("the status event");
    assert!(status.is_status(), "{status:?}");
    let body: serde_json::Value = serde_json::from_str(status.data()).unwrap();
    assert_eq!(body["status"], "resumed", "{body}");
    assert_eq!(body["replayed"], 3, "{body}");
    for (id, data) in &missed {
        let frame = client.next_event().await.expect("a missed event");
        assert_eq!(frame.data(), *data);
        assert_eq!(frame.id.as_deref(), Some(id.to_string().as_str()));
    }
    let live = publish(&a, "orders", "six").await;
    let frame = client.next_event().await.expect("a live event");
    assert_eq!(frame.id.as_deref(), Some(live.to_string().as_str()));
}

/// What one publisher task published: topic, id, data.
type Log = Vec<(&'static str, EventId, String)>;

/// Publishes `count` events alternately to `orders` and `news`, each until it is stored: a
/// failed publish is retried with the same idempotency key, so it is stored once.
async fn publish_burst(
    bus: EventBus,
    name: &'static str,
    count: usize,
    done: Arc<AtomicUsize>,
) -> Log {
    let mut log = Vec::new();
    for i in 0..count {
        let topic = if i % 2 == 0 { "orders" } else { "news" };
        let data = format!("{name}-{i}");
        let id = within("a publish to go through", async {
            loop {
                let publishing = bus.publish(topic, Event::new(data.clone()));
                match with_idempotency_key(data.clone(), publishing).await {
                    Ok(published) => break published.id(),
                    Err(e) => {
                        assert!(e.is_unavailable() || e.is_timeout(), "{e:?}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        })
        .await;
        log.push((topic, id, data));
        done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    log
}

/// Reads `expected` from `sub`, failing on anything else (a gap, a duplicate, a missing event).
async fn receive_exactly(sub: &mut Subscription, expected: &[(EventId, String)]) {
    let mut received = Vec::new();
    within("receiving every event", async {
        while received.len() < expected.len() {
            match sub.next().await.expect("the subscription goes on") {
                Message::Event(event) => received.push((event.id(), text(&event))),
                other => panic!("unexpected {other:?} after {} events", received.len()),
            }
        }
    })
    .await;
    for (i, ((id, frame), (expected_id, data))) in received.iter().zip(expected).enumerate() {
        assert_eq!(id, expected_id, "event {i} of {}", expected.len());
        assert_eq!(frame, &format!("data: {data}\nid: {id}\n\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_subscribers_miss_nothing_when_connections_are_killed() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let topic_sets: [&[&str]; 3] = [&["orders"], &["news"], &["news", "orders"]];
    let mut subs = Vec::new();
    for bus in [&a, &b] {
        for topics in topic_sets {
            subs.push((topics, bus.subscribe(topics, None).await.unwrap()));
        }
    }

    // An instance without subscriptions: its connection is a normal one, not a subscriber's.
    let c = connect(&server).await;

    const PER_PUBLISHER: usize = 250;
    let done = Arc::new(AtomicUsize::new(0));
    let publishers = [
        tokio::spawn(publish_burst(a.clone(), "a", PER_PUBLISHER, done.clone())),
        tokio::spawn(publish_burst(b.clone(), "b", PER_PUBLISHER, done.clone())),
        tokio::spawn(publish_burst(c.clone(), "c", PER_PUBLISHER, done.clone())),
    ];
    let mut killed = [0, 0];
    for (at, kind) in [(100, 0), (250, 1), (400, 0), (550, 1)] {
        wait_until("the burst goes on", || done.load(Ordering::Relaxed) >= at).await;
        let kind_name = ["pubsub", "normal"][kind];
        let n = server.command(&["CLIENT", "KILL", "TYPE", kind_name]);
        eprintln!("CLIENT KILL TYPE {kind_name} after {at} events: {n}");
        killed[kind] += n.parse::<usize>().unwrap();
    }
    assert!(killed[0] >= 2 && killed[1] >= 1, "{killed:?}");
    let mut log = Vec::new();
    for publisher in publishers {
        log.extend(within("the publishers finish", publisher).await.unwrap());
    }
    log.sort_by_key(|(_, id, _)| *id);
    let ids: HashSet<_> = log.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids.len(), 3 * PER_PUBLISHER, "every event has its own id");
    // Stored once each, retried or not.
    assert_eq!(
        xlen(&server, "orders") + xlen(&server, "news"),
        3 * PER_PUBLISHER
    );

    for (topics, sub) in &mut subs {
        let expected: Vec<(EventId, String)> = log
            .iter()
            .filter(|(topic, _, _)| topics.contains(topic))
            .map(|(_, id, data)| (*id, data.clone()))
            .collect();
        receive_exactly(sub, &expected).await;
    }
    wait_until("both instances are healthy", || {
        a.health().is_healthy() && b.health().is_healthy()
    })
    .await;
}

#[tokio::test]
async fn redis_restarted_empty_resets_old_ids() {
    let mut server = redis_or_skip!();
    let a = connect(&server).await;
    let mut sub = a.subscribe(["orders"], None).await.unwrap();
    let before = publish(&a, "orders", "before").await;
    assert_eq!(next_event(&mut sub).await.id(), before);

    server.restart();
    // The new server has no state: the reconnection starts a new epoch.
    assert_eq!(next(&mut sub).await, Message::Gap(GapReason::HistoryLost));
    wait_until("reconnected", || a.health().is_healthy()).await;

    let after = publish(&a, "orders", "after").await;
    assert_ne!(after.epoch(), before.epoch());
    assert_eq!(next_event(&mut sub).await.id(), after);

    resume(
        &a,
        &["orders"],
        &before,
        ResumeStatus::Reset(ResetReason::UnknownEpoch),
    )
    .await;
    let b = connect(&server).await;
    resume(
        &b,
        &["orders"],
        &before,
        ResumeStatus::Reset(ResetReason::UnknownEpoch),
    )
    .await;
    let mut sub = resume(
        &b,
        &["orders"],
        &after,
        ResumeStatus::Resumed { replayed: 0 },
    )
    .await;
    let later = publish(&a, "orders", "later").await;
    assert_eq!(next_event(&mut sub).await.id(), later);
}

#[tokio::test]
async fn publishing_while_redis_is_down_fails_at_once() {
    let mut server = redis_or_skip!();
    let bus = connect_with(
        config(&server).reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60)),
    )
    .await;
    publish(&bus, "orders", "before").await;
    server.kill();
    wait_until("the bus notices Redis is gone", || {
        !bus.health().is_healthy()
    })
    .await;
    let err = within("publishing", bus.publish("orders", Event::new("x")))
        .await
        .expect_err("Redis is down");
    assert!(err.is_unavailable(), "{err:?}");
}

#[tokio::test]
async fn history_beyond_retention_is_a_reset() {
    let server = redis_or_skip!();
    let a = connect_with(config(&server).stream_max_len(10)).await;
    let b = connect_with(config(&server).stream_max_len(10)).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push((
            publish(&a, "orders", &format!("e{i}")).await,
            format!("e{i}"),
        ));
    }
    publish(&a, "news", "n").await;
    let kept = xlen(&server, "orders");
    // Trimming is approximate: at least the limit, less than everything.
    assert!((10..300).contains(&kept), "{kept}");

    resume(
        &b,
        &["orders"],
        &ids[0].0,
        ResumeStatus::Reset(ResetReason::HistoryExpired),
    )
    .await;
    // One expired topic is enough to reset a stream of several.
    resume(
        &b,
        &["news", "orders"],
        &ids[0].0,
        ResumeStatus::Reset(ResetReason::HistoryExpired),
    )
    .await;
    // Within the retention, exactly what was missed.
    let mut sub = resume(
        &b,
        &["orders"],
        &ids[295].0,
        ResumeStatus::Resumed { replayed: 4 },
    )
    .await;
    expect_events(&mut sub, &ids[296..]).await;
}

#[tokio::test]
async fn idle_topics_expire() {
    let server = redis_or_skip!();
    let short = || {
        config(&server)
            .stream_max_age(Duration::from_millis(500))
            .stream_idle_ttl(Duration::from_millis(500))
    };
    let a = connect_with(short()).await;
    let seen = publish(&a, "orders", "seen").await;
    publish(&a, "orders", "missed").await;
    let ttl: i64 = server
        .command(&["PTTL", "tower-sse:s:orders"])
        .parse()
        .unwrap();
    assert!((1..=500).contains(&ttl), "{ttl}");

    wait_until("the idle topic's key expires", || {
        server.command(&["EXISTS", "tower-sse:s:orders"]) == "0"
    })
    .await;
    let recent = publish(&a, "news", "recent").await;

    // A fresh instance: the answers come from Redis.
    let b = connect_with(short()).await;
    // The event after `seen` went with its topic's key.
    resume(
        &b,
        &["orders"],
        &seen,
        ResumeStatus::Reset(ResetReason::HistoryExpired),
    )
    .await;
    // A cursor newer than everything that expired misses nothing, of a topic that expired or
    // one that never had events.
    resume(
        &b,
        &["quiet"],
        &recent,
        ResumeStatus::Resumed { replayed: 0 },
    )
    .await;
    let mut sub = resume(
        &b,
        &["orders"],
        &recent,
        ResumeStatus::Resumed { replayed: 0 },
    )
    .await;
    // The topic lives again.
    let new = publish(&a, "orders", "new").await;
    assert_eq!(next_event(&mut sub).await.id(), new);
}

#[tokio::test]
async fn a_publish_repeated_with_the_same_key_is_stored_once() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let mut sub = b.subscribe(["orders"], None).await.unwrap();

    let first = within(
        "publishing",
        with_idempotency_key("delivery-1", a.publish("orders", Event::new("paid"))),
    )
    .await
    .unwrap();
    // The same key again, even through another instance: the first publish's id, nothing new.
    for bus in [&a, &b] {
        let again = within(
            "publishing again",
            with_idempotency_key("delivery-1", bus.publish("orders", Event::new("paid"))),
        )
        .await
        .unwrap();
        assert_eq!(again.id(), first.id());
    }
    assert_eq!(xlen(&server, "orders"), 1);
    let other = publish(&a, "orders", "other").await;
    expect_events(
        &mut sub,
        &[(first.id(), "paid".to_owned()), (other, "other".to_owned())],
    )
    .await;
}

#[tokio::test]
async fn a_publish_that_timed_out_is_sent_again_and_stored_once() {
    let server = redis_or_skip!();
    let a = connect_with(config(&server).publish_timeout(Duration::from_millis(500))).await;
    let b = connect(&server).await;
    let mut sub = b.subscribe(["orders"], None).await.unwrap();

    server.pause();
    let publishing = tokio::spawn({
        let a = a.clone();
        async move { a.publish("orders", Event::new("once")).await }
    });
    // The first attempt times out; the second is on its way when Redis answers again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.resume();
    let result = within("the publish", publishing).await.unwrap();
    eprintln!("the publish returned {result:?}");

    let event = next_event(&mut sub).await;
    assert_eq!(text(&event), format!("data: once\nid: {}\n\n", event.id()));
    if let Ok(published) = &result {
        assert_eq!(published.id(), event.id());
    } else {
        assert!(result.unwrap_err().is_timeout());
    }
    let marker = publish(&a, "orders", "marker").await;
    assert_eq!(next_event(&mut sub).await.id(), marker, "no second copy");
    assert_eq!(xlen(&server, "orders"), 2);
}

/// Resumes `topics` after `cursor` on `bus`: true when the replay was exactly `expected`, false
/// when the bus refused as overloaded.
async fn resume_or_refuse(
    bus: &EventBus,
    topics: &[String],
    cursor: EventId,
    expected: &[(EventId, String)],
) -> bool {
    let resume_from = cursor.to_string();
    match within("resuming", bus.subscribe(topics, Some(&resume_from))).await {
        Ok(mut sub) => {
            assert_eq!(
                sub.status(),
                ResumeStatus::Resumed {
                    replayed: expected.len()
                }
            );
            receive_exactly(&mut sub, expected).await;
            true
        }
        Err(e) => {
            assert!(e.is_overloaded(), "{e:?}");
            assert_eq!(e.status_code(), 503);
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_storm_is_bounded_and_live_delivery_goes_on() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    // A budget of about one read at a time, and no waiting for it.
    let b = connect_with(
        config(&server)
            .replay_budget(300)
            .replay_wait(Duration::ZERO),
    )
    .await;

    const TOPICS: usize = 20;
    let mut all = Vec::new();
    for round in 0..20 {
        for t in 0..TOPICS {
            let topic = format!("t{t}");
            let data = format!("{topic}-{round}");
            all.push((publish(&a, &topic, &data).await, topic, data));
        }
    }
    let all = Arc::new(all);

    let mut live = b.subscribe(["live"], None).await.unwrap();
    let live_publisher = tokio::spawn({
        let a = a.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                ids.push((
                    publish(&a, "live", &format!("live {i}")).await,
                    format!("live {i}"),
                ));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        }
    });
    let live_reader = tokio::spawn(async move {
        let mut received = Vec::new();
        while received.len() < 40 {
            match next(&mut live).await {
                Message::Event(event) => received.push((event.id(), text(&event))),
                other => panic!("unexpected {other:?}"),
            }
        }
        received
    });

    let storm: Vec<_> = (0..1_000)
        .map(|i| {
            let b = b.clone();
            let all = all.clone();
            tokio::spawn(async move {
                let mut topics = vec![format!("t{}", i % TOPICS)];
                if i % 3 == 0 {
                    topics.push(format!("t{}", (i + 7) % TOPICS));
                }
                let cursor = all[(i * 7) % (all.len() - 1)].0;
                let expected: Vec<(EventId, String)> = all
                    .iter()
                    .filter(|(id, topic, _)| *id > cursor && topics.contains(topic))
                    .map(|(id, _, data)| (*id, data.clone()))
                    .collect();
                let resumed = resume_or_refuse(&b, &topics, cursor, &expected).await;
                (!resumed).then_some((topics, cursor, expected))
            })
        })
        .collect();
    let mut refused = Vec::new();
    for task in storm {
        refused.extend(within("a resume", task).await.unwrap());
    }
    eprintln!(
        "{} resumed, {} refused as overloaded",
        1_000 - refused.len(),
        refused.len()
    );
    assert!(!refused.is_empty(), "the budget never refused a resume");
    // Clients try again later (reads of the storm may still be finishing), and then get
    // exactly what they missed.
    for (topics, cursor, expected) in refused {
        within("a resume tried again", async {
            while !resume_or_refuse(&b, &topics, cursor, &expected).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    let published = within("the live publisher", live_publisher).await.unwrap();
    let received = within("the live reader", live_reader).await.unwrap();
    let expected: Vec<_> = published
        .iter()
        .map(|(id, data)| (*id, format!("data: {data}\nid: {id}\n\n")))
        .collect();
    assert_eq!(received, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_storm_waits_for_the_budget() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    // The same small budget, but resumes may wait for it: they queue instead of failing, and
    // those of a topic share the read that waits.
    let b = connect_with(
        config(&server)
            .replay_budget(300)
            .replay_wait(Duration::from_secs(5)),
    )
    .await;
    const TOPICS: usize = 20;
    let mut all = Vec::new();
    for round in 0..10 {
        for t in 0..TOPICS {
            let topic = format!("t{t}");
            let data = format!("{topic}-{round}");
            all.push((publish(&a, &topic, &data).await, topic, data));
        }
    }
    let all = Arc::new(all);
    let storm: Vec<_> = (0..1_000)
        .map(|i| {
            let b = b.clone();
            let all = all.clone();
            tokio::spawn(async move {
                let topics = vec![format!("t{}", i % TOPICS), format!("t{}", (i + 3) % TOPICS)];
                let cursor = all[(i * 11) % (all.len() - 1)].0;
                let expected: Vec<(EventId, String)> = all
                    .iter()
                    .filter(|(id, topic, _)| *id > cursor && topics.contains(topic))
                    .map(|(id, _, data)| (*id, data.clone()))
                    .collect();
                resume_or_refuse(&b, &topics, cursor, &expected).await
            })
        })
        .collect();
    for task in storm {
        assert!(within("a resume", task).await.unwrap(), "refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_of_a_topic_share_reads() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    // Room for about one read at a time, and no waiting: only shared reads let them all
    // through.
    let b = connect_with(
        config(&server)
            .replay_budget(300)
            .replay_wait(Duration::ZERO),
    )
    .await;
    let mut events = Vec::new();
    for i in 0..50 {
        let data = format!("e{i}");
        events.push((publish(&a, "orders", &data).await, data));
    }
    let cursor = events[9].0;
    let events = Arc::new(events);
    let resumes: Vec<_> = (0..200)
        .map(|_| {
            let b = b.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let mut sub = resume(
                    &b,
                    &["orders"],
                    &cursor,
                    ResumeStatus::Resumed { replayed: 40 },
                )
                .await;
                expect_events(&mut sub, &events[10..]).await;
            })
        })
        .collect();
    for resume in resumes {
        within("a resume", resume).await.unwrap();
    }
}

#[tokio::test]
async fn a_missed_notification_is_read_from_the_stream() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let mut orders = b.subscribe(["orders"], None).await.unwrap();
    let mut both = b.subscribe(["orders", "news"], None).await.unwrap();

    let first = publish(&a, "orders", "first").await;
    for sub in [&mut orders, &mut both] {
        expect_events(sub, &[(first, "first".to_owned())]).await;
    }

    // An event stored without its notification, as if the message had been lost.
    let sneak = |data: &str, prev: EventId| {
        let seq = server.command(&["HINCRBY", "tower-sse:state", "seq", "1"]);
        let id: EventId = format!("{:08x}-{seq}", prev.epoch()).parse().unwrap();
        let frame = format!("data: {data}\nid: {id}\n\n");
        let entry = format!("{seq}-0");
        let prev = prev.sequence().to_string();
        let added = server.command(&[
            "XADD",
            "tower-sse:s:orders",
            &entry,
            "f",
            &frame,
            "p",
            &prev,
        ]);
        assert_eq!(added, entry);
        id
    };
    let unheard = sneak("unheard", first);
    // The next event names it as its topic's previous one: it is read before going on.
    let next_one = publish(&a, "orders", "next").await;
    for sub in [&mut orders, &mut both] {
        expect_events(
            sub,
            &[
                (unheard, "unheard".to_owned()),
                (next_one, "next".to_owned()),
            ],
        )
        .await;
    }

    // When an event of another topic numbered after the missing one was delivered already,
    // the missing one cannot be delivered in order: a gap says so instead.
    let late = sneak("late", next_one);
    let news = publish(&a, "news", "news").await;
    expect_events(&mut both, &[(news, "news".to_owned())]).await;
    let last = publish(&a, "orders", "last").await;
    assert!(late < news);
    assert_eq!(
        next(&mut both).await,
        Message::Gap(GapReason::BrokerDisconnected)
    );
    expect_events(&mut both, &[(last, "last".to_owned())]).await;
    assert_eq!(
        next(&mut orders).await,
        Message::Gap(GapReason::BrokerDisconnected)
    );
    expect_events(&mut orders, &[(last, "last".to_owned())]).await;
}

/// Counts the warnings that the notification backlog overflowed.
struct BacklogWarnings(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BacklogWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().fields().field("backlog").is_some() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test]
async fn notifications_past_the_backlog_are_read_from_the_streams() {
    use tracing_subscriber::layer::SubscriberExt;

    let server = redis_or_skip!();
    // A single-threaded runtime runs every task on this thread, which this subscriber watches.
    let overflows = Arc::new(AtomicUsize::new(0));
    let _watch = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(BacklogWarnings(overflows.clone())),
    );
    let a = connect(&server).await;
    let b = connect_with(config(&server).notification_backlog(1)).await;
    let mut orders = b.subscribe(["orders"], None).await.unwrap();
    let mut both = b.subscribe(["orders", "news"], None).await.unwrap();

    // A burst: the notifications reach b's connection together, far more than one at a time.
    let publishes = (0..200).map(|i| {
        let topic = if i % 3 == 0 { "news" } else { "orders" };
        let data = format!("burst {i}");
        let a = a.clone();
        async move { (publish(&a, topic, &data).await, topic, data) }
    });
    let mut published = futures_util::future::join_all(publishes).await;
    published.sort();
    let expected = |only: Option<&str>| -> Vec<(EventId, String)> {
        published
            .iter()
            .filter(|(_, topic, _)| only.is_none_or(|t| t == *topic))
            .map(|(id, _, data)| (*id, data.clone()))
            .collect()
    };
    receive_exactly(&mut both, &expected(None)).await;
    receive_exactly(&mut orders, &expected(Some("orders"))).await;
    assert!(
        overflows.load(Ordering::Relaxed) > 0,
        "the backlog of one overflowed"
    );
}

#[tokio::test]
async fn losing_the_state_hash_starts_a_new_epoch() {
    let server = redis_or_skip!();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let mut sub = a.subscribe(["orders", "news"], None).await.unwrap();
    let o1 = publish(&a, "orders", "o1").await;
    let n1 = publish(&a, "news", "n1").await;
    expect_events(&mut sub, &[(o1, "o1".to_owned()), (n1, "n1".to_owned())]).await;

    // The counter goes; the streams stay behind.
    assert_eq!(server.command(&["DEL", "tower-sse:state"]), "1");
    let o2 = publish(&a, "orders", "o2").await;
    assert_ne!(o2.epoch(), o1.epoch());
    // (One gap per topic of the subscription.)
    let mut gaps = 0;
    let event = loop {
        match next(&mut sub).await {
            Message::Gap(GapReason::HistoryLost) => gaps += 1,
            Message::Event(event) => break event,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(gaps >= 1);
    assert_eq!(event.id(), o2);

    resume(
        &b,
        &["orders", "news"],
        &n1,
        ResumeStatus::Reset(ResetReason::UnknownEpoch),
    )
    .await;
    // What is left of the old epoch is not part of the new history.
    let mut resumed = resume(
        &b,
        &["orders", "news"],
        &o2,
        ResumeStatus::Resumed { replayed: 0 },
    )
    .await;
    let n2 = publish(&a, "news", "n2").await;
    assert_eq!(n2.sequence(), o2.sequence() + 1);
    for sub in [&mut sub, &mut resumed] {
        expect_events(sub, &[(n2, "n2".to_owned())]).await;
    }
    resume(
        &b,
        &["orders", "news"],
        &o2,
        ResumeStatus::Resumed { replayed: 1 },
    )
    .await;
}

#[tokio::test]
async fn publishes_wait_for_replicas_when_asked() {
    let server = redis_or_skip!();
    // The server has no replica: asking for one, a publish is stored but not confirmed.
    let bus = connect_with(config(&server).wait_for_replicas(1, Duration::from_millis(100))).await;
    let error = within("publishing", bus.publish("replicated", Event::new("x")))
        .await
        .expect_err("no replica confirms");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(xlen(&server, "replicated"), 1);
    // Asking for none waits for nothing.
    let bus = connect_with(config(&server).wait_for_replicas(0, Duration::from_millis(100))).await;
    publish(&bus, "replicated", "y").await;
}
