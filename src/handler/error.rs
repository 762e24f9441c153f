//! [`StreamError`]: why a handler's stream could not be opened, and the answer it becomes.

use std::fmt;

use http::{header, HeaderValue, Response, StatusCode};

use crate::{
    error::BusError,
    stream::{text_response, EventStream},
};

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
