//! The layer in every tower-based framework: each test runs one of the examples on a real socket,
//! subscribes over HTTP, publishes through the framework's own handler and reads the event.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::timeout,
};
use tower_sse::{EventBus, EventId};

// The examples themselves, compiled into this test: the tests call their `serve` functions
// (their `main` goes unused here).
#[allow(dead_code)]
#[path = "../examples/hyper.rs"]
pub mod hyper_example;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
pub mod axum_example;

#[allow(dead_code)]
#[path = "../examples/warp.rs"]
pub mod warp_example;

#[allow(dead_code)]
#[path = "../examples/tonic.rs"]
pub mod tonic_example;

/// The longest any single step may take.
const WAIT: Duration = Duration::from_secs(10);

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An example server running in a task.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds 127.0.0.1:0 and runs `serve(listener, bus, shutdown)` in a task.
    async fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, EventBus, Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        let server = serve(listener, EventBus::memory(), shutdown);
        let task = tokio::spawn(server);
        Self { addr, stop, task }
    }

    /// Signals shutdown and waits for the server to return.
    async fn stop(self) {
        let _ = self.stop.send(());
        timeout(WAIT, self.task)
            .await
            .expect("the server stops")
            .expect("the server task does not panic");
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<hyper::Error>>> + Send>>;

/// An open event stream.
struct Subscriber {
    events: Events,
    _sender: http1::SendRequest<Empty<Bytes>>,
}

impl Subscriber {
    /// Opens `GET path` and checks the `200` and the first event; the subscription is live once
    /// the response has arrived.
    async fn open(addr: SocketAddr, path: &str) -> Self {
        let (mut sender, connection) = handshake(addr).await;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(header::HOST, addr.to_string())
            .header(header::ACCEPT, "text/event-stream")
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let response = timeout(WAIT, sender.send_request(request))
            .await
            .expect("the stream's response in time")
            .expect("the stream's response");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream",
            "GET {path}"
        );
        let mut subscriber = Self {
            events: Box::pin(response.into_body().into_data_stream().eventsource()),
            _sender: sender,
        };
        let status = subscriber.next().await;
        assert_eq!(status.event, tower_sse::STATUS_EVENT);
        assert_eq!(status.data, r#"{"status":"fresh"}"#);
        subscriber
    }

    /// The next event.
    async fn next(&mut self) -> Event {
        timeout(WAIT, self.events.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("a well-formed event")
    }

    /// Waits for the server to end the stream, cleanly.
    async fn assert_ends(mut self) {
        let end = timeout(WAIT, self.events.next())
            .await
            .expect("the stream ends in time");
        assert!(end.is_none(), "expected the end of the stream, got {end:?}");
    }
}

async fn handshake<B>(
    addr: SocketAddr,
) -> (
    http1::SendRequest<B>,
    http1::Connection<TokioIo<TcpStream>, B>,
)
where
    B: hyper::body::Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    timeout(WAIT, http1::handshake(TokioIo::new(stream)))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// Sends `POST path` with `body`; returns the status and the response body.
async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, String) {
    let (mut sender, connection) = handshake(addr).await;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a request");
    let exchange = async {
        let response = sender.send_request(request).await.expect("a response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("the body");
        (
            status,
            String::from_utf8(body.to_bytes().to_vec()).expect("UTF-8"),
        )
    };
    timeout(WAIT, exchange).await.expect("the response in time")
}

/// Checks that `id` is well formed (`EPOCH-SEQUENCE`) and is the id the publisher got back.
fn assert_id(id: &str, published: &str) {
    let (epoch, sequence) = id.split_once('-').expect("EPOCH-SEQUENCE");
    assert_eq!(epoch.len(), 8, "id {id:?}");
    assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()), "id {id:?}");
    assert!(sequence.parse::<u64>().is_ok(), "id {id:?}");
    assert!(id.parse::<EventId>().is_ok(), "id {id:?}");
    assert_eq!(id, published);
}

#[tokio::test]
async fn hyper_service_wrapped_with_the_layer() {
    let server = Server::start(hyper_example::serve).await;
    let mut subscriber = Subscriber::open(server.addr, "/events/chat").await;

    let (status, id) = post(server.addr, "/say", "text/plain", "hello from hyper").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{id}");

    let event = subscriber.next().await;
    assert_eq!(event.event, "message");
    assert_eq!(event.data, "hello from hyper");
    assert_id(&event.id, &id);

    // Graceful shutdown: the bus ends the open stream, and the server returns.
    server.stop().await;
    subscriber.assert_ends().await;
}

/// A token for `user`, signed with the axum example's secret, valid for `secs` seconds.
fn axum_token(user: &str, secs: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let claims = serde_json::json!({ "sub": user, "exp": exp, "publish": ["orders"] });
    let key = jsonwebtoken::EncodingKey::from_secret(axum_example::DEFAULT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[tokio::test]
async fn axum_router_with_the_layer() {
    use axum_example::{Order, Placed};

    let server = Server::start(axum_example::serve).await;
    let alice = axum_token("alice", 600);
    let path = format!("/me/orders?access_token={alice}");
    let mut stream = Subscriber::open(server.addr, &path).await;

    let (status, body) = post_with(
        server.addr,
        "/orders",
        &[("authorization", &format!("Bearer {alice}"))],
        r#"{"item":"tea"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let placed: Placed = serde_json::from_str(&body).expect("a JSON reply");

    let event = stream.next().await;
    assert_eq!(event.event, "order");
    let order: Order = serde_json::from_str(&event.data).expect("JSON data");
    let expected = Order {
        user: "alice".into(),
        item: "tea".into(),
    };
    assert_eq!(order, expected);
    assert_id(&event.id, &placed.id);

    server.stop().await;
    stream.assert_ends().await;
}

/// Sends `POST path` with a JSON `body` and extra `headers`; the status and response body.
async fn post_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let (mut sender, connection) = handshake(addr).await;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a request");
    let exchange = async {
        let response = sender.send_request(request).await.expect("a response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("the body");
        (
            status,
            String::from_utf8(body.to_bytes().to_vec()).expect("UTF-8"),
        )
    };
    timeout(WAIT, exchange).await.expect("the response in time")
}

#[tokio::test]
async fn warp_filter_wrapped_with_the_layer() {
    let server = Server::start(warp_example::serve).await;
    let mut subscriber = Subscriber::open(server.addr, "/events/chat").await;

    let (status, id) = post(server.addr, "/say", "text/plain", "hello from warp").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{id}");

    let event = subscriber.next().await;
    assert_eq!(event.event, "message");
    assert_eq!(event.data, "hello from warp");
    assert_id(&event.id, &id);

    server.stop().await;
    subscriber.assert_ends().await;
}

#[tokio::test]
async fn tonic_server_with_the_layer() {
    let server = Server::start(tonic_example::serve).await;
    // HTTP/1.1 on the gRPC port.
    let mut subscriber = Subscriber::open(server.addr, "/events/chat").await;

    // A gRPC call over HTTP/2, with tonic's client.
    let id = timeout(
        WAIT,
        tonic_example::call_say(server.addr, "hello from tonic"),
    )
    .await
    .expect("the call returns in time")
    .expect("the call succeeds");

    let event = subscriber.next().await;
    assert_eq!(event.event, "message");
    assert_eq!(event.data, "hello from tonic");
    assert_id(&event.id, &id);

    server.stop().await;
    subscriber.assert_ends().await;
}
