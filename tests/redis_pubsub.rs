//! The Redis Pub/Sub backend against a real `redis-server`, at the level of the `EventBus` API.
#![cfg(feature = "redis")]

mod support;

use std::{net::TcpListener, time::Duration};

use futures_util::StreamExt;
use support::bus::{next, next_event, publish, text, wait_until, within};
use support::redis::RedisServer;
use tower_sse::{
    Event, EventBus, EventId, GapReason, Message, RedisConfig, ResetReason, ResumeStatus,
    SubscribeMode, Subscription,
};

macro_rules! redis_or_skip {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

fn config(server: &RedisServer, mode: SubscribeMode) -> RedisConfig {
    RedisConfig::new(server.url())
        .mode(mode)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .unsubscribe_delay(Duration::ZERO)
}

async fn connect(server: &RedisServer, mode: SubscribeMode) -> EventBus {
    EventBus::builder()
        .redis_pubsub(config(server, mode))
        .await
        .expect("connect to the test redis-server")
}

fn event_id(message: &Message) -> EventId {
    match message {
        Message::Event(event) => event.id(),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn two_instances_see_the_same_events(mode: SubscribeMode) {
    let server = redis_or_skip!();
    let a = connect(&server, mode).await;
    let b = connect(&server, mode).await;
    let mut sub_a = a.subscribe(["orders"], None).await.unwrap();
    let mut sub_b = b.subscribe(["orders"], None).await.unwrap();

    let mut ids = Vec::new();
    for i in 0..10 {
        let publisher = if i % 2 == 0 { &a } else { &b };
        ids.push(publish(publisher, "orders", &format!("order {i}")).await);
        // Another topic in between, which neither subscription follows.
        publish(publisher, "news", "unrelated").await;
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids.iter().all(|id| id.epoch() == ids[0].epoch()));

    for sub in [&mut sub_a, &mut sub_b] {
        for (i, id) in ids.iter().enumerate() {
            let event = next_event(sub).await;
            assert_eq!(event.id(), *id);
            assert_eq!(text(&event), format!("data: order {i}\nid: {id}\n\n"));
        }
    }
}

#[tokio::test]
async fn two_instances_see_the_same_events_interest() {
    two_instances_see_the_same_events(SubscribeMode::Interest).await;
}

#[tokio::test]
async fn two_instances_see_the_same_events_pattern() {
    two_instances_see_the_same_events(SubscribeMode::Pattern).await;
}

async fn multi_topic_subscription(mode: SubscribeMode) {
    let server = redis_or_skip!();
    let a = connect(&server, mode).await;
    let b = connect(&server, mode).await;
    let mut sub = b.subscribe(["orders", "news"], None).await.unwrap();

    let mut ids = Vec::new();
    for (publisher, topic) in [(&a, "orders"), (&a, "news"), (&b, "orders"), (&a, "news")] {
        ids.push(publish(publisher, topic, topic).await);
    }
    for id in &ids {
        assert_eq!(next_event(&mut sub).await.id(), *id);
    }

    // The id of the first event resumes both topics.
    let first = ids[0].to_string();
    let mut resumed = b.subscribe(["news", "orders"], Some(&first)).await.unwrap();
    assert_eq!(resumed.status(), ResumeStatus::Resumed { replayed: 3 });
    for id in &ids[1..] {
        assert_eq!(next_event(&mut resumed).await.id(), *id);
    }
}

#[tokio::test]
async fn multi_topic_subscription_interest() {
    multi_topic_subscription(SubscribeMode::Interest).await;
}

#[tokio::test]
async fn multi_topic_subscription_pattern() {
    multi_topic_subscription(SubscribeMode::Pattern).await;
}

/// Publishes from `publisher` until `sub` receives an event again, and returns the messages it
/// received until then.
async fn publish_until_heard(publisher: &EventBus, sub: &mut Subscription) -> Vec<Message> {
    let publisher = publisher.clone();
    let pinger = tokio::spawn(async move {
        loop {
            // Local-only or failed while the publisher reconnects itself: try again.
            let _ = publisher.publish("orders", Event::new("ping")).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut seen = Vec::new();
    within("an event after the outage", async {
        loop {
            let message = sub.next().await.expect("the subscription goes on");
            let is_event = matches!(message, Message::Event(_));
            seen.push(message);
            if is_event {
                break;
            }
        }
    })
    .await;
    pinger.abort();
    seen
}

async fn subscriptions_survive_client_kill(mode: SubscribeMode) {
    let server = redis_or_skip!();
    let a = connect(&server, mode).await;
    let b = connect(&server, mode).await;
    let mut sub = a.subscribe(["orders"], None).await.unwrap();
    let before = publish(&b, "orders", "before").await;
    assert_eq!(next_event(&mut sub).await.id(), before);

    let killed = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_ne!(killed, "0", "no subscriber connection was killed");

    let seen = publish_until_heard(&b, &mut sub).await;
    assert_eq!(
        seen[0],
        Message::Gap(GapReason::BrokerDisconnected),
        "{seen:?}"
    );
    assert!(
        seen[1..].iter().all(|m| matches!(m, Message::Event(_))),
        "{seen:?}"
    );

    // Both are connected again; later events arrive, in order, without further gaps.
    wait_until("both instances are healthy", || {
        a.health().is_healthy() && b.health().is_healthy()
    })
    .await;
    let after = publish(&b, "orders", "after").await;
    assert_eq!(after.epoch(), before.epoch(), "Redis kept its state");
    let mut last = event_id(seen.last().unwrap());
    loop {
        let event = next_event(&mut sub).await;
        assert!(event.id() > last);
        last = event.id();
        if event.id() == after {
            assert_eq!(text(&event), format!("data: after\nid: {after}\n\n"));
            break;
        }
    }
}

#[tokio::test]
async fn subscriptions_survive_client_kill_interest() {
    subscriptions_survive_client_kill(SubscribeMode::Interest).await;
}

#[tokio::test]
async fn subscriptions_survive_client_kill_pattern() {
    subscriptions_survive_client_kill(SubscribeMode::Pattern).await;
}

async fn survives_redis_restart(mode: SubscribeMode) {
    let mut server = redis_or_skip!();
    let a = connect(&server, mode).await;
    let b = connect(&server, mode).await;
    let mut sub = a.subscribe(["orders"], None).await.unwrap();
    let before = publish(&b, "orders", "before").await;
    assert_eq!(next_event(&mut sub).await.id(), before);

    server.kill();
    wait_until("the bus notices Redis is gone", || !a.health().is_healthy()).await;
    let health = a.health();
    let problem = health.problem().unwrap();
    eprintln!("health while Redis is down: {problem}");
    assert!(problem.contains("Redis"), "{problem}");

    // Known to be down: delivered here only, at once.
    let local = within(
        "publishing while Redis is down",
        a.publish("orders", Event::new("local")),
    )
    .await
    .expect("a local-only publish");
    assert!(local.is_local_only());
    assert_ne!(local.id().epoch(), before.epoch());
    assert_eq!(next(&mut sub).await, Message::Gap(GapReason::HistoryLost));
    assert_eq!(next_event(&mut sub).await.id(), local.id());

    // A subscription made while Redis is down joins when it is back.
    let mut late = a.subscribe(["news"], None).await.unwrap();

    server.restart();
    wait_until("both instances are healthy again", || {
        a.health().is_healthy() && b.health().is_healthy()
    })
    .await;
    // Redis came back empty: a new epoch.
    let after = publish(&b, "orders", "after").await;
    assert_ne!(after.epoch(), before.epoch());
    assert_ne!(after.epoch(), local.id().epoch());
    assert_eq!(next(&mut sub).await, Message::Gap(GapReason::HistoryLost));
    assert_eq!(next_event(&mut sub).await.id(), after);

    let news = publish(&b, "news", "news").await;
    assert_eq!(next(&mut late).await, Message::Gap(GapReason::HistoryLost));
    assert_eq!(next_event(&mut late).await.id(), news);

    // Resuming from before the restart is a reset.
    let old = before.to_string();
    let resumed = a.subscribe(["orders"], Some(&old)).await.unwrap();
    assert_eq!(
        resumed.status(),
        ResumeStatus::Reset(ResetReason::UnknownEpoch)
    );
}

#[tokio::test]
async fn survives_redis_restart_interest() {
    survives_redis_restart(SubscribeMode::Interest).await;
}

#[tokio::test]
async fn survives_redis_restart_pattern() {
    survives_redis_restart(SubscribeMode::Pattern).await;
}

#[tokio::test]
async fn publish_times_out_when_redis_does_not_answer() {
    let server = redis_or_skip!();
    let bus = EventBus::builder()
        .redis_pubsub(
            config(&server, SubscribeMode::Interest).publish_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    publish(&bus, "orders", "before").await;

    server.pause();
    let result = within(
        "a publish to a frozen Redis",
        bus.publish("orders", Event::new("frozen")),
    )
    .await;
    server.resume();
    let err = result.expect_err("Redis did not answer");
    assert!(err.is_timeout(), "{err:?}");
    assert!(!err.is_client_error());

    // Once Redis answers again, so does the bus (the connection may have been replaced).
    within("publishing after Redis answers again", async {
        loop {
            if let Ok(published) = bus.publish("orders", Event::new("after")).await {
                if !published.is_local_only() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn unreachable_redis_at_start_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = RedisConfig::new(format!("redis://:hunter2@127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_secs(2));
    assert!(!format!("{config:?}").contains("hunter2"));
    let err = within(
        "connecting to nothing",
        EventBus::builder().redis_pubsub(config),
    )
    .await
    .expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err:?}");
    let message = err.to_string();
    eprintln!("the error reads: {message}");
    assert!(
        message.contains(&format!("cannot connect to Redis at 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"));

    let err = EventBus::builder()
        .redis_pubsub(RedisConfig::new("http://:hunter2@127.0.0.1/"))
        .await
        .expect_err("not a Redis URL");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn resume_on_another_instance_interest() {
    let server = redis_or_skip!();
    let a = connect(&server, SubscribeMode::Interest).await;
    let b = connect(&server, SubscribeMode::Interest).await;
    let _sub_a = a.subscribe(["orders"], None).await.unwrap();
    let mut sub_b = b.subscribe(["orders"], None).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&a, "orders", &format!("order {i}")).await);
    }
    for id in &ids {
        assert_eq!(next_event(&mut sub_b).await.id(), *id);
    }

    // A client of `a` moves to `b`, which was listening: nothing is lost.
    let first = ids[0].to_string();
    let mut moved = b.subscribe(["orders"], Some(&first)).await.unwrap();
    assert_eq!(moved.status(), ResumeStatus::Resumed { replayed: 2 });
    for (i, id) in ids.iter().enumerate().skip(1) {
        let event = next_event(&mut moved).await;
        assert_eq!(event.id(), *id);
        assert_eq!(text(&event), format!("data: order {i}\nid: {id}\n\n"));
    }

    // `c` was not listening to the topic when those events were published.
    let c = connect(&server, SubscribeMode::Interest).await;
    let mut sub_c = c.subscribe(["orders"], Some(&first)).await.unwrap();
    assert_eq!(
        sub_c.status(),
        ResumeStatus::Reset(ResetReason::HistoryExpired)
    );
    // But it is live now.
    let next_id = publish(&a, "orders", "live").await;
    assert_eq!(next_event(&mut sub_c).await.id(), next_id);
}

#[tokio::test]
async fn resume_on_another_instance_pattern() {
    let server = redis_or_skip!();
    let a = connect(&server, SubscribeMode::Pattern).await;
    // Listening to everything without any subscriber.
    let b = connect(&server, SubscribeMode::Pattern).await;
    let mut sub_a = a.subscribe(["orders"], None).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&a, "orders", &format!("order {i}")).await);
    }
    for id in &ids {
        assert_eq!(next_event(&mut sub_a).await.id(), *id);
    }
    let first = ids[0].to_string();
    // `b` heard the events (without subscribers); wait until the last has arrived there.
    let last = ids[2].to_string();
    within("b hears the events", async {
        while b.subscribe(["orders"], Some(&last)).await.unwrap().status()
            != (ResumeStatus::Resumed { replayed: 0 })
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let moved = b.subscribe(["orders"], Some(&first)).await.unwrap();
    assert_eq!(moved.status(), ResumeStatus::Resumed { replayed: 2 });

    // `c` connected after them.
    let c = connect(&server, SubscribeMode::Pattern).await;
    let sub_c = c.subscribe(["orders"], Some(&first)).await.unwrap();
    assert_eq!(
        sub_c.status(),
        ResumeStatus::Reset(ResetReason::HistoryExpired)
    );
}

#[tokio::test]
async fn unsubscribes_when_the_last_subscriber_leaves() {
    let server = redis_or_skip!();
    let bus = connect(&server, SubscribeMode::Interest).await;
    let numsub = || server.command(&["PUBSUB", "NUMSUB", "tower-sse:t:orders"]);
    assert_eq!(numsub(), "tower-sse:t:orders\n0");

    let first = bus.subscribe(["orders"], None).await.unwrap();
    // Live when `subscribe` returns.
    assert_eq!(numsub(), "tower-sse:t:orders\n1");
    let second = bus.subscribe(["orders", "news"], None).await.unwrap();
    let id = publish(&bus, "orders", "x").await.to_string();
    drop(first);
    drop(second);
    wait_until("the channel is unsubscribed", || {
        numsub() == "tower-sse:t:orders\n0"
    })
    .await;

    // An event this instance did not hear: resuming from before it is a reset.
    publish(&bus, "orders", "unheard").await;
    let sub = bus.subscribe(["orders"], Some(&id)).await.unwrap();
    assert_eq!(
        sub.status(),
        ResumeStatus::Reset(ResetReason::HistoryExpired)
    );
}

#[tokio::test]
async fn keeps_listening_for_the_unsubscribe_delay() {
    let server = redis_or_skip!();
    let bus = EventBus::builder()
        .redis_pubsub(
            config(&server, SubscribeMode::Interest).unsubscribe_delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let mut sub = bus.subscribe(["orders"], None).await.unwrap();
    let id = publish(&bus, "orders", "x").await;
    assert_eq!(next_event(&mut sub).await.id(), id);
    drop(sub);
    let later = publish(&bus, "orders", "y").await;
    // The client comes back (to the same instance) and misses nothing.
    let resume = id.to_string();
    let mut sub = within("the event published meanwhile is heard", async {
        loop {
            let sub = bus.subscribe(["orders"], Some(&resume)).await.unwrap();
            if sub.status() == (ResumeStatus::Resumed { replayed: 1 }) {
                break sub;
            }
            // Resumed, but the event is still on its way.
            assert_eq!(sub.status(), ResumeStatus::Resumed { replayed: 0 });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(next_event(&mut sub).await.id(), later);
    assert_eq!(
        server.command(&["PUBSUB", "NUMSUB", "tower-sse:t:orders"]),
        "tower-sse:t:orders\n1"
    );
}

#[tokio::test]
async fn redis_losing_its_state_starts_a_new_epoch() {
    let server = redis_or_skip!();
    let bus = connect(&server, SubscribeMode::Interest).await;
    let mut sub = bus.subscribe(["orders"], None).await.unwrap();
    let before = publish(&bus, "orders", "before").await;
    assert_eq!(next_event(&mut sub).await.id(), before);

    assert_eq!(server.command(&["FLUSHALL"]), "OK");
    let after = publish(&bus, "orders", "after").await;
    assert_ne!(after.epoch(), before.epoch());
    assert_eq!(after.sequence(), 1);
    assert_eq!(next(&mut sub).await, Message::Gap(GapReason::HistoryLost));
    assert_eq!(next_event(&mut sub).await.id(), after);
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_publishing_goes_on() {
    let server = redis_or_skip!();
    let a = connect(&server, SubscribeMode::Interest).await;
    let b = connect(&server, SubscribeMode::Interest).await;
    let mut sub_a = a.subscribe(["orders"], None).await.unwrap();
    let mut sub_b = b.subscribe(["orders"], None).await.unwrap();

    a.shutdown();
    assert_eq!(next(&mut sub_a).await, Message::Closed);
    assert!(a.subscribe(["orders"], None).await.unwrap_err().is_closed());
    drop(sub_a);
    wait_until("a stops listening", || {
        server.command(&["PUBSUB", "NUMSUB", "tower-sse:t:orders"]) == "tower-sse:t:orders\n1"
    })
    .await;

    let id = publish(&a, "orders", "from a draining").await;
    assert_eq!(next_event(&mut sub_b).await.id(), id);
}

#[tokio::test]
async fn prefixes_separate_namespaces() {
    let server = redis_or_skip!();
    let a = connect(&server, SubscribeMode::Pattern).await;
    let other = EventBus::builder()
        .redis_pubsub(config(&server, SubscribeMode::Pattern).prefix("other-app"))
        .await
        .unwrap();
    let mut sub = a.subscribe(["orders"], None).await.unwrap();
    let foreign = within("publishing", other.publish("orders", Event::new("other")))
        .await
        .unwrap();
    let id = publish(&a, "orders", "mine").await;
    assert_eq!(next_event(&mut sub).await.id(), id);
    assert_ne!(foreign.id().epoch(), id.epoch());
}

/// The latency a stream reports is counted from the publish, by the publisher's clock, not from
/// the moment the event reached this instance.
#[tokio::test]
async fn delivery_latency_counts_from_the_publish() {
    use http_body_util::BodyExt;
    use tower_sse::EventStream;

    let server = redis_or_skip!();
    let bus = connect(&server, SubscribeMode::Interest).await;
    let sub = bus.subscribe(["latency"], None).await.unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let mut stream = metrics::with_local_recorder(&recorder, || {
        EventStream::new(sub)
            .keep_alive(None)
            .write_delay(Duration::ZERO)
    });
    let first = publish(&bus, "latency", "now").await;

    // An event as another instance sends it, published 2 seconds ago by its clock.
    let published = std::time::SystemTime::now() - Duration::from_secs(2);
    let micros = published
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let id = format!("{:08x}-{}", first.epoch(), first.sequence() + 1);
    let payload = format!(":@t={micros}\ndata: sent earlier\nid: {id}\n\n");
    server.command(&["PUBLISH", "tower-sse:t:latency", &payload]);

    let mut written = String::new();
    within("the stream writing both events", async {
        while !written.contains("data: sent earlier") {
            let frame = stream.frame().await.unwrap().unwrap();
            written.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        }
    })
    .await;
    assert!(!written.contains(":@"), "{written}");
    let rendered = metrics.render();
    let sum = rendered
        .lines()
        .find_map(|line| line.strip_prefix("sse_delivery_latency_seconds_sum "))
        .unwrap_or_else(|| panic!("no latency sum in {rendered}"));
    let sum: f64 = sum.trim().parse().unwrap();
    assert!(sum >= 2.0, "latency sum {sum} s, from {rendered}");
}
