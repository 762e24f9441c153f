//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! Nothing is exported until your application installs a recorder (for example
//! `metrics-exporter-prometheus`). Install it before building the
//! [`EventBus`](crate::EventBus) and serving: the bus and each stream look their metrics up
//! once, when they are created, so the path of an event only adds to counters.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `sse_streams_open` | gauge | | event streams open on this instance |
//! | `sse_streams_refused_total` | counter | `reason`: `limit`, `unauthenticated`, `forbidden` | stream requests refused before subscribing |
//! | `sse_resumes_total` | counter | `outcome`: `fresh`, `resumed`, `reset` | how streams started (no resume point, resumed, resume point not honoured) |
//! | `sse_events_published_total` | counter | | events published through this instance |
//! | `sse_events_published_local_only_total` | counter | | of those, events that reached only this instance's subscribers because the broker was unreachable |
//! | `sse_events_delivered_total` | counter | | events written to event streams |
//! | `sse_delivery_latency_seconds` | histogram | | per write to a stream, how long its oldest event took from its publish, on whichever instance, to being written (across machines this relies on their clocks agreeing; a publish time more than a minute off is replaced by the time the event reached this instance) |
//! | `sse_events_dropped_total` | counter | | events discarded from the queues of subscribers disconnected for falling behind or stalling |
//! | `sse_slow_consumer_disconnects_total` | counter | `reason`: `lagged` (past the queue's bounds, or a backlog while the bus held more than its budget), `stalled` (took nothing for the stall timeout) | subscribers disconnected |
//! | `sse_history_evictions_total` | counter | | events that left history for its bounds (count, bytes, age, the bound across topics) |
//! | `sse_replays_refused_total` | counter | | resumes refused because their replay did not fit in the replay budget in time |
//! | `sse_redis_reconnects_total` | counter | | times a Redis backend got its lost connection back |
//! | `sse_redis_rejected_total` | counter | `reason`: `malformed`, `epoch`, `ahead`, `stale` | messages and stream entries from Redis that are not events of this bus, dropped (see the module `bus::redis`) |
//! | `sse_topics` | gauge | | topics with subscribers or history ([`record_stats`]) |
//! | `sse_subscriptions` | gauge | | topic subscriptions ([`record_stats`]) |
//! | `sse_history_events`, `sse_history_bytes` | gauge | | events and bytes held for resume ([`record_stats`]) |
//! | `sse_held_bytes` | gauge | | bytes of events held anywhere, each counted once ([`record_stats`]) |
//!
//! # Example
//!
//! ```
//! use tower_sse::EventBus;
//!
//! // Install a recorder first (here: none, so everything goes nowhere).
//! tower_sse::metrics::describe();
//! let bus = EventBus::memory();
//! // When your exporter is scraped:
//! tower_sse::metrics::record_stats(&bus.stats());
//! ```

#[cfg(feature = "metrics")]
use crate::bus::stats::BusStats;

/// Registers a description (and unit) of every metric with the installed recorder, for
/// exporters that show them (Prometheus `# HELP` lines).
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!("sse_streams_open", "Event streams open on this instance.");
    describe_counter!(
        "sse_streams_refused_total",
        "Stream requests refused before subscribing, by reason."
    );
    describe_counter!(
        "sse_resumes_total",
        "Streams started, by outcome: fresh, resumed or reset."
    );
    describe_counter!(
        "sse_events_published_total",
        "Events published through this instance."
    );
    ::metrics::describe_histogram!(
        "sse_delivery_latency_seconds",
        Unit::Seconds,
        "Per write to a stream, the time its oldest event took from its publish to being written."
    );
    describe_counter!(
        "sse_events_published_local_only_total",
        "Events published while the broker was unreachable, delivered on this instance only."
    );
    describe_counter!(
        "sse_events_delivered_total",
        "Events written to event streams."
    );
    describe_counter!(
        "sse_events_dropped_total",
        "Events discarded from the queues of subscribers disconnected for falling behind."
    );
    describe_counter!(
        "sse_slow_consumer_disconnects_total",
        "Subscribers disconnected for falling behind (lagged) or not reading (stalled)."
    );
    describe_counter!(
        "sse_history_evictions_total",
        "Events that left history for its bounds."
    );
    describe_counter!(
        "sse_replays_refused_total",
        "Resumes refused because their replay did not fit in the replay budget in time."
    );
    describe_counter!(
        "sse_redis_reconnects_total",
        "Times a Redis backend got its lost connection back."
    );
    describe_counter!(
        "sse_redis_rejected_total",
        "Messages and stream entries from Redis that are not events of this bus, by reason."
    );
    describe_gauge!("sse_topics", "Topics with subscribers or history.");
    describe_gauge!("sse_subscriptions", "Topic subscriptions on this instance.");
    describe_gauge!("sse_history_events", "Events held in history for resume.");
    describe_gauge!(
        "sse_history_bytes",
        Unit::Bytes,
        "Bytes of encoded events held in history for resume."
    );
    describe_gauge!(
        "sse_held_bytes",
        Unit::Bytes,
        "Bytes of encoded events held anywhere, each counted once."
    );
}

