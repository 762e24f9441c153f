//! [`EncodedEvent`]: an event as delivered to subscribers, with a decoded view of its frame.

use std::fmt;

use bytes::Bytes;

use super::Topic;
use crate::last_event_id::EventId;

/// An event as delivered to subscribers: its id and its complete encoded frame, shared by
/// every subscriber. Workers and tests read it without parsing SSE themselves:
/// [`event_type`](Self::event_type) and [`data`](Self::data) decode the frame.
///
/// # Example
///
/// ```
/// use futures_util::StreamExt;
/// use tower_sse::{Event, EventBus, Message};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = EventBus::memory();
/// let mut sub = bus.subscribe(["orders"], None).await?;
/// bus.publish("orders", Event::new("line 1\nline 2").event("shipped")?).await?;
/// let Some(Message::Event(event)) = sub.next().await else { unreachable!() };
/// assert_eq!(event.event_type(), Some("shipped"));
/// assert_eq!(event.data(), "line 1\nline 2");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    id: EventId,
    topic: Topic,
    frame: Bytes,
}

impl EncodedEvent {
    pub(crate) fn new(id: EventId, topic: Topic, frame: Bytes) -> Self {
        Self { id, topic, frame }
    }

    /// The same event with its frame replaced.
    pub(crate) fn with_frame(self, frame: Bytes) -> Self {
        Self { frame, ..self }
    }

    /// The event's id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The topic it was published to.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The `text/event-stream` frame, ending with the blank line that dispatches it.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Takes the frame.
    pub fn into_frame(self) -> Bytes {
        self.frame
    }

    /// The event type (`event:` field), if the event has one.
    pub fn event_type(&self) -> Option<&str> {
        self.field(b"event").next()
    }

    /// The event's data: its `data:` lines joined with `\n`, as a browser's `EventSource`
    /// reads it.
    pub fn data(&self) -> String {
        let mut data = String::new();
        for (i, line) in self.field(b"data").enumerate() {
            if i > 0 {
                data.push('\n');
            }
            data.push_str(line);
        }
        data
    }

    /// The event's data read as JSON into a `T` (feature `json`): the other end of
    /// [`Event::json`](crate::Event::json).
    ///
    /// # Errors
    ///
    /// When the data is not JSON of that shape.
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::JsonError> {
        serde_json::from_str(&self.data()).map_err(crate::JsonError::new)
    }

    /// The value of the `id:` line as written to clients (on a Redis Cluster, for a stream of
    /// several topics, the position of each).
    pub(crate) fn id_line(&self) -> Option<&str> {
        self.field(b"id").last()
    }

    /// The values of the frame's `name:` lines, in order.
    fn field<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a str> + 'a {
        self.frame.split(|&b| b == b'\n').filter_map(move |line| {
            let value = line.strip_prefix(name)?.strip_prefix(b":")?;
            let value = value.strip_prefix(b" ").unwrap_or(value);
            std::str::from_utf8(value).ok()
        })
    }
}

impl fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedEvent")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("len", &self.frame.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_frame() {
        let frame = b": note\nevent: order\ndata: a\ndata:b\ndata: \nid: 00000001-7\n\n";
        let t = || Topic::new("t").unwrap();
        let event = EncodedEvent::new(EventId::new(1, 7), t(), Bytes::from_static(frame));
        assert_eq!(event.event_type(), Some("order"));
        assert_eq!(event.data(), "a\nb\n");
        assert_eq!(event.id_line(), Some("00000001-7"));
        let plain = EncodedEvent::new(EventId::new(1, 8), t(), Bytes::from_static(b"data: x\n\n"));
        assert_eq!((plain.event_type(), plain.data()), (None, "x".into()));
        // A data line that looks like a field stays data.
        let tricky = EncodedEvent::new(
            EventId::new(1, 9),
            t(),
            Bytes::from_static(b"data: id: 5\n\n"),
        );
        assert_eq!((tricky.data(), tricky.id_line()), ("id: 5".into(), None));
    }
}
