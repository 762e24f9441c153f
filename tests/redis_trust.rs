//! What comes from Redis is checked before it is believed: messages forged on a topic's channel
//! (an id far in the future, a frame of two events, garbage, another epoch) are dropped and
//! counted, and the events published afterwards reach subscribers as if nothing happened. Over
//! real HTTP against the demo, with a real `redis-server` (and a real cluster), on both
//! backends.
#![cfg(feature = "redis")]

mod support;

use std::{net::SocketAddr, time::Duration};

use support::{
    bus::{next_event, publish as publish_on, text, within},
    cluster::{key_slot, RedisCluster},
    demo::Demo,
    http::{request, SseClient},
    redis::RedisServer,
};
use tower_sse::{Event, EventBus, RedisConfig, SubscribeMode};

/// The value of the sample `name` (with its labels, as written) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Publishes `data` to `topic` through the demo; returns the id it answered with.
async fn publish(addr: SocketAddr, topic: &str, data: &str) -> String {
    let (status, _, body) = request(addr, "POST", &format!("/publish/{topic}"), data).await;
    assert_eq!(status, 202, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["id"].as_str().unwrap().to_owned()
}

/// Where forged messages go: publishes a payload on a channel, as anything with access to
/// Redis could.
trait Channel {
    fn forge(&self, payload: &str);
}

/// A channel of one server.
struct OnServer<'a> {
    server: &'a RedisServer,
    channel: String,
}

impl Channel for OnServer<'_> {
    fn forge(&self, payload: &str) {
        let receivers = self.server.command(&["PUBLISH", &self.channel, payload]);
        assert_eq!(receivers, "1", "the demo listens to {}", self.channel);
    }
}

/// A sharded channel of a cluster, published on the shard that owns it.
struct OnCluster<'a> {
    cluster: &'a RedisCluster,
    channel: String,
}

impl Channel for OnCluster<'_> {
    fn forge(&self, payload: &str) {
        let owner = self.cluster.owner_of_slot(key_slot(&self.channel));
        let receivers = self
            .cluster
            .command(owner, &["SPUBLISH", &self.channel, payload]);
        assert_eq!(receivers, "1", "the demo listens to {}", self.channel);
    }
}

