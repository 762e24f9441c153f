//! Both Redis backends on a real Redis Cluster: three `redis-server --cluster-enabled yes`
//! primaries (with a replica each where a primary is killed), created with
//! `redis-cli --cluster create`, and two bus instances. Topics spread over every shard; resume
//! with a cursor per topic; a slot moved and a primary killed under live traffic.
#![cfg(feature = "redis")]

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use support::bus::{next, next_event, text, within};
use support::cluster::{key_slot, RedisCluster};
use support::{
    demo::Demo,
    http::{request, SseClient},
};
use tower_sse::{
    bus::redis::with_idempotency_key, Event, EventBus, EventId, GapReason, Message, RedisConfig,
    ResumeStatus, SubscribeMode, Subscription,
};

macro_rules! cluster_or_skip {
    ($replicas:expr) => {
        match tokio::task::spawn_blocking(|| RedisCluster::start($replicas))
            .await
            .expect("start the cluster")
        {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    PubSub,
    Streams,
}

fn config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig::cluster(cluster.urls())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500))
        .unsubscribe_delay(Duration::ZERO)
}

async fn connect(cluster: &RedisCluster, backend: Backend) -> EventBus {
    let builder = EventBus::builder();
    let connecting = async {
        match backend {
            Backend::PubSub => builder.redis_pubsub(config(cluster)).await,
            Backend::Streams => builder.redis_streams(config(cluster)).await,
        }
    };
    within("connecting to the cluster", connecting)
        .await
        .expect("connect to the test cluster")
}

/// The hash slot of a topic's keys and channel.
fn slot_of(topic: &str) -> u16 {
    key_slot(&format!("tower-sse:{{{topic}}}:state"))
}

