//! Matching SSE requests and turning them into event streams.

use std::{future::Future, pin::Pin, sync::Arc, time::SystemTime};

use http::{header::HeaderName, request::Parts, Method, Request, Response, StatusCode};

use crate::{
    auth::{Denied, Policy},
    bus::{EventBus, Subscription, Topic},
    error::{BusError, BusErrorKind},
    handler::error::StreamError,
    last_event_id::{Cursor, ResumeFrom},
    limit::{StreamLimit, StreamPermit},
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
    pub(crate) access: Access,
    /// Whether the route is served at all (a layer may be there for the bus alone).
    pub(crate) mounted: bool,
}

/// Who may open streams on the route.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// Nobody, until the application chooses (the default).
    Closed,
    /// Anyone, every topic.
    Public,
    /// Whoever the policy lets.
    Policy(Policy),
}

/// A request for an event stream, parsed once: its topics (sorted, unique, within the bus's
/// limits) or why they are refused, and its resume point.
#[derive(Debug)]
pub(crate) struct StreamRequest {
    topics: Result<Vec<Topic>, BusError>,
    resume: ResumeFrom,
}

impl Route {
    pub(crate) fn new(bus: EventBus) -> Self {
        Self {
            bus,
            path: "/events".to_owned(),
            stream: StreamConfig::default(),
            limit: None,
            access: Access::Closed,
            mounted: true,
        }
    }

    /// Whether `request` is for the event stream route: `GET` (or `HEAD`) `{path}?topic=..` or
    /// `{path}/{topic}`.
    pub(crate) fn matches<B>(&self, request: &Request<B>) -> bool {
        if !self.mounted || !matches!(*request.method(), Method::GET | Method::HEAD) {
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
        let resume = last_event_id(&parts.headers, &parts.uri).map(|raw| raw.parse::<Cursor>());
        let topics = match topics.is_empty() {
            // The route's own words for a request that names nothing.
            true => Err(BusError::new(BusErrorKind::NoTopics)),
            false => self.bus.topic_list(&topics),
        };
        StreamRequest { topics, resume }
    }

    /// A slot under the stream limit, if there is one.
    pub(crate) fn slot(&self) -> Result<Option<StreamPermit>, StreamError> {
        let Some(limit) = &self.limit else {
            return Ok(None);
        };
        match limit.acquire() {
            Some(permit) => Ok(Some(permit)),
            None => {
                crate::metrics::refused("limit");
                Err(StreamError::too_many_streams())
            }
        }
    }

    /// The stream of `subscription` with this route's settings, holding `permit`.
    pub(crate) fn open(
        &self,
        subscription: Subscription,
        permit: Option<StreamPermit>,
    ) -> EventStream {
        EventStream::with_config(subscription, self.stream).hold(permit)
    }

    /// Authorizes, subscribes and builds the response: the event stream, or a short error.
    /// A `HEAD` request is answered as its `GET` would be, without subscribing.
    pub(crate) fn serve(self: &Arc<Self>, parts: &Parts, request: StreamRequest) -> ResponseFuture {
        let answer = match &self.access {
            Access::Closed => return Box::pin(std::future::ready(closed())),
            Access::Public => None,
            Access::Policy(policy) => match &request.topics {
                Ok(topics) => Some(policy.subscribe(parts, topics)),
                // The bus's refusal (400) comes first.
                Err(_) => None,
            },
        };
        let head = parts.method == Method::HEAD;
        let route = self.clone();
        Box::pin(async move {
            let expires = match answer {
                Some(answer) => match answer.await {
                    Ok(grant) => grant.expires_at(),
                    Err(denied) => return refused(denied),
                },
                None => None,
            };
            let topics = match request.topics {
                Ok(topics) => topics,
                Err(e) if e.is_no_topics() => {
                    return text_response(
                        StatusCode::BAD_REQUEST,
                        "no topic given: use /events/{topic} or ?topic=A&topic=B",
                    )
                }
                Err(e) => return EventStream::error_response(&e),
            };
            if head {
                return EventStream::head_response();
            }
            route.subscribe(topics, request.resume, expires).await
        })
    }

    /// Subscribes under the stream limit and builds the stream, ending at `expires`.
    async fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
        expires: Option<SystemTime>,
    ) -> Response<EventStream> {
        let permit = match self.slot() {
            Ok(permit) => permit,
            Err(e) => return e.into_response(),
        };
        match self.bus.subscribe_parsed(topics, resume).await {
            Ok(subscription) => {
                let stream = self.open(subscription, permit);
                match expires {
                    Some(at) => stream.expires_at(at),
                    None => stream,
                }
                .into_response()
            }
            Err(e) => EventStream::error_response(&e),
        }
    }
}

/// `path` with one leading `/` and no trailing one.
pub(crate) fn normalize_path(mut path: String) -> String {
    while path.ends_with('/') {
        path.pop();
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    path
}

/// The answer to a stream request the policy refused.
fn refused(denied: Denied) -> Response<EventStream> {
    tracing::debug!(status = %denied.status_code(), reason = %denied, "stream refused");
    crate::metrics::refused(if denied.is_forbidden() {
        "forbidden"
    } else {
        "unauthenticated"
    });
    denied.stream_response()
}

/// The answer of a route whose application chose nobody to let in yet.
fn closed() -> Response<EventStream> {
    crate::metrics::refused("closed");
    text_response(
        StatusCode::FORBIDDEN,
        "no topic is open on this route: the server must choose who may subscribe \
         (SseLayer::authorize) or open every topic to anyone (SseLayer::public)",
    )
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
