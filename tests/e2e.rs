//! Demo processes sharing one real Redis, alone and behind a real nginx load balancer.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use support::{
    demo::Demo,
    http::{request, SseClient},
    redis::{free_port, RedisServer},
};

/// Publishes `data` to `topic` through `addr`, retrying a refused attempt (the balancer may be
/// failing over).
async fn publish(addr: SocketAddr, topic: &str, data: &str) -> String {
    for _ in 0..50 {
        let (status, _, body) = request(addr, "POST", &format!("/publish/{topic}"), data).await;
        if status == 202 {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            return json["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("publishing through {addr} kept failing");
}

/// Two demo processes on one Redis: clients on both get every event, in order, with the same
/// ids, whichever instance took the publish.
async fn two_instances(mode: &str) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--redis", &url, "--redis-mode", mode];
    let demos = [Demo::start(&args), Demo::start(&args)];
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut client = SseClient::connect(demos[i % 2].addr, "/events/news", None).await;
        assert_eq!(client.status, 200);
        assert!(client.next_event().await.unwrap().is_status());
        clients.push(client);
    }
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(publish(demos[i % 2].addr, "news", &format!("event {i}")).await);
    }
    for client in &mut clients {
        for (i, id) in ids.iter().enumerate() {
            let frame = client.next_event().await.unwrap();
            assert_eq!(frame.data(), format!("event {i}"));
            assert_eq!(frame.id.as_deref(), Some(id.as_str()));
        }
    }
}

#[tokio::test]
async fn two_demo_processes_interest_mode() {
    two_instances("interest").await;
}

#[tokio::test]
async fn two_demo_processes_pattern_mode() {
    two_instances("pattern").await;
}

#[tokio::test]
async fn sigterm_ends_streams_and_exits_cleanly() {
    let mut demo = Demo::start(&[]);
    let mut client = SseClient::connect(demo.addr, "/events/t", None).await;
    assert!(client.next_event().await.unwrap().is_status());
    let status = tokio::task::spawn_blocking(move || {
        let status = demo.terminate();
        (demo, status)
    });
    let end = client.next_frame().await.expect("a final comment");
    assert!(end.comments[0].contains("shutting down"), "{end:?}");
    assert!(client.next_frame().await.is_none());
    let (_demo, status) = status.await.unwrap();
    assert!(status.expect("the demo exits").success());
}

#[test]
fn bad_options_and_unreachable_redis_exit_with_one_line() {
    let demo = support::demo::demo_binary();
    for args in [
        vec!["--backend", "nosuch"],
        vec!["--max-connections", "many"],
        vec!["--redis", "redis://127.0.0.1:1"],
    ] {
        let out = Command::new(&demo)
            .args(&args)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("demo: "), "{stderr}");
    }
}

