//! Publishing: one script call per attempt, one retry policy, and `WAIT`, for every backend.
//!
//! A publish runs the backend's script (`lua/`), which numbers the event, builds its frame, and
//! announces it (and, with Streams, stores it) atomically. When the backend stores events and
//! remembers idempotency keys, an attempt whose answer did not come is sent once more with the
//! same key: Redis answers the second with the first's id if the first ran after all. An answer
//! did not come when the bus's own time limit passed, or the client failed with a timeout, a
//! dropped connection or an IO error; any other error is final. Without a key (Pub/Sub) a
//! publish is sent once: sent again, it could be announced twice.
//!
//! After a stored publish, the bus can wait for replicas (`WAIT`) on the node that ran it.

use std::{future::Future, time::Duration};

use ::redis::{aio::ConnectionLike, Cmd, RedisError, RedisResult, Script, ScriptInvocation};
use tokio::time::timeout;

use super::{
    envelope,
    request::{millis, unavailable},
    state::{fresh_epoch, State},
    RedisConfig,
};
use crate::{
    error::{BusError, BusErrorKind},
    event::Event,
    last_event_id::EventId,
};

tokio::task_local! {
    /// The idempotency key of the publishes made within [`with_idempotency_key`].
    static IDEMPOTENCY_KEY: String;
}

/// Runs `future` (typically one [`EventBus::publish`](crate::EventBus::publish)) with `key` as
/// the idempotency key of the publishes it makes on a Streams bus.
///
/// Redis remembers a key for [`RedisConfig::idempotency_ttl`] after the first publish that
/// used it; a publish with a remembered key, on any instance sharing the prefix, stores and
/// announces nothing and returns the id the first one got. So a publish that failed or timed
/// out can be retried with the same key without ever appearing twice, for example by the
/// handler of a webhook that its sender may deliver more than once.
///
/// Keys are compared as they are, so make them unique per event (an id from the request, say)
/// and keep them short: each is a Redis key while it is remembered. Without this function, the
/// bus uses a random key per publish. The in-process and Pub/Sub backends ignore the key.
///
/// # Example
///
/// ```
/// use tower_sse::{bus::redis::with_idempotency_key, BusError, Event, EventBus, Published};
///
/// async fn deliver_webhook(bus: &EventBus, delivery_id: &str) -> Result<Published, BusError> {
///     let event = Event::new("payment received");
///     with_idempotency_key(delivery_id, bus.publish("payments", event)).await
/// }
/// ```
pub async fn with_idempotency_key<F: Future>(key: impl Into<String>, future: F) -> F::Output {
    IDEMPOTENCY_KEY.scope(key.into(), future).await
}

/// The idempotency key of the current publish: the caller's, or a random one.
pub(super) fn idempotency_key() -> String {
    IDEMPOTENCY_KEY
        .try_with(Clone::clone)
        .unwrap_or_else(|_| format!("{:016x}{:016x}", crate::random::u64(), crate::random::u64()))
}

/// A connection to publish through.
pub(super) trait Route: Sync {
    type Conn: ConnectionLike + Send;

    /// The connection, or `None` while it is known to be down.
    fn connection(&self) -> Option<Self::Conn>;

    /// Runs `wait` (a `WAIT`) where the script of the topic with the state `state_key` ran.
    fn wait(
        &self,
        conn: &mut Self::Conn,
        state_key: &str,
        wait: Cmd,
    ) -> impl Future<Output = RedisResult<i64>> + Send;
}

/// The keys and channel of one publish. A backend that stores events gives the stream and the
/// idempotency key (and, on one server, the clock).
pub(super) struct Target {
    pub(super) state: String,
    pub(super) channel: String,
    pub(super) stream: Option<String>,
    pub(super) idempotency: Option<String>,
    pub(super) clock: Option<String>,
}

/// How a backend publishes.
pub(super) struct Publisher {
    script: &'static Script,
    stores: bool,
    timeout: Duration,
    /// How long Redis remembers an idempotency key, in seconds; 0: not at all.
    remember_secs: u64,
    max_len: usize,
    max_age: Duration,
    idle_ttl: Duration,
    replicas: usize,
    replica_timeout: Duration,
}

/// Why an attempt failed.
enum Failed {
    /// No answer came: the publish may have run.
    Unanswered(BusError),
    Final(BusError),
}

impl Publisher {
    /// Publishes with `script`; `stores` when the backend stores events (Streams).
    pub(super) fn new(script: &'static Script, config: &RedisConfig, stores: bool) -> Self {
        let ttl = config.idempotency_ttl;
        let remember_secs = match stores {
            true => u64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(u64::MAX),
            false => 0,
        };
        Self {
            script,
            stores,
            timeout: config.publish_timeout,
            remember_secs,
            max_len: config.stream_max_len,
            max_age: config.stream_max_age,
            idle_ttl: config.idle_ttl(),
            replicas: if stores { config.replicas } else { 0 },
            replica_timeout: config.replica_timeout,
        }
    }

