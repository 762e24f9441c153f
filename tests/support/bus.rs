//! Bounded waits on the bus's public API.

use std::{future::Future, time::Duration};

use futures_util::StreamExt;
use tower_sse::{EncodedEvent, Event, EventBus, EventId, Message, Subscription};

use super::http::WAIT;

/// Awaits `future`, failing the test after [`WAIT`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The subscription's next message.
pub(crate) async fn next(sub: &mut Subscription) -> Message {
    within("waiting for a message", sub.next())
        .await
        .expect("the subscription goes on")
}

/// The subscription's next message, which must be an event.
pub(crate) async fn next_event(sub: &mut Subscription) -> EncodedEvent {
    match next(sub).await {
        Message::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Polls `condition` until it holds (bounded by [`WAIT`]).
pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The frame of `event` as text.
pub(crate) fn text(event: &EncodedEvent) -> String {
    String::from_utf8(event.frame().to_vec()).unwrap()
}

/// Publishes `data` to `topic`; the broker must have taken it (not local only).
pub(crate) async fn publish(bus: &EventBus, topic: &str, data: &str) -> EventId {
    let published = within("publishing", bus.publish(topic, Event::new(data)))
        .await
        .expect("publish");
    assert!(!published.is_local_only(), "{published:?}");
    published.id()
}
