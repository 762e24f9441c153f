//! Matching SSE requests and turning them into event streams.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use http::{header::HeaderName, request::Parts, Method, Request, Response, StatusCode};

use crate::{
    auth::{Denied, Policy},
    bus::{EventBus, Topic},
    query::{percent_decode, query_pairs},
    stream::{text_response, EventStream, StreamConfig},
};

/// The `Last-Event-ID` request header a reconnecting `EventSource` sends.
pub(crate) const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub(crate) type ResponseFuture =
    Pin<Box<dyn Future<Output = Response<EventStream>> + Send + 'static>>;

/// What the layer and the standalone service share: the bus, the route and the stream settings.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) bus: EventBus,
    pub(crate) path: String,
    pub(crate) stream: StreamConfig,
    pub(crate) limit: Option<StreamLimit>,
    pub(crate) authorize: Option<Policy>,
}

/// The most event streams open at once, shared by every clone of a layer or service.
#[derive(Debug, Clone)]
pub(crate) struct StreamLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open stream counted against a [`StreamLimit`]; released on drop.
#[derive(Debug)]
pub(crate) struct StreamPermit {
    open: Arc<AtomicUsize>,
}

impl StreamLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    fn acquire(&self) -> Option<StreamPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamPermit {
                open: self.open.clone(),
            })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request for an event stream, parsed but not yet validated against the topic rule.
#[derive(Debug)]
pub(crate) struct StreamRequest {
    topics: Vec<String>,
    resume: Option<String>,
}

impl Route {
    pub(crate) fn new(bus: EventBus) -> Self {
        Self {
            bus,
            path: "/events".to_owned(),
            stream: StreamConfig::default(),
            limit: None,
            authorize: None,
        }
    }

    /// Whether `request` is for the event stream route: `GET {path}?topic=..` or
    /// `GET {path}/{topic}`.
    pub(crate) fn matches<B>(&self, request: &Request<B>) -> bool {
        if request.method() != Method::GET {
            return false;
        }
        let path = request.uri().path();
        match path.strip_prefix(self.path.as_str()) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('/')
                .is_some_and(|topic| !topic.is_empty() && !topic.contains('/')),
            None => false,
        }
    }

    /// Reads the topics and resume point from a request that [`matches`](Self::matches).
    pub(crate) fn parse(&self, parts: &Parts) -> StreamRequest {
        let mut topics = Vec::new();
        let path = parts.uri.path();
        if let Some(topic) = path
            .strip_prefix(self.path.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        {
            topics.push(percent_decode(topic).into_owned());
        }
        for (key, value) in query_pairs(parts.uri.query().unwrap_or("")) {
            if key == "topic" {
                topics.push(value.into_owned());
            }
        }
        let resume = last_event_id(&parts.headers, &parts.uri);
        StreamRequest { topics, resume }
    }

    /// Authorizes, subscribes and builds the response: the event stream, or a short error.
    pub(crate) fn serve(&self, parts: &Parts, request: StreamRequest) -> ResponseFuture {
        let bus = self.bus.clone();
        let config = self.stream;
        let mut deadline = None;
        if let Some(policy) = &self.authorize {
            match authorize(policy, parts, &request.topics) {
                Ok(expires) => deadline = expires,
                Err(denied) => return Box::pin(std::future::ready(denied.stream_response())),
            }
        }
        let permit = match &self.limit {
            Some(limit) => match limit.acquire() {
                Some(permit) => Some(permit),
                None => {
                    crate::metrics::refused("limit");
                    return Box::pin(std::future::ready(too_many_streams()));
                }
            },
            None => None,
        };
        Box::pin(async move {
            if request.topics.is_empty() {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    "no topic given: use /events/{topic} or ?topic=A&topic=B",
                );
            }
            match bus
                .subscribe(&request.topics, request.resume.as_deref())
                .await
            {
                Ok(subscription) => EventStream::with_config(subscription, config)
                    .hold(permit)
                    .expire_at(deadline)
                    .into_response(),
                Err(e) => EventStream::error_response(&e),
            }
        })
    }
}

/// Checks a stream request against the policy: the instant the stream must end, if any, or
/// the refusal. Topics that break the rule are left for the bus to refuse.
fn authorize(
    policy: &Policy,
    parts: &Parts,
    names: &[String],
) -> Result<Option<tokio::time::Instant>, Denied> {
    let Ok(topics) = names
        .iter()
        .map(|t| Topic::new(t))
        .collect::<Result<Vec<_>, _>>()
    else {
        return Ok(None);
    };
    if topics.is_empty() {
        return Ok(None);
    }
    match policy.subscribe(parts, &topics) {
        // An instant beyond what a clock can represent is as good as never.
        Ok(grant) => Ok(grant.expires_at().and_then(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::Instant::now().checked_add(left)
        })),
        Err(denied) => {
            tracing::debug!(status = %denied.status_code(), reason = %denied, "stream refused");
            crate::metrics::refused(if denied.is_forbidden() {
                "forbidden"
            } else {
                "unauthenticated"
            });
            Err(denied)
        }
    }
}

fn too_many_streams() -> Response<EventStream> {
    let mut response = text_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many open event streams on this server; retry later",
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("5"),
    );
    response
}

/// The resume point a client asks for: its `Last-Event-ID` header or, for clients that cannot
/// set headers, a `last_event_id` query parameter. The header wins: on a reconnect the browser
/// sends the newest id there, while the URL still carries the one the page started with.
///
/// Use it to resume in your own handler, as [`SseLayer`](crate::SseLayer) does. A header that is
/// not text is returned as a value no bus accepts, so the stream reports an invalid id.
///
/// # Example
///
/// ```
/// use http::Request;
///
/// let req = Request::get("/events/t?last_event_id=0a1b2c3d-7")
///     .header("last-event-id", "0a1b2c3d-9")
///     .body(())
///     .unwrap();
/// let id = tower_sse::last_event_id(req.headers(), req.uri());
/// assert_eq!(id.as_deref(), Some("0a1b2c3d-9"));
/// ```
pub fn last_event_id(headers: &http::HeaderMap, uri: &http::Uri) -> Option<String> {
    match headers.get(LAST_EVENT_ID) {
        Some(value) => Some(match value.to_str() {
            Ok(v) => v.trim().to_owned(),
            Err(_) => String::from("\u{0}"),
        }),
        None => query_pairs(uri.query().unwrap_or(""))
            .find(|(key, _)| key == "last_event_id")
            .map(|(_, value)| value.into_owned()),
    }
    .filter(|id| !id.is_empty())
}
