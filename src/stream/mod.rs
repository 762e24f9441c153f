//! [`EventStream`]: the `text/event-stream` response body that serves a [`Subscription`].

use std::{
    convert::Infallible,
    fmt,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use self::live::Live;
use crate::{
    bus::{EncodedEvent, Subscription},
    event::Event,
    limit::StreamPermit,
    metrics::StreamMetrics,
};

mod chunk;
mod live;
mod status;

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
/// fleet of clients does not reconnect in lockstep) and a [`STATUS_EVENT`](crate::STATUS_EVENT) event whose data is
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
                metrics: StreamMetrics::open(subscription.status().as_str()),
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
    crate::text::plain_text::<String>(status, message)
        .map(|body| EventStream::fixed(Bytes::from(body)))
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
    async fn half_a_queue_of_small_events_does_not_wait_for_the_delay() {
        let bus = EventBus::memory();
        let mut stream = stream(&bus, Duration::from_millis(8)).await;
        assert!(chunk(&mut stream).await.starts_with("event: sse-status\n"));
        bus.publish("t", Event::new("first")).await.unwrap();
        assert!(ready_chunk(&mut stream).is_some());
        // Far less than a chunk's bytes: gathered, and held for the delay.
        let mut published = 0;
        for _ in 0..600 {
            bus.publish("t", Event::new("x")).await.unwrap();
            published += 1;
        }
        assert_eq!(ready_chunk(&mut stream), None);
        // Within the same delay, rounds of more than half the queue's 1 024 events go out at
        // once; without that they would overflow it and end the stream.
        let mut frames = 0;
        for _ in 0..5 {
            for _ in 0..600 {
                bus.publish("t", Event::new("x")).await.unwrap();
                published += 1;
            }
            let sent = ready_chunk(&mut stream).expect("half a queue does not wait");
            frames += sent.matches("data: x\n").count();
        }
        assert_eq!(frames, published);
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
