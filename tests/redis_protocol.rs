//! The Redis publish protocol (docs/redis-protocol.md) spoken from outside the crate, over real
//! sockets and real `redis-server` processes.
//!
//! On each wiring (one server with Pub/Sub and with Streams, a three-primary cluster with each)
//! a demo instance streams a topic over HTTP while these publish to it: the doc's `redis-cli`
//! example, run as written; `redis-cli` EVALs of the script with the KEYS and ARGV the doc lists
//! (every kind of field, an empty envelope); and the Python and Node publish functions of
//! docs/redis-protocol/, run as written. Each event arrives with its data, its type and the id
//! the script answered, numbered right after the one before. With Streams, the doc's example
//! run twice is published once (its idempotency key), and a second instance resumes a client
//! from the first event with `Last-Event-ID`, replaying from Redis what was published this way.
//!
//! The Python and Node functions need redis-py (`pip install redis`) and the `redis` package
//! (`npm install --prefix tests/redis-protocol`); without them those steps print `SKIPPED`,
//! and with `TOWER_SSE_REQUIRE_CLIENTS=1` (as CI sets) they fail instead.
#![cfg(feature = "redis")]

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{SystemTime, UNIX_EPOCH},
};

use support::{
    cluster::RedisCluster,
    demo::Demo,
    http::{Frame, SseClient},
    redis::RedisServer,
};
use tower_sse::{bus::redis::PROTOCOL_VERSION, RedisConfig};

/// The topic every test publishes to, the doc's examples' too.
const TOPIC: &str = "orders";

/// The instances' defaults, which the arguments of a publish repeat (ARGV[6..8]).
const MAX_LEN: &str = "1000";
const MAX_AGE_MS: &str = "3600000";
const IDLE_TTL_MS: &str = "86400000";
/// How long Redis remembers an idempotency key, in seconds (ARGV[5], Streams).
const REMEMBER_S: &str = "120";

/// A way a bus runs on Redis, and so the script to call and its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wiring {
    PubSub,
    Streams,
    ClusterPubSub,
    ClusterStreams,
}

impl Wiring {
    const ALL: [Wiring; 4] = [
        Wiring::PubSub,
        Wiring::Streams,
        Wiring::ClusterPubSub,
        Wiring::ClusterStreams,
    ];

    /// The script's file under src/bus/redis/lua/, without `.lua`; also the name the snippet
    /// drivers take.
    fn name(self) -> &'static str {
        match self {
            Wiring::PubSub => "pubsub",
            Wiring::Streams => "streams",
            Wiring::ClusterPubSub => "cluster_pubsub",
            Wiring::ClusterStreams => "cluster_streams",
        }
    }

    fn on_cluster(self) -> bool {
        matches!(self, Wiring::ClusterPubSub | Wiring::ClusterStreams)
    }

    fn stores(self) -> bool {
        matches!(self, Wiring::Streams | Wiring::ClusterStreams)
    }

    /// The demo's options for this wiring, given its Redis (`--redis URL` or
    /// `--redis-cluster URLS`).
    fn demo_args(self, redis: &[String]) -> Vec<String> {
        let mut args = redis.to_vec();
        args.push("--backend".to_owned());
        args.push(if self.stores() { "streams" } else { "pubsub" }.to_owned());
        args
    }

    /// KEYS, as the doc lists them (prefix `tower-sse`), with the idempotency key `key`.
    fn keys(self, topic: &str, key: &str) -> Vec<String> {
        match self {
            Wiring::PubSub => vec!["tower-sse:state".to_owned()],
            Wiring::Streams => vec![
                "tower-sse:state".to_owned(),
                format!("tower-sse:s:{topic}"),
                format!("tower-sse:i:{key}"),
                "tower-sse:clock".to_owned(),
            ],
            Wiring::ClusterPubSub => vec![format!("tower-sse:{{{topic}}}:state")],
            Wiring::ClusterStreams => vec![
                format!("tower-sse:{{{topic}}}:state"),
                format!("tower-sse:{{{topic}}}:s"),
                format!("tower-sse:{{{topic}}}:i:{key}"),
            ],
        }
    }

    /// ARGV[2], as the doc lists it.
    fn channel(self, topic: &str) -> String {
        match self {
            Wiring::PubSub => format!("tower-sse:t:{topic}"),
            Wiring::Streams => format!("tower-sse:n:{topic}"),
            Wiring::ClusterPubSub => format!("tower-sse:{{{topic}}}:t"),
            Wiring::ClusterStreams => format!("tower-sse:{{{topic}}}:n"),
        }
    }
}

