//! Who may open streams, over real HTTP on 127.0.0.1: a layer opens nothing until the
//! application chooses, an explicit public choice serves everyone, a bus-only layer serves no
//! route, a policy may await, and `HEAD` answers as `GET` would without subscribing.

mod support;

use std::time::Duration;

use http::request::Parts;
use support::http::{request, request_with, serve, SseClient};
use tower_sse::{
    auth::{self, Action},
    Denied, Event, EventBus, Grant, SseLayer, Topic,
};

#[tokio::test]
async fn a_layer_without_a_policy_answers_no_topic() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone())).await;
    for path in ["/events/news", "/events?topic=a&topic=b"] {
        let (status, _, body) = request(server.addr, "GET", path, "").await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("SseLayer::public"), "{body}");
    }
    assert_eq!(bus.stats().subscriptions, 0);
    // Other requests still reach the application, with the bus.
    let (status, _, body) = request(server.addr, "GET", "/other", "").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "inner GET /other; bus: yes")
    );
}

#[tokio::test]
async fn an_explicit_public_choice_serves_every_topic() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let mut client = SseClient::connect(server.addr, "/events/news", None).await;
    assert_eq!(client.status, 200);
    assert!(client.next_event().await.unwrap().is_status());
    bus.publish("news", Event::new("hello")).await.unwrap();
    assert_eq!(client.next_event().await.unwrap().data(), "hello");
}

#[tokio::test]
async fn a_bus_only_layer_serves_no_route() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).without_route()).await;
    let (status, _, body) = request(server.addr, "GET", "/events/news", "").await;
    assert_eq!(status, 200);
    assert_eq!(body, "inner GET /events/news; bus: yes");
}

#[tokio::test]
async fn a_policy_may_await_before_it_answers() {
    let bus = EventBus::memory();
    // Looks the user up in a "session store" that takes a while to answer.
    let policy = auth::async_fn(|req: &Parts, _: Action, topics: &[Topic]| {
        let user = req
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let topics = topics.to_vec();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let user = user.ok_or_else(|| Denied::unauthenticated("who are you?"))?;
            let own = format!("user:{user}");
            match topics.iter().find(|t| t.as_str() != own) {
                Some(t) => Err(Denied::forbidden(format!("{t} is not yours"))),
                None => Ok(Grant::new()),
            }
        }
    });
    let server = serve(SseLayer::new(bus.clone()).authorize(policy)).await;
    let (status, _, body) = request(server.addr, "GET", "/events/user:ann", "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = request_with(
        server.addr,
        "GET",
        "/events/user:bob",
        &[("x-user", "ann")],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("user:bob is not yours"), "{body}");
    let mut own =
        SseClient::connect_with(server.addr, "/events/user:ann", &[("x-user", "ann")]).await;
    assert_eq!(own.status, 200);
    assert!(own.next_event().await.unwrap().is_status());
}

#[tokio::test]
async fn head_answers_as_get_would_without_subscribing() {
    let bus = EventBus::memory();
    let server = serve(SseLayer::new(bus.clone()).public()).await;
    let (status, headers, body) = request(server.addr, "HEAD", "/events/news", "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(body.is_empty());
    assert_eq!(bus.stats().subscriptions, 0);
    let (status, _, _) = request(server.addr, "HEAD", "/events/bad%20topic", "").await;
    assert_eq!(status, 400);
    let closed = serve(SseLayer::new(bus.clone())).await;
    let (status, _, _) = request(closed.addr, "HEAD", "/events/news", "").await;
    assert_eq!(status, 403);
}

#[cfg(feature = "json")]
#[tokio::test]
async fn json_events_round_trip() {
    use futures_util::StreamExt;
    use tower_sse::Message;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u32,
        items: Vec<String>,
        note: String,
    }
    let order = Order {
        id: 17,
        items: vec!["tea".into(), "cake".into()],
        note: "two\nlines".into(),
    };
    let bus = EventBus::memory();
    let mut sub = bus.subscribe(["orders"], None).await.unwrap();
    let event = Event::json(&order).unwrap().event("order").unwrap();
    bus.publish("orders", event).await.unwrap();
    let Some(Message::Event(received)) = sub.next().await else {
        panic!("an event");
    };
    assert_eq!(received.event_type(), Some("order"));
    assert_eq!(received.json::<Order>().unwrap(), order);
    assert!(received.json::<Vec<u8>>().is_err());
}
