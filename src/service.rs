use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::{
    auth::{Authorize, Policy},
    body::SseBody,
    bus::EventBus,
    future::ResponseFuture,
    future::StreamFuture,
    handler::Streams,
    limit::StreamLimit,
    route::{normalize_path, Access, Route},
    stream::{text_response, EventStream},
};

/// Middleware that puts the [`EventBus`] into every request's extensions and answers the event
/// stream route itself; see [`SseLayer`](crate::SseLayer).
///
/// Cloning is cheap: the inner service's clone plus a reference count.
#[derive(Debug)]
pub struct Sse<S> {
    inner: S,
    route: Arc<Route>,
}

impl<S: Clone> Clone for Sse<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            route: self.route.clone(),
        }
    }
}

impl<S> Sse<S> {
    /// Wraps `inner`, serving streams from `bus` at `/events`.
    pub fn new(inner: S, bus: EventBus) -> Self {
        Self::from_route(inner, Route::new(bus))
    }

    pub(crate) fn from_route(inner: S, route: Route) -> Self {
        Self {
            inner,
            route: Arc::new(route),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Takes the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The bus this service serves.
    pub fn bus(&self) -> &EventBus {
        &self.route.bus
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Sse<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<SseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let extensions = req.extensions_mut();
        extensions.insert(self.route.bus.clone());
        extensions.insert(Streams::new(self.route.clone()));
        if self.route.matches(&req) {
            let (parts, _body) = req.into_parts();
            let request = self.route.parse(&parts);
            ResponseFuture::stream(self.route.serve(&parts, request))
        } else {
            ResponseFuture::inner(self.inner.call(req))
        }
    }
}

/// A standalone service that only serves event streams, for mounting on a route of your router
/// (for example axum's `route_service`).
///
/// It answers `GET {path}/{topic}` and `GET {path}?topic=A&topic=B` (path `/events` by default)
/// exactly like [`Sse`]; any other request gets `404` (or `405` for another method).
///
/// # Example
///
/// ```
/// use axum::Router;
/// use tower_sse::{EventBus, SseService};
///
/// let bus = EventBus::memory();
/// let app: Router = Router::new()
///     .route_service("/events/{topic}", SseService::new(bus.clone()).public())
///     .route_service("/events", SseService::new(bus).public());
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct SseService {
    route: Arc<Route>,
}

impl SseService {
    /// Serves streams from `bus` at `/events`, closed until [`authorize`](Self::authorize) or
    /// [`public`](Self::public) says who may subscribe (as [`SseLayer::new`](crate::SseLayer::new)).
    pub fn new(bus: EventBus) -> Self {
        Self {
            route: Arc::new(Route::new(bus)),
        }
    }

    /// Serves streams at `path` instead of `/events`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.route).path = normalize_path(path.into());
        self
    }

    /// Sets the keep-alive interval; `None` disables keep-alive comments. Default: 15 seconds.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.route).stream.keep_alive = interval;
        self
    }

    /// Limits the event streams open at once through this service (all its clones together):
    /// past `max`, a stream request gets `503 Service Unavailable` with `Retry-After`.
    pub fn max_streams(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.route).limit = Some(StreamLimit::new(max));
        self
    }

    /// Checks every stream request with `policy` before subscribing: a refusal is answered
    /// with `401` or `403`, and a stream granted until an instant ends then. See
    /// [`SseLayer::authorize`](crate::SseLayer::authorize).
    pub fn authorize(mut self, policy: impl Authorize) -> Self {
        Arc::make_mut(&mut self.route).access = Access::Policy(Policy::new(policy));
        self
    }

    /// Opens every topic to anyone; see [`SseLayer::public`](crate::SseLayer::public).
    pub fn public(mut self) -> Self {
        Arc::make_mut(&mut self.route).access = Access::Public;
        self
    }

    /// Sets the write delay of every stream; see
    /// [`EventStream::write_delay`](crate::EventStream::write_delay). Default: 8 ms.
    pub fn write_delay(mut self, delay: Duration) -> Self {
        Arc::make_mut(&mut self.route).stream.write_delay = delay;
        self
    }

    /// Sets the streams' write timeout; see [`SseLayer::write_timeout`](crate::SseLayer::write_timeout).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.route).stream.write_timeout = Some(timeout);
        self
    }

    /// Sets the reconnection delay sent to clients and its random extra delay. Default: 3
    /// seconds plus up to 2 seconds.
    pub fn retry(mut self, retry: Option<Duration>, jitter: Duration) -> Self {
        let stream = &mut Arc::make_mut(&mut self.route).stream;
        stream.retry = retry;
        stream.retry_jitter = jitter;
        self
    }
}

impl<B> Service<Request<B>> for SseService {
    type Response = Response<EventStream>;
    type Error = Infallible;
    type Future = StreamFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.route.matches(&req) {
            let (parts, _body) = req.into_parts();
            let request = self.route.parse(&parts);
            StreamFuture::new(self.route.serve(&parts, request))
        } else {
            let response = if req.method() == http::Method::GET {
                text_response(StatusCode::NOT_FOUND, "not an event stream route")
            } else {
                let mut r = text_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "event streams are read with GET",
                );
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
                r
            };
            StreamFuture::new(Box::pin(std::future::ready(response)))
        }
    }
}
