//! [`EventStream`]: the `text/event-stream` response body that serves a [`Subscription`].

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::{
    bus::{random_u64, Message, ResumeStatus, Subscription},
    event::KEEP_ALIVE,
    last_event_id::EventId,
    route::StreamPermit,
};

/// The event type of the status events the stream sends: first, to say how the stream started
/// (`fresh`, `resumed` or `reset`), and later when events may have been lost (`gap`).
pub const STATUS_EVENT: &str = "sse-status";

/// Frames written together in one body chunk at most (when a client has a backlog).
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// How an [`EventStream`] behaves: keep-alive and the client's reconnection delay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamConfig {
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) retry: Option<Duration>,
    pub(crate) retry_jitter: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            keep_alive: Some(Duration::from_secs(15)),
            retry: Some(Duration::from_secs(3)),
            retry_jitter: Duration::from_secs(2),
        }
    }
}

/// A `text/event-stream` response body serving a [`Subscription`].
///
/// The first frame tells the client how the stream started: a `retry:` field (with jitter, so a
/// fleet of clients does not reconnect in lockstep) and a [`STATUS_EVENT`] event whose data is
/// `{"status":"fresh"}`, `{"status":"resumed","replayed":N}` or
/// `{"status":"reset","reason":"..."}`, with the id to resume from. Then come the events, in
/// order, several to a chunk when the client has a backlog. When idle, a keep-alive comment is
/// sent every 15 seconds by default. When the subscriber falls too far behind or the bus shuts
/// down, a final comment says why and the stream ends; the browser reconnects with the
/// `Last-Event-ID` of the last event it received and resumes.
///
/// Also used for the short error responses of [`Sse`](crate::Sse) and
/// [`SseService`](crate::SseService).
///
/// # Example
///
/// Serving a subscription from your own handler:
///
/// ```
/// use std::time::Duration;
/// use http::Response;
/// use tower_sse::{EventBus, EventStream};
///
/// async fn handler(bus: EventBus) -> Response<EventStream> {
///     match bus.subscribe(["news"], None).await {
///         Ok(subscription) => EventStream::new(subscription)
///             .keep_alive(Some(Duration::from_secs(30)))
///             .into_response(),
///         Err(e) => EventStream::error_response(&e),
///     }
/// }
/// # let _ = handler;
/// ```
pub struct EventStream {
    kind: Kind,
}

enum Kind {
    Live(Box<Live>),
    Fixed(Option<Bytes>),
}

struct Live {
    subscription: Subscription,
    config: StreamConfig,
    head: Option<Bytes>,
    keep_alive: Option<Pin<Box<Sleep>>>,
    started: bool,
    done: bool,
    _permit: Option<StreamPermit>,
}

impl EventStream {
    /// A stream serving `subscription` with the default settings.
    pub fn new(subscription: Subscription) -> Self {
        Self::with_config(subscription, StreamConfig::default())
    }

    pub(crate) fn with_config(subscription: Subscription, config: StreamConfig) -> Self {
        Self {
            kind: Kind::Live(Box::new(Live {
                subscription,
                config,
                head: None,
                keep_alive: None,
                started: false,
                done: false,
                _permit: None,
            })),
        }
    }

    pub(crate) fn fixed(body: Bytes) -> Self {
        Self {
            kind: Kind::Fixed(Some(body)),
        }
    }

    /// Counts this stream against a limit for as long as it lives.
    pub(crate) fn hold(mut self, permit: Option<StreamPermit>) -> Self {
        if let Kind::Live(live) = &mut self.kind {
            live._permit = permit;
        }
        self
    }

    fn config_mut(&mut self) -> Option<&mut StreamConfig> {
        match &mut self.kind {
            Kind::Live(live) => Some(&mut live.config),
            Kind::Fixed(_) => None,
        }
    }

    /// Sets the keep-alive interval (`None` disables keep-alive comments). Default: 15 seconds.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        if let Some(config) = self.config_mut() {
            config.keep_alive = interval;
        }
        self
    }

    /// Sets the reconnection delay sent to the client in the `retry:` field, and the jitter
    /// added to it (a random extra delay up to `jitter`). `None` sends no `retry:` field.
    /// Default: 3 seconds plus up to 2 seconds.
    pub fn retry(mut self, retry: Option<Duration>, jitter: Duration) -> Self {
        if let Some(config) = self.config_mut() {
            config.retry = retry;
            config.retry_jitter = jitter;
        }
        self
    }

    /// A `200` response with this body and the headers an event stream needs
    /// (`Content-Type: text/event-stream`, `Cache-Control: no-cache`,
    /// `X-Accel-Buffering: no` so proxies such as nginx do not buffer it).
    pub fn into_response(self) -> Response<Self> {
        let mut response = Response::new(self);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }

    /// A short `text/plain` response for a failed subscription, with the status of
    /// [`BusError::status_code`](crate::BusError::status_code): `400` for the caller's mistakes
    /// (an invalid topic, say), `503` with `Retry-After` when the bus is shutting down or its
    /// backend is unavailable. The body is the error's message.
    pub fn error_response(error: &crate::BusError) -> Response<Self> {
        let status = error.status_code();
        let mut response = text_response(status, error.to_string());
        if status.is_server_error() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response
    }
}

