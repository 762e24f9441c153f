//! axum integration (feature `axum`): responses and the resume point as axum knows them.

use std::convert::Infallible;

use axum_core::{
    body::Body,
    extract::FromRequestParts,
    response::{IntoResponse, Response},
};
use http::request::Parts;

use crate::{auth::Denied, handler::StreamError, stream::EventStream};

impl IntoResponse for EventStream {
    fn into_response(self) -> Response {
        EventStream::into_response(self).map(Body::new)
    }
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        StreamError::into_response(self).map(Body::new)
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        self.stream_response().map(Body::new)
    }
}

/// The resume point of a stream request: its `Last-Event-ID` header, or a `last_event_id` query
/// parameter for clients that cannot set headers (see [`last_event_id`](crate::last_event_id)).
///
/// # Example
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use tower_sse::{EventStream, LastEventId, SseLayer, StreamError, Streams, EventBus};
///
/// async fn news(
///     Extension(streams): Extension<Streams>,
///     LastEventId(resume): LastEventId,
/// ) -> Result<EventStream, StreamError> {
///     streams.subscribe(["news"], resume.as_deref()).await
/// }
///
/// let app: Router = Router::new()
///     .route("/news", get(news))
///     .layer(SseLayer::new(EventBus::memory()).without_route());
/// # let _ = app;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEventId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(crate::last_event_id(&parts.headers, &parts.uri)))
    }
}
