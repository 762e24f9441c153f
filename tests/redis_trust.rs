//! What comes from Redis is checked before it is believed: messages forged on a topic's channel
//! (an id far in the future, a frame of two events, garbage, another epoch) are dropped and
//! counted, and the events published afterwards reach subscribers as if nothing happened. Over
//! real HTTP against the demo, with a real `redis-server` (and a real cluster), on both
//! backends.
#![cfg(feature = "redis")]

mod support;

use std::net::SocketAddr;

use support::{
    cluster::{key_slot, RedisCluster},
    demo::Demo,
    http::{request, SseClient},
    redis::RedisServer,
};

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
