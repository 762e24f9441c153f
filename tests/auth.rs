//! Authorization over real HTTP on 127.0.0.1: the JWT policy on streams (401, 403, expiry),
//! closure policies, and publish authorization in the demo server.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::request::Parts;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    demo::Demo,
    http::{request, request_with, serve, SseClient},
};
use tower_sse::{auth::Action, Denied, Event, EventBus, JwtPolicy, SseLayer, Topic};

const SECRET: &[u8] = b"a test secret that is long enough for HS256";

// Keys made for these tests only.
const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDBVSgwTwYi9aeQ\n\
hOfeFfvyd818bHOcID/waizO5eJJTJOiptJwaGozBq3zjh0dNa9uE8PFcoBouuMR\n\
9ySo6jSHmjrW6ONMXMKOygcvZ9Ojq8TYVwOn1gaQUz3pFWsKpYnEuIBmOjhhGzSj\n\
QPcTY6SuQIuX0kiCghQhyvd9NPzTZ3GHNzKEwxgxVPsYBbaNxy1vGz2vwM0Mqaiq\n\
y0Oq2DwtR/z5o1Vw/8lsDeUByoUlKCjygKwLdx/1MRyQjBD0r3JYRrNPdC4Q1g38\n\
/8o0/lAgT2aDm4cRSzgZBA9w4SN92CZm3rVbaCh8wUt5ORqVA7xRwpIXxAzD42p4\n\
6X5xeiK9AgMBAAECggEAPcXDzYuyXkE3hQmyPFex5Ms6sOLGHcCALYT/RCxXnSwG\n\
kBXVb20tYZhkxElILCkXIIjYKKJpPQ1ZuEfLQt1yY1F4M2q+FYwd7hnHKfJ2wPkF\n\
MEq9NEdCWaL/SRY62XADEQQSopc/pGdY7kC3sU5JNBQThjL+UBTX8eQ0J6FilvkL\n\
92UtzETKQntZSoTsaQSnDU98TgdiweVmc49O2wAMw667/sZPPk4C5NplEjg87H/c\n\
7hPyrgvvS9MbX4VNqQP2RTo9BcyQ8EV2BPdfl9176QFBLfdKW7Xn+Ra2W9iHMPIm\n\
xNv+/r+bx0+Yabe9tPTXnXPs3QJx/vpcMJu4az3dUQKBgQDr8+cDD2uzBpgk3esO\n\
/y/qOxjDkMfq4dapc6zc/2k1q8648JaZauQ2+LSzZrpNYDEhTZlAQFQpBsbLdjQG\n\
6/5RMiezNDd6gWtoRxUz3ufce9w0EENH+HmF/M9bq58fDiHQyWqiQW3mMV9FY4oV\n\
9SEUlOBTiWbGpsl/DYIqaEtpFwKBgQDRwj6p/PZ9et4kQEmc+HMsGPwmI20QaZyp\n\
uTl2iNMhQhpzD218cbmO/hEKVIf9B48xuYedD9w8hXFq14k4RDv4TS/xF9fuO1/P\n\
4g63/Wp3q7ja7RqgX961Gv/YqPUbWmxyk7AtLm9+gW1GRsdtUHyjsyhwU5fSP5KR\n\
8TMWudYPSwKBgH+UhdiVwfovGpz0kWCugs333lAAPNi3/EXrkhB82fp3R3OgQw35\n\
SiSfHbXTWfD0jhwfxTmEjv0P+PWSmFcVy5FDuUugdE79I4JizQgbAuuo3UwZbwe/\n\
RpY4ODas+YDlN0uZXNsW3cGV+JmgVM3CmXxzc0g4ByZqkJDuUO91LTFJAoGAax1x\n\
mKcITL3A0OxPayxozB0aLnOqz1XPXdCrqn9mqbYzAYzgUUtWAdJ2azsNksYYdsES\n\
or8lrXZLm87jUOtvYHYyREDz0MFbRTJgZ86uXtw/cvTfwwQSG5PlEQP+3vAHL1+B\n\
+SCcaRK49clRL96JN6NWxD276u7x7zsn5rQRvw8CgYBthn7ScjUbNNW0xgUNOZRl\n\
cFTSYWvJhh6XQ2QYIgUMgvaAP2/lQSKT/9MYUc+vpzE7tEZGuPevgmegOvZ2f5oF\n\
mdd9Gyi8fdtJATHQCOEfyQWnmoo794PU/2l5njWGCs5N/T87dUeSND25Bfz+qJFP\n\
0GtfM2+sK3sAfXzI9OmQTA==\n\
-----END PRIVATE KEY-----\n";
const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwVUoME8GIvWnkITn3hX7\n\
8nfNfGxznCA/8GoszuXiSUyToqbScGhqMwat844dHTWvbhPDxXKAaLrjEfckqOo0\n\
h5o61ujjTFzCjsoHL2fTo6vE2FcDp9YGkFM96RVrCqWJxLiAZjo4YRs0o0D3E2Ok\n\
rkCLl9JIgoIUIcr3fTT802dxhzcyhMMYMVT7GAW2jcctbxs9r8DNDKmoqstDqtg8\n\
LUf8+aNVcP/JbA3lAcqFJSgo8oCsC3cf9TEckIwQ9K9yWEazT3QuENYN/P/KNP5Q\n\
IE9mg5uHEUs4GQQPcOEjfdgmZt61W2gofMFLeTkalQO8UcKSF8QMw+NqeOl+cXoi\n\
vQIDAQAB\n\
-----END PUBLIC KEY-----\n";
const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgumRzu1FSOaubkPMI\n\
VnwvKoVEiZ+U0gRquhdUKP+KU0ChRANCAARExKQW4h8tYorRtQh6OaFQhSz04z/C\n\
j9KCxehELcVWuRVMG6i90gCzEqWpQMt+MaIkJnuEP+FygkLjxns1NZQc\n\
-----END PRIVATE KEY-----\n";
const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAERMSkFuIfLWKK0bUIejmhUIUs9OM/\n\
wo/SgsXoRC3FVrkVTBuovdIAsxKlqUDLfjGiJCZ7hD/hcoJC48Z7NTWUHA==\n\
-----END PUBLIC KEY-----\n";
const OTHER_EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjsvNrbwTNi8wLnp5\n\
7ffdU2TgQxst4CioGkf8IwlimYKhRANCAARddetlqUlJuValfE5iJDtv7LyQu3JI\n\
NVC79cmLPgTfmX+cwhDkljMlGYJLrIZ/SAq5W72g+6gYWGmM5Co5wE2O\n\
-----END PRIVATE KEY-----\n";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `sub` with `subscribe` and `publish` selectors, expiring in `ttl` seconds
/// (negative: expired).
fn claims(subscribe: &[&str], publish: &[&str], ttl: i64) -> Value {
    json!({
        "sub": "user-1",
        "exp": now().saturating_add_signed(ttl),
        "subscribe": subscribe,
        "publish": publish,
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

/// Base64url without padding, as JWTs use it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with header `{"alg":"none"}` and no signature, written by hand.
fn unsigned(claims: &Value) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn jwt_layer(bus: &EventBus) -> SseLayer {
    SseLayer::new(bus.clone()).authorize(JwtPolicy::hs256(SECRET))
}

/// Opens `path` with `token` in the `Authorization` header.
async fn open(addr: std::net::SocketAddr, path: &str, token: &str) -> SseClient {
    SseClient::connect_with(addr, path, &[("authorization", &bearer(token))]).await
}

#[test]
fn base64url_encodes_like_the_spec() {
    assert_eq!(base64url(b""), "");
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(b"foob"), "Zm9vYg");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}

#[tokio::test]
async fn no_token_is_401_with_a_bearer_challenge() {
    let bus = EventBus::memory();
    let server = serve(jwt_layer(&bus)).await;
    let (status, headers, body) = request(server.addr, "GET", "/events/org1:orders", "").await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.contains("no token"), "{body}");
    // Other requests are not the layer's business.
    let (status, _, _) = request(server.addr, "GET", "/other", "").await;
    assert_eq!(status, 200);
    assert_eq!(bus.stats().subscriptions, 0);
}

#[tokio::test]
async fn invalid_tokens_are_401() {
    let bus = EventBus::memory();
    let server = serve(jwt_layer(&bus)).await;
    let good = claims(&["org1:*"], &[], 3600);
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let cases = [
        (
            "wrong key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another secret, just as long as the first"),
                &good,
            ),
            "signature",
        ),
        ("expired", hs256(&claims(&["org1:*"], &[], -120)), "expired"),
        (
            "another HMAC algorithm",
            sign(Algorithm::HS512, &EncodingKey::from_secret(SECRET), &good),
            "algorithm",
        ),
        (
            "RS256 instead of HS256",
            sign(Algorithm::RS256, &rsa, &good),
            "algorithm",
        ),
        ("alg none", unsigned(&good), "malformed"),
        (
            "no exp",
            hs256(&json!({"sub": "user-1", "subscribe": ["org1:*"]})),
            "claim",
        ),
        ("garbage", "not.a.token".to_owned(), "malformed"),
        (
            "a selector that reaches into longer names",
            hs256(&claims(&["org1*"], &[], 3600)),
            "\"org1*\"",
        ),
        (
            "not valid yet",
            hs256(&json!({"exp": now() + 3600, "nbf": now() + 600, "subscribe": ["org1:*"]})),
            "not valid yet",
        ),
        (
            "exp beyond any clock",
            hs256(&json!({"exp": u64::MAX, "subscribe": ["org1:*"]})),
            "exp claim",
        ),
    ];
    for (case, token, says) in cases {
        let (status, headers, body) = request_with(
            server.addr,
            "GET",
            "/events/org1:orders",
            &[("authorization", &bearer(&token))],
            "",
        )
        .await;
        assert_eq!(status, 401, "{case}");
        assert_eq!(
            headers["www-authenticate"], r#"Bearer error="invalid_token""#,
            "{case}"
        );
        assert!(body.contains(says), "{case}: {body}");
        assert!(!body.contains(&token), "{case}: the token is echoed");
    }
    // The valid token is accepted, so the refusals were about the tokens.
    let client = open(server.addr, "/events/org1:orders", &hs256(&good)).await;
    assert_eq!(client.status, 200);
}

