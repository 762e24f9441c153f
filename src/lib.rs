//! Server-Sent Events for tower and hyper services, with an event bus that fans events out
//! across every instance of your service.
//!
//! A browser keeps an SSE connection open to one instance; the request that publishes (a
//! webhook, say) may land on another. `tower-sse` connects them: [`EventBus::publish`] on any
//! instance reaches every subscribed client on every instance, through the in-process bus
//! (one instance, no setup) or Redis (feature `redis`).
//!
//! - [`SseLayer`]: a tower [`Layer`](tower_layer::Layer). Its service puts the [`EventBus`] into
//!   every request's extensions and answers `GET /events/{topic}` and
//!   `GET /events?topic=A&topic=B` with a `text/event-stream`; other requests pass through.
//! - [`SseService`]: the stream route alone, to mount in a router. [`EventStream`]: the response
//!   body, to serve a [`Subscription`] from your own handler.
//! - [`EventBus`]: `publish(topic, event)` and `subscribe(topics, resume_from)`.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use hyper_util::{rt::{TokioExecutor, TokioIo}, server::conn::auto, service::TowerToHyperService};
//! use tower::ServiceBuilder;
//! use tower_sse::{Event, EventBus, SseLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let bus = EventBus::memory();
//! let service = ServiceBuilder::new()
//!     .layer(SseLayer::new(bus).public())
//!     .service_fn(|req: Request<hyper::body::Incoming>| async move {
//!         // Any handler can publish through the bus in the request's extensions.
//!         let bus = req.extensions().get::<EventBus>().unwrap();
//!         let published = bus.publish("hello", Event::new("someone called")).await;
//!         let body = format!("published {:?}\n", published.map(|p| p.id().to_string()));
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
//!     });
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # tokio::spawn(async move {
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let service = TowerToHyperService::new(service.clone());
//!     tokio::spawn(async move {
//!         // `GET /events/hello` streams; everything else reaches the handler.
//!         auto::Builder::new(TokioExecutor::new())
//!             .serve_connection(TokioIo::new(stream), service)
//!             .await
//!     });
//! }
//! # #[allow(unreachable_code)] Ok::<(), std::io::Error>(())
//! # });
//! # let _ = addr;
//! # Ok(())
//! # }
//! ```
//!
//! # Resume and the status event
//!
//! Every event gets an id `EPOCH-SEQUENCE` from the bus. Sequence numbers order all events of
//! one history across topics, so the last id a client saw resumes every topic of its stream: a
//! reconnecting `EventSource` sends it as `Last-Event-ID` and receives exactly the events it
//! missed, as far as the history reaches.
//!
//! The first event of every stream has the type [`STATUS_EVENT`] (`sse-status`) and says how the
//! stream started, so a browser can tell whether it missed something:
//!
//! | data | meaning |
//! | --- | --- |
//! | `{"status":"fresh"}` | no resume point was given |
//! | `{"status":"resumed","replayed":N}` | the N missed events follow; nothing was lost |
//! | `{"status":"reset","reason":R}` | the resume point could not be honoured; events may have been missed. `R` is `invalid-id`, `unknown-epoch`, `unknown-id` or `history-expired` ([`ResetReason`]) |
//! | `{"status":"gap","reason":R}` | (later in the stream) events may have been lost here, e.g. `broker-disconnected` ([`GapReason`]) |
//!
//! The status event carries an `id:` too: the position the stream starts at, so a client that
//! disconnects before any event still resumes from there.
//!
//! ```js
//! const source = new EventSource("/events?topic=orders&topic=news");
//! source.addEventListener("sse-status", (e) => {
//!   const status = JSON.parse(e.data);
//!   if (status.status === "reset" || status.status === "gap") reloadFromServer();
//! });
//! source.onmessage = (e) => show(e.lastEventId, e.data);
//! ```
//!
//! # Authorization
//!
//! [`SseLayer::authorize`] and [`SseService::authorize`] check every stream request with an
//! [`Authorize`] policy before subscribing: a closure over the request and its topics, your own
//! type, or `JwtPolicy` (feature `jwt`), which reads a JWT whose claims select the topics a
//! client may subscribe and publish to. Refusals are `401` or `403` with a message; a stream
//! granted until the client's token expires ends then. See the [`auth`] module.
//!
//! # Metrics
//!
//! With the feature `metrics`, the crate reports through the `metrics` facade: open streams,
//! how they started, events published, delivered and dropped, slow consumers cut off, Redis
//! reconnects (module `metrics`).
//!
//! # Tracing
//!
//! [`EventBus::publish`] runs in a `tower_sse.publish` span (level `debug`, fields `topic` and
//! `id`). Where an event reaches an instance through Redis, its delivery to that instance's
//! subscribers runs in a `tower_sse.deliver` span with the same fields, so the logs of one event
//! join on its id. With the feature `opentelemetry` (and a `tracing-opentelemetry` layer in the
//! application), the event carries the trace context of its publish through Redis (a W3C
//! `traceparent`), and every delivery span, on any instance, is a child of the publish: one
//! trace shows the request that published and the deliveries it caused. Streams opening and
//! refusals are logged at `debug`, each write to a stream at `trace`.
//!
//! # Guarantees
//!
//! - An event published after a client received the `200` of its stream is delivered to it.
//! - Each stream sees events in id order, each once.
//! - Every subscriber has a bounded queue. One that falls behind by more than its capacity is
//!   disconnected with a final comment naming its resume id; it never holds unbounded memory
//!   or slows other subscribers. Its client reconnects and resumes.
//! - Whatever cannot be resumed or may have been lost is said in-band with the status event;
//!   never silently.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
mod body;
pub mod bus;
mod error;
mod event;
mod future;
mod handler;
mod last_event_id;
mod layer;
mod limit;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod publish;
mod query;
mod random;
mod route;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
mod service;
mod stream;
mod sync;
mod text;

#[doc(inline)]
pub use self::{
    auth::{Authorize, Denied, Grant, InvalidSelector, Selector},
    body::SseBody,
    bus::{
        Builder, BusStats, EncodedEvent, EventBus, GapReason, Health, Message, Presence, Published,
        ResetReason, ResumeStatus, Subscription, Topic, PRESENCE_EVENT, PRESENCE_SUFFIX,
    },
    error::{BusError, InvalidEvent, InvalidEventId, InvalidTopic},
    event::{Event, STATUS_EVENT},
    future::{ResponseFuture, StreamFuture},
    handler::{StreamError, Streams},
    last_event_id::{Cursor, EventId},
    layer::SseLayer,
    publish::PublishService,
    route::last_event_id,
    service::{Sse, SseService},
    stream::{EventStream, Mapped},
};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use self::bus::redis::{RedisConfig, SubscribeMode};

#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
#[doc(inline)]
pub use self::auth::JwtPolicy;

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[doc(inline)]
pub use self::error::JsonError;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
mod axum;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[doc(inline)]
pub use self::axum::LastEventId;
