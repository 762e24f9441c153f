//! The Streams backend on one server: every event is kept in a Redis stream per topic, so any
//! instance can resume any client, and connected clients miss nothing when a connection drops.
//!
//! # Keys
//!
//! - `{prefix}:state`: the hash with the `epoch` and the global `seq`, as for Pub/Sub.
//! - `{prefix}:s:{topic}`: the topic's stream. Entry ids are `{seq}-0` (the global sequence
//!   number is increasing, so it is a valid stream id), fields `f` (the frame, in its envelope)
//!   and `p` (the topic's previous event: see below).
//! - `{prefix}:clock`: a sorted set of checkpoints, sequence numbers scored with the time they
//!   were published at (at most one per thousandth of the idle TTL, and per second), which lets
//!   the scripts turn "older than a duration" into "numbered below a sequence number".
//! - `{prefix}:i:{key}`: the id a publish with this idempotency key got, for a few minutes.
//! - Channel `{prefix}:n:{topic}`: one notification per event, `{p} {frame}`.
//!
//! # The previous event (`p`)
//!
//! Since the counter is global, the sequence numbers of one topic jump; `p` says where the
//! previous event of the same topic is, so a reader can tell whether it has it:
//!
//! - `123`: the topic's previous event is 123 exactly.
//! - `~123`: the topic's stream did not exist (never, or it expired after being idle): its
//!   previous event, if any, is numbered below 123, because a stream expires only the idle TTL
//!   after its last event and 123 is the first checkpoint after that long ago.
//!
//! A resume from cursor `c` misses nothing of a topic exactly when the chain of `p` holds from
//! `c` on, or no entry follows `c` (the newest entry of a stream is never trimmed, so an
//! existing stream always shows the topic's last event). When the stream does not exist, the
//! same bound is computed at read time.
//!
//! # Trimming
//!
//! The publish script trims by count (`MAXLEN ~ N`) and by age: with sequence-numbered entry
//! ids, `MINID` cannot express time directly, so the script looks up the newest checkpoint at
//! least the maximum age old and trims below its sequence number (`MINID ~`). Both are
//! approximate (whole macro nodes), so a topic keeps at least its limits and some more. Every
//! publish sets the stream's expiry to the idle TTL, so the keys of idle topics vanish.
//!
//! # Epochs
//!
//! When the state hash is gone, the next publish (or state read) starts a new epoch. A stream
//! or clock left over from the old one is deleted by the first publish that meets it (the
//! epoch is in each entry's `id:` line); until then, readers ignore entries of another epoch.
//!
//! # Live delivery
//!
//! Notifications travel over the shared connection, subscribed per topic ([`feed`]). They pass
//! through one task, the [`pipeline`], which checks them, delivers to the hub in sequence order
//! and keeps the last sequence number delivered per topic. When a notification's exact `p` is
//! above it, the pipeline reads the missing entries from the stream before going on ([`fill`]).
//! After a reconnect it reads every live topic from there up to the counter read after
//! resubscribing (merged by sequence number across topics), so subscribers see a contiguous
//! sequence; only events trimmed meanwhile become a gap, and so does an event found numbered
//! below one already delivered (subscribers of several topics could not get it in order).
//!
//! # Resume
//!
//! As the [resume protocol](crate::bus::redis::resume) says; the pipeline's gate makes a
//! registration see the hub between two deliveries.

mod feed;
mod fill;
mod pages;
mod pipeline;
mod resume;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::timeout,
};

use self::{
    feed::{Feed, Input, QueuedNotices},
    pages::StreamPages,
    pipeline::Pipeline,
    resume::Resuming,
};
use super::{supervisor, OneServer, Wiring};
use crate::last_event_id::{one_position, ResumeFrom};
use crate::{
    bus::{
        hub::{Hub, Limits},
        redis::{
            entries::Numbering,
            publish::Publisher,
            replay::Replay,
            request::unavailable,
            resume::resume_from_cursor,
            scripts,
            state::{self, State},
            RedisConfig, SubscribeMode,
        },
        Published, Subscription, Topic,
    },
    error::BusError,
    event::Event,
};

/// The wiring: the pipeline that delivers what the connection hears, and the reads from the
/// streams.
pub(in crate::bus::redis) struct Streams {
    core: Arc<Core>,
    pages: Arc<StreamPages>,
    /// Into the pipeline, for synchronisation points.
    pipeline: mpsc::UnboundedSender<Input>,
    replay: Replay,
    publish_timeout: Duration,
    max_len: usize,
    max_age: Duration,
}

