//! [`PublishService`]: publishing over HTTP, ready to mount.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower_service::Service;

use crate::{
    auth::{Authorize, Denied, Policy},
    bus::{EventBus, Published, Topic},
    event::Event,
    query::{percent_decode, query_value},
    route::Access,
    text::plain_text,
};

/// A tower [`Service`] that publishes the body of `POST {path}{topic}` as an event.
///
/// - The rest of the path after [`path`](Self::path) (default `/publish/`) is the topic,
///   percent-decoded; the query parameter `event` sets the event's type.
/// - The body is the event's data: UTF-8 text, at most the bus's
///   [`max_event_bytes`](EventBus::max_event_bytes) (`413` past it).
/// - The answer is `202 Accepted` with `{"id":"...","local_only":false}`: the id subscribers
///   see, and whether the event stayed on this instance (the broker was unreachable).
/// - An `Idempotency-Key` header (1 to 128 visible ASCII characters) makes a retry safe on the
///   Redis Streams backend: a publish repeating a key Redis still remembers
///   ([`RedisConfig::idempotency_ttl`](crate::RedisConfig::idempotency_ttl)) publishes nothing
///   and answers the first one's id (see `with_idempotency_key` in `bus::redis`). The
///   in-process and Pub/Sub backends keep no history to check it against and ignore it.
/// - Mistakes get a `4xx` with a message in plain text: another method (`405`), an invalid topic
///   or event type (`sse-` types are the crate's own; `400`), a body that is not UTF-8 (`400`).
///   A bus that cannot take the event answers `503` (or `504` on a timeout).
///
/// Like [`SseLayer`](crate::SseLayer)'s route it is closed until the application chooses who
/// may publish: [`authorize`](Self::authorize) with a policy (its
/// [`publish`](Authorize::publish) check decides, before the body is read) or
/// [`public`](Self::public). Until then every publish gets `403`.
///
/// # Example
///
/// With axum, next to the layer's streams:
///
/// ```
/// use axum::Router;
/// use tower_sse::{EventBus, PublishService, SseLayer};
///
/// let bus = EventBus::memory();
/// let app: Router = Router::new()
///     // POST /publish/{topic}: anyone may publish here; use `authorize` in a real app.
///     .nest_service("/publish", PublishService::new(bus.clone()).path("/").public())
///     .layer(SseLayer::new(bus).public());
/// ```
#[derive(Clone)]
pub struct PublishService {
    bus: EventBus,
    path: Arc<str>,
    access: Access,
}

impl PublishService {
    /// A closed service publishing on `bus` at `/publish/{topic}`.
    pub fn new(bus: EventBus) -> Self {
        Self {
            bus,
            path: Arc::from("/publish/"),
            access: Access::Closed,
        }
    }

    /// Where topics start in the request's path: `{path}{topic}`. Under axum's
    /// `nest_service` the nested path starts at `/`.
    pub fn path(mut self, path: impl AsRef<str>) -> Self {
        self.path = Arc::from(path.as_ref());
        self
    }

    /// Lets anyone publish on every topic. For demos and trusted networks.
    pub fn public(mut self) -> Self {
        self.access = Access::Public;
        self
    }

    /// Lets publish whoever `policy` allows, checked on every request before its body is read.
    pub fn authorize(mut self, policy: impl Authorize) -> Self {
        self.access = Access::Policy(Policy::new(policy));
        self
    }
}

impl fmt::Debug for PublishService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishService")
            .field("path", &self.path)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for PublishService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            Ok(match this.publish(request).await {
                Ok(published) => accepted(&published),
                Err(refused) => refused.into_response(),
            })
        })
    }
}

type Answer = Response<Full<Bytes>>;

/// Why a publish was refused.
enum Refused {
    /// Not a `POST`.
    Method,
    /// The policy said no.
    Denied(Denied),
    /// Anything else: a status and a message for the client.
    Status(StatusCode, String),
}

