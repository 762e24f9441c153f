//! Presence: how many streams follow a topic, summed over every live instance. Demo processes
//! over real sockets and the bus's API, on real `redis-server` processes (one server with
//! Pub/Sub and Streams, and a three-primary cluster): two instances with 3 and 2 streams both
//! report 5; SIGKILL one and the count drops to 3 within the configured TTL; stop one cleanly
//! and its streams leave at once; the default TTL is 30 s; thousands of topics and a churn of
//! subscriptions cost a few pipelines; what another writer leaves in the keys counts nothing;
//! events on `{topic}@presence`; the in-process bus counts its own.
#![cfg(feature = "redis")]

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    bus::within,
    cluster::{key_slot, RedisCluster},
    demo::Demo,
    http::{request, request_with, SseClient, WAIT},
    redis::RedisServer,
};
use tower_sse::{EventBus, Message, RedisConfig, Subscription, PRESENCE_EVENT};

/// `GET /presence/{topic}` on `addr`: the count and whether it is complete.
async fn presence(addr: SocketAddr, topic: &str) -> (u64, bool) {
    let (status, headers, body) = request(addr, "GET", &format!("/presence/{topic}"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["topic"], topic, "{body}");
    let count = answer["subscribers"].as_u64().expect("a count");
    (count, answer["complete"].as_bool().expect("complete"))
}

/// Polls `addr` until `topic` has `count` streams; fails after `limit`. Returns how long it took.
async fn wait_for_count(addr: SocketAddr, topic: &str, count: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        let seen = presence(addr, topic).await;
        if seen == (count, true) {
            return start.elapsed();
        }
        last = Some(seen);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} did not report {count} streams of {topic} within {limit:?}; last {last:?}");
}

/// Opens `n` streams of `path` on `addr`, each past its status event.
async fn streams(addr: SocketAddr, path: &str, n: usize) -> Vec<SseClient> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut client = SseClient::connect(addr, path, None).await;
        assert_eq!(client.status, 200);
        assert!(client.next_event().await.unwrap().is_status());
        clients.push(client);
    }
    clients
}

/// Two demos on one Redis (`args` name it) with 3 and 2 streams of `room` report 5; after the
/// second is killed with SIGKILL, the first reports 3 within the TTL of 3 s.
async fn a_killed_instance_leaves_within_the_ttl(args: &[&str]) {
    let mut args = args.to_vec();
    args.extend(["--presence-ttl", "3"]);
    let first = Demo::start(&args);
    let mut second = Demo::start(&args);
    let _three = streams(first.addr, "/events/room", 3).await;
    let _two = streams(second.addr, "/events?topic=room&topic=lobby", 2).await;
    for addr in [first.addr, second.addr] {
        wait_for_count(addr, "room", 5, WAIT).await;
        wait_for_count(addr, "lobby", 2, WAIT).await;
    }
    assert_eq!(presence(first.addr, "nobody").await, (0, true));

    let second = tokio::task::spawn_blocking(move || {
        second.kill();
        second
    });
    let second = second.await.unwrap();
    // The killed instance's last heartbeat was at most a third of the TTL ago, its counts live
    // the TTL after it; a second on top for polling and a busy machine.
    wait_for_count(first.addr, "room", 3, Duration::from_secs(4)).await;
    wait_for_count(first.addr, "lobby", 0, Duration::from_secs(1)).await;
    drop(second);
}

#[tokio::test]
async fn pubsub_a_killed_instance_leaves_within_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    a_killed_instance_leaves_within_the_ttl(&["--redis", &redis.url()]).await;
}

#[tokio::test]
async fn streams_a_killed_instance_leaves_within_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    a_killed_instance_leaves_within_the_ttl(&["--redis", &url, "--backend", "streams"]).await;
}

