//! Error types.
//!
//! Every error is an opaque struct with predicates (`is_*`) rather than a public enum, so new
//! failure modes can be added without breaking callers.

use std::{error::Error as StdError, fmt};

/// An error from [`EventBus`](crate::EventBus) operations.
///
/// Use the `is_*` predicates to tell the kinds apart; the `Display` text is meant for people
/// (logs and `4xx`/`5xx` response bodies) and never contains credentials.
pub struct BusError {
    kind: BusErrorKind,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum BusErrorKind {
    InvalidTopic(InvalidTopic),
    NoTopics,
    TooManyTopics { max: usize },
    TooLarge { len: usize, max: usize },
    Closed,
    Unavailable(String),
    Timeout,
    Overloaded,
}

impl BusError {
    pub(crate) fn new(kind: BusErrorKind) -> Self {
        Self { kind, source: None }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_source(
        kind: BusErrorKind,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// A topic did not follow the topic rule (see [`Topic`](crate::Topic)).
    pub fn is_invalid_topic(&self) -> bool {
        matches!(self.kind, BusErrorKind::InvalidTopic(_))
    }

    /// A subscription named no topic, or more topics than the configured maximum.
    pub fn is_bad_topic_list(&self) -> bool {
        matches!(
            self.kind,
            BusErrorKind::NoTopics | BusErrorKind::TooManyTopics { .. }
        )
    }

    /// A subscription named no topic at all.
    pub(crate) fn is_no_topics(&self) -> bool {
        matches!(self.kind, BusErrorKind::NoTopics)
    }

    /// The encoded event is larger than the bus's maximum event size.
    pub fn is_too_large(&self) -> bool {
        matches!(self.kind, BusErrorKind::TooLarge { .. })
    }

    /// The bus was shut down and accepts no new subscriptions.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, BusErrorKind::Closed)
    }

    /// The backend (for example a Redis server) could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, BusErrorKind::Unavailable(_))
    }

    /// The operation did not complete within its configured time limit.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, BusErrorKind::Timeout)
    }

    /// The instance is at its limit for work of this kind (reading history for resuming
    /// clients, on the Redis Streams backend) and refused more for now; trying again shortly may
    /// succeed. [`status_code`](Self::status_code) is `503`.
    pub fn is_overloaded(&self) -> bool {
        matches!(self.kind, BusErrorKind::Overloaded)
    }

    /// The HTTP status that answers a request this error failed: `413` for an event that is
    /// too large, `400` for other input errors, `504` for a timeout, `503` otherwise (shutting
    /// down, backend unavailable, overloaded).
    pub fn status_code(&self) -> http::StatusCode {
        use http::StatusCode;
        match self.kind {
            BusErrorKind::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BusErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ if self.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the error was caused by the caller's input (a `4xx`), as opposed to the state of
    /// the bus or its backend (a `5xx`).
    pub fn is_client_error(&self) -> bool {
        self.is_invalid_topic() || self.is_bad_topic_list() || self.is_too_large()
    }
}

impl fmt::Debug for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("BusError");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BusErrorKind::InvalidTopic(e) => e.fmt(f),
            BusErrorKind::NoTopics => f.write_str("no topic given: name at least one topic"),
            BusErrorKind::TooManyTopics { max } => {
                write!(
                    f,
                    "too many topics on one stream: at most {max} are allowed"
                )
            }
            BusErrorKind::TooLarge { len, max } => {
                write!(
                    f,
                    "event of {len} bytes is larger than the limit of {max} bytes"
                )
            }
            BusErrorKind::Closed => f.write_str("the event bus is shutting down"),
            BusErrorKind::Unavailable(reason) => write!(f, "event bus unavailable: {reason}"),
            BusErrorKind::Timeout => f.write_str("the event bus did not answer in time"),
            BusErrorKind::Overloaded => {
                f.write_str("the event bus is busy replaying history to other clients; try again")
            }
        }
    }
}

impl StdError for BusError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<InvalidTopic> for BusError {
    fn from(e: InvalidTopic) -> Self {
        Self::new(BusErrorKind::InvalidTopic(e))
    }
}

/// A topic name that does not follow the topic rule.
///
/// A topic is 1 to 256 ASCII characters from `A-Z a-z 0-9 _ - . : @ =`.
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidTopic {
    reason: TopicProblem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicProblem {
    Empty,
    TooLong(usize),
    BadChar(char),
}

impl InvalidTopic {
    pub(crate) fn new(reason: TopicProblem) -> Self {
        Self { reason }
    }
}

impl fmt::Debug for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InvalidTopic").field(&self.reason).finish()
    }
}

impl fmt::Display for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid topic: ")?;
        match self.reason {
            TopicProblem::Empty => f.write_str("it is empty")?,
            TopicProblem::TooLong(n) => write!(f, "it is {n} characters long")?,
            TopicProblem::BadChar(c) => write!(f, "it contains {c:?}")?,
        }
        f.write_str(
            "; a topic is 1 to 256 ASCII characters from A-Z a-z 0-9 _ - . : @ = \
             (`*` is reserved for selectors)",
        )
    }
}

impl StdError for InvalidTopic {}

/// An event field that cannot be written to an event stream.
///
/// Returned by [`Event::event`](crate::Event::event) and [`Event::id`](crate::Event::id) when the
/// value contains a line break (or, for ids, a NUL character): written as is it would break the
/// frame or be ignored by browsers.
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    field: &'static str,
    problem: &'static str,
}

impl InvalidEvent {
    pub(crate) fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }
}

impl fmt::Debug for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidEvent")
            .field("field", &self.field)
            .field("problem", &self.problem)
            .finish()
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid event `{}` field: {}", self.field, self.problem)
    }
}

impl StdError for InvalidEvent {}

/// A string that is not an event id issued by this crate.
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidEventId {
    _priv: (),
}

impl InvalidEventId {
    pub(crate) fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Debug for InvalidEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InvalidEventId")
    }
}

impl fmt::Display for InvalidEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid event id: expected EPOCH-SEQUENCE, e.g. `0a1b2c3d-42`")
    }
}

impl StdError for InvalidEventId {}

/// An event's data that is not the JSON asked for, or a value that cannot be written as JSON
/// (feature `json`): from [`Event::json`](crate::Event::json) and
/// [`EncodedEvent::json`](crate::EncodedEvent::json).
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub struct JsonError {
    problem: String,
}

#[cfg(feature = "json")]
impl JsonError {
    pub(crate) fn new(e: serde_json::Error) -> Self {
        Self {
            problem: e.to_string(),
        }
    }
}

#[cfg(feature = "json")]
impl fmt::Debug for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonError")
            .field("problem", &self.problem)
            .finish()
    }
}

#[cfg(feature = "json")]
impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event data as JSON: {}", self.problem)
    }
}

#[cfg(feature = "json")]
impl StdError for JsonError {}
