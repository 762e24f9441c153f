//! Server-Sent Events next to a tonic gRPC service, on one port.
//!
//! The gRPC service `chat.Chat` has one unary method, `Say`, which publishes the text it gets
//! to the `chat` topic through the bus that [`SseLayer`] put into the request's extensions.
//! The layer wraps tonic's routes (`tonic::service::Routes`, a tower service), and
//! `tower_sse::server::Server` serves them, HTTP/2 for gRPC clients and HTTP/1.1 for browsers
//! subscribing to `GET /events/chat` on the same port.
//!
//! Why not tonic's own `Server` with `accept_http1(true)`: its accept loop retries a failed
//! accept at once (out of descriptors, it spins), and it has no idle or write timeout and no
//! cap on open connections, which an SSE port facing browsers needs.
//!
//! No `.proto` file or build script: messages are plain UTF-8 text, encoded by the small codec
//! below, and the service is written by hand the way generated code would do it.
//!
//! ```text
//! cargo run --example tonic                    # or: cargo run --example tonic -- 127.0.0.1:4000
//! curl -N http://127.0.0.1:3004/events/chat    # in one terminal
//! cargo run --example tonic -- say hello       # in another: calls chat.Chat/Say
//! ```

use std::{
    convert::Infallible,
    error::Error,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tonic::{
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::NamedService,
    service::Routes,
    Status,
};
use tower::{Layer, Service};
use tower_sse::{server::Server, Event, EventBus, SseLayer};

/// The topic `Say` publishes to.
pub const TOPIC: &str = "chat";

/// The path of the `Say` method.
pub const SAY: &str = "/chat.Chat/Say";

/// A codec whose messages are UTF-8 text, sent as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextCodec;

impl Codec for TextCodec {
    type Encode = String;
    type Decode = String;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for TextCodec {
    type Item = String;
    type Error = Status;

    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for TextCodec {
    type Item = String;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| Status::invalid_argument("the message is not UTF-8"))
    }
}

/// The `chat.Chat` gRPC service.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatService;

impl NamedService for ChatService {
    const NAME: &'static str = "chat.Chat";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for ChatService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != SAY {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        Box::pin(async move {
            // tonic decodes the request, calls `say` and encodes its reply.
            let mut grpc = tonic::server::Grpc::new(TextCodec);
            Ok(grpc.unary(tower::service_fn(say), req).await)
        })
    }
}

/// `Say`: publishes the text and answers with the event's id.
async fn say(request: tonic::Request<String>) -> Result<tonic::Response<String>, Status> {
    // tonic keeps the HTTP request's extensions, where the layer put the bus.
    let bus = request
        .extensions()
        .get::<EventBus>()
        .cloned()
        .ok_or_else(|| Status::internal("no event bus"))?;
    let published = bus
        .publish(TOPIC, Event::new(request.into_inner()))
        .await
        .map_err(|e| {
            if e.is_client_error() {
                Status::invalid_argument(e.to_string())
            } else {
                Status::unavailable(e.to_string())
            }
        })?;
    Ok(tonic::Response::new(published.id().to_string()))
}

/// Serves gRPC (HTTP/2) and event streams (HTTP/1.1 or HTTP/2) on `listener` until `shutdown`
/// completes; then the bus ends every open stream and the server waits (a while) for the
/// connections.
pub async fn serve(listener: TcpListener, bus: EventBus, shutdown: impl Future<Output = ()>) {
    let routes = Routes::new(ChatService).prepare();
    let service = SseLayer::new(bus.clone()).public().layer(routes);
    let shutdown = async move {
        shutdown.await;
        bus.shutdown();
    };
    // HTTP/1.1 and HTTP/2 (prior knowledge, as gRPC clients speak it) on one port.
    Server::new().serve(listener, service, shutdown).await;
}

/// Calls `Say` on the server at `addr` with tonic's client, over one HTTP/2 connection.
pub async fn call_say(
    addr: SocketAddr,
    text: &str,
) -> Result<String, Box<dyn Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    // tonic's client runs on any tower service that sends HTTP requests.
    let transport = tower::service_fn(move |req: http::Request<Body>| {
        let mut sender = sender.clone();
        async move { sender.send_request(req).await }
    });
    let origin = format!("http://{addr}").parse()?;
    let mut client = tonic::client::Grpc::with_origin(transport, origin);
    let request = tonic::Request::new(text.to_owned());
    let response = client
        .unary(request, PathAndQuery::from_static(SAY), TextCodec)
        .await?;
    Ok(response.into_inner())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut args = std::env::args().skip(1).peekable();
    let calling = args.peek().map(String::as_str) == Some("say");
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3004".into());
    if calling {
        // `say TEXT`: a client call to the server at ADDR.
        let text = args.nth(1).unwrap_or_else(|| "hello".into());
        let id = call_say(addr.parse()?, &text).await?;
        eprintln!("published event {id}");
        return Ok(());
    }
    let addr = args.next().unwrap_or(addr);
    let listener = tower_sse::server::listen(addr.parse()?)?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, EventBus::memory(), shutdown).await;
    Ok(())
}