/// Where `redis-cli` and the snippets reach Redis: a node's port and URL.
struct Redis {
    port: u16,
    cluster: bool,
}

impl Redis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `redis-cli`'s options to reach it (`-c` follows a cluster's redirections).
    fn cli_options(&self) -> Vec<String> {
        let mut options = vec!["-p".to_owned(), self.port.to_string()];
        if self.cluster {
            options.push("-c".to_owned());
        }
        options
    }
}

/// The crate's root, where the doc's examples run and the scripts are read from.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The script of `wiring` as the doc says: the prelude, then the wiring's file.
fn script(wiring: Wiring) -> String {
    let lua = root().join("src/bus/redis/lua");
    let prelude = fs::read_to_string(lua.join("prelude.lua")).unwrap();
    prelude + &fs::read_to_string(lua.join(format!("{}.lua", wiring.name()))).unwrap()
}

/// The doc's text.
fn doc() -> String {
    fs::read_to_string(root().join("docs/redis-protocol.md")).unwrap()
}

/// The doc's `redis-cli` example for `wiring`: the one `sh` block that calls its script.
fn doc_example(wiring: Wiring) -> String {
    let doc = doc();
    let mut lines = doc.lines();
    let mut examples = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            examples.push(block.join("\n"));
        }
    }
    let calls = format!("src/bus/redis/lua/{}.lua)", wiring.name());
    let mine: Vec<String> = examples
        .into_iter()
        .filter(|e| e.contains(&calls))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one example in the doc for {wiring:?}: {mine:?}"
    );
    mine.into_iter().next().unwrap()
}

/// What a publish script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    id: String,
    repeated: bool,
}

impl Reply {
    /// Reads `redis-cli`'s output of a reply: epoch, sequence number and `repeated`, one a line.
    fn parse(output: &Output) -> Self {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stdout.lines().collect();
        let [epoch, seq, repeated] = lines[..] else {
            panic!("not a reply of three: {stdout:?} (stderr {stderr:?})");
        };
        assert!(
            epoch.len() == 8 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
            "epoch {epoch:?}"
        );
        assert!(seq.parse::<u64>().is_ok(), "sequence number {seq:?}");
        Self {
            id: format!("{epoch}-{seq}"),
            repeated: match repeated {
                "0" => false,
                "1" => true,
                other => panic!("repeated {other:?}"),
            },
        }
    }
}

/// Runs `program` with `args` in the crate's root and returns its output; fails unless it
/// succeeded.
fn run(program: &str, args: &[String]) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs the doc's example for `wiring` as written, with bash, `redis-cli` pointed at `redis`.
fn run_doc_example(redis: &Redis, wiring: Wiring) -> Reply {
    let options = redis.cli_options().join(" ");
    let script = format!(
        "redis-cli() {{ command redis-cli {options} \"$@\"; }}\n{}",
        doc_example(wiring)
    );
    Reply::parse(&run("bash", &["-c".to_owned(), script]))
}

/// Publishes with `redis-cli`: EVAL of the script with the KEYS and ARGV the doc lists, the
/// event's fields `fields` and the envelope's line `envelope`.
fn redis_cli_eval(redis: &Redis, wiring: Wiring, envelope: &str, fields: &str) -> Reply {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let keys = wiring.keys(TOPIC, &format!("test-{}", nanos.as_nanos()));
    let mut args = redis.cli_options();
    args.extend(["EVAL".to_owned(), script(wiring), keys.len().to_string()]);
    args.extend(keys);
    // The instances adopted an epoch when they started: this one is not used.
    args.extend(["5f0c2a9e".to_owned(), wiring.channel(TOPIC)]);
    args.extend([envelope.to_owned(), fields.to_owned()]);
    let remember = if wiring.stores() { REMEMBER_S } else { "0" };
    args.extend([remember, MAX_LEN, MAX_AGE_MS, IDLE_TTL_MS].map(str::to_owned));
    Reply::parse(&run("redis-cli", &args))
}

/// The envelope's line of an event published now.
fn envelope_now() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!(":@t={micros}\n")
}

/// A publish function of docs/redis-protocol/, run by its driver under tests/redis-protocol/.
#[derive(Debug, Clone, Copy)]
enum Snippet {
    Python,
    Node,
}