/// nginx in front of demo processes, started with a config of its own in a temporary folder.
struct Nginx {
    addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    fn start(upstreams: &[SocketAddr]) -> Option<Self> {
        let installed = Command::new("nginx")
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("TOWER_SSE_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("nginx not found on PATH, and TOWER_SSE_REQUIRE_REDIS=1");
            }
            eprintln!("SKIPPED: nginx not found (set TOWER_SSE_REQUIRE_REDIS=1 to fail)");
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tower-sse-nginx-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a} max_fails=1 fail_timeout=30s;\n"))
            .collect();
        let d = dir.display();
        let config = format!(
            "worker_processes 1;\n\
             error_log {d}/error.log warn;\n\
             pid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               upstream demo {{\n{servers}  }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://demo;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_buffering off;\n\
                   proxy_read_timeout 1h;\n\
                   proxy_connect_timeout 2s;\n\
                   proxy_next_upstream error timeout non_idempotent;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            std::net::TcpStream::connect(addr).is_ok()
        });
        assert!(started, "nginx did not start; see {d}/error.log");
        Some(Self { addr, dir, child })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A fast shutdown through the master, which stops its workers: killing the master alone
        // would leave them running, listening on the port.
        let stopped = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let exited = stopped
            && (0..500).any(|_| {
                std::thread::sleep(Duration::from_millis(10));
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one reconnecting client saw.
#[derive(Debug, Default)]
struct Seen {
    connected: bool,
    events: Vec<u64>,
    ids: HashMap<u64, String>,
    /// The status of every connection after the first.
    reconnects: Vec<serde_json::Value>,
}

/// Follows `path` through `addr` like a browser's `EventSource`: on any end of the stream it
/// reconnects with the last id it saw.
async fn follow(addr: SocketAddr, path: &'static str, seen: Arc<Mutex<Seen>>) {
    let mut last_id: Option<String> = None;
    let mut connections = 0;
    loop {
        let mut client = SseClient::connect(addr, path, last_id.as_deref()).await;
        if client.status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        connections += 1;
        while let Some(frame) = client.next_frame().await {
            if let Some(id) = &frame.id {
                last_id = Some(id.clone());
            }
            if frame.is_status() {
                seen.lock().unwrap().connected = true;
                if connections > 1 {
                    let status = serde_json::from_str(frame.data()).unwrap();
                    seen.lock().unwrap().reconnects.push(status);
                }
            } else if frame.data.is_some() {
                let seq: u64 = frame.data().parse().unwrap();
                let mut seen = seen.lock().unwrap();
                seen.events.push(seq);
                seen.ids.insert(seq, frame.id.clone().unwrap());
            }
        }
    }
}

/// Three demo processes behind nginx, Pub/Sub backend; one is killed with SIGKILL. Its clients
/// reconnect through nginx to the others, resume from the history of an instance that was
/// listening, and every client ends with every event, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_three_pubsub_instances_one_killed() {
    three_instances_behind_nginx("pubsub").await;
}

/// The same with the Streams backend: the reconnecting clients' missed events come from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_three_streams_instances_one_killed() {
    three_instances_behind_nginx("streams").await;
}

async fn three_instances_behind_nginx(backend: &str) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--redis", &url, "--backend", backend];
    let mut demos: Vec<Demo> = (0..3).map(|_| Demo::start(&args)).collect();
    let addrs: Vec<SocketAddr> = demos.iter().map(|d| d.addr).collect();
    let Some(nginx) = Nginx::start(&addrs) else {
        return;
    };

    let clients: Vec<Arc<Mutex<Seen>>> = (0..30).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = clients
        .iter()
        .map(|seen| tokio::spawn(follow(nginx.addr, "/events/e2e", seen.clone())))
        .collect();

    let wait_all = |n: usize| {
        let clients = clients.clone();
        async move {
            let done = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if clients.iter().all(|c| c.lock().unwrap().events.len() >= n) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            let counts: Vec<usize> = clients
                .iter()
                .map(|c| c.lock().unwrap().events.len())
                .collect();
            assert!(done.is_ok(), "not every client got {n} events: {counts:?}");
        }
    };

    // Every stream is live once its client has read the status event.
    tokio::time::timeout(Duration::from_secs(30), async {
        while !clients.iter().all(|c| c.lock().unwrap().connected) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every client connected");

    let mut seq = 0u64;
    // Phase 1: everyone connected and receiving.
    for _ in 0..30 {
        seq += 1;
        publish(nginx.addr, "e2e", &seq.to_string()).await;
    }
    wait_all(30).await;

    // Phase 2: one instance dies; events go on through the other two while its clients
    // reconnect.
    demos[1].kill();
    for _ in 0..30 {
        seq += 1;
        publish(nginx.addr, "e2e", &seq.to_string()).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Phase 3: after the reconnects.
    for _ in 0..30 {
        seq += 1;
        publish(nginx.addr, "e2e", &seq.to_string()).await;
    }
    wait_all(seq as usize).await;
    for task in tasks {
        task.abort();
    }

    let expected: Vec<u64> = (1..=seq).collect();
    let mut reconnected = 0;
    for (i, seen) in clients.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.events, expected,
            "client {i}: every event, once, in order"
        );
        for status in &seen.reconnects {
            assert_eq!(status["status"], "resumed", "client {i}: {status}");
        }
        reconnected += usize::from(!seen.reconnects.is_empty());
    }
    assert!(reconnected > 0, "no client was on the killed instance");
    // Every client saw the same id for the same event.
    let first = clients[0].lock().unwrap().ids.clone();
    for seen in &clients {
        assert_eq!(seen.lock().unwrap().ids, first);
    }
    drop(nginx);
}
