//! Server-Sent Events for a plain hyper 1 service.
//!
//! An existing hyper service (here a `service_fn` with one route, `POST /say`) is wrapped with
//! [`SseLayer`], so it gains `GET /events/{topic}` streams and every request carries the
//! [`EventBus`] in its extensions. `tower_sse::server::Server` serves it: an accept loop that
//! backs off when out of descriptors, a cap on open connections, header read, idle and write
//! timeouts. On Ctrl-C the server stops accepting, the bus ends every open stream, and in-flight
//! requests finish.
//!
//! ```text
//! cargo run --example hyper                    # or: cargo run --example hyper -- 127.0.0.1:4000
//! curl -N http://127.0.0.1:3001/events/chat    # in one terminal
//! curl -d 'hello' http://127.0.0.1:3001/say    # in another
//! ```

use std::{convert::Infallible, future::Future, io};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_sse::{server::Server, Event, EventBus, SseLayer};

/// The topic `POST /say` publishes to.
pub const TOPIC: &str = "chat";

/// Serves the app on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn serve(listener: TcpListener, bus: EventBus, shutdown: impl Future<Output = ()>) {
    // The application's own service, wrapped with the layer: `/events/...` is answered by the
    // layer, everything else reaches `handle` with the bus in the request's extensions.
    let service = ServiceBuilder::new()
        .layer(SseLayer::new(bus.clone()).public())
        .service_fn(handle);
    // Event streams never end on their own: end them when shutting down, so their
    // connections can close.
    let shutdown = async move {
        shutdown.await;
        bus.shutdown();
    };
    // HTTP/1.1 and HTTP/2, the default timeouts and connection cap; in-flight requests get 5 s
    // to finish after shutdown begins.
    Server::new().serve(listener, service, shutdown).await;
}

/// The application: `POST /say` publishes its body to the `chat` topic.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if (req.method(), req.uri().path()) != (&Method::POST, "/say") {
        return Ok(text(StatusCode::NOT_FOUND, "not found".into()));
    }
    // `SseLayer` put a handle to the bus into every request's extensions.
    let Some(bus) = req.extensions().get::<EventBus>().cloned() else {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "no bus".into()));
    };
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let Ok(message) = String::from_utf8(body.to_vec()) else {
        return Ok(text(StatusCode::BAD_REQUEST, "not UTF-8".into()));
    };
    Ok(match bus.publish(TOPIC, Event::new(message)).await {
        // Answer with the event's id: subscribers see the same id.
        Ok(published) => text(StatusCode::ACCEPTED, published.id().to_string()),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let addr = addr
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "expected ADDR:PORT"))?;
    let listener = tower_sse::server::listen(addr)?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, EventBus::memory(), shutdown).await;
    Ok(())
}
