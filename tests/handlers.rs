//! Streams served from the application's own handlers, over real HTTP on 127.0.0.1: the
//! layer's settings and stream limit, per-client filtering that still moves the client's
//! position, replaced events, and an end at the grant's expiry.

mod support;

use std::{
    convert::Infallible,
    time::{Duration, SystemTime},
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use support::http::SseClient;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_sse::{Event, EventBus, EventStream, Mapped, SseLayer, Streams};

/// `GET /me/{user}` serves the `orders` topic to `user`, showing only orders naming them,
/// with other users' orders skipped and `secret` ones replaced; `?expires=MS` ends the stream
/// that many milliseconds from now.
async fn me(req: Request<Incoming>) -> Result<Response<EventStream>, Infallible> {
    let streams = req.extensions().get::<Streams>().unwrap().clone();
    let user = req.uri().path().trim_start_matches("/me/").to_owned();
    let resume = tower_sse::last_event_id(req.headers(), req.uri());
    let expires = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("expires="))
        .and_then(|ms| ms.parse().ok())
        .map(|ms| SystemTime::now() + Duration::from_millis(ms));
    let stream = match streams.subscribe(["orders"], resume.as_deref()).await {
        Ok(stream) => stream,
        Err(e) => return Ok(e.into_response()),
    };
    let stream = stream.map_events(move |event| {
        let data = event.data();
        if !data.starts_with(&format!("{user}:")) {
            Mapped::Skip
        } else if data.ends_with("secret") {
            Mapped::Replace(Event::new("(hidden)").event("redacted").unwrap())
        } else {
            Mapped::Keep
        }
    });
    let stream = match expires {
        Some(at) => stream.expires_at(at),
        None => stream,
    };
    Ok(stream.into_response())
}

async fn serve(layer: SseLayer) -> std::net::SocketAddr {
    let service = ServiceBuilder::new().layer(layer).service_fn(me);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_handler_stream_filters_per_client_and_skipped_events_move_its_position() {
    let bus = EventBus::memory();
    let addr = serve(SseLayer::new(bus.clone()).public()).await;
    let mut alice = SseClient::connect(addr, "/me/alice", None).await;
    assert_eq!(alice.status, 200);
    assert!(alice.next_event().await.unwrap().is_status());

    bus.publish("orders", Event::new("alice:1")).await.unwrap();
    let skipped = bus
        .publish("orders", Event::new("bob:2"))
        .await
        .unwrap()
        .id();
    let frame = alice.next_event().await.unwrap();
    assert_eq!((frame.data(), frame.event.as_deref()), ("alice:1", None));
    // Bob's order is not sent, but its id is: Alice's Last-Event-ID moves past it.
    let frame = alice.next_event().await.unwrap();
    assert_eq!((frame.data, frame.id), (None, Some(skipped.to_string())));

    bus.publish("orders", Event::new("alice:3 secret"))
        .await
        .unwrap();
    let frame = alice.next_event().await.unwrap();
    assert_eq!(
        (frame.data(), frame.event.as_deref()),
        ("(hidden)", Some("redacted"))
    );
    let last = frame.id.unwrap();

    // Resuming after the skipped event replays nothing skipped.
    bus.publish("orders", Event::new("bob:4")).await.unwrap();
    bus.publish("orders", Event::new("alice:5")).await.unwrap();
    drop(alice);
    let mut again = SseClient::connect(addr, "/me/alice", Some(&last)).await;
    let status = again.next_event().await.unwrap();
    assert_eq!(status.data(), r#"{"status":"resumed","replayed":2}"#);
    let frame = again.next_event().await.unwrap();
    assert_eq!(frame.data(), "alice:5", "{frame:?}");
}

#[tokio::test]
async fn handler_streams_count_against_the_layer_limit() {
    let bus = EventBus::memory();
    let addr = serve(SseLayer::new(bus.clone()).public().max_streams(2)).await;
    let first = SseClient::connect(addr, "/me/alice", None).await;
    let second = SseClient::connect(addr, "/events/orders", None).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));
    let refused = SseClient::connect(addr, "/me/bob", None).await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let admitted = SseClient::connect(addr, "/me/bob", None).await;
    assert_eq!(admitted.status, 200);
}

#[tokio::test]
async fn a_handler_stream_ends_at_its_expiry_naming_the_resume_id() {
    let bus = EventBus::memory();
    let addr = serve(SseLayer::new(bus.clone()).public()).await;
    let mut alice = SseClient::connect(addr, "/me/alice?expires=300", None).await;
    let status = alice.next_event().await.unwrap();
    let start = status.id.unwrap();
    let end = alice.next_frame().await.expect("a final comment");
    assert!(
        end.comments
            .iter()
            .any(|c| c.contains("expired") && c.contains(&start)),
        "{end:?}"
    );
    assert!(alice.next_frame().await.is_none(), "the stream ended");
}