/// Sets the gauges that describe a bus's state (`sse_topics`, `sse_subscriptions`,
/// `sse_history_events`, `sse_history_bytes`, `sse_held_bytes`) from its
/// [`stats`](crate::EventBus::stats). Call it before your exporter renders, or on a timer:
/// taking the stats locks the bus once and walks its topics.
#[cfg(feature = "metrics")]
pub fn record_stats(stats: &BusStats) {
    ::metrics::gauge!("sse_topics").set(stats.topics as f64);
    ::metrics::gauge!("sse_subscriptions").set(stats.subscriptions as f64);
    ::metrics::gauge!("sse_history_events").set(stats.history_events as f64);
    ::metrics::gauge!("sse_history_bytes").set(stats.history_bytes as f64);
    ::metrics::gauge!("sse_held_bytes").set(stats.held_bytes as f64);
}

/// The metrics of one open event stream: counted open while it lives.
#[derive(Debug)]
pub(crate) struct StreamMetrics {
    #[cfg(feature = "metrics")]
    open: ::metrics::Gauge,
    #[cfg(feature = "metrics")]
    delivered: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    latency: ::metrics::Histogram,
}

impl StreamMetrics {
    /// A stream opened, starting as `status` says.
    pub(crate) fn open(outcome: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        {
            ::metrics::counter!("sse_resumes_total", "outcome" => outcome).increment(1);
            let open = ::metrics::gauge!("sse_streams_open");
            open.increment(1.0);
            Self {
                open,
                delivered: ::metrics::counter!("sse_events_delivered_total"),
                latency: ::metrics::histogram!("sse_delivery_latency_seconds"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = outcome;
            Self {}
        }
    }

    /// `n` events were written to the stream, the oldest of which reached the bus at `oldest`
    /// (unknown for replayed events).
    #[inline]
    pub(crate) fn delivered(&self, n: u64, oldest: Option<tokio::time::Instant>) {
        #[cfg(feature = "metrics")]
        {
            self.delivered.increment(n);
            if let Some(at) = oldest {
                self.latency.record(at.elapsed().as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (n, oldest);
    }
}

#[cfg(feature = "metrics")]
impl Drop for StreamMetrics {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// The metrics of one bus, looked up when it is built.
#[derive(Debug)]
pub(crate) struct BusMetrics {
    #[cfg(feature = "metrics")]
    published: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    local_only: ::metrics::Counter,
}

impl BusMetrics {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            published: ::metrics::counter!("sse_events_published_total"),
            #[cfg(feature = "metrics")]
            local_only: ::metrics::counter!("sse_events_published_local_only_total"),
        }
    }

    /// An event was published (`local_only`: to this instance's subscribers only).
    #[inline]
    pub(crate) fn published(&self, local_only: bool) {
        #[cfg(feature = "metrics")]
        {
            self.published.increment(1);
            if local_only {
                self.local_only.increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = local_only;
    }
}

/// A stream request was refused before subscribing.
pub(crate) fn refused(reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("sse_streams_refused_total", "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// A subscriber was disconnected for `reason` (`lagged`, `stalled`), dropping `dropped` queued
/// items.
pub(crate) fn disconnected(reason: &'static str, dropped: usize) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::counter!("sse_slow_consumer_disconnects_total", "reason" => reason).increment(1);
        ::metrics::counter!("sse_events_dropped_total").increment(dropped as u64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (reason, dropped);
}

/// Events left history for its bounds (count, bytes, age, the bound across topics).
pub(crate) fn history_evicted(n: u64) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("sse_history_evictions_total").increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = n;
}

/// A resume did not fit in the replay budget in time.
pub(crate) fn replay_refused() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("sse_replays_refused_total").increment(1);
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn redis_reconnected() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("sse_redis_reconnects_total").increment(1);
}

/// A message or stream entry from Redis was dropped as not an event of this bus.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn redis_rejected(reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("sse_redis_rejected_total", "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}