impl Refused {
    fn into_response(self) -> Answer {
        match self {
            Self::Method => {
                let mut answer = plain_text(StatusCode::METHOD_NOT_ALLOWED, "publish with POST");
                let allow = HeaderValue::from_static("POST");
                answer.headers_mut().insert(header::ALLOW, allow);
                answer
            }
            Self::Denied(denied) => denied.into_response(),
            Self::Status(status, message) => plain_text(status, message),
        }
    }
}

fn bad_request(message: impl fmt::Display) -> Refused {
    Refused::Status(StatusCode::BAD_REQUEST, message.to_string())
}

impl PublishService {
    async fn publish<B>(&self, request: Request<B>) -> Result<Published, Refused>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        let topic = self.topic(&parts)?;
        self.check(&parts, &topic).await?;
        let key = idempotency_key(&parts)?;
        let event = event(&parts, self.read(body).await?)?;
        let publish = self.bus.publish(topic, event);
        #[cfg(feature = "redis")]
        let published = match key {
            Some(key) => crate::bus::redis::with_idempotency_key(key, publish).await,
            None => publish.await,
        };
        #[cfg(not(feature = "redis"))]
        let published = {
            let _ = key;
            publish.await
        };
        published.map_err(|e| Refused::Status(e.status_code(), e.to_string()))
    }

    /// The topic in the request's path, for a `POST`.
    fn topic(&self, parts: &Parts) -> Result<Topic, Refused> {
        if parts.method != Method::POST {
            return Err(Refused::Method);
        }
        let Some(raw) = parts.uri.path().strip_prefix(&*self.path) else {
            let message = format!("publish with POST {}{{topic}}", self.path);
            return Err(Refused::Status(StatusCode::NOT_FOUND, message));
        };
        Topic::new(percent_decode(raw).as_ref()).map_err(bad_request)
    }

    async fn check(&self, parts: &Parts, topic: &Topic) -> Result<(), Refused> {
        match &self.access {
            Access::Public => Ok(()),
            Access::Policy(policy) => policy.publish(parts, topic).await.map_err(Refused::Denied),
            Access::Closed => Err(Refused::Status(
                StatusCode::FORBIDDEN,
                "publishing is closed: the service has no policy \
                 (PublishService::authorize or PublishService::public)"
                    .to_owned(),
            )),
        }
    }

    /// The body as text, within the bus's limit.
    async fn read<B>(&self, body: B) -> Result<String, Refused>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let max = self.bus.max_event_bytes();
        let bytes = match Limited::new(body, max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                let message = format!("event data is larger than the limit of {max} bytes");
                return Err(Refused::Status(StatusCode::PAYLOAD_TOO_LARGE, message));
            }
            Err(e) => return Err(bad_request(format_args!("cannot read the body: {e}"))),
        };
        String::from_utf8(bytes.into()).map_err(|_| bad_request("event data must be UTF-8 text"))
    }
}

/// The longest `Idempotency-Key` taken: each is a Redis key while it is remembered.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The request's `Idempotency-Key`, if any: 1 to 128 visible ASCII characters.
fn idempotency_key(parts: &Parts) -> Result<Option<String>, Refused> {
    let Some(value) = parts.headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let visible = bytes.iter().all(|b| b.is_ascii_graphic());
    if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY || !visible {
        return Err(bad_request(format_args!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The event: `data`, and the type from the query parameter `event`, if any.
fn event(parts: &Parts, data: String) -> Result<Event, Refused> {
    let event = Event::new(data);
    match query_value(&parts.uri, "event") {
        Some(kind) => event.event(kind).map_err(bad_request),
        None => Ok(event),
    }
}

fn accepted(published: &Published) -> Answer {
    let body = format!(
        "{{\"id\":\"{}\",\"local_only\":{}}}",
        published.id(),
        published.is_local_only()
    );
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = StatusCode::ACCEPTED;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}
