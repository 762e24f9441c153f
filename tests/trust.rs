//! What the demo takes from clients cannot forge the server's events, publish across sites,
//! overflow its clock arithmetic or reach topics its author did not mean: over real HTTP on
//! 127.0.0.1, against the demo with `--jwt-secret`.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    demo::Demo,
    http::{request, request_with, SseClient},
};

const SECRET: &str = "the secret of the trust boundary tests";

fn token(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn the_demo_refuses_forged_status_cross_site_publishes_overflow_and_loose_selectors() {
    let demo = Demo::start(&["--jwt-secret", SECRET]);
    let writer = token(&json!({
        "exp": in_an_hour(), "subscribe": ["org1:*"], "publish": ["org1:*"]
    }));
    let auth = bearer(&writer);

    // The status event cannot be forged.
    let (status, _, body) = request_with(
        demo.addr,
        "POST",
        "/publish/org1:orders?event=sse-status",
        &[("authorization", &auth)],
        r#"{"status":"fresh"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reserved"), "{body}");

    // A publish takes its token from the Authorization header only.
    let cookie = format!("sse_token={writer}");
    let (status, headers, body) = request_with(
        demo.addr,
        "POST",
        "/publish/org1:orders",
        &[("cookie", &cookie)],
        "from a cookie",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, body) = request(
        demo.addr,
        "POST",
        &format!("/publish/org1:orders?access_token={writer}"),
        "from the query",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Subscribing still reads the cookie (`EventSource` cannot set headers).
    let mut stream =
        SseClient::connect_with(demo.addr, "/events/org1:orders", &[("cookie", &cookie)]).await;
    assert_eq!(stream.status, 200);
    assert!(stream.next_event().await.unwrap().is_status());
    let (status, _, body) = request_with(
        demo.addr,
        "POST",
        "/publish/org1:orders",
        &[("authorization", &auth)],
        "from the header",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Only that one reached the stream.
    assert_eq!(stream.next_event().await.unwrap().data(), "from the header");

    // An `exp` beyond any clock is refused, and the demo goes on serving.
    let far = token(&json!({"exp": u64::MAX, "subscribe": ["org1:*"], "publish": ["org1:*"]}));
    let (status, _, body) = request_with(
        demo.addr,
        "POST",
        "/publish/org1:orders",
        &[("authorization", &bearer(&far))],
        "x",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = request(demo.addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200);

    // `org1*` is refused, naming the selector; `org1:*` does not grant `org10:x`.
    let loose = token(&json!({"exp": in_an_hour(), "subscribe": ["org1*"]}));
    let (status, _, body) = request_with(
        demo.addr,
        "GET",
        "/events/org10:x",
        &[("authorization", &bearer(&loose))],
        "",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("org1*") && body.contains("org1:*"), "{body}");
    let (status, _, body) = request_with(
        demo.addr,
        "GET",
        "/events/org10:x",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
}
