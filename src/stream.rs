//! [`EventStream`]: the `text/event-stream` response body that serves a [`Subscription`].

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::{
    bus::{random_u64, EncodedEvent, Message, ResumeStatus, Subscription},
    event::Event,
    event::KEEP_ALIVE,
    last_event_id::Cursor,
    limit::StreamPermit,
    metrics::StreamMetrics,
};

/// The event type of the status events the stream sends: first, to say how the stream started
/// (`fresh`, `resumed` or `reset`), and later when events may have been lost (`gap`).
pub const STATUS_EVENT: &str = "sse-status";

/// What [`EventStream::map_events`] does with one event.
#[derive(Debug)]
#[non_exhaustive]
pub enum Mapped {
    /// Write the event as published: its frame, shared with every other subscriber.
    Keep,
    /// Do not write it. The stream still moves past it: its id goes out on a line of its own,
    /// which a browser takes as its `Last-Event-ID` without dispatching anything, so a
    /// reconnect does not bring it back.
    Skip,
    /// Write this event instead, with the original's id.
    Replace(Event),
}

type MapFn = Box<dyn Fn(&EncodedEvent) -> Mapped + Send + Sync>;

/// Frames written together in one body chunk at most (when a client has a backlog).
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// How an [`EventStream`] behaves: keep-alive, the client's reconnection delay and the write
/// delay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamConfig {
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) retry: Option<Duration>,
    pub(crate) retry_jitter: Duration,
    pub(crate) write_delay: Duration,
    /// Overrides the bus's stall timeout for this stream's subscription.
    pub(crate) write_timeout: Option<Duration>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            keep_alive: Some(Duration::from_secs(15)),
            retry: Some(Duration::from_secs(3)),
            retry_jitter: Duration::from_secs(2),
            write_delay: DEFAULT_WRITE_DELAY,
            write_timeout: None,
        }
    }
}

/// The default of [`EventStream::write_delay`].
pub(crate) const DEFAULT_WRITE_DELAY: Duration = Duration::from_millis(8);

/// A `text/event-stream` response body serving a [`Subscription`].
///
/// The first frame tells the client how the stream started: a `retry:` field (with jitter, so a
/// fleet of clients does not reconnect in lockstep) and a [`STATUS_EVENT`] event whose data is
/// `{"status":"fresh"}`, `{"status":"resumed","replayed":N}` or
/// `{"status":"reset","reason":"..."}`, with the id to resume from. Then come the events, in
/// order, several to a chunk when the client has a backlog or when they arrive within the
/// [write delay](EventStream::write_delay) (8 ms by default) of the previous chunk. When idle,
/// a keep-alive comment is sent every 15 seconds by default. When the subscriber falls too far
/// behind or the bus shuts down, a final comment says why and the stream ends; the browser
/// reconnects with the `Last-Event-ID` of the last event it received and resumes.
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
    /// When the client's authorization ends, if it does.
    deadline: Option<Pin<Box<Sleep>>>,
    /// What to write for each event, if not its frame as published.
    map: Option<MapFn>,
    /// The last event the map skipped, while nothing written carries a later id.
    skipped: Option<EncodedEvent>,
    /// When the last chunk of any kind went out: the keep-alive timer, when it fires, is checked
    /// against it (rather than reset at every write).
    last_sent: Option<Instant>,
    /// When the last chunk with events went out (only tracked with a write delay).
    last_write: Option<Instant>,
    /// Frames waiting for the write delay to pass, and the timer that sends them.
    held: Option<Chunk>,
    flush: Option<Pin<Box<Sleep>>>,
    /// The last write sent frames that had waited: until a delay passes without events, the
    /// subscription is checked only when each delay ends, so publishes do not wake the task.
    busy: bool,
    /// The last chunk was full and more may be ready: the write delay does not apply until the
    /// subscription has nothing more, so a backlog goes out as fast as the client reads.
    backlog: bool,
    started: bool,
    done: bool,
    metrics: StreamMetrics,
    _permit: Option<StreamPermit>,
}

impl EventStream {
    /// A stream serving `subscription` with the default settings.
    pub fn new(subscription: Subscription) -> Self {
        Self::with_config(subscription, StreamConfig::default())
    }

