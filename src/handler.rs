//! [`Streams`]: serving event streams from your own handlers with the layer's settings.

use std::{fmt, sync::Arc};

use http::{header, HeaderValue, Response, StatusCode};

use crate::{
    bus::{EventBus, Subscription},
    error::BusError,
    route::Route,
    stream::{text_response, EventStream},
};

/// What a handler needs to serve event streams as the [`SseLayer`](crate::SseLayer) in front of
/// it does: its bus, its stream settings (keep-alive, retry, write delay, write timeout) and a
/// slot under its [`max_streams`](crate::SseLayer::max_streams) limit, shared with the layer's
/// own route. The layer puts one into every request's extensions.
///
/// A handler authorizes the request itself (it knows its users), subscribes through
/// [`subscribe`](Self::subscribe), and shapes the stream further with
/// [`EventStream::expires_at`] (the end of the client's grant), [`EventStream::filter`] or
/// [`EventStream::map_events`] (what this client may see).
///
/// # Example
///
/// ```
/// use http::{Request, Response};
/// use tower_sse::{EventStream, Streams};
///
/// async fn my_notifications<B>(req: Request<B>) -> Response<EventStream> {
///     let streams = req.extensions().get::<Streams>().expect("behind SseLayer").clone();
///     let user = "alice"; // from your own authentication
///     let resume = tower_sse::last_event_id(req.headers(), req.uri());
///     match streams.subscribe([format!("user:{user}")], resume.as_deref()).await {
///         Ok(stream) => stream.into_response(),
///         Err(e) => e.into_response(),
///     }
/// }
/// # let _ = my_notifications::<()>;
/// ```
#[derive(Clone)]
pub struct Streams {
    route: Arc<Route>,
}

impl Streams {
    pub(crate) fn new(route: Arc<Route>) -> Self {
        Self { route }
    }

    /// The bus.
    pub fn bus(&self) -> &EventBus {
        &self.route.bus
    }

    /// Takes a slot under the stream limit, subscribes to `topics` (resuming after
    /// `resume_from`, a `Last-Event-ID`) and returns the stream with the layer's settings.
    ///
    /// # Errors
    ///
    /// When the stream limit is reached, or the bus refuses the subscription (see
    /// [`EventBus::subscribe`]); [`StreamError::into_response`] answers either.
    pub async fn subscribe<I>(
        &self,
        topics: I,
        resume_from: Option<&str>,
    ) -> Result<EventStream, StreamError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let permit = self.route.slot()?;
        let subscription = self.route.bus.subscribe(topics, resume_from).await?;
        Ok(self.route.open(subscription, permit))
    }

    /// The stream of a subscription made elsewhere, with the layer's settings and a slot under
    /// its stream limit.
    ///
    /// # Errors
    ///
    /// When the stream limit is reached.
    pub fn stream(&self, subscription: Subscription) -> Result<EventStream, StreamError> {
        let permit = self.route.slot()?;
        Ok(self.route.open(subscription, permit))
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("bus", &self.route.bus)
            .finish()
    }
}

/// Why a stream could not be opened: the stream limit, or the bus's refusal.
pub struct StreamError {
    kind: Kind,
}

enum Kind {
    TooManyStreams,
    Bus(BusError),
}

impl StreamError {
    pub(crate) fn too_many_streams() -> Self {
        Self {
            kind: Kind::TooManyStreams,
        }
    }

    /// Whether the stream limit ([`SseLayer::max_streams`](crate::SseLayer::max_streams)) was
    /// reached.
    pub fn is_too_many_streams(&self) -> bool {
        matches!(self.kind, Kind::TooManyStreams)
    }

    /// The bus's refusal, if it was one.
    pub fn bus_error(&self) -> Option<&BusError> {
        match &self.kind {
            Kind::Bus(e) => Some(e),
            Kind::TooManyStreams => None,
        }
    }

    /// The HTTP status that answers it: `503` for the stream limit, otherwise
    /// [`BusError::status_code`].
    pub fn status_code(&self) -> StatusCode {
        match &self.kind {
            Kind::TooManyStreams => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Bus(e) => e.status_code(),
        }
    }

    /// A short `text/plain` answer with the status, the message and, for `503`s,
    /// `Retry-After`.
    pub fn into_response(self) -> Response<EventStream> {
        match &self.kind {
            Kind::Bus(e) => EventStream::error_response(e),
            Kind::TooManyStreams => {
                let mut response = text_response(self.status_code(), self.to_string());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
        }
    }
}

impl From<BusError> for StreamError {
    fn from(e: BusError) -> Self {
        Self { kind: Kind::Bus(e) }
    }
}

impl fmt::Debug for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::TooManyStreams => f.write_str("StreamError(TooManyStreams)"),
            Kind::Bus(e) => f.debug_tuple("StreamError").field(e).finish(),
        }
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::TooManyStreams => {
                f.write_str("too many open event streams on this server; retry later")
            }
            Kind::Bus(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Bus(e) => Some(e),
            Kind::TooManyStreams => None,
        }
    }
}