    /// Publishes `event` to `target` through `route`.
    pub(super) async fn publish<R: Route>(
        &self,
        route: &R,
        target: &Target,
        event: &Event,
    ) -> Result<EventId, BusError> {
        let body = event.encode_body(0);
        let invocation = self.invocation(target, &body, &envelope::seal());
        let attempts = if self.remembers(target) { 2 } else { 1 };
        let mut failure = None;
        for attempt in 1..=attempts {
            let Some(mut conn) = route.connection() else {
                return Err(failure.unwrap_or_else(|| unavailable("not connected to Redis")));
            };
            match self.attempt(&invocation, &mut conn, &target.state).await {
                Ok(state) => {
                    self.replicated(route, &mut conn, &target.state).await?;
                    return Ok(state.id());
                }
                Err(Failed::Final(error)) => return Err(error),
                Err(Failed::Unanswered(error)) => {
                    if attempt < attempts {
                        tracing::debug!(%error, "publish not confirmed; sending it again");
                    }
                    failure = Some(error);
                }
            }
        }
        Err(failure.expect("at least one attempt"))
    }

    /// Whether the backend stores events (and so carries idempotency keys).
    pub(super) fn stores(&self) -> bool {
        self.stores
    }

    fn remembers(&self, target: &Target) -> bool {
        self.remember_secs > 0 && target.idempotency.is_some()
    }

    /// The script's call: keys and arguments as `lua/prelude.lua` (and docs/redis-protocol.md)
    /// says.
    fn invocation(&self, target: &Target, body: &[u8], envelope: &str) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        invocation.key(&target.state);
        let optional = [&target.stream, &target.idempotency, &target.clock];
        for key in optional.into_iter().flatten() {
            invocation.key(key);
        }
        invocation
            .arg(fresh_epoch())
            .arg(&target.channel)
            .arg(envelope)
            .arg(body)
            .arg(self.remember_secs)
            .arg(self.max_len)
            .arg(millis(self.max_age))
            .arg(millis(self.idle_ttl));
        invocation
    }

    async fn attempt(
        &self,
        invocation: &ScriptInvocation<'_>,
        conn: &mut (impl ConnectionLike + Send),
        state_key: &str,
    ) -> Result<State, Failed> {
        let reply = timeout(
            self.timeout,
            invocation.invoke_async::<(String, String, i64)>(conn),
        )
        .await;
        match reply {
            Ok(Ok((epoch, seq, _repeated))) => State::parse(&epoch, &seq).ok_or_else(|| {
                let reason = format!("unexpected content in the Redis key {state_key}");
                Failed::Final(unavailable(reason))
            }),
            Ok(Err(e)) => {
                let unanswered = worth_another_attempt(&e);
                let error = BusError::with_source(
                    BusErrorKind::Unavailable(format!("publishing to Redis failed: {e}")),
                    e,
                );
                Err(match unanswered {
                    true => Failed::Unanswered(error),
                    false => Failed::Final(error),
                })
            }
            Err(_elapsed) => Err(Failed::Unanswered(BusError::new(BusErrorKind::Timeout))),
        }
    }

    /// Waits until enough replicas hold the event, when asked to.
    async fn replicated<R: Route>(
        &self,
        route: &R,
        conn: &mut R::Conn,
        state_key: &str,
    ) -> Result<(), BusError> {
        if self.replicas == 0 {
            return Ok(());
        }
        let mut wait = ::redis::cmd("WAIT");
        wait.arg(self.replicas).arg(millis(self.replica_timeout));
        let wanted = self.replicas;
        match timeout(self.timeout, route.wait(conn, state_key, wait)).await {
            Ok(Ok(acked)) if usize::try_from(acked).is_ok_and(|n| n >= wanted) => Ok(()),
            Ok(Ok(acked)) => {
                tracing::debug!(
                    acked,
                    wanted,
                    "a publish was not confirmed by enough replicas"
                );
                Err(BusError::new(BusErrorKind::Timeout))
            }
            Ok(Err(e)) => Err(BusError::with_source(
                BusErrorKind::Unavailable(format!("waiting for Redis replicas failed: {e}")),
                e,
            )),
            Err(_elapsed) => Err(BusError::new(BusErrorKind::Timeout)),
        }
    }
}

/// Whether a failed attempt may have gone unanswered rather than refused.
fn worth_another_attempt(error: &RedisError) -> bool {
    error.is_timeout() || error.is_connection_dropped() || error.is_io_error()
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn attempts_that_went_unanswered_are_sent_again() {
        let io = |kind| RedisError::from(io::Error::new(kind, "test"));
        assert!(worth_another_attempt(&io(io::ErrorKind::TimedOut)));
        assert!(worth_another_attempt(&io(io::ErrorKind::ConnectionReset)));
        assert!(worth_another_attempt(&io(io::ErrorKind::BrokenPipe)));
        let refused = RedisError::from((::redis::ErrorKind::Client, "refused"));
        assert!(!worth_another_attempt(&refused));
    }
}