#[tokio::test]
async fn a_huge_exp_and_leeway_are_refused_without_a_panic() {
    let bus = EventBus::memory();
    // A century of leeway: `Duration` addition of it to the second `exp` (the largest a float
    // holds below 2^64) panicked.
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    let lenient = JwtPolicy::hs256(SECRET).leeway(century);
    let server = serve(SseLayer::new(bus.clone()).authorize(lenient)).await;
    for exp in [u64::MAX, u64::MAX - 2047] {
        let token = hs256(&json!({"exp": exp, "subscribe": ["org1:*"]}));
        let (status, _, body) = request_with(
            server.addr,
            "GET",
            "/events/org1:orders",
            &[("authorization", &bearer(&token))],
            "",
        )
        .await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("exp claim"), "{body}");
    }
    // The server is still there, and an ordinary token with the same leeway works.
    let client = open(
        server.addr,
        "/events/org1:orders",
        &hs256(&claims(&["org1:*"], &[], 60)),
    )
    .await;
    assert_eq!(client.status, 200);
}

#[tokio::test]
async fn a_token_is_read_from_header_query_or_cookie() {
    let bus = EventBus::memory();
    let server = serve(jwt_layer(&bus)).await;
    let token = hs256(&claims(&["org1:*"], &[], 3600));

    let mut clients = vec![
        open(server.addr, "/events/org1:t", &token).await,
        SseClient::connect_with(
            server.addr,
            &format!("/events/org1:t?access_token={token}"),
            &[],
        )
        .await,
        SseClient::connect_with(
            server.addr,
            "/events/org1:t",
            &[("cookie", &format!("theme=dark; sse_token={token}"))],
        )
        .await,
    ];
    for client in &mut clients {
        assert_eq!(client.status, 200);
        assert!(client.next_event().await.unwrap().is_status());
    }
    bus.publish("org1:t", Event::new("hello")).await.unwrap();
    for client in &mut clients {
        assert_eq!(client.next_event().await.unwrap().data(), "hello");
    }
}