    pub(crate) fn with_config(mut subscription: Subscription, config: StreamConfig) -> Self {
        if let Some(timeout) = config.write_timeout {
            subscription.set_stall_timeout(timeout);
        }
        tracing::debug!(
            topics = ?subscription.topics(),
            status = ?subscription.status(),
            "stream opened"
        );
        Self {
            kind: Kind::Live(Box::new(Live {
                metrics: StreamMetrics::open(subscription.status()),
                subscription,
                config,
                head: None,
                deadline: None,
                map: None,
                skipped: None,
                last_sent: None,
                last_write: None,
                held: None,
                flush: None,
                busy: false,
                backlog: false,
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

    /// Ends the stream at `at`, for example when the client's token expires: a final comment
    /// names the id to resume from, and the browser reconnects (with a fresh token). An instant
    /// beyond what the clock can represent never comes.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        if let (Kind::Live(live), Some(deadline)) =
            (&mut self.kind, Instant::now().checked_add(left))
        {
            live.deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        self
    }

    /// Decides per event what this stream writes: the event as published
    /// ([`Mapped::Keep`], sharing its frame with every other subscriber), nothing
    /// ([`Mapped::Skip`], the client's position still moves past it), or another event in its
    /// place ([`Mapped::Replace`], with the same id). For per-user filtering on a shared
    /// topic, or a view of an event for this client.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_sse::{EventBus, EventStream, Mapped};
    ///
    /// # async fn handler(bus: EventBus, user: String) -> Result<(), tower_sse::BusError> {
    /// let subscription = bus.subscribe(["orders"], None).await?;
    /// let stream = EventStream::new(subscription).map_events(move |event| {
    ///     if event.data().contains(&user) { Mapped::Keep } else { Mapped::Skip }
    /// });
    /// # let _ = stream; Ok(())
    /// # }
    /// ```
    pub fn map_events(
        mut self,
        map: impl Fn(&EncodedEvent) -> Mapped + Send + Sync + 'static,
    ) -> Self {
        if let Kind::Live(live) = &mut self.kind {
            live.map = Some(Box::new(map));
        }
        self
    }

    /// Writes only the events for which `keep` is true; see [`map_events`](Self::map_events)
    /// (the others are [`Mapped::Skip`]ped).
    pub fn filter(self, keep: impl Fn(&EncodedEvent) -> bool + Send + Sync + 'static) -> Self {
        self.map_events(move |event| {
            if keep(event) {
                Mapped::Keep
            } else {
                Mapped::Skip
            }
        })
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

    /// Sets the write delay: after a chunk goes out, frames that arrive within `delay` wait and
    /// go out together when it has passed, in one write. A frame that arrives when nothing was
    /// written for `delay` goes out at once, so a quiet stream has no added latency; a busy one
    /// has at most `delay` added, and makes one write (and one wake-up of its task) per
    /// `delay` instead of one per event. The delay never throttles a backlog: when more is
    /// waiting than one chunk holds, chunks go out as fast as the client reads them.
    /// `Duration::ZERO` writes every frame as soon as it arrives. Default: 8 ms.
    pub fn write_delay(mut self, delay: Duration) -> Self {
        if let Some(config) = self.config_mut() {
            config.write_delay = delay;
        }
        self
    }

    /// Sets the write timeout: when events wait for this stream and its client takes none of
    /// them for `timeout` (it stopped reading), the stream ends and releases everything it
    /// held; the client resumes from its last id when it reads again or reconnects. Default:
    /// the bus's [stall timeout](crate::bus::Builder::stall_timeout), 30 s. The connection
    /// itself is closed by the server's IO write timeout.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        if let Kind::Live(live) = &mut self.kind {
            live.config.write_timeout = Some(timeout);
            live.subscription.set_stall_timeout(timeout);
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

    /// The answer to a `HEAD` request for a stream that would be served: the stream's headers,
    /// no body.
    pub(crate) fn head_response() -> Response<Self> {
        Self::fixed(Bytes::new()).into_response()
    }

    /// A `200` response with this body and the headers an event stream needs
    /// (`Content-Type: text/event-stream`, `Cache-Control: no-cache`,
    /// `X-Accel-Buffering: no` so proxies such as nginx do not buffer it).
    pub fn into_response(self) -> Response<Self> {
        // Room for exactly these three: hyper keeps a response's header map for as long as the
        // connection lives, and a map grown by inserts has room for six (312 bytes more).
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        let mut response = Response::new(self);
        *response.headers_mut() = headers;
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

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.start();
        let mut clock = Clock::default();
        // Frames held back by the write delay come first.
        let mut chunk = self.held.take().unwrap_or_default();
        let hold_until = self.hold_until();
        let holding = hold_until.is_some_and(|until| clock.now() < until);
        let had_held = !chunk.is_empty();
        // While frames are held (or the stream is busy), the subscription is not polled: events
        // published meanwhile are picked up when the delay is over.
        let held_back = holding && (had_held || self.busy);
        if let Some(head) = self.head.take() {
            chunk.push_owned(head);
        }
        let busy = !held_back && self.drain(cx, &mut chunk, had_held);
        if !self.done {
            self.end_if_expired(cx, &mut chunk);
        }
        if let (true, Some(until)) = (holding, hold_until) {
            if self.hold(cx, &mut chunk, until) {
                return Poll::Pending;
            }
        }
        if !chunk.is_empty() {
            self.last_sent = Some(clock.now());
        }
        if chunk.events > 0 {
            if !self.config.write_delay.is_zero() {
                // Frames released by the timer count as written when the delay ended, which
                // keeps a busy stream to one write per delay. (The first frame alone does not
                // count.)
                let now = clock.now();
                self.last_write = Some(match hold_until {
                    Some(until) if held_back => now.max(until),
                    _ => now,
                });
                self.busy = had_held || busy;
            }
            let oldest = self.subscription.take_oldest();
            self.metrics.delivered(chunk.events, oldest);
            tracing::trace!(events = chunk.events, bytes = chunk.len, "delivered");
        }
        if let Some(bytes) = chunk.into_bytes() {
            return Poll::Ready(Some(bytes));
        }
        if self.done {
            return Poll::Ready(None);
        }
        self.poll_keep_alive(&mut clock)
    }

    /// Until when frames wait for others to join them: the write delay after the last write,
    /// unless a backlog is being written.
    fn hold_until(&self) -> Option<Instant> {
        if self.backlog || self.config.write_delay.is_zero() {
            return None;
        }
        self.last_write.map(|at| at + self.config.write_delay)
    }

    /// The first poll: the head frame, and the keep-alive wake-ups.
    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.head = Some(self.head());
        if let Some(every) = self.config.keep_alive {
            self.subscription.keep_alive(every);
        }
    }

    /// Moves what the subscription has ready into `chunk`. A busy stream checks without asking
    /// to be woken; one that finds nothing new is quiet again and checks once more, asking to
    /// be woken by the next event. Returns whether the stream is still busy.
    fn drain(&mut self, cx: &mut Context<'_>, chunk: &mut Chunk, had_held: bool) -> bool {
        let mut busy = self.busy;
        let len_before = chunk.len;
        loop {
            let pending = if busy {
                self.gather(&mut Context::from_waker(Waker::noop()), chunk)
            } else {
                self.gather(cx, chunk)
            };
            if busy && pending && !had_held && chunk.len == len_before {
                busy = false;
                self.busy = false;
                continue;
            }
            return busy;
        }
    }

    /// Moves messages of the subscription into `chunk` up to [`MAX_BATCH_BYTES`]. Returns
    /// whether the subscription had nothing more (and will wake `cx`); a full chunk marks a
    /// backlog.
    fn gather(&mut self, cx: &mut Context<'_>, chunk: &mut Chunk) -> bool {
        self.backlog = false;
        let pending = loop {
            if chunk.len >= MAX_BATCH_BYTES {
                self.backlog = true;
                break false;
            }
            match Pin::new(&mut self.subscription).poll_next(cx) {
                Poll::Pending => break true,
                Poll::Ready(Some(Message::Event(event))) => self.put_event(event, chunk),
                Poll::Ready(Some(Message::Gap(reason))) => {
                    self.put_skipped(chunk);
                    let mut buf = BytesMut::new();
                    let data = format!(r#"{{"status":"gap","reason":"{}"}}"#, reason.as_str());
                    put_status(&mut buf, &data, None);
                    chunk.push(&buf);
                }
                Poll::Ready(Some(end)) => {
                    self.put_skipped(chunk);
                    let why = match end {
                        Message::Lagged => "disconnected: this client fell too far behind",
                        Message::Stalled => "disconnected: this client stopped reading",
                        _ => "the server is shutting down",
                    };
                    let comment = format!(
                        ": {why}; reconnect with Last-Event-ID {} to resume\n\n",
                        self.subscription.last_event_id()
                    );
                    chunk.push(comment.as_bytes());
                    self.done = true;
                    break false;
                }
                Poll::Ready(None) => {
                    self.done = true;
                    break false;
                }
            }
        };
        self.put_skipped(chunk);
        pending
    }

    /// Adds an event to `chunk` as the stream's map says: as published (its shared frame),
    /// replaced, or skipped (remembered, so its id still goes out).
    fn put_event(&mut self, event: EncodedEvent, chunk: &mut Chunk) {
        let mapped = self.map.as_ref().map_or(Mapped::Keep, |map| map(&event));
        match mapped {
            Mapped::Keep => chunk.push_owned(event.into_frame()),
            Mapped::Skip => {
                self.skipped = Some(event);
                return;
            }
            Mapped::Replace(replacement) => {
                chunk.push_owned(replacement.encode_with_id(event.id_line()));
            }
        }
        chunk.events += 1;
        self.skipped = None;
    }

    /// Writes the id of the last skipped event, if nothing written since carries a later one:
    /// an `id:` line alone, which a browser takes as its `Last-Event-ID` without dispatching
    /// anything, so a reconnect does not replay what was skipped.
    fn put_skipped(&mut self, chunk: &mut Chunk) {
        if let Some(id) = self.skipped.take().as_ref().and_then(EncodedEvent::id_line) {
            chunk.push(format!("id: {id}\n\n").as_bytes());
        }
    }

    /// Ends the stream when the client's authorization has expired.
    fn end_if_expired(&mut self, cx: &mut Context<'_>, chunk: &mut Chunk) {
        let Some(deadline) = &mut self.deadline else {
            return;
        };
        if deadline.as_mut().poll(cx).is_ready() {
            let comment = format!(
                ": token expired; reconnect with a fresh token and Last-Event-ID {} to resume\n\n",
                self.subscription.last_event_id()
            );
            chunk.push(comment.as_bytes());
            self.done = true;
        }
    }

    /// Within the write delay (until `until`): keeps `chunk` for later and arms the timer that
    /// sends it, unless there is nothing to wait for (or too much). Returns whether it did.
    fn hold(&mut self, cx: &mut Context<'_>, chunk: &mut Chunk, until: Instant) -> bool {
        if self.done || chunk.len >= MAX_BATCH_BYTES || (chunk.is_empty() && !self.busy) {
            return false;
        }
        let flush = self
            .flush
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if flush.deadline() != until {
            flush.as_mut().reset(until);
        }
        if flush.as_mut().poll(cx).is_ready() {
            // The timer says the delay is over (the clock read before can lag it): go again
            // without a hold.
            self.last_write = None;
            cx.waker().wake_by_ref();
        }
        self.held = Some(std::mem::take(chunk));
        true
    }

    /// Sends a keep-alive comment when nothing went out for the interval. The bus wakes the
    /// stream about once per interval (all streams of a bus on one tick, not a timer each), so
    /// an idle stream sends one comment per interval, and one that wrote meanwhile waits for
    /// the next round: two comments are at most twice the interval apart.
    fn poll_keep_alive(&mut self, clock: &mut Clock) -> Poll<Option<Bytes>> {
        let Some(every) = self.config.keep_alive else {
            return Poll::Pending;
        };
        let now = clock.now();
        if self.last_sent.is_some_and(|at| now < at + every) {
            return Poll::Pending;
        }
        self.last_sent = Some(now);
        Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE)))
    }
}

/// The clock, read at most once per poll.
#[derive(Default)]
struct Clock(Option<Instant>);

impl Clock {
    fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// Frames gathered for one chunk: the first as it is (not copied), further ones concatenated.
#[derive(Default)]
struct Chunk {
    first: Option<Bytes>,
    batch: Option<BytesMut>,
    len: usize,
    events: u64,
}

impl Chunk {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push_owned(&mut self, bytes: Bytes) {
        if self.first.is_none() {
            self.len += bytes.len();
            self.first = Some(bytes);
        } else {
            self.push(&bytes);
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        match (&self.first, &mut self.batch) {
            (None, _) => self.first = Some(Bytes::copy_from_slice(bytes)),
            (Some(first), None) => {
                let mut batch = BytesMut::with_capacity((first.len() + bytes.len()) * 2);
                batch.put_slice(first);
                batch.put_slice(bytes);
                self.batch = Some(batch);
            }
            (Some(_), Some(batch)) => batch.put_slice(bytes),
        }
    }

    /// The chunk's bytes, if it has any.
    fn into_bytes(self) -> Option<Bytes> {
        match self.batch {
            Some(batch) => Some(batch.freeze()),
            None => self.first,
        }
    }
}

/// Writes a status event.
fn put_status(buf: &mut BytesMut, data: &str, id: Option<Cursor>) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;
    use http_body_util::BodyExt;

    use crate::{Event, EventBus, EventStream};

    async fn chunk(stream: &mut EventStream) -> String {
        let frame = stream.frame().await.unwrap().unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    }

    fn ready_chunk(stream: &mut EventStream) -> Option<String> {
        let frame = stream.frame().now_or_never()?.unwrap().unwrap();
        Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
    }

    async fn stream(bus: &EventBus, delay: Duration) -> EventStream {
        let sub = bus.subscribe(["t"], None).await.unwrap();
        EventStream::new(sub)
            .keep_alive(None)
            .retry(None, Duration::ZERO)
            .write_delay(delay)
    }

    #[tokio::test(start_paused = true)]
    async fn write_delay_gathers_frames_after_a_write() {
        let bus = EventBus::memory();
        let mut stream = stream(&bus, Duration::from_millis(10)).await;
        assert!(chunk(&mut stream).await.starts_with("event: sse-status\n"));

        // The first event goes out at once...
        bus.publish("t", Event::new("a")).await.unwrap();
        let first = ready_chunk(&mut stream).expect("sent without waiting");
        assert!(first.starts_with("data: a\n"), "{first}");
        // ...the next ones within the delay of that write wait, then go out in one chunk.
        bus.publish("t", Event::new("b")).await.unwrap();
        bus.publish("t", Event::new("c")).await.unwrap();
        assert_eq!(ready_chunk(&mut stream), None);
        let together = chunk(&mut stream).await;
        assert_eq!(together.matches("data: ").count(), 2, "{together}");
        assert!(together.find("data: b").unwrap() < together.find("data: c").unwrap());

        // After a quiet spell longer than the delay: at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.publish("t", Event::new("d")).await.unwrap();
        let alone = ready_chunk(&mut stream).expect("sent without waiting");
        assert!(alone.starts_with("data: d\n"), "{alone}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_writes_once_per_delay_then_goes_quiet() {
        let bus = EventBus::memory();
        let mut stream = stream(&bus, Duration::from_millis(4)).await;
        assert!(chunk(&mut stream).await.starts_with("event: sse-status\n"));
        let publisher = bus.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                publisher
                    .publish("t", Event::new(i.to_string()))
                    .await
                    .unwrap();
            }
        });
        let (mut chunks, mut frames) = (0, 0);
        while frames < 200 {
            chunks += 1;
            frames += chunk(&mut stream).await.matches("data: ").count();
        }
        assert_eq!(frames, 200);
        assert!(
            (45..=60).contains(&chunks),
            "{chunks} chunks for 200 events"
        );

        // Quiet again: nothing for a while, then an event wakes the stream.
        let wait = tokio::time::timeout(Duration::from_millis(50), stream.frame());
        assert!(wait.await.is_err());
        let publisher = bus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            publisher.publish("t", Event::new("late")).await.unwrap();
        });
        let late = tokio::time::timeout(Duration::from_secs(60), chunk(&mut stream));
        let late = late.await.expect("woken by the event");
        assert!(late.starts_with("data: late\n"), "{late}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_goes_out_without_waiting_for_the_write_delay() {
        let bus = EventBus::memory();
        let mut stream = stream(&bus, Duration::from_millis(8)).await;
        assert!(chunk(&mut stream).await.starts_with("event: sse-status\n"));
        bus.publish("t", Event::new("first")).await.unwrap();
        assert!(ready_chunk(&mut stream).is_some());
        // Within the delay of that write, more than a dozen chunks' worth arrives.
        let data = "x".repeat(8 * 1024);
        for _ in 0..100 {
            bus.publish("t", Event::new(data.clone())).await.unwrap();
        }
        // The first of them waits out the delay; then the backlog goes out chunk after chunk.
        let mut frames = chunk(&mut stream).await.matches("data: ").count();
        while frames < 100 {
            let next = ready_chunk(&mut stream).expect("a backlog does not wait for the delay");
            frames += next.matches("data: ").count();
        }
        assert_eq!(frames, 100);
        // Drained: the next event coalesces again.
        bus.publish("t", Event::new("late")).await.unwrap();
        assert_eq!(ready_chunk(&mut stream), None);
        assert!(chunk(&mut stream).await.starts_with("data: late\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn without_write_delay_frames_go_out_at_once() {
        let bus = EventBus::memory();
        let mut stream = stream(&bus, Duration::ZERO).await;
        assert!(chunk(&mut stream).await.starts_with("event: sse-status\n"));
        for data in ["a", "b"] {
            bus.publish("t", Event::new(data)).await.unwrap();
            let sent = ready_chunk(&mut stream).expect("sent without waiting");
            assert!(sent.starts_with(&format!("data: {data}\n")), "{sent}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_stream_is_not_held() {
        let bus = EventBus::memory();
        let mut stream = stream(&bus, Duration::from_secs(60)).await;
        assert!(chunk(&mut stream).await.starts_with("event: sse-status\n"));
        bus.shutdown();
        let last = ready_chunk(&mut stream).expect("sent without waiting");
        assert!(last.starts_with(": the server is shutting down"), "{last}");
        assert!(stream.frame().now_or_never().unwrap().is_none());
    }
}
