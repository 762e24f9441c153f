//! A live stream's writing: the first frame, events gathered into chunks, the write delay that
//! lets events that trickle in share one write (and never holds back a backlog), keep-alives,
//! and the end.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use super::{
    chunk::{Chunk, Clock},
    status, MapFn, Mapped, StreamConfig, MAX_BATCH_BYTES,
};
use crate::{
    bus::{EncodedEvent, Message, Subscription},
    event::{
        frames::{comment, id_only, put_retry, put_status},
        saturating_millis, KEEP_ALIVE,
    },
    limit::StreamPermit,
    metrics::StreamMetrics,
};

/// The state of a stream serving a subscription.
pub(super) struct Live {
    pub(super) subscription: Subscription,
    pub(super) config: StreamConfig,
    pub(super) head: Option<Bytes>,
    /// When the client's authorization ends, if it does.
    pub(super) deadline: Option<Pin<Box<Sleep>>>,
    /// What to write for each event, if not its frame as published.
    pub(super) map: Option<MapFn>,
    /// The last event the map skipped, while nothing written carries a later id.
    pub(super) skipped: Option<EncodedEvent>,
    /// When the last chunk of any kind went out: the keep-alive timer, when it fires, is checked
    /// against it (rather than reset at every write).
    pub(super) last_sent: Option<Instant>,
    /// When the last chunk with events went out (only tracked with a write delay).
    pub(super) last_write: Option<Instant>,
    /// Frames waiting for the write delay to pass, and the timer that sends them.
    pub(super) held: Option<Chunk>,
    pub(super) flush: Option<Pin<Box<Sleep>>>,
    /// The last write sent frames that had waited: until a delay passes without events, the
    /// subscription is checked only when each delay ends, so publishes do not wake the task.
    pub(super) busy: bool,
    /// The last chunk was full and more may be ready: the write delay does not apply until the
    /// subscription has nothing more, so a backlog goes out as fast as the client reads.
    pub(super) backlog: bool,
    pub(super) started: bool,
    pub(super) done: bool,
    pub(super) metrics: StreamMetrics,
    pub(super) _permit: Option<StreamPermit>,
}

impl Live {
    /// The first frame: the reconnection delay and the status event.
    fn head(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(128);
        if let Some(retry) = self.config.retry {
            let jitter = saturating_millis(self.config.retry_jitter);
            let extra = match jitter.checked_add(1) {
                Some(n) => crate::random::u64() % n,
                None => crate::random::u64(),
            };
            put_retry(&mut buf, saturating_millis(retry).saturating_add(extra));
        }
        let data = status::started(self.subscription.status());
        put_status(&mut buf, &data, Some(&self.subscription.last_event_id()));
        buf.freeze()
    }

    pub(super) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.start();
        let mut clock = Clock::default();
        // Frames held back by the write delay come first.
        let mut chunk = self.held.take().unwrap_or_default();
        let hold_until = self.hold_until();
        let mut holding = hold_until.is_some_and(|until| clock.now() < until);
        let had_held = !chunk.is_empty();
        // While frames are held (or the stream is busy), the subscription is not polled: events
        // published meanwhile are picked up when the delay is over, unless a chunk's worth
        // (or half the queue) is waiting before that: then they go out at once.
        if holding && (had_held || self.busy) && self.subscription.wake_at(cx, MAX_BATCH_BYTES) {
            holding = false;
        }
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
                    put_status(&mut buf, &status::gap(reason), None);
                    chunk.push(&buf);
                }
                Poll::Ready(Some(end)) => {
                    self.put_skipped(chunk);
                    let cursor = self.subscription.last_event_id();
                    chunk.push(&comment(&status::ended(&end, &cursor)));
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
            chunk.push(&id_only(id));
        }
    }

    /// Ends the stream when the client's authorization has expired.
    fn end_if_expired(&mut self, cx: &mut Context<'_>, chunk: &mut Chunk) {
        let Some(deadline) = &mut self.deadline else {
            return;
        };
        if deadline.as_mut().poll(cx).is_ready() {
            let cursor = self.subscription.last_event_id();
            chunk.push(&comment(&status::expired(&cursor)));
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