/// A `text/plain` response with `message` (and a final newline) as its body.
pub(crate) fn text_response(
    status: StatusCode,
    message: impl Into<String>,
) -> Response<EventStream> {
    let mut message = message.into();
    message.push('\n');
    let mut response = Response::new(EventStream::fixed(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Live {
    /// The first frame: the reconnection delay and the status event.
    fn head(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(128);
        if let Some(retry) = self.config.retry {
            let jitter = self.config.retry_jitter.as_millis() as u64;
            let extra = if jitter == 0 {
                0
            } else {
                random_u64() % (jitter + 1)
            };
            let millis = retry.as_millis() as u64 + extra;
            buf.put_slice(format!("retry: {millis}\n").as_bytes());
        }
        let data = match self.subscription.status() {
            ResumeStatus::Fresh => r#"{"status":"fresh"}"#.to_owned(),
            ResumeStatus::Resumed { replayed } => {
                format!(r#"{{"status":"resumed","replayed":{replayed}}}"#)
            }
            ResumeStatus::Reset(reason) => {
                format!(r#"{{"status":"reset","reason":"{}"}}"#, reason.as_str())
            }
        };
        put_status(&mut buf, &data, Some(self.subscription.last_event_id()));
        buf.freeze()
    }

    fn reset_keep_alive(&mut self) {
        if let (Some(sleep), Some(every)) = (&mut self.keep_alive, self.config.keep_alive) {
            sleep.as_mut().reset(Instant::now() + every);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.started {
            self.started = true;
            self.head = Some(self.head());
            if let Some(every) = self.config.keep_alive {
                self.keep_alive = Some(Box::pin(tokio::time::sleep(every)));
            }
        }
        let mut first: Option<Bytes> = None;
        let mut batch: Option<BytesMut> = None;
        let mut push = |bytes: &[u8], owned: Option<Bytes>| match (&mut first, &mut batch) {
            (None, None) => first = Some(owned.unwrap_or_else(|| Bytes::copy_from_slice(bytes))),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity((f.len() + bytes.len()) * 2);
                b.put_slice(f);
                b.put_slice(bytes);
                batch = Some(b);
            }
            (_, Some(b)) => b.put_slice(bytes),
        };
        let mut len = 0;
        if let Some(head) = self.head.take() {
            len += head.len();
            push(&head, Some(head.clone()));
        }
        while len < MAX_BATCH_BYTES {
            match Pin::new(&mut self.subscription).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Message::Event(event))) => {
                    let frame = event.into_frame();
                    len += frame.len();
                    push(&frame, Some(frame.clone()));
                }
                Poll::Ready(Some(Message::Gap(reason))) => {
                    let mut buf = BytesMut::new();
                    let data = format!(r#"{{"status":"gap","reason":"{}"}}"#, reason.as_str());
                    put_status(&mut buf, &data, None);
                    len += buf.len();
                    push(&buf, None);
                }
                Poll::Ready(Some(end)) => {
                    let why = match end {
                        Message::Lagged => "disconnected: this client fell too far behind",
                        _ => "the server is shutting down",
                    };
                    let comment = format!(
                        ": {why}; reconnect with Last-Event-ID {} to resume\n\n",
                        self.subscription.last_event_id()
                    );
                    push(comment.as_bytes(), None);
                    self.done = true;
                    break;
                }
                Poll::Ready(None) => {
                    self.done = true;
                    break;
                }
            }
        }
        if let Some(b) = batch {
            self.reset_keep_alive();
            return Poll::Ready(Some(b.freeze()));
        }
        if let Some(f) = first {
            self.reset_keep_alive();
            return Poll::Ready(Some(f));
        }
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(sleep) = &mut self.keep_alive {
            if sleep.as_mut().poll(cx).is_ready() {
                self.reset_keep_alive();
                return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE)));
            }
        }
        Poll::Pending
    }
}

/// Writes a status event.
fn put_status(buf: &mut BytesMut, data: &str, id: Option<EventId>) {
    buf.put_slice(b"event: ");
    buf.put_slice(STATUS_EVENT.as_bytes());
    buf.put_slice(b"\ndata: ");
    buf.put_slice(data.as_bytes());
    buf.put_u8(b'\n');
    if let Some(id) = id {
        buf.put_slice(format!("id: {id}\n").as_bytes());
    }
    buf.put_u8(b'\n');
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.kind {
            Kind::Fixed(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            Kind::Live(live) => live.poll_frame(cx).map(|f| f.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Fixed(body) => body.is_none(),
            Kind::Live(live) => live.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Fixed(Some(body)) => SizeHint::with_exact(body.len() as u64),
            Kind::Fixed(None) => SizeHint::with_exact(0),
            Kind::Live(_) => SizeHint::default(),
        }
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Live(live) => f
                .debug_struct("EventStream")
                .field("subscription", &live.subscription)
                .field("done", &live.done)
                .finish(),
            Kind::Fixed(body) => f.debug_struct("EventStream").field("fixed", body).finish(),
        }
    }
}
