//! The axum example's per-user stream, over real sockets: each user sees only their own
//! orders, other users' orders never arrive, the stream ends at the token's expiry and resumes
//! with a fresh token; anonymous clients get nothing, and the layer serves no route of its own.

mod support;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
pub mod axum_example;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::http::{request_with, SseClient};
use tokio::net::TcpListener;
use tower_sse::EventBus;

fn token(user: &str, secs: u64) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let claims = serde_json::json!({ "sub": user, "exp": exp, "publish": ["orders"] });
    let key = jsonwebtoken::EncodingKey::from_secret(axum_example::DEFAULT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn start() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum_example::serve(
        listener,
        EventBus::memory(),
        std::future::pending(),
    ));
    addr
}

async fn order(addr: std::net::SocketAddr, token: &str, item: &str) -> String {
    let auth = format!("Bearer {token}");
    let (status, _, body) = request_with(
        addr,
        "POST",
        "/orders",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &format!(r#"{{"item":"{item}"}}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body.split('"').nth(3).unwrap().to_owned()
}

async fn stream(addr: std::net::SocketAddr, token: &str, resume: Option<&str>) -> SseClient {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(id) = resume {
        headers.push(("last-event-id", id));
    }
    let client = SseClient::connect_with(addr, "/me/orders", &headers).await;
    assert_eq!(client.status, 200);
    client
}

/// The data of the next frame that has any (skipped events go out as an `id:` alone).
async fn next_data(client: &mut SseClient) -> String {
    loop {
        if let Some(data) = client.next_event().await.expect("an event").data {
            return data;
        }
    }
}

#[tokio::test]
async fn each_user_sees_only_their_orders_until_the_token_expires() {
    let addr = start().await;
    let (alice, bob) = (token("alice", 3), token("bob", 600));
    let mut alices = stream(addr, &alice, None).await;
    let mut bobs = stream(addr, &bob, None).await;
    assert!(alices.next_event().await.unwrap().is_status());
    assert!(bobs.next_event().await.unwrap().is_status());

    order(addr, &alice, "tea").await;
    let bobs_order = order(addr, &bob, "secret plans").await;
    let last = order(addr, &alice, "cake").await;

    let mut seen = Vec::new();
    loop {
        let frame = alices.next_frame().await.expect("the stream goes on");
        if let Some(data) = &frame.data {
            assert_eq!(frame.event.as_deref(), Some("order"));
            assert!(!data.contains("secret plans"), "bob's order reached alice");
            seen.push(data.clone());
        } else if frame.id.as_deref() == Some(bobs_order.as_str()) {
            // Bob's order is skipped; only its id may go out.
        }
        if frame.id.as_deref() == Some(last.as_str()) {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            r#"{"user":"alice","item":"tea"}"#,
            r#"{"user":"alice","item":"cake"}"#
        ]
    );
    let frame = next_data(&mut bobs).await;
    assert_eq!(frame, r#"{"user":"bob","item":"secret plans"}"#);

    // The token expires: the stream ends with the id to resume from.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = alices.next_frame().await.expect("a final comment");
            if let Some(c) = frame.comments.iter().find(|c| c.contains("expired")) {
                return c.clone();
            }
        }
    })
    .await
    .expect("the stream ends at the token's expiry");
    assert!(end.contains(&last), "{end}");
    assert!(alices.next_frame().await.is_none());

    // A fresh token resumes: what alice missed, and none of bob's.
    let fresh = token("alice", 600);
    order(addr, &bob, "more plans").await;
    order(addr, &fresh, "soup").await;
    let mut again = stream(addr, &fresh, Some(&last)).await;
    let status = again.next_event().await.unwrap();
    assert_eq!(status.data(), r#"{"status":"resumed","replayed":2}"#);
    let frame = next_data(&mut again).await;
    assert_eq!(frame, r#"{"user":"alice","item":"soup"}"#);
}

#[tokio::test]
async fn anonymous_clients_get_nothing_and_the_layer_serves_no_route() {
    let addr = start().await;
    let (status, _, body) = request_with(addr, "GET", "/me/orders", &[], "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = request_with(addr, "GET", "/events/orders", &[], "").await;
    assert_eq!(status, 404);
    // Publishing takes the token from the Authorization header only.
    let cookie = format!("sse_token={}", token("alice", 600));
    let (status, _, body) = request_with(
        addr,
        "POST",
        "/orders",
        &[("cookie", &cookie), ("content-type", "application/json")],
        r#"{"item":"tea"}"#,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization"), "{body}");
}