/// With a subscriber on `demo`: one event, the forged messages on `channel` (in front of each,
/// `prev` with the real previous event's number, as Streams notifications on one server carry
/// it), then three events. The subscriber gets exactly the four real events; a new stream
/// starts at the last one; the metric counts every forged message by its reason.
async fn forged_messages_are_dropped(demo: &Demo, channel: &dyn Channel, prev: bool) {
    let topic = "t";
    let mut client = SseClient::connect(demo.addr, &format!("/events/{topic}"), None).await;
    assert_eq!(client.status, 200);
    assert!(client.next_event().await.unwrap().is_status());
    let first = publish(demo.addr, topic, "first").await;
    assert_eq!(
        client.next_event().await.unwrap().id.as_deref(),
        Some(&*first)
    );

    let (epoch, seq) = first.split_once('-').unwrap();
    let next: u64 = seq.parse::<u64>().unwrap() + 1;
    let other_epoch = if epoch == "00000001" {
        "00000002"
    } else {
        "00000001"
    };
    let far = format!("{epoch}-9223372036854775807");
    let prev = if prev {
        format!("{seq} ")
    } else {
        String::new()
    };
    let forged = [
        format!("{prev}data: injected\nid: {far}\n\n"),
        format!("{prev}data: one\n\ndata: two\nid: {epoch}-{next}\n\n"),
        format!("{prev}\u{1}garbage\r\n"),
        format!("{prev}data: another epoch\nid: {other_epoch}-{next}\n\n"),
    ];
    for payload in &forged {
        channel.forge(payload);
    }

    let mut published = Vec::new();
    for i in 0..3 {
        published.push(publish(demo.addr, topic, &format!("after {i}")).await);
    }
    for (i, id) in published.iter().enumerate() {
        let event = client.next_event().await.unwrap();
        assert_eq!(event.data(), format!("after {i}"), "{event:?}");
        assert_eq!(event.id.as_deref(), Some(id.as_str()));
    }

    let mut fresh = SseClient::connect(demo.addr, &format!("/events/{topic}"), None).await;
    let status = fresh.next_event().await.unwrap();
    assert!(status.is_status(), "{status:?}");
    let start = status
        .id
        .expect("a fresh stream's status carries its position");
    assert_ne!(start, far);
    assert_eq!(&start, published.last().unwrap());

    let (_, _, metrics) = request(demo.addr, "GET", "/metrics", "").await;
    for (reason, count) in [("ahead", 1.0), ("malformed", 2.0), ("epoch", 1.0)] {
        let name = format!("sse_redis_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &name), Some(count), "{name} in\n{metrics}");
    }
}

macro_rules! redis_or_skip {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

#[tokio::test]
async fn pubsub_drops_forged_messages() {
    let server = redis_or_skip!();
    let demo = Demo::start(&["--redis", &server.url(), "--backend", "pubsub"]);
    let channel = OnServer {
        server: &server,
        channel: "tower-sse:t:t".to_owned(),
    };
    forged_messages_are_dropped(&demo, &channel, false).await;
}

#[tokio::test]
async fn streams_drops_forged_notifications() {
    let server = redis_or_skip!();
    let demo = Demo::start(&["--redis", &server.url(), "--backend", "streams"]);
    let channel = OnServer {
        server: &server,
        channel: "tower-sse:n:t".to_owned(),
    };
    forged_messages_are_dropped(&demo, &channel, true).await;
}

async fn cluster_drops_forged_messages(backend: &str, kind: &str) {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(0))
        .await
        .expect("start the cluster")
    else {
        return;
    };
    let nodes = cluster.urls().join(",");
    let demo = Demo::start(&["--redis-cluster", &nodes, "--backend", backend]);
    let channel = OnCluster {
        cluster: &cluster,
        channel: format!("tower-sse:{{t}}:{kind}"),
    };
    forged_messages_are_dropped(&demo, &channel, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pubsub_drops_forged_messages() {
    cluster_drops_forged_messages("pubsub", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_streams_drops_forged_messages() {
    cluster_drops_forged_messages("streams", "n").await;
}

/// The frame the publish script stored as the first entry of `stream`, run through `command`
/// (on one server, or on the cluster node that owns the stream).
fn first_stored_frame(command: impl Fn(&[&str]) -> String, stream: &str) -> String {
    let script = "local entry = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1] \
                  for i = 1, #entry[2], 2 do \
                    if entry[2][i] == 'f' then return entry[2][i + 1] end \
                  end";
    command(&["EVAL", script, "1", stream])
}

/// Events with every field the encoder writes.
fn every_field() -> Vec<Event> {
    vec![
        Event::new("one line"),
        Event::new("two\nlines\r\nand\rthree\n")
            .event("kind")
            .unwrap(),
        Event::new("x")
            .comment("a comment\non two lines")
            .retry(Duration::from_millis(2500)),
        Event::default(),
    ]
}

/// What the scripts store and announce is the encoder's frame with the bus's id, in its
/// envelope: Rust writes the fields, the prelude only the id line and the blank line.
#[tokio::test]
async fn the_scripts_write_what_the_encoder_writes() {
    let server = redis_or_skip!();
    let config = RedisConfig::new(server.url());
    let bus = within("connecting", EventBus::builder().redis_streams(config))
        .await
        .unwrap();
    for (i, event) in every_field().into_iter().enumerate() {
        let topic = format!("encoded-{i}");
        let mut sub = bus.subscribe([&topic], None).await.unwrap();
        let published = bus.publish(&topic, event.clone()).await.unwrap();
        let expected = event.id(published.id().to_string()).unwrap().encode();
        let expected = String::from_utf8(expected.to_vec()).unwrap();
        // As stored (and announced, which is the same frame), in its envelope.
        let stored = first_stored_frame(|c| server.command(c), &format!("tower-sse:s:{topic}"));
        let (envelope, frame) = stored.split_once('\n').unwrap();
        assert!(envelope.starts_with(":@t="), "{stored:?}");
        assert_eq!(frame, expected);
        // As delivered.
        assert_eq!(text(&next_event(&mut sub).await), expected);
    }
}

/// The same on a cluster, whose scripts share the prelude.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_scripts_write_what_the_encoder_writes() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(0))
        .await
        .expect("start the cluster")
    else {
        return;
    };
    let config = RedisConfig::cluster(cluster.urls());
    let bus = within("connecting", EventBus::builder().redis_streams(config))
        .await
        .unwrap();
    for (i, event) in every_field().into_iter().enumerate() {
        let topic = format!("encoded-{i}");
        let published = bus.publish(&topic, event.clone()).await.unwrap();
        let expected = event.id(published.id().to_string()).unwrap().encode();
        let stream = format!("tower-sse:{{{topic}}}:s");
        let owner = cluster.owner_of_slot(key_slot(&stream));
        let stored = first_stored_frame(|c| cluster.command(owner, c), &stream);
        let (_envelope, frame) = stored.split_once('\n').unwrap();
        assert_eq!(frame.as_bytes(), &expected[..]);
    }
}

/// A real event far ahead of what an instance heard (other topics took many numbers
/// meanwhile) is checked against the counter and delivered, on both backends.
async fn far_ahead_but_real_is_delivered(streams: bool) {
    let server = redis_or_skip!();
    let config = || RedisConfig::new(server.url()).mode(SubscribeMode::Interest);
    let connect = |config| async move {
        let builder = EventBus::builder();
        let bus = match streams {
            true => builder.redis_streams(config).await,
            false => builder.redis_pubsub(config).await,
        };
        bus.expect("connect")
    };
    let publisher = within("connecting", connect(config())).await;
    let listener = within("connecting", connect(config())).await;
    let mut sub = listener.subscribe(["quiet"], None).await.unwrap();
    let first = publish_on(&publisher, "quiet", "first").await;
    assert_eq!(next_event(&mut sub).await.id(), first);
    // What a busy namespace does to the numbers of a quiet topic.
    server.command(&["HINCRBY", "tower-sse:state", "seq", "1000000"]);
    let far = publish_on(&publisher, "quiet", "far").await;
    assert!(far.sequence() > first.sequence() + 1_000_000);
    let event = next_event(&mut sub).await;
    assert_eq!(event.id(), far);
    assert_eq!(text(&event), format!("data: far\nid: {far}\n\n"));
    let next = publish_on(&publisher, "quiet", "next").await;
    assert_eq!(next_event(&mut sub).await.id(), next);
}

#[tokio::test]
async fn pubsub_delivers_real_events_far_ahead() {
    far_ahead_but_real_is_delivered(false).await;
}

#[tokio::test]
async fn streams_delivers_real_events_far_ahead() {
    far_ahead_but_real_is_delivered(true).await;
}
