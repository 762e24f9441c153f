//! `PublishService` mounted in an axum app, over real HTTP on 127.0.0.1: closed until the app
//! chooses, what a publish answers and delivers, and a clear 4xx for every mistake.

mod support;

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    http::{request, request_with, SseClient},
    redis::RedisServer,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower_sse::{EventBus, JwtPolicy, PublishService, RedisConfig, SseLayer};

const SECRET: &str = "publish-service-test-secret";

/// An axum app: the layer's streams, and `service` nested at `/publish`.
struct App {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn app(bus: &EventBus, service: PublishService) -> App {
    let router = axum::Router::new()
        .nest_service("/publish", service.path("/"))
        .layer(SseLayer::new(bus.clone()).public());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    App { addr, task }
}

fn token(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

fn in_an_hour() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    now.as_secs() + 3600
}

#[tokio::test]
async fn closed_until_the_app_chooses() {
    let bus = EventBus::memory();
    let app = app(&bus, PublishService::new(bus.clone())).await;
    let (status, _, body) = request(app.addr, "POST", "/publish/news", "hello").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("PublishService::authorize"), "{body}");
}

#[tokio::test]
async fn a_publish_answers_its_id_and_reaches_the_stream() {
    let bus = EventBus::memory();
    let app = app(&bus, PublishService::new(bus.clone()).public()).await;
    let mut client = SseClient::connect(app.addr, "/events/room%3A1", None).await;
    assert!(client.next_event().await.unwrap().is_status());

    let (status, headers, body) =
        request(app.addr, "POST", "/publish/room%3A1?event=chat", "hi there").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["local_only"], false);

    let event = client.next_event().await.unwrap();
    assert_eq!(event.data(), "hi there");
    assert_eq!(event.event.as_deref(), Some("chat"));
    assert_eq!(Some(answer["id"].as_str().unwrap()), event.id.as_deref());
}

#[tokio::test]
async fn every_mistake_gets_a_clear_4xx() {
    let bus = EventBus::builder().max_event_bytes(16).memory();
    let app = app(&bus, PublishService::new(bus.clone()).public()).await;
    let cases = [
        ("GET", "/publish/news", "", 405, "POST"),
        ("POST", "/publish/news?event=sse-status", "x", 400, "sse-"),
        ("POST", "/publish/no%20spaces", "x", 400, "topic"),
        (
            "POST",
            "/publish/news",
            "seventeen bytes!!",
            413,
            "16 bytes",
        ),
    ];
    for (method, path, body, want, says) in cases {
        let (status, _, answer) = request(app.addr, method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
        assert!(answer.contains(says), "{method} {path}: {answer}");
    }
    let (status, headers, _) = request(app.addr, "GET", "/publish/news", "").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    // Nothing was published by any of them.
    assert_eq!(bus.stats().history_events, 0);
}

#[tokio::test]
async fn a_policy_decides_with_the_authorization_header_only() {
    let bus = EventBus::memory();
    let policy = JwtPolicy::hs256(SECRET);
    let app = app(&bus, PublishService::new(bus.clone()).authorize(policy)).await;
    let claims = json!({"sub": "ann", "exp": in_an_hour(), "publish": ["org1:*"]});
    let bearer = format!("Bearer {}", token(&claims));
    let cookie = format!("sse_token={}", token(&claims));

    let (status, _, body) = request(app.addr, "POST", "/publish/org1:a", "x").await;
    assert_eq!(status, 401, "no token: {body}");
    let headers = [("cookie", cookie.as_str())];
    let (status, _, body) = request_with(app.addr, "POST", "/publish/org1:a", &headers, "x").await;
    assert_eq!(status, 401, "a cookie only: {body}");
    assert!(body.contains("Authorization"), "{body}");
    let headers = [("authorization", bearer.as_str())];
    let (status, _, body) = request_with(app.addr, "POST", "/publish/org2:a", &headers, "x").await;
    assert_eq!(status, 403, "another org: {body}");
    let (status, _, body) = request_with(app.addr, "POST", "/publish/org1:a", &headers, "x").await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_safe_on_streams() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let bus = EventBus::builder()
        .redis_streams(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let app = app(&bus, PublishService::new(bus.clone()).public()).await;
    let mut client = SseClient::connect(app.addr, "/events/payments", None).await;
    assert!(client.next_event().await.unwrap().is_status());

    let key = [("idempotency-key", "delivery-42")];
    let mut ids = Vec::new();
    for data in ["paid", "paid (retried)"] {
        let (status, _, body) =
            request_with(app.addr, "POST", "/publish/payments", &key, data).await;
        assert_eq!(status, 202, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "the retry answers the first publish's id");
    let (status, _, body) = request(app.addr, "POST", "/publish/payments", "next").await;
    assert_eq!(status, 202, "{body}");
    // The stream sees the first publish and the next one, never the retry.
    assert_eq!(client.next_event().await.unwrap().data(), "paid");
    assert_eq!(client.next_event().await.unwrap().data(), "next");
    assert_eq!(
        server.command(&["XLEN", "tower-sse:s:payments"]).trim(),
        "2"
    );

    let bad = [("idempotency-key", "has space")];
    let (status, _, body) = request_with(app.addr, "POST", "/publish/payments", &bad, "x").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Idempotency-Key"), "{body}");
}