#[tokio::test]
async fn topics_outside_the_selectors_are_403_even_among_allowed_ones() {
    let bus = EventBus::memory();
    let server = serve(jwt_layer(&bus)).await;
    let token = hs256(&claims(&["org1:*", "news"], &[], 3600));

    for (path, says) in [
        ("/events/org2:orders", "org2:orders"),
        ("/events?topic=org1:a&topic=org2:b", "org2:b"),
        ("/events/org1:a?topic=news&topic=news2", "news2"),
        ("/events?topic=org10:a", "org10:a"),
    ] {
        let (status, headers, body) = request_with(
            server.addr,
            "GET",
            path,
            &[("authorization", &bearer(&token))],
            "",
        )
        .await;
        assert_eq!(status, 403, "{path}");
        assert!(!headers.contains_key("www-authenticate"), "{path}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // Nothing was subscribed by the refused requests.
    assert_eq!(bus.stats().subscriptions, 0);

    // Allowed topics together work, and the stream carries them.
    let mut client = open(server.addr, "/events?topic=org1:a&topic=news", &token).await;
    assert_eq!(client.status, 200);
    client.next_event().await.unwrap();
    bus.publish("org2:b", Event::new("not yours"))
        .await
        .unwrap();
    bus.publish("news", Event::new("1")).await.unwrap();
    bus.publish("org1:a", Event::new("2")).await.unwrap();
    assert_eq!(client.next_event().await.unwrap().data(), "1");
    assert_eq!(client.next_event().await.unwrap().data(), "2");

    // A token that selects nothing may subscribe to nothing.
    let nothing = hs256(&json!({"exp": now() + 3600}));
    let client = open(server.addr, "/events/org1:a", &nothing).await;
    assert_eq!(client.status, 403);
}

#[tokio::test]
async fn rs256_and_es256_policies_verify_with_public_keys() {
    let bus = EventBus::memory();
    let good = claims(&["org1:*"], &[], 3600);

    let rs = serve(SseLayer::new(bus.clone()).authorize(JwtPolicy::rs256_pem(RSA_PUBLIC).unwrap()))
        .await;
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let client = open(
        rs.addr,
        "/events/org1:a",
        &sign(Algorithm::RS256, &rsa, &good),
    )
    .await;
    assert_eq!(client.status, 200);
    // The public key used as an HMAC secret: the classic algorithm confusion.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        &good,
    );
    assert_eq!(open(rs.addr, "/events/org1:a", &confused).await.status, 401);
    assert_eq!(
        open(rs.addr, "/events/org1:a", &unsigned(&good))
            .await
            .status,
        401
    );

    let es =
        serve(SseLayer::new(bus.clone()).authorize(JwtPolicy::es256_pem(EC_PUBLIC).unwrap())).await;
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let other = EncodingKey::from_ec_pem(OTHER_EC_PRIVATE.as_bytes()).unwrap();
    let token = sign(Algorithm::ES256, &ec, &good);
    assert_eq!(open(es.addr, "/events/org1:a", &token).await.status, 200);
    let wrong = sign(Algorithm::ES256, &other, &good);
    assert_eq!(open(es.addr, "/events/org1:a", &wrong).await.status, 401);
    let forbidden = open(es.addr, "/events/org2:a", &token).await;
    assert_eq!(forbidden.status, 403);

    assert!(JwtPolicy::rs256_pem("not a key").is_err());
    assert!(JwtPolicy::es256_pem(RSA_PUBLIC).is_err());
    // The key never shows in debug output.
    let debug = format!("{:?}", JwtPolicy::hs256(SECRET));
    assert!(!debug.contains("secret"), "{debug}");
}

#[tokio::test]
async fn the_stream_ends_when_the_token_expires() {
    let bus = EventBus::memory();
    let server = serve(jwt_layer(&bus)).await;
    let token = hs256(&claims(&["org1:*"], &[], 2));
    let mut client = open(server.addr, "/events/org1:a", &token).await;
    assert_eq!(client.status, 200);
    let head = client.next_event().await.unwrap();
    assert!(head.is_status());
    let published = bus.publish("org1:a", Event::new("before")).await.unwrap();
    assert_eq!(client.next_event().await.unwrap().data(), "before");

    // Past any keep-alive comments, the closing comment comes.
    let end = loop {
        let frame = client.next_frame().await.expect("a closing comment");
        if let Some(comment) = frame.comments.iter().find(|c| !c.is_empty()) {
            break comment.clone();
        }
    };
    assert!(
        end.contains("token expired; reconnect with a fresh token"),
        "{end}"
    );
    assert!(end.contains(&published.id().to_string()), "{end}");
    assert!(client.next_frame().await.is_none());
    // The subscription went with the stream.
    tokio::time::timeout(support::http::WAIT, async {
        while bus.stats().subscriptions > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the subscription is released");

    // Reconnecting with the expired token is refused.
    let (status, _, body) = request_with(
        server.addr,
        "GET",
        "/events/org1:a",
        &[("authorization", &bearer(&token))],
        "",
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
}

#[tokio::test]
async fn closures_are_policies() {
    let bus = EventBus::memory();
    let policy = |req: &Parts, action: Action, topics: &[Topic]| {
        let Some(user) = req.headers.get("x-user") else {
            return Err(Denied::unauthenticated("who are you?"));
        };
        let own = format!("{}:", user.to_str().unwrap_or_default());
        match topics.iter().find(|t| !t.as_str().starts_with(&own)) {
            Some(topic) => Err(Denied::forbidden(format!(
                "{action:?} on {topic}: not yours"
            ))),
            None => Ok(()),
        }
    };
    let server = serve(SseLayer::new(bus.clone()).authorize(policy)).await;
    let (status, headers, body) = request(server.addr, "GET", "/events/ann:x", "").await;
    assert_eq!((status.as_u16(), body.as_str()), (401, "who are you?\n"));
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, body) = request_with(
        server.addr,
        "GET",
        "/events?topic=ann:x&topic=bob:y",
        &[("x-user", "ann")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("Subscribe on bob:y"), "{body}");
    let client = SseClient::connect_with(server.addr, "/events/ann:x", &[("x-user", "ann")]).await;
    assert_eq!(client.status, 200);

    // Invalid topics are still a 400 saying why, before the policy is asked.
    let (status, _, body) = request_with(
        server.addr,
        "GET",
        "/events/a%20b",
        &[("x-user", "ann")],
        "",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid topic"), "{body}");

    // The publish check of a closure policy.
    let (parts, ()) = http::Request::post("/publish/bob:y")
        .header("x-user", "ann")
        .body(())
        .unwrap()
        .into_parts();
    let denied = tower_sse::Authorize::publish(&policy, &parts, &Topic::new("bob:y").unwrap())
        .await
        .unwrap_err();
    assert!(denied.is_forbidden());
    assert!(denied.message().contains("Publish on bob:y"));
}

#[tokio::test]
async fn the_demo_authorizes_publishers_and_subscribers() {
    let secret = "demo secret for the authorization test";
    let demo = Demo::start(&["--jwt-secret", secret]);
    let key = EncodingKey::from_secret(secret.as_bytes());
    let publisher = sign(
        Algorithm::HS256,
        &key,
        &claims(&["org1:*"], &["org1:orders"], 3600),
    );
    let reader = sign(Algorithm::HS256, &key, &claims(&["org1:*"], &[], 3600));
    let expired = sign(
        Algorithm::HS256,
        &key,
        &claims(&["org1:*"], &["org1:*"], -120),
    );
    let auth = |token: &str| [("authorization", bearer(token))];

    let mut stream = open(demo.addr, "/events/org1:orders", &reader).await;
    assert_eq!(stream.status, 200);
    stream.next_event().await.unwrap();
    let (status, _, _) = request(demo.addr, "GET", "/events/org2:orders", "").await;
    assert_eq!(status, 401);
    let (status, _, _) = request_with(
        demo.addr,
        "GET",
        "/events?topic=org1:orders&topic=org2:orders",
        &[("authorization", &bearer(&reader))],
        "",
    )
    .await;
    assert_eq!(status, 403);

    let publish = |token: Option<&str>, topic: &str| {
        let headers: Vec<(String, String)> = token
            .map(|t| {
                auth(t)
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let path = format!("/publish/{topic}");
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            request_with(demo.addr, "POST", &path, &headers, "an order").await
        }
    };
    let (status, headers, body) = publish(None, "org1:orders").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, body) = publish(Some(&expired), "org1:orders").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = publish(Some(&reader), "org1:orders").await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = publish(Some(&publisher), "org1:other").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("org1:other"), "{body}");
    let (status, _, body) = publish(Some(&publisher), "org1:orders").await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].clone();

    // Only the authorized event reached the stream.
    let event = stream.next_event().await.unwrap();
    assert_eq!(event.data(), "an order");
    assert_eq!(Some(event.id.unwrap().as_str()), id.as_str());
}
