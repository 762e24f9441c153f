use std::time::Duration;

use tower_layer::Layer;

use crate::{
    auth::{Authorize, Policy},
    bus::EventBus,
    limit::StreamLimit,
    route::{normalize_path, Access, Route},
    service::Sse,
};

/// A [`Layer`] that gives every request access to the [`EventBus`] and serves event streams.
///
/// The service it builds, [`Sse`], inserts a clone of the bus into every request's extensions,
/// so any handler can publish, with a [`Streams`](crate::Streams) for handlers that serve
/// streams themselves with the layer's settings, and answers `GET /events/{topic}` and
/// `GET /events?topic=A&topic=B` itself with a `text/event-stream`; every other request goes to
/// the inner service untouched.
///
/// A reconnecting client's `Last-Event-ID` header (or a `last_event_id` query parameter) resumes
/// the stream. An id that cannot be parsed is not an error: the stream starts fresh and says
/// so in its first event (`{"status":"reset","reason":"invalid-id"}`), because browsers keep
/// sending the id they last saw and a `4xx` would stop `EventSource` from ever reconnecting.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::ServiceBuilder;
/// use tower_sse::{EventBus, SseLayer};
///
/// let bus = EventBus::memory();
/// let service = ServiceBuilder::new()
///     .layer(SseLayer::new(bus).public().path("/stream"))
///     .service_fn(|req: Request<String>| async move {
///         // Every request carries the bus.
///         let bus = req.extensions().get::<EventBus>().unwrap().clone();
///         let _ = bus.publish("hits", tower_sse::Event::new(req.uri().path())).await;
///         Ok::<_, Infallible>(Response::new(String::from("hello")))
///     });
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct SseLayer {
    route: Route,
}

impl SseLayer {
    /// A layer for `bus`, with its stream route at `/events` closed: it opens nothing until
    /// the application says who may subscribe, with [`authorize`](Self::authorize) (a policy)
    /// or [`public`](Self::public) (anyone, every topic). Until then every stream request gets
    /// `403` saying so. For the bus in the extensions alone, with no route at all, use
    /// [`without_route`](Self::without_route).
    pub fn new(bus: EventBus) -> Self {
        Self {
            route: Route::new(bus),
        }
    }

    /// Opens every topic of the route to anyone, without authorization: for public feeds, or
    /// behind an authentication of your own in front of the layer. The choice is explicit so
    /// that it shows in review; prefer [`authorize`](Self::authorize) when topics belong to
    /// users.
    pub fn public(mut self) -> Self {
        self.route.access = Access::Public;
        self
    }

    /// Serves no stream route: the layer only puts the bus (and [`Streams`](crate::Streams),
    /// for handlers that serve streams themselves) into every request's extensions, and every
    /// request reaches the inner service.
    pub fn without_route(mut self) -> Self {
        self.route.mounted = false;
        self
    }

    /// Serves streams at `path` (`GET {path}/{topic}` and `GET {path}?topic=..`) instead of
    /// `/events`. A trailing `/` is ignored.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.route.path = normalize_path(path.into());
        self
    }

    /// Sets the keep-alive interval; `None` disables keep-alive comments. Default: 15 seconds.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.route.stream.keep_alive = interval;
        self
    }

    /// Sets the write delay of every stream: frames that arrive within `delay` of a stream's
    /// last write wait and go out together in one write; a frame arriving on a stream that was
    /// quiet for `delay` goes out at once. See [`EventStream::write_delay`](crate::EventStream::write_delay).
    /// Default: 8 ms; `Duration::ZERO` writes every frame as soon as it arrives.
    pub fn write_delay(mut self, delay: Duration) -> Self {
        self.route.stream.write_delay = delay;
        self
    }

    /// Sets the streams' write timeout: a stream whose client takes no event for `timeout`
    /// while events wait ends and releases what it held (see [`EventStream::write_timeout`]).
    /// Default: the bus's stall timeout, 30 s.
    ///
    /// [`EventStream::write_timeout`]: crate::EventStream::write_timeout
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.route.stream.write_timeout = Some(timeout);
        self
    }

    /// Sets the reconnection delay sent to clients, and the random extra delay added to it so
    /// clients do not all reconnect at once. Default: 3 seconds plus up to 2 seconds.
    pub fn retry(mut self, retry: Option<Duration>, jitter: Duration) -> Self {
        self.route.stream.retry = retry;
        self.route.stream.retry_jitter = jitter;
        self
    }

    /// Limits the event streams open at once through this layer (all its services together,
    /// and the streams handlers behind it open through [`Streams`](crate::Streams)): past
    /// `max`, a stream request gets `503 Service Unavailable` with `Retry-After`.
    /// Default: no limit.
    pub fn max_streams(mut self, max: usize) -> Self {
        self.route.limit = Some(StreamLimit::new(max));
        self
    }

    /// Opens the route to the streams `policy` allows, checking every stream request before
    /// subscribing.
    ///
    /// The policy sees the request (headers, URI, and the extensions your authentication
    /// middleware set, when it runs before this layer) and the requested topics. A refusal is
    /// answered with `401 Unauthorized` (with `WWW-Authenticate: Bearer`) or `403 Forbidden`
    /// and its message; a stream naming several topics is refused whole when any one is not
    /// allowed. A stream granted until an instant ends then, with the comment
    /// `: token expired; reconnect with a fresh token` (and the id to resume from).
    ///
    /// Publishing is your handlers' business: check it there with
    /// [`Authorize::publish`](crate::Authorize::publish).
    ///
    /// # Example
    ///
    /// ```
    /// use http::request::Parts;
    /// use tower_sse::{auth::Action, Denied, EventBus, SseLayer, Topic};
    ///
    /// let layer = SseLayer::new(EventBus::memory()).authorize(
    ///     |req: &Parts, _: Action, _: &[Topic]| match req.headers.get("x-api-key") {
    ///         Some(key) if key == "let-me-in" => Ok(()),
    ///         Some(_) => Err(Denied::invalid_token("unknown API key")),
    ///         None => Err(Denied::unauthenticated("send an x-api-key header")),
    ///     },
    /// );
    /// # let _ = layer;
    /// ```
    pub fn authorize(mut self, policy: impl Authorize) -> Self {
        self.route.access = Access::Policy(Policy::new(policy));
        self
    }

    /// The bus this layer serves.
    pub fn bus(&self) -> &EventBus {
        &self.route.bus
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = Sse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse::from_route(inner, self.route.clone())
    }
}