/// Publishes until the cluster takes the event, retrying while it cannot (a slot moving, a
/// primary failing over), with one idempotency key, so Streams stores the event once.
async fn publish_retrying(bus: &EventBus, topic: &str, data: String) -> EventId {
    let key = format!("{topic}/{data}");
    within("publishing through a topology change", async {
        loop {
            let publish = bus.publish(topic, Event::new(data.clone()));
            match with_idempotency_key(key.clone(), publish).await {
                Ok(published) => return published.id(),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
}

#[tokio::test]
async fn pattern_mode_and_braces_in_the_prefix_are_refused() {
    let cluster = cluster_or_skip!(0);
    let pattern = config(&cluster).mode(SubscribeMode::Pattern);
    let error = EventBus::builder()
        .redis_pubsub(pattern)
        .await
        .expect_err("no pattern form");
    assert!(error.to_string().contains("pattern"), "{error}");
    let braces = config(&cluster).prefix("app{1}");
    let error = EventBus::builder()
        .redis_streams(braces)
        .await
        .expect_err("braces");
    assert!(error.to_string().contains('{'), "{error}");
}

async fn events_reach_every_subscriber(backend: Backend) {
    let cluster = cluster_or_skip!(0);
    let topics: Vec<String> = (0..24).map(|i| format!("room-{i}")).collect();
    let owners: HashSet<usize> = topics
        .iter()
        .map(|t| cluster.owner_of_slot(slot_of(t)))
        .collect();
    assert_eq!(owners.len(), 3, "the topics spread over every shard");

    let a = connect(&cluster, backend).await;
    let b = connect(&cluster, backend).await;
    let mut subs: Vec<(String, Subscription)> = Vec::new();
    for topic in &topics {
        for bus in [&a, &b] {
            let sub = within("subscribing", bus.subscribe([topic], None))
                .await
                .expect("subscribe");
            subs.push((topic.clone(), sub));
        }
    }
    // Connections are per node, not per topic: 48 subscriptions of 24 topics from two
    // instances, and each primary serves one connection per instance (plus the one asking).
    // (Connections of this test's own earlier commands may take a moment to be gone.)
    for primary in cluster.primaries() {
        let clients = || {
            let info = cluster.command(primary, &["INFO", "clients"]);
            info.lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .expect("connected_clients")
        };
        within("one connection per instance", async {
            while clients() != 1 + 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    let several = &topics[..4];
    let mut joined = within("subscribing", b.subscribe(several, None))
        .await
        .expect("subscribe to several topics");

    let mut published: BTreeMap<String, Vec<EventId>> = BTreeMap::new();
    for round in 0..3 {
        for (i, topic) in topics.iter().enumerate() {
            let bus = if (round + i) % 2 == 0 { &a } else { &b };
            let id = within(
                "publishing",
                bus.publish(topic, Event::new(format!("{round}"))),
            )
            .await
            .expect("publish")
            .id();
            published.entry(topic.clone()).or_default().push(id);
        }
    }

    for (topic, sub) in &mut subs {
        for (round, id) in published[topic.as_str()].iter().enumerate() {
            let event = next_event(sub).await;
            assert_eq!(event.id(), *id, "{topic}");
            assert!(text(&event).contains(&format!("data: {round}\n")));
            assert!(text(&event).ends_with(&format!("id: {id}\n\n")));
        }
    }

    // The stream of several topics: each topic's events in order, each frame carrying the
    // position of every topic.
    let mut seen: BTreeMap<String, Vec<EventId>> = BTreeMap::new();
    let mut positions: BTreeMap<String, EventId> = BTreeMap::new();
    for _ in 0..several.len() * 3 {
        let event = next_event(&mut joined).await;
        let topic = several
            .iter()
            .find(|t| published[t.as_str()].contains(&event.id()))
            .expect("an event of one of the topics")
            .clone();
        seen.entry(topic.clone()).or_default().push(event.id());
        positions.insert(topic, event.id());
        let cursor = joined.last_event_id().to_string();
        assert!(text(&event).ends_with(&format!("id: {cursor}\n\n")));
        // The cursor lists the topics in order; those not seen yet stand where they started.
        let parts: Vec<&str> = cursor.split(',').collect();
        assert_eq!(parts.len(), several.len());
        for (topic, part) in several.iter().zip(&parts) {
            if let Some(id) = positions.get(topic.as_str()) {
                assert_eq!(*part, id.to_string());
            }
        }
    }
    for topic in several {
        assert_eq!(seen[topic.as_str()], published[topic.as_str()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_events_on_many_topics_reach_every_subscriber() {
    events_reach_every_subscriber(Backend::PubSub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_events_on_many_topics_reach_every_subscriber() {
    events_reach_every_subscriber(Backend::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_resume_on_another_instance_with_a_position_per_topic() {
    let cluster = cluster_or_skip!(0);
    let a = connect(&cluster, Backend::Streams).await;
    let b = connect(&cluster, Backend::Streams).await;
    // Topics on different shards.
    let (x, y) = ("orders", "invoices");
    assert_ne!(
        cluster.owner_of_slot(slot_of(x)),
        cluster.owner_of_slot(slot_of(y))
    );

    let mut sub = a.subscribe([x, y], None).await.expect("subscribe");
    let x1 = publish_retrying(&b, x, "x1".into()).await;
    let y1 = publish_retrying(&b, y, "y1".into()).await;
    let mut got = HashSet::new();
    for _ in 0..2 {
        got.insert(next_event(&mut sub).await.id());
    }
    assert_eq!(got, HashSet::from([x1, y1]));
    let cursor = sub.last_event_id().to_string();
    // Sorted topics: invoices, then orders.
    assert_eq!(cursor, format!("{y1},{x1}"));
    drop(sub);

    let x2 = publish_retrying(&a, x, "x2".into()).await;
    let y2 = publish_retrying(&a, y, "y2".into()).await;
    let x3 = publish_retrying(&a, x, "x3".into()).await;

    // Another instance, which has never heard these topics, resumes from Redis.
    let mut resumed = b.subscribe([y, x], Some(&cursor)).await.expect("resume");
    assert_eq!(resumed.status(), ResumeStatus::Resumed { replayed: 3 });
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut resumed).await;
        if text(&event).contains("data: x") {
            xs.push(event.id());
        } else {
            ys.push(event.id());
        }
    }
    assert_eq!(xs, [x2, x3]);
    assert_eq!(ys, [y2]);
    assert_eq!(resumed.last_event_id().to_string(), format!("{y2},{x3}"));

    // Then live.
    let y3 = publish_retrying(&a, y, "y3".into()).await;
    assert_eq!(next_event(&mut resumed).await.id(), y3);

    // One topic resumes from its event id, as on one server.
    let mut single = b
        .subscribe([x], Some(&x1.to_string()))
        .await
        .expect("resume");
    assert_eq!(single.status(), ResumeStatus::Resumed { replayed: 2 });
    assert_eq!(next_event(&mut single).await.id(), x2);
    assert_eq!(next_event(&mut single).await.id(), x3);

    // A cursor with the wrong number of positions is a reset, not an error.
    let reset = b
        .subscribe([x, y], Some(&x1.to_string()))
        .await
        .expect("subscribe");
    assert!(matches!(reset.status(), ResumeStatus::Reset(_)));
}

/// What a subscriber received while events were published through a topology change.
#[derive(Debug, Default)]
struct Received {
    events: Vec<EventId>,
    gaps: usize,
}

/// Receives until `last` arrives.
async fn receive_until(sub: &mut Subscription, last: EventId) -> Received {
    let mut received = Received::default();
    loop {
        match next(sub).await {
            Message::Event(event) => {
                received.events.push(event.id());
                if event.id() == last {
                    return received;
                }
            }
            Message::Gap(_) => received.gaps += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Publishes `count` events to `topic` alternately through `a` and `b`, running `disrupt`
/// (blocking) when a third of them are out; returns the acknowledged ids in order.
async fn publish_through<F>(
    a: &EventBus,
    b: &EventBus,
    topic: &str,
    count: usize,
    disrupt: F,
) -> Vec<EventId>
where
    F: FnOnce() + Send + 'static,
{
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut disrupt = Some(disrupt);
    let mut disrupting = None;
    for i in 0..count {
        if i == count / 3 {
            let disrupt = disrupt.take().expect("once");
            disrupting = Some(tokio::task::spawn_blocking(disrupt));
        }
        let bus = if i % 2 == 0 { a } else { b };
        let id = publish_retrying(bus, topic, format!("{i}")).await;
        acked.lock().unwrap().push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    within("the topology change", disrupting.expect("started"))
        .await
        .expect("the topology change succeeds");
    let ids = acked.lock().unwrap().clone();
    ids
}

/// Checks what a subscriber got against what was acknowledged: Streams gets everything once
/// and in order; Pub/Sub gets events in order and a gap wherever it missed any.
fn check(backend: Backend, acked: &[EventId], received: &Received) {
    let mut sorted = received.events.clone();
    sorted.dedup();
    assert_eq!(sorted, received.events, "no event twice");
    assert!(
        received.events.windows(2).all(|w| w[0] < w[1]),
        "in order: {:?}",
        received.events
    );
    match backend {
        Backend::Streams => {
            assert_eq!(
                received.events, acked,
                "every acknowledged event, once, in order"
            );
            assert_eq!(received.gaps, 0);
        }
        Backend::PubSub => {
            let missed = acked
                .iter()
                .filter(|id| !received.events.contains(id))
                .count();
            assert!(
                missed == 0 || received.gaps > 0,
                "{missed} events missed without a gap"
            );
        }
    }
}

async fn slot_migration_under_live_traffic(backend: Backend) {
    let cluster = Arc::new(cluster_or_skip!(0));
    let a = connect(&cluster, backend).await;
    let b = connect(&cluster, backend).await;
    let topic = "migrating";
    let slot = slot_of(topic);
    let from = cluster.owner_of_slot(slot);
    let to = *cluster
        .primaries()
        .iter()
        .find(|&&p| p != from)
        .expect("another primary");

    let mut sub_a = a.subscribe([topic], None).await.expect("subscribe");
    let mut sub_b = b.subscribe([topic], None).await.expect("subscribe");
    let moving = cluster.clone();
    let acked = publish_through(&a, &b, topic, 300, move || moving.migrate_slot(slot, to)).await;
    assert_eq!(cluster.owner_of_slot(slot), to);

    // Live after the move, on both instances.
    let last = publish_retrying(&b, topic, "after".into()).await;
    let mut all = acked.clone();
    all.push(last);
    for sub in [&mut sub_a, &mut sub_b] {
        let received = receive_until(sub, last).await;
        check(backend, &all, &received);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_slot_migration_under_live_traffic_loses_nothing() {
    slot_migration_under_live_traffic(Backend::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_slot_migration_under_live_traffic_signals_any_gap() {
    slot_migration_under_live_traffic(Backend::PubSub).await;
}

async fn failover_under_live_traffic(backend: Backend) {
    let cluster = cluster_or_skip!(1);
    let a = connect(&cluster, backend).await;
    let b = connect(&cluster, backend).await;
    let topic = "failing-over";
    let primary = cluster.owner_of_slot(slot_of(topic));

    let mut sub_a = a.subscribe([topic], None).await.expect("subscribe");
    let mut sub_b = b
        .subscribe([topic, "elsewhere"], None)
        .await
        .expect("subscribe");
    let cluster = Arc::new(Mutex::new(cluster));
    let failing = cluster.clone();
    let acked = publish_through(&a, &b, topic, 200, move || {
        failing
            .lock()
            .unwrap()
            .kill_primary_and_wait_for_failover(primary);
    })
    .await;

    let last = publish_retrying(&a, topic, "after".into()).await;
    let mut all = acked.clone();
    all.push(last);
    for sub in [&mut sub_a, &mut sub_b] {
        let received = receive_until(sub, last).await;
        check(backend, &all, &received);
    }
    within("the bus to be healthy again", async {
        while !(a.health().is_healthy() && b.health().is_healthy()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_failover_under_live_traffic_loses_nothing() {
    failover_under_live_traffic(Backend::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_failover_under_live_traffic_signals_any_gap() {
    failover_under_live_traffic(Backend::PubSub).await;
}

/// Publishes `data` to `topic` through a demo process; returns the id it answered with.
async fn publish_http(addr: std::net::SocketAddr, topic: &str, data: &str) -> String {
    let (status, _, body) = request(addr, "POST", &format!("/publish/{topic}"), data).await;
    assert_eq!(status, 202, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["id"].as_str().unwrap().to_owned()
}

/// Two demo processes on the cluster, over real HTTP: a stream of two topics on different
/// shards, and its `Last-Event-ID` (a position per topic) resuming it on the other process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_processes_resume_a_stream_of_two_topics() {
    let cluster = cluster_or_skip!(0);
    let nodes = cluster.urls().join(",");
    let args = ["--redis-cluster", &nodes, "--backend", "streams"];
    let demos = [Demo::start(&args), Demo::start(&args)];
    let (status, _, _) = request(demos[0].addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200);

    let path = "/events?topic=orders&topic=invoices";
    let mut client = SseClient::connect(demos[0].addr, path, None).await;
    assert_eq!(client.status, 200);
    assert!(client.next_event().await.unwrap().is_status());
    let order = publish_http(demos[1].addr, "orders", "order 1").await;
    let invoice = publish_http(demos[1].addr, "invoices", "invoice 1").await;
    let mut last = String::new();
    for _ in 0..2 {
        let frame = client.next_event().await.unwrap();
        last = frame.id.clone().unwrap();
    }
    assert_eq!(last, format!("{invoice},{order}"));
    drop(client);

    publish_http(demos[0].addr, "orders", "order 2").await;
    publish_http(demos[0].addr, "invoices", "invoice 2").await;
    let mut client = SseClient::connect(demos[1].addr, path, Some(&last)).await;
    assert_eq!(client.status, 200);
    let status = client.next_event().await.unwrap();
    assert!(status.is_status());
    assert!(
        status.data().contains(r#""replayed":2"#),
        "{}",
        status.data()
    );
    let mut data = Vec::new();
    for _ in 0..2 {
        data.push(client.next_event().await.unwrap().data().to_owned());
    }
    data.sort();
    assert_eq!(data, ["invoice 2", "order 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_wait_for_replicas_when_asked() {
    let cluster = cluster_or_skip!(1);
    let topic = "replicated";
    let one = config(&cluster).wait_for_replicas(1, Duration::from_secs(1));
    let bus = within("connecting", EventBus::builder().redis_streams(one))
        .await
        .expect("connect");
    let mut sub = bus.subscribe([topic], None).await.expect("subscribe");
    let id = within("publishing", bus.publish(topic, Event::new("kept")))
        .await
        .expect("one replica confirms");
    assert_eq!(next_event(&mut sub).await.id(), id.id());

    // More replicas than the shard has: the publish is stored, but not confirmed.
    let two = config(&cluster).wait_for_replicas(2, Duration::from_millis(100));
    let bus = within("connecting", EventBus::builder().redis_streams(two))
        .await
        .expect("connect");
    let error = within("publishing", bus.publish(topic, Event::new("unconfirmed")))
        .await
        .expect_err("one replica only");
    assert!(error.is_timeout(), "{error}");
}

async fn a_counter_that_went_back_starts_a_new_epoch(backend: Backend) {
    let cluster = cluster_or_skip!(0);
    let bus = connect(&cluster, backend).await;
    let topic = "rewound";
    let owner = cluster.owner_of_slot(slot_of(topic));
    let mut sub = bus.subscribe([topic], None).await.expect("subscribe");
    let mut before = None;
    for i in 0..5 {
        let id = publish_retrying(&bus, topic, format!("{i}")).await;
        assert_eq!(next_event(&mut sub).await.id(), id);
        before = Some(id);
    }
    let before = before.expect("published");

    // What a failover to a replica that missed the last events looks like: the counter is
    // behind what subscribers saw, and so is the stream (which cannot be cut back, so it
    // goes).
    let state = format!("tower-sse:{{{topic}}}:state");
    assert_eq!(cluster.command(owner, &["HSET", &state, "seq", "2"]), "0");
    cluster.command(owner, &["DEL", &format!("tower-sse:{{{topic}}}:s")]);

    // Ids are not reused: the subscriber is told the history was lost, then gets events of a
    // new epoch. (Publishes go on until one arrives: the first ones may be numbered before the
    // instance noticed.)
    let mut gap = false;
    let mut published = Vec::new();
    let event = within("an event of the new epoch", async {
        loop {
            let data = format!("after {}", published.len());
            published.push(publish_retrying(&bus, topic, data).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
            loop {
                match tokio::time::timeout(Duration::from_millis(200), next(&mut sub)).await {
                    Ok(Message::Gap(reason)) => gap |= reason == GapReason::HistoryLost,
                    Ok(Message::Event(event)) => return event,
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(_) => break,
                }
            }
        }
    })
    .await;
    assert!(gap, "the lost history is signalled");
    assert!(published.contains(&event.id()), "{event:?} {published:?}");
    assert_ne!(event.id().epoch(), before.epoch());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_counter_that_went_back_starts_a_new_epoch() {
    a_counter_that_went_back_starts_a_new_epoch(Backend::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_a_counter_that_went_back_starts_a_new_epoch() {
    a_counter_that_went_back_starts_a_new_epoch(Backend::PubSub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_resume_past_the_retention_is_a_reset() {
    let cluster = cluster_or_skip!(0);
    let a = connect(&cluster, Backend::Streams).await;
    let b = connect(&cluster, Backend::Streams).await;
    let topic = "trimmed";
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(publish_retrying(&a, topic, format!("{i}")).await);
    }
    // Events 1 to 3 are gone from the stream, as trimming by count or age would do.
    let owner = cluster.owner_of_slot(slot_of(topic));
    let stream = format!("tower-sse:{{{topic}}}:s");
    let minid = format!("{}-0", ids[3].sequence());
    assert_eq!(
        cluster.command(owner, &["XTRIM", &stream, "MINID", &minid]),
        "3"
    );

    let cursor = ids[0].to_string();
    let reset = b
        .subscribe([topic], Some(&cursor))
        .await
        .expect("subscribe");
    assert_eq!(
        reset.status(),
        ResumeStatus::Reset(tower_sse::ResetReason::HistoryExpired)
    );
    let cursor = ids[2].to_string();
    let mut resumed = b.subscribe([topic], Some(&cursor)).await.expect("resume");
    assert_eq!(resumed.status(), ResumeStatus::Resumed { replayed: 3 });
    for id in &ids[3..] {
        assert_eq!(next_event(&mut resumed).await.id(), *id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_nobody_follows_is_unsubscribed() {
    let cluster = cluster_or_skip!(0);
    let bus = connect(&cluster, Backend::PubSub).await;
    let topic = "brief";
    let owner = cluster.owner_of_slot(slot_of(topic));
    let channel = format!("tower-sse:{{{topic}}}:t");
    let subscribers = || cluster.command(owner, &["PUBSUB", "SHARDNUMSUB", &channel]);
    let sub = bus.subscribe([topic], None).await.expect("subscribe");
    assert_eq!(subscribers(), format!("{channel}\n1"));
    assert_eq!(bus.stats().topics, 1);
    drop(sub);
    within("the channel to be released", async {
        while subscribers() != format!("{channel}\n0") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(bus.stats().topics, 0);
}

/// The whole cluster stops answering, then comes back: health says so both ways, a subscription
/// made meanwhile goes ahead after the request timeout, and every subscription hears what is
/// published afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_unhealthy_and_recovers() {
    let cluster = Arc::new(cluster_or_skip!(0));
    let timeout = Duration::from_millis(500);
    let bus = within(
        "connecting",
        EventBus::builder().redis_streams(config(&cluster).publish_timeout(timeout)),
    )
    .await
    .expect("connect");
    let mut before = bus.subscribe(["before"], None).await.expect("subscribe");
    let id = publish_retrying(&bus, "before", "0".into()).await;
    assert_eq!(next_event(&mut before).await.id(), id);
    assert!(bus.health().is_healthy());

    let frozen = cluster.clone();
    tokio::task::spawn_blocking(move || frozen.pause_all())
        .await
        .unwrap();
    within("the bus to notice", async {
        while bus.health().is_healthy() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut during = within("subscribing while the cluster is down", async {
        bus.subscribe(["during"], None).await
    })
    .await
    .expect("subscribing goes ahead");

    let thawed = cluster.clone();
    tokio::task::spawn_blocking(move || thawed.resume_all())
        .await
        .unwrap();
    within("the bus to be healthy again", async {
        while !bus.health().is_healthy() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let id = publish_retrying(&bus, "before", "1".into()).await;
    assert_eq!(next_event(&mut before).await.id(), id);
    let id = publish_retrying(&bus, "during", "1".into()).await;
    // The subscription started before the topic's position could be read: it may be told of a
    // gap first.
    loop {
        match next(&mut during).await {
            Message::Gap(_) => continue,
            Message::Event(event) => {
                assert_eq!(event.id(), id);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A publish whose answer does not come in time is sent once more with the same idempotency
/// key, as on one server: the cluster stores it once and the publisher gets its id. (The
/// cluster client's own response timeout fails the first attempt with a Redis error that is a
/// timeout; that, a dropped connection and an IO error are all worth a second attempt.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_timed_out_is_sent_again_and_stored_once() {
    let cluster = Arc::new(cluster_or_skip!(0));
    let short = config(&cluster).publish_timeout(Duration::from_millis(500));
    let a = within("connecting", EventBus::builder().redis_streams(short))
        .await
        .expect("connect");
    let b = connect(&cluster, Backend::Streams).await;
    let topic = "retried";
    let mut sub = b.subscribe([topic], None).await.expect("subscribe");
    // The script is loaded on the topic's primary before the pause.
    let first = publish_retrying(&a, topic, "first".into()).await;
    assert_eq!(next_event(&mut sub).await.id(), first);

    let frozen = cluster.clone();
    tokio::task::spawn_blocking(move || frozen.pause_all())
        .await
        .unwrap();
    let publishing = tokio::spawn({
        let a = a.clone();
        async move { a.publish(topic, Event::new("once")).await }
    });
    // The first attempt times out; the second is on its way when the cluster answers again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let thawed = cluster.clone();
    tokio::task::spawn_blocking(move || thawed.resume_all())
        .await
        .unwrap();
    let published = within("the publish", publishing)
        .await
        .unwrap()
        .expect("sent again, and answered with the id of the first attempt");

    let event = next_event(&mut sub).await;
    assert_eq!(event.id(), published.id());
    assert_eq!(text(&event), format!("data: once\nid: {}\n\n", event.id()));
    let marker = publish_retrying(&a, topic, "marker".into()).await;
    assert_eq!(next_event(&mut sub).await.id(), marker, "no second copy");
    let owner = cluster.owner_of_slot(slot_of(topic));
    let stream = format!("tower-sse:{{{topic}}}:s");
    assert_eq!(cluster.command(owner, &["XLEN", &stream]), "3");
}

/// Resumes of one topic arriving together share the reads of its stream: with a replay budget
/// of about one read and no waiting for it, all of them get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_of_a_topic_share_reads() {
    let cluster = cluster_or_skip!(0);
    let a = connect(&cluster, Backend::Streams).await;
    let small = config(&cluster)
        .replay_budget(300)
        .replay_wait(Duration::ZERO);
    let b = within("connecting", EventBus::builder().redis_streams(small))
        .await
        .expect("connect");
    let topic = "shared";
    let mut events = Vec::new();
    for i in 0..50 {
        let data = format!("e{i}");
        events.push((publish_retrying(&a, topic, data.clone()).await, data));
    }
    let cursor = events[9].0.to_string();
    let events = Arc::new(events);
    let resumes: Vec<_> = (0..200)
        .map(|_| {
            let b = b.clone();
            let events = events.clone();
            let cursor = cursor.clone();
            tokio::spawn(async move {
                let mut sub = b
                    .subscribe([topic], Some(&cursor))
                    .await
                    .expect("not refused: the reads are shared");
                assert_eq!(sub.status(), ResumeStatus::Resumed { replayed: 40 });
                for (id, data) in &events[10..] {
                    let event = next_event(&mut sub).await;
                    assert_eq!(event.id(), *id);
                    assert_eq!(text(&event), format!("data: {data}\nid: {id}\n\n"));
                }
            })
        })
        .collect();
    for resume in resumes {
        within("a resume", resume).await.unwrap();
    }
}