impl Snippet {
    /// Whether the snippet's Redis client loads. When it does not, says so loudly and goes on,
    /// or fails with `TOWER_SSE_REQUIRE_CLIENTS=1`.
    fn ready(self) -> bool {
        let (what, loads) = match self {
            Snippet::Python => (
                "python3 cannot import redis (pip install redis)",
                Command::new("python3")
                    .args(["-c", "import redis"])
                    .output(),
            ),
            Snippet::Node => (
                "node cannot load the redis package \
                 (npm install --prefix tests/redis-protocol)",
                Command::new("node")
                    .args(["--input-type=module", "-e", "await import('redis')"])
                    .current_dir(root().join("tests/redis-protocol"))
                    .output(),
            ),
        };
        if loads.is_ok_and(|output| output.status.success()) {
            return true;
        }
        if std::env::var("TOWER_SSE_REQUIRE_CLIENTS").as_deref() == Ok("1") {
            panic!("{what}, and TOWER_SSE_REQUIRE_CLIENTS=1");
        }
        eprintln!("SKIPPED: {what} (set TOWER_SSE_REQUIRE_CLIENTS=1 to fail)");
        false
    }

    /// Publishes `data` of type `event` with the snippet's function for `wiring`; returns the
    /// id it answered.
    fn publish(self, redis: &Redis, wiring: Wiring, data: &str, event: &str) -> String {
        let (program, driver) = match self {
            Snippet::Python => ("python3", "tests/redis-protocol/driver.py"),
            Snippet::Node => ("node", "tests/redis-protocol/driver.mjs"),
        };
        let url = redis.url();
        let args = [driver, wiring.name(), url.as_str(), TOPIC, data, event].map(str::to_owned);
        let output = run(program, &args);
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

/// The sequence number of `id`, after checking it is of `epoch`.
fn sequence(id: &str, epoch: &str) -> u64 {
    let (e, seq) = id.split_once('-').expect("an id EPOCH-SEQ");
    assert_eq!(e, epoch, "{id} is of the stream's epoch");
    seq.parse().unwrap()
}

/// A stream of the topic, and what it received from each publish.
struct Watch {
    client: SseClient,
    received: Vec<Frame>,
}

impl Watch {
    /// The next event must be the one published with `id`, with `data` and type `event`, and
    /// numbered right after the one before.
    async fn expect(&mut self, id: &str, event: Option<&str>, data: &str) -> Frame {
        let frame = self.client.next_event().await.expect("the stream goes on");
        assert_eq!(frame.id.as_deref(), Some(id), "{frame:?}");
        assert_eq!(frame.event.as_deref(), event, "{frame:?}");
        assert_eq!(frame.data.as_deref(), Some(data), "{frame:?}");
        if let Some(before) = self.received.last() {
            let before = before.id.as_deref().unwrap();
            let epoch = before.split_once('-').unwrap().0;
            assert_eq!(sequence(id, epoch), sequence(before, epoch) + 1);
        }
        self.received.push(frame.clone());
        frame
    }
}

/// Publishes into a demo instance of `wiring` on `redis` in every way the doc describes, and
/// checks what arrives; with Streams, resumes on a second instance. `redis_args` names the
/// Redis for the demo.
async fn publishes_from_outside_rust(wiring: Wiring, redis: &Redis, redis_args: &[String]) {
    let args = wiring.demo_args(redis_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let demo = Demo::start(&args);
    let path = format!("/events/{TOPIC}");
    let mut client = SseClient::connect(demo.addr, &path, None).await;
    assert_eq!(client.status, 200);
    assert!(client.next_event().await.unwrap().is_status());
    let mut watch = Watch {
        client,
        received: Vec::new(),
    };

    // The doc's example, as written.
    let first = run_doc_example(redis, wiring);
    assert!(!first.repeated);
    watch
        .expect(&first.id, Some("shipped"), "order 17\n2 parcels")
        .await;
    if wiring.stores() {
        // Its idempotency key is remembered: the same publish again stores nothing.
        let again = run_doc_example(redis, wiring);
        assert_eq!(again.id, first.id);
        assert!(again.repeated);
    }

    // Every kind of line the fields may have, and UTF-8 data.
    let fields = ": a comment\nevent: note\nretry: 2500\ndata: first line\ndata:\ndata:  indented \
                  \u{1f4e6}\n";
    let reply = redis_cli_eval(redis, wiring, &envelope_now(), fields);
    assert!(!reply.repeated);
    let frame = watch
        .expect(&reply.id, Some("note"), "first line\n\n indented \u{1f4e6}")
        .await;
    assert_eq!(frame.retry, Some(2500));
    assert_eq!(frame.comments, ["a comment"]);

    // An empty envelope, and no type.
    let reply = redis_cli_eval(redis, wiring, "", "data: without an envelope\n");
    watch.expect(&reply.id, None, "without an envelope").await;

    // The snippets, as written: line breaks of every kind in the data.
    for snippet in [Snippet::Python, Snippet::Node] {
        if !snippet.ready() {
            continue;
        }
        let data = format!("{snippet:?}\r\nsecond line\rthird");
        let id = snippet.publish(redis, wiring, &data, "snippet");
        let expected = format!("{snippet:?}\nsecond line\nthird");
        watch.expect(&id, Some("snippet"), &expected).await;
    }

    if wiring.stores() {
        // Another instance, which heard none of it, replays it from Redis.
        let other = Demo::start(&args);
        let mut client = SseClient::connect(other.addr, &path, Some(&first.id)).await;
        assert_eq!(client.status, 200);
        let status = client.next_event().await.unwrap();
        assert!(status.is_status());
        let replayed = format!(r#""replayed":{}"#, watch.received.len() - 1);
        assert!(status.data().contains(&replayed), "{}", status.data());
        for expected in &watch.received[1..] {
            assert_eq!(&client.next_event().await.unwrap(), expected);
        }
    }
}

/// One server on `wiring`, or `None` when Redis is not installed.
async fn on_one_server(wiring: Wiring) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = Redis {
        port: server.port(),
        cluster: false,
    };
    let args = ["--redis".to_owned(), server.url()];
    publishes_from_outside_rust(wiring, &redis, &args).await;
}

/// A three-primary cluster on `wiring`, or nothing when Redis is not installed.
async fn on_a_cluster(wiring: Wiring) {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(0))
        .await
        .expect("start the cluster")
    else {
        return;
    };
    let redis = Redis {
        port: cluster.port(cluster.primaries()[0]),
        cluster: true,
    };
    let args = ["--redis-cluster".to_owned(), cluster.urls().join(",")];
    publishes_from_outside_rust(wiring, &redis, &args).await;
}

#[tokio::test]
async fn one_server_pubsub() {
    on_one_server(Wiring::PubSub).await;
}

#[tokio::test]
async fn one_server_streams() {
    on_one_server(Wiring::Streams).await;
}

#[tokio::test]
async fn cluster_pubsub() {
    on_a_cluster(Wiring::ClusterPubSub).await;
}

#[tokio::test]
async fn cluster_streams() {
    on_a_cluster(Wiring::ClusterStreams).await;
}

/// The doc, its examples and the snippets name the version the crate speaks, and the defaults
/// they repeat are `RedisConfig`'s.
#[test]
fn the_doc_and_the_snippets_agree_with_the_crate() {
    let doc = doc();
    let title = format!("# Redis publish protocol, version {PROTOCOL_VERSION}");
    assert_eq!(doc.lines().next(), Some(title.as_str()));
    let limits = [MAX_LEN, MAX_AGE_MS, IDLE_TTL_MS].join(" ");
    for wiring in Wiring::ALL {
        let example = doc_example(wiring);
        assert!(example.contains(&limits), "{example}");
        assert!(example.contains(&wiring.channel(TOPIC)), "{example}");
        let mut keys = wiring.keys(TOPIC, "order-17-shipped");
        if wiring.on_cluster() {
            // Quoted, for their braces.
            keys = keys.iter().map(|k| format!("'{k}'")).collect();
        }
        let keys = keys.join(" ");
        assert!(example.contains(&keys), "{example}\nlacks {keys}");
    }

    let defaults = format!("{:?}", RedisConfig::new("redis://127.0.0.1/"));
    for field in [
        r#"prefix: "tower-sse""#,
        "stream_max_len: 1000,",
        "stream_max_age: 3600s,",
        "stream_idle_ttl: 86400s,",
        "idempotency_ttl: 120s,",
    ] {
        assert!(defaults.contains(field), "{defaults} lacks {field}");
    }
    let marker = format!("-- tower-sse Redis publish protocol v{PROTOCOL_VERSION}");
    for (file, prefix) in [
        ("publish.py", r#"PREFIX = "tower-sse""#),
        ("publish.mjs", "PREFIX = 'tower-sse'"),
    ] {
        let path: PathBuf = root().join("docs/redis-protocol").join(file);
        let text = fs::read_to_string(&path).unwrap();
        for expected in [
            marker.as_str(),
            prefix,
            "MAX_LEN = 1000",
            "MAX_AGE_MS = 3_600_000",
            "IDLE_TTL_MS = 86_400_000",
            "REMEMBER_S = 120",
        ] {
            assert!(
                text.contains(expected),
                "{} lacks {expected}",
                path.display()
            );
        }
    }
}
