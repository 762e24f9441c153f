//! Server-Sent Events for a warp 0.4 app.
//!
//! `warp::service` turns the filter into a tower service, which [`SseLayer`] wraps like any
//! other; `tower_sse::server::Server` serves the result with hyper (accept backoff, connection
//! cap, timeouts, graceful shutdown). The filter finds the bus in the request's extensions with
//! `warp::ext::get::<EventBus>()`.
//!
//! ```text
//! cargo run --example warp                     # or: cargo run --example warp -- 127.0.0.1:4000
//! curl -N http://127.0.0.1:3003/events/chat    # in one terminal
//! curl -d 'hello' http://127.0.0.1:3003/say    # in another
//! ```

use std::{future::Future, io};

use bytes::Bytes;
use tokio::net::TcpListener;
use tower::Layer;
use tower_sse::{server::Server, Event, EventBus, SseLayer};
use warp::{http::StatusCode, Filter, Rejection, Reply};

/// The topic `POST /say` publishes to.
pub const TOPIC: &str = "chat";

/// The warp app: `POST /say` publishes its body to the `chat` topic.
pub fn routes() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::post()
        .and(warp::path!("say"))
        // Put there by `SseLayer`, which wraps the whole filter.
        .and(warp::ext::get::<EventBus>())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .then(say)
}

async fn say(bus: EventBus, body: Bytes) -> impl Reply {
    let (reply, status) = match String::from_utf8(body.to_vec()) {
        Err(_) => ("not UTF-8".to_owned(), StatusCode::BAD_REQUEST),
        Ok(message) => match bus.publish(TOPIC, Event::new(message)).await {
            // Answer with the event's id: subscribers see the same id.
            Ok(published) => (published.id().to_string(), StatusCode::ACCEPTED),
            Err(e) => (e.to_string(), StatusCode::SERVICE_UNAVAILABLE),
        },
    };
    warp::reply::with_status(reply, status)
}

/// Serves the app on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn serve(listener: TcpListener, bus: EventBus, shutdown: impl Future<Output = ()>) {
    // The filter as a tower service, wrapped with the layer.
    let service = SseLayer::new(bus.clone())
        .public()
        .layer(warp::service(routes()));
    // End the event streams when shutting down, so their connections can close.
    let shutdown = async move {
        shutdown.await;
        bus.shutdown();
    };
    Server::new().serve(listener, service, shutdown).await;
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:3003".into());
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