macro_rules! cluster_or_skip {
    () => {
        match tokio::task::spawn_blocking(|| RedisCluster::start(0))
            .await
            .expect("start the cluster")
        {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

#[tokio::test]
async fn cluster_pubsub_a_killed_instance_leaves_within_the_ttl() {
    let cluster = cluster_or_skip!();
    let nodes = cluster.urls().join(",");
    a_killed_instance_leaves_within_the_ttl(&["--redis-cluster", &nodes]).await;
}

#[tokio::test]
async fn cluster_streams_a_killed_instance_leaves_within_the_ttl() {
    let cluster = cluster_or_skip!();
    let nodes = cluster.urls().join(",");
    let args = ["--redis-cluster", &nodes, "--backend", "streams"];
    a_killed_instance_leaves_within_the_ttl(&args).await;
}

/// On a cluster a topic's presence keys live in the topic's slot, on its owner; when the slot
/// moves to another primary, counts are still written and read there.
#[tokio::test]
async fn cluster_counts_live_in_the_topics_slot_and_follow_it_when_it_moves() {
    let cluster = cluster_or_skip!();
    let nodes = cluster.urls().join(",");
    let first = Demo::start(&["--redis-cluster", &nodes, "--presence-ttl", "3"]);
    let second = Demo::start(&["--redis-cluster", &nodes, "--presence-ttl", "3"]);
    let _one = streams(first.addr, "/events/room", 1).await;
    let _two = streams(second.addr, "/events/room", 2).await;
    wait_for_count(first.addr, "room", 3, WAIT).await;
    let slot = key_slot("tower-sse:{room}:state");
    for key in ["tower-sse:{room}:p", "tower-sse:{room}:pd"] {
        assert_eq!(cluster.check_slot(key), slot);
    }
    let owner = cluster.owner_of_slot(slot);
    within("both instances' counts on the slot's owner", async {
        loop {
            let counts = cluster.command(owner, &["HVALS", "tower-sse:{room}:p"]);
            let mut counts: Vec<&str> = counts.lines().collect();
            counts.sort();
            if counts == ["1", "2"] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let to = *cluster.primaries().iter().find(|&&n| n != owner).unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.migrate_slot(slot, to);
        cluster
    })
    .await
    .unwrap();
    let _three = streams(second.addr, "/events/room", 1).await;
    wait_for_count(first.addr, "room", 4, WAIT).await;
    // Heartbeats go on to the new owner: the counts outlive their first TTL there.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(presence(first.addr, "room").await, (4, true));
    assert_eq!(cluster.command(to, &["HLEN", "tower-sse:{room}:p"]), "2");
}

/// Stopped with SIGTERM, an instance removes its counts at shutdown: with the default TTL of
/// 30 s, they are gone long before it.
#[tokio::test]
async fn a_stopped_instance_leaves_at_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let first = Demo::start(&["--redis", &url]);
    let mut second = Demo::start(&["--redis", &url]);
    let _three = streams(first.addr, "/events/room", 3).await;
    let _two = streams(second.addr, "/events/room", 2).await;
    wait_for_count(first.addr, "room", 5, WAIT).await;
    let stopped = tokio::task::spawn_blocking(move || second.terminate());
    assert!(stopped.await.unwrap().expect("the demo stops").success());
    // Read right after the process exited: no heartbeat or TTL involved.
    assert_eq!(presence(first.addr, "room").await, (3, true));
}

/// Without `--presence-ttl`, counts live 30 s in Redis and are written again every 10 s.
#[tokio::test]
async fn the_default_ttl_is_30_seconds() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let demo = Demo::start(&["--redis", &redis.url()]);
    let _one = streams(demo.addr, "/events/room", 1).await;
    wait_for_key(&redis, "tower-sse:p:room").await;
    let pttl: u64 = redis
        .command(&["PTTL", "tower-sse:p:room"])
        .parse()
        .unwrap();
    assert!((25_000..=30_000).contains(&pttl), "PTTL {pttl}");
    let entry = redis.command(&["ZRANGE", "tower-sse:pd:room", "0", "-1", "WITHSCORES"]);
    let deadline: u64 = entry.lines().nth(1).unwrap().parse().unwrap();
    let time = redis.command(&["TIME"]);
    let mut time = time.lines().map(|n| n.parse::<u64>().unwrap());
    let now = time.next().unwrap() * 1_000 + time.next().unwrap() / 1_000;
    let left = deadline - now;
    assert!((25_000..=30_000).contains(&left), "{left} ms left");
}

/// Waits until `key` exists in Redis (bounded).
async fn wait_for_key(redis: &RedisServer, key: &str) {
    within(&format!("the key {key}"), async {
        while redis.command(&["EXISTS", key]) != "1" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// What another writer leaves in a topic's keys counts nothing: counts that are not whole
/// numbers, negative or absurd, and counts without a live deadline.
#[tokio::test]
async fn foreign_counts_count_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let demo = Demo::start(&["--redis", &redis.url()]);
    let _two = streams(demo.addr, "/events/room", 2).await;
    wait_for_count(demo.addr, "room", 2, WAIT).await;
    let far = "99999999999999";
    for (id, count, deadline) in [
        ("garbage", "many", far),
        ("negative", "-5", far),
        ("fraction", "2.5", far),
        ("absurd", "1e300", far),
        ("expired", "7", "1"),
        ("no-deadline", "7", ""),
    ] {
        redis.command(&["HSET", "tower-sse:p:room", id, count]);
        if !deadline.is_empty() {
            redis.command(&["ZADD", "tower-sse:pd:room", deadline, id]);
        }
    }
    assert_eq!(presence(demo.addr, "room").await, (2, true));
    // A plausible count with a live deadline is counted: Redis is trusted that far.
    redis.command(&["HSET", "tower-sse:p:room", "other", "4"]);
    redis.command(&["ZADD", "tower-sse:pd:room", far, "other"]);
    assert_eq!(presence(demo.addr, "room").await, (6, true));
}

/// A topic whose presence key another application holds (a string) cannot be counted: writing
/// its count fails on its own and is logged, reading it is incomplete, and the other topics of
/// the same pipeline are counted.
#[tokio::test]
async fn a_foreign_key_fails_its_topic_alone() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    redis.command(&["SET", "tower-sse:p:taken", "not a hash"]);
    let args = ["--redis", &redis.url(), "--presence-ttl", "3"];
    let first = Demo::start(&args);
    let second = Demo::start(&args);
    let _streams = streams(first.addr, "/events?topic=taken&topic=free", 1).await;
    wait_for_count(second.addr, "free", 1, WAIT).await;
    assert_eq!(presence(second.addr, "taken").await, (0, false));
    assert_eq!(presence(first.addr, "taken").await, (1, false));
    within("the warning", async {
        while !first
            .log()
            .iter()
            .any(|l| l.contains("cannot write presence counts"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(redis.command(&["GET", "tower-sse:p:taken"]), "not a hash");
}

/// When Redis does not answer, presence answers this instance's count, marked incomplete.
#[tokio::test]
async fn without_redis_the_count_is_this_instances_and_incomplete() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let args = ["--redis", &redis.url(), "--presence-ttl", "3"];
    let first = Demo::start(&args);
    let second = Demo::start(&args);
    let _one = streams(first.addr, "/events/room", 1).await;
    let _two = streams(second.addr, "/events/room", 2).await;
    wait_for_count(first.addr, "room", 3, WAIT).await;
    redis.kill();
    let mut seen = presence(first.addr, "room").await;
    for _ in 0..100 {
        if seen == (1, false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = presence(first.addr, "room").await;
    }
    assert_eq!(seen, (1, false));
    redis.restart();
    // Redis came back empty: every instance writes its counts again within a heartbeat.
    wait_for_count(first.addr, "room", 3, WAIT).await;
}

/// The bus's API on one Redis: counts of two instances add up, a dropped subscription leaves
/// within a moment, thousands of topics are written in a few pipelines, a churn of
/// subscriptions costs at most four writes a second, and no `KEYS` or `SCAN` ever runs.
#[tokio::test]
async fn thousands_of_topics_and_a_churn_cost_a_few_pipelines() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let config = || RedisConfig::new(redis.url()).presence_ttl(Duration::from_secs(3));
    let first = EventBus::builder().redis_pubsub(config()).await.unwrap();
    let second = EventBus::builder().redis_streams(config()).await.unwrap();
    let topics: Vec<String> = (0..2_000).map(|i| format!("topic-{i}")).collect();
    let mut held: Vec<Subscription> = Vec::new();
    for chunk in topics.chunks(32) {
        held.push(first.subscribe(chunk, None).await.unwrap());
    }
    let _also = second.subscribe(["topic-7"], None).await.unwrap();
    wait_until_count(&second, "topic-1999", 1).await;
    wait_until_count(&first, "topic-7", 2).await;
    for topic in topics.iter().step_by(97) {
        assert_eq!(
            second.presence(topic).await.unwrap().subscribers(),
            1 + u64::from(topic == "topic-7")
        );
    }

    // A churn: 400 subscriptions come and go on one topic over about a second.
    let loads_before = script_loads(&redis);
    assert!(loads_before >= 2, "the first writes were counted");
    let start = Instant::now();
    for i in 0..400 {
        let sub = second.subscribe(["churn"], None).await.unwrap();
        if i % 2 == 0 {
            held.push(sub);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_until_count(&first, "churn", 200).await;
    let elapsed = start.elapsed();
    // Every write (a pipeline, per node) starts with SCRIPT LOAD: count the writes. At most
    // one per 250 ms, plus a heartbeat of each bus (two pipelines of 1 000 topics for the
    // first) per second of the TTL's third, plus one.
    let writes = script_loads(&redis) - loads_before;
    let bound = elapsed.as_millis() as u64 / 250 + 2 + 3 * (elapsed.as_secs() + 1);
    assert!(
        writes <= bound,
        "{writes} writes in {elapsed:?}, at most {bound}"
    );
    let stats = redis.command(&["INFO", "commandstats"]);
    assert!(
        !stats.contains("cmdstat_keys") && !stats.contains("cmdstat_scan"),
        "{stats}"
    );

    // A dropped subscription leaves; its topics' counts too.
    drop(held.remove(0));
    wait_until_count(&second, "topic-0", 0).await;
    first.shutdown();
    within("the withdrawal", first.closed()).await;
    assert_eq!(
        second.presence("topic-1999").await.unwrap().subscribers(),
        0
    );
    assert_eq!(second.presence("topic-7").await.unwrap().subscribers(), 1);
}

/// The `SCRIPT LOAD` calls Redis counted.
fn script_loads(redis: &RedisServer) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_script|load:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// Polls `bus` until `topic` has `count` subscriptions (bounded).
async fn wait_until_count(bus: &EventBus, topic: &str, count: u64) {
    within(&format!("{count} subscriptions of {topic}"), async {
        loop {
            let presence = bus.presence(topic).await.unwrap();
            if presence.subscribers() == count && presence.is_complete() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The in-process bus counts its own subscriptions, a stream of several topics once for each;
/// an invalid topic is a 400-class error.
#[tokio::test]
async fn the_in_process_bus_counts_its_own() {
    let bus = EventBus::memory();
    assert_eq!(bus.presence("room").await.unwrap().subscribers(), 0);
    let one = bus.subscribe(["room"], None).await.unwrap();
    let two = bus.subscribe(["room", "lobby"], None).await.unwrap();
    let room = bus.presence("room").await.unwrap();
    assert_eq!((room.subscribers(), room.is_complete()), (2, true));
    assert_eq!(room.topic().as_str(), "room");
    assert_eq!(bus.presence("lobby").await.unwrap().subscribers(), 1);
    drop(two);
    assert_eq!(bus.presence("room").await.unwrap().subscribers(), 1);
    assert_eq!(bus.presence("lobby").await.unwrap().subscribers(), 0);
    let error = bus.presence("no spaces").await.unwrap_err();
    assert!(error.is_invalid_topic());
    assert_eq!(error.status_code(), 400);
    drop(one);

    // Through the demo: streams count, bad topics are refused.
    let demo = Demo::start(&[]);
    let _streams = streams(demo.addr, "/events?topic=room&topic=lobby", 2).await;
    assert_eq!(presence(demo.addr, "room").await, (2, true));
    assert_eq!(presence(demo.addr, "lobby").await, (2, true));
    let (status, _, body) = request(demo.addr, "GET", "/presence/no%20spaces", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid topic"), "{body}");
}

/// With `--jwt-secret`, reading a topic's presence needs a token that may subscribe to it.
#[tokio::test]
async fn presence_needs_the_right_to_subscribe() {
    let secret = "presence secret";
    let demo = Demo::start(&["--jwt-secret", secret]);
    let token = |subscribe: &[&str]| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let claims = json!({"sub": "u", "exp": exp, "subscribe": subscribe, "publish": []});
        let key = EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
    };
    let path = "/presence/org1:room";
    let (status, headers, _) = request(demo.addr, "GET", path, "").await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    let other = format!("Bearer {}", token(&["org2:*"]));
    let (status, _, body) =
        request_with(demo.addr, "GET", path, &[("authorization", &other)], "").await;
    assert_eq!(status, 403, "{body}");
    let allowed = token(&["org1:*"]);
    let bearer = format!("Bearer {allowed}");
    let (status, _, body) =
        request_with(demo.addr, "GET", path, &[("authorization", &bearer)], "").await;
    assert_eq!(status, 200, "{body}");
    // As for streams, the token may come in the query.
    let query = format!("{path}?access_token={allowed}");
    assert_eq!(request(demo.addr, "GET", &query, "").await.0, 200);
}

/// Presence events: with `--presence-events`, followers of `room@presence` hear the total of
/// `room` as streams come and go on any instance, at most one event a second per instance, and
/// nobody can publish an event of that type.
#[tokio::test]
async fn presence_events_follow_the_count() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let args = ["--redis", &redis.url(), "--presence-events"];
    let first = Demo::start(&args);
    let second = Demo::start(&args);
    let mut watcher = SseClient::connect(first.addr, "/events/room@presence", None).await;
    assert!(watcher.next_event().await.unwrap().is_status());

    let start = Instant::now();
    let _burst = streams(second.addr, "/events/room", 20).await;
    let mut events = 0;
    loop {
        let frame = watcher.next_event().await.expect("an event");
        assert_eq!(frame.event.as_deref(), Some(PRESENCE_EVENT));
        events += 1;
        let data: Value = serde_json::from_str(frame.data()).unwrap();
        assert_eq!(data["topic"], "room");
        if data["subscribers"] == 20 {
            break;
        }
    }
    let bound = start.elapsed().as_secs() + 2;
    assert!(
        events <= bound,
        "{events} events for a burst of 20 in {:?}",
        start.elapsed()
    );
    // The watcher itself follows a companion topic: it causes no event of its own. Once the
    // first instance reads 20 from Redis, a stream there makes the total 21.
    wait_for_count(first.addr, "room", 20, WAIT).await;
    let _more = streams(first.addr, "/events/room", 1).await;
    let frame = watcher.next_event().await.unwrap();
    assert_eq!(frame.data(), r#"{"topic":"room","subscribers":21}"#);

    let (status, _, body) = request(
        first.addr,
        "POST",
        "/publish/room@presence?event=sse-presence",
        "{}",
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

/// Subscriptions through the bus's API count on a bus with events, and a subscription of the
/// companion topic sees the events.
#[tokio::test]
async fn presence_events_on_the_in_process_bus() {
    let bus = EventBus::builder().presence_events(true).memory();
    let mut watcher = bus.subscribe(["room@presence"], None).await.unwrap();
    let _one = bus.subscribe(["room"], None).await.unwrap();
    let event = match within(
        "a presence event",
        futures_util::StreamExt::next(&mut watcher),
    )
    .await
    {
        Some(Message::Event(event)) => event,
        other => panic!("{other:?}"),
    };
    assert_eq!(event.event_type(), Some(PRESENCE_EVENT));
    assert_eq!(event.data(), r#"{"topic":"room","subscribers":1}"#);
    assert_eq!(event.topic().as_str(), "room@presence");
}
