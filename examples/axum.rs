//! Server-Sent Events in an axum 0.8 app.
//!
//! `Router::layer(SseLayer::new(bus))` serves `GET /events/{topic}` and hands every handler the
//! bus as an `Extension<EventBus>`. Handlers publish typed messages as JSON, and one handler
//! serves a room's stream itself by returning a `Response<EventStream>`. A `Router` is a tower
//! service, so `tower_sse::server::Server` serves it in place of `axum::serve`, adding what
//! `axum::serve` lacks: header read, idle and write timeouts and a cap on open connections.
//!
//! ```text
//! cargo run --example axum                     # or: cargo run --example axum -- 127.0.0.1:4000
//! curl -N http://127.0.0.1:3002/rooms/lobby/events
//! curl -H 'content-type: application/json' -d '{"user":"ann","text":"hi"}' \
//!     http://127.0.0.1:3002/rooms/lobby/messages
//! ```

use std::{future::Future, io};

use axum::{
    extract::Path,
    http::{HeaderMap, Response, StatusCode, Uri},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_sse::{server::Server, BusError, Event, EventBus, EventStream, SseLayer};

/// What a client posts to `POST /rooms/{room}/messages`.
#[derive(Debug, Deserialize)]
pub struct NewMessage {
    /// Who speaks.
    pub user: String,
    /// What they say.
    pub text: String,
}

/// What subscribers receive: the data of every `chat` event, as JSON.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// The room the message was posted to.
    pub room: String,
    /// Who spoke.
    pub user: String,
    /// What they said.
    pub text: String,
}

/// The reply to a post: the id of the published event, which subscribers see too.
#[derive(Debug, Serialize, Deserialize)]
pub struct Posted {
    /// The event's id (`EPOCH-SEQUENCE`).
    pub id: String,
}

/// The topic of a room's messages.
pub fn room_topic(room: &str) -> String {
    format!("room:{room}")
}

/// The app. Besides the routes below, the layer answers `GET /events/{topic}` (for instance
/// `/events/room:lobby`).
pub fn app(bus: EventBus) -> Router {
    Router::new()
        .route("/rooms/{room}/messages", post(post_message))
        .route("/rooms/{room}/events", get(room_events))
        .layer(SseLayer::new(bus))
}

/// Publishes a message to the room's topic.
async fn post_message(
    Extension(bus): Extension<EventBus>,
    Path(room): Path<String>,
    Json(new): Json<NewMessage>,
) -> Result<(StatusCode, Json<Posted>), (StatusCode, String)> {
    let topic = room_topic(&room);
    let message = ChatMessage {
        room,
        user: new.user,
        text: new.text,
    };
    let data = serde_json::to_string(&message).map_err(internal_error)?;
    // A typed event: browsers receive it with `addEventListener("chat", ...)`.
    let event = Event::new(data).event("chat").map_err(internal_error)?;
    let published = bus.publish(topic, event).await.map_err(bus_error)?;
    let id = published.id().to_string();
    Ok((StatusCode::ACCEPTED, Json(Posted { id })))
}

/// Serves the room's stream from a handler, resuming after the client's `Last-Event-ID`.
async fn room_events(
    Extension(bus): Extension<EventBus>,
    Path(room): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response<EventStream> {
    // The `Last-Event-ID` header, or `?last_event_id=` for clients that cannot set headers.
    let last_event_id = tower_sse::last_event_id(&headers, &uri);
    match bus
        .subscribe([room_topic(&room)], last_event_id.as_deref())
        .await
    {
        Ok(subscription) => EventStream::new(subscription).into_response(),
        Err(e) => EventStream::error_response(&e),
    }
}

fn bus_error(e: BusError) -> (StatusCode, String) {
    (e.status_code(), e.to_string())
}

fn internal_error(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Serves the app on `listener` until `shutdown` completes; then the bus ends every open stream
/// and the server waits (a while) for the connections to close.
pub async fn serve(listener: TcpListener, bus: EventBus, shutdown: impl Future<Output = ()>) {
    let app = app(bus.clone());
    let shutdown = async move {
        shutdown.await;
        bus.shutdown();
    };
    Server::new().serve(listener, app, shutdown).await;
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:3002".into());
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
