//! Server-Sent Events in an axum 0.8 app: each signed-in user follows their own orders.
//!
//! - `POST /orders` (a JWT in the `Authorization` header) publishes the order as a typed JSON
//!   event (`order`) to the shared `orders` topic, on behalf of the token's subject.
//! - `GET /me/orders` (the JWT in the `Authorization` header, an `access_token` query parameter
//!   or an `sse_token` cookie) streams the orders of the token's subject only, served by a
//!   handler through `Streams` (the layer's keep-alive, write delay, stream limit), until the
//!   token expires; the browser then reconnects with a fresh token and resumes.
//!
//! The layer is added with `without_route()`: it puts the bus into every request and serves no
//! route of its own, so `/events/orders`, which would carry everyone's orders, does not exist.
//! A `Router` is a tower service, so `tower_sse::server::Server` serves it in place of
//! `axum::serve`, adding header read, idle and write timeouts and a cap on open connections.
//!
//! ```text
//! cargo run --example axum                     # or: cargo run --example axum -- 127.0.0.1:4000
//! curl -N -H "authorization: Bearer $TOKEN" http://127.0.0.1:3002/me/orders
//! curl -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
//!     -d '{"item":"tea"}' http://127.0.0.1:3002/orders
//! ```
//!
//! Tokens are HS256 JWTs signed with `JWT_SECRET` (default `axum-example-secret`) whose `sub`
//! names the user and whose `publish` claim allows `orders`.

use std::{future::Future, io};

use axum::{
    extract::FromRequestParts,
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_sse::{
    auth::{Claims, Denied},
    server::Server,
    Authorize, Event, EventBus, EventStream, JwtPolicy, LastEventId, SseLayer, Streams, Topic,
};

/// The secret the example's tokens are signed with, unless `JWT_SECRET` says otherwise.
pub const DEFAULT_SECRET: &str = "axum-example-secret";

/// The topic every order goes to; each user's stream shows their own.
pub const ORDERS: &str = "orders";

/// What a client posts to `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    /// What is ordered.
    pub item: String,
}

/// The data of every `order` event, as JSON.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Order {
    /// Who ordered (the token's subject).
    pub user: String,
    /// What they ordered.
    pub item: String,
}

/// The reply to an order: the id of its event, which its user's stream shows too.
#[derive(Debug, Serialize, Deserialize)]
pub struct Placed {
    /// The event's id (`EPOCH-SEQUENCE`).
    pub id: String,
}

/// The app, checking tokens with `policy`.
pub fn app(bus: EventBus, policy: JwtPolicy) -> Router {
    Router::new()
        .route("/orders", post(place_order))
        .route("/me/orders", get(my_orders))
        .layer(Extension(policy))
        .layer(SseLayer::new(bus).without_route())
}

/// The signed-in subscriber: the claims of a valid token from the header, query or cookie.
pub struct Subscriber(Claims);

impl<S: Send + Sync> FromRequestParts<S> for Subscriber {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Denied> {
        policy(parts)?.claims(parts).map(Self)
    }
}

/// The publisher of an order: a token from the `Authorization` header (only) that may publish
/// to `orders`, checked by the policy.
pub struct Publisher(Claims);

impl<S: Send + Sync> FromRequestParts<S> for Publisher {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Denied> {
        let policy = policy(parts)?;
        let topic = Topic::new(ORDERS).expect("a valid topic");
        policy.publish(parts, &topic).await?;
        policy.claims(parts).map(Self)
    }
}

fn policy(parts: &Parts) -> Result<JwtPolicy, Denied> {
    parts
        .extensions
        .get::<JwtPolicy>()
        .cloned()
        .ok_or_else(|| Denied::unauthenticated("no policy configured"))
}

fn subject(claims: &Claims) -> Result<String, Denied> {
    claims
        .subject()
        .map(str::to_owned)
        .ok_or_else(|| Denied::invalid_token("the token names no subject (`sub`)"))
}

/// Publishes an order for the token's subject.
async fn place_order(
    Extension(bus): Extension<EventBus>,
    Publisher(claims): Publisher,
    Json(new): Json<NewOrder>,
) -> Result<(StatusCode, Json<Placed>), Response> {
    let order = Order {
        user: subject(&claims).map_err(IntoResponse::into_response)?,
        item: new.item,
    };
    let event = Event::json(&order).map_err(internal_error)?;
    let event = event.event("order").map_err(internal_error)?;
    let published = bus
        .publish(ORDERS, event)
        .await
        .map_err(|e| (e.status_code(), e.to_string()).into_response())?;
    let id = published.id().to_string();
    Ok((StatusCode::ACCEPTED, Json(Placed { id })))
}

/// Streams the orders of the token's subject, resuming after the client's `Last-Event-ID`,
/// until the token expires. Other users' orders are skipped (their ids still go out, so a
/// reconnect does not bring them back to be skipped again).
async fn my_orders(
    Extension(streams): Extension<Streams>,
    Subscriber(claims): Subscriber,
    LastEventId(resume): LastEventId,
) -> Result<EventStream, Response> {
    let user = subject(&claims).map_err(IntoResponse::into_response)?;
    let stream = streams
        .subscribe([ORDERS], resume.as_deref())
        .await
        .map_err(IntoResponse::into_response)?;
    let stream =
        stream.filter(move |event| event.json::<Order>().is_ok_and(|order| order.user == user));
    Ok(match claims.expires_at() {
        Some(at) => stream.expires_at(at),
        None => stream,
    })
}

fn internal_error(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// Serves the app on `listener`, with tokens signed with `secret`, until `shutdown` completes;
/// then the bus ends every open stream and the server waits (a while) for the connections to
/// close.
pub async fn serve_with_secret(
    listener: TcpListener,
    bus: EventBus,
    secret: &str,
    shutdown: impl Future<Output = ()>,
) {
    let app = app(bus.clone(), JwtPolicy::hs256(secret));
    let shutdown = async move {
        shutdown.await;
        bus.shutdown();
    };
    Server::new().serve(listener, app, shutdown).await;
}

/// Like [`serve_with_secret`] with the default secret.
pub async fn serve(listener: TcpListener, bus: EventBus, shutdown: impl Future<Output = ()>) {
    serve_with_secret(listener, bus, DEFAULT_SECRET, shutdown).await;
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
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| DEFAULT_SECRET.into());
    let listener = tower_sse::server::listen(addr)?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve_with_secret(listener, EventBus::memory(), &secret, shutdown).await;
    Ok(())
}