/// What the backend and the pipeline share.
struct Core {
    hub: Hub,
    /// Held by the pipeline around every change it makes to the hub, and by resumes around
    /// registering: a registration sees the hub between two deliveries, never in the middle of
    /// one (a gap and the event after it, say).
    gate: Mutex<()>,
}

/// Connects, starts the supervisor and the pipeline, and waits until the pipeline knows the
/// epoch.
pub(in crate::bus::redis) async fn connect(
    config: RedisConfig,
    limits: Limits,
) -> Result<OneServer<Streams>, BusError> {
    let (pipeline, inputs) = mpsc::unbounded_channel();
    let queued = Arc::new(QueuedNotices::new(config.notification_backlog));
    let feed = Arc::new(Feed {
        pipeline: pipeline.clone(),
        queued: queued.clone(),
    });
    let core = Arc::new(Core {
        hub: Hub::new(crate::random::u32(), false, limits),
        gate: Mutex::new(()),
    });
    let conn = supervisor::connect(&config, SubscribeMode::Interest, "n", feed).await?;
    let pages = Arc::new(StreamPages {
        shared: conn.shared(),
        idle_ttl: config.idle_ttl(),
        timeout: config.publish_timeout,
    });
    let task = Pipeline {
        core: core.clone(),
        pages: pages.clone(),
        inputs,
        queued,
        last: HashMap::new(),
        watermark: 0,
        counter: 0,
    };
    tokio::spawn(task.run());
    let publisher = Publisher::new(&scripts::STREAMS, &config, true);
    let hub = core.hub.clone();
    let wiring = Streams {
        core,
        pages,
        pipeline,
        replay: Replay::new(config.replay_budget, config.replay_wait, Numbering::Global),
        publish_timeout: config.publish_timeout,
        max_len: config.stream_max_len,
        max_age: config.stream_max_age,
    };
    // The first connection's state is on its way through the pipeline.
    wiring.wait_for_pipeline(None).await?;
    Ok(OneServer::new(conn, hub, publisher, wiring, &config))
}

impl Streams {
    /// Waits until the pipeline handled everything before this point (and, with a state read on
    /// the connection, every notification sent before it).
    async fn wait_for_pipeline(&self, state: Option<State>) -> Result<(), BusError> {
        let (done, wait) = oneshot::channel();
        let _ = self.pipeline.send(Input::Sync { state, done });
        match timeout(self.publish_timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(unavailable("the event bus was dropped")),
            Err(_elapsed) => Err(unavailable(
                "events from Redis are still being caught up with; try again",
            )),
        }
    }

    /// Reads the state on the subscribed connection, whose replies come after the notifications
    /// Redis sent before them, then waits until the pipeline delivered those: afterwards the
    /// hub knows every event numbered up to the returned one, of the topics listened to.
    async fn sync(&self) -> Result<State, BusError> {
        let shared = &self.pages.shared;
        let mut conn = shared
            .connection()
            .ok_or_else(|| unavailable("not connected to Redis"))?;
        let key = &shared.names.state;
        let state = state::read(&mut conn, key, None, self.publish_timeout)
            .await
            .map_err(unavailable)?;
        self.wait_for_pipeline(Some(state)).await?;
        Ok(state)
    }
}

impl Wiring for Streams {
    /// Never: an event delivered to one instance only would be missing from the history every
    /// instance resumes from.
    fn publish_locally(&self, _: &Topic, _: &Event) -> Option<Published> {
        None
    }

    fn hears_all(&self) -> bool {
        false
    }

    /// From this instance's history, or else from the streams.
    async fn subscribe(
        &self,
        topics: Vec<Topic>,
        resume: ResumeFrom,
    ) -> Result<Subscription, BusError> {
        match one_position(resume) {
            Some(Ok(cursor)) => {
                let resuming = Resuming {
                    backend: self,
                    topics: &topics,
                };
                resume_from_cursor(&resuming, &self.replay, &self.pages, &topics, cursor).await
            }
            // Fresh, or an id this bus never issues.
            other => self
                .core
                .hub
                .subscribe(topics, other)
                .map(Subscription::from),
        }
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("max_len", &self.max_len)
            .field("max_age", &self.max_age)
            .field("idle_ttl", &self.pages.idle_ttl)
            .finish()
    }
}
