//! [`Event`]: a server-sent event and its encoding to the `text/event-stream` wire format.

use std::{fmt, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::InvalidEvent;

/// Event types starting with this are the crate's own ([`STATUS_EVENT`](crate::STATUS_EVENT),
/// `sse-status`, and any it adds later): [`Event::event`] refuses them.
pub(crate) const RESERVED_PREFIX: &str = "sse-";

/// The event type of the status events the stream sends: first, to say how the stream started
/// (`fresh`, `resumed` or `reset`), and later when events may have been lost (`gap`).
pub const STATUS_EVENT: &str = "sse-status";

/// The frame written when a stream has been idle for the keep-alive interval: one empty
/// comment line, which clients ignore.
pub(crate) const KEEP_ALIVE: &[u8] = b":\n\n";

/// A server-sent event.
///
/// Build one with [`Event::new`] or [`Event::default`] and the builder methods, then either
/// [`publish`](crate::EventBus::publish) it (the bus assigns its id) or
/// [`encode`](Event::encode) it yourself.
///
/// Fields that could break the frame are checked: [`event`](Event::event) and
/// [`id`](Event::id) return an error for a value containing a line break (or, for ids, NUL).
///
/// Event types starting with `sse-` are reserved for the crate's own events, such as the
/// [`STATUS_EVENT`](crate::STATUS_EVENT) (`sse-status`) every stream starts with:
/// [`event`](Event::event) refuses them, so a publisher cannot forge what clients take for the
/// server's word. The check is case-sensitive, as browsers dispatch event types.
/// Data may contain anything: it is split on CR, LF and CRLF (CRLF counts as one line break) into
/// `data:` lines, which clients join back with `\n`.
///
/// # Example
///
/// ```
/// use tower_sse::Event;
///
/// let event = Event::new("first line\nsecond line").event("greeting")?;
/// assert_eq!(
///     &event.encode()[..],
///     b"event: greeting\ndata: first line\ndata: second line\n\n"
/// );
/// # Ok::<_, tower_sse::InvalidEvent>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Event {
    data: Option<String>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<Duration>,
    comment: Option<String>,
}

impl Event {
    /// An event carrying `data`.
    pub fn new(data: impl Into<String>) -> Self {
        Self::default().data(data)
    }

    /// Sets the event's data. Any text is allowed; line breaks become separate `data:` lines.
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// An event whose data is `value` serialized as JSON (feature `json`), on one line.
    ///
    /// # Errors
    ///
    /// When `value` cannot be serialized (a map with keys that are not strings, say).
    ///
    /// # Example
    ///
    /// ```
    /// use serde::Serialize;
    /// use tower_sse::Event;
    ///
    /// #[derive(Serialize)]
    /// struct Shipped {
    ///     order: u32,
    /// }
    ///
    /// let event = Event::json(&Shipped { order: 17 })?.event("shipped")?;
    /// assert_eq!(&event.encode()[..], b"event: shipped\ndata: {\"order\":17}\n\n");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, crate::JsonError> {
        serde_json::to_string(value)
            .map(Self::new)
            .map_err(crate::JsonError::new)
    }

    /// An event of the crate's own type `event`, which starts with the reserved `sse-`.
    pub(crate) fn reserved(event: &'static str, data: String) -> Self {
        debug_assert!(event.starts_with(RESERVED_PREFIX));
        Self {
            event: Some(event.to_owned()),
            ..Self::new(data)
        }
    }

    /// Sets the event type (`event:` field), which browsers dispatch to
    /// `addEventListener(type, ...)` instead of `onmessage`.
    ///
    /// # Errors
    ///
    /// When `event` contains CR or LF, or starts with the reserved `sse-`.
    pub fn event(mut self, event: impl Into<String>) -> Result<Self, InvalidEvent> {
        let event = event.into();
        if has_line_break(&event) {
            return Err(InvalidEvent::new("event", "contains a line break"));
        }
        if event.starts_with(RESERVED_PREFIX) {
            return Err(InvalidEvent::new(
                "event",
                "names starting with `sse-` are reserved for the server's own events \
                 (such as `sse-status`); choose another event type",
            ));
        }
        self.event = Some(event);
        Ok(self)
    }

    /// Sets the event id (`id:` field).
    ///
    /// Events published through an [`EventBus`](crate::EventBus) get their id from the bus,
    /// which replaces this one; set it only for events you encode yourself.
    ///
    /// # Errors
    ///
    /// When `id` contains CR, LF or NUL (browsers ignore an id containing NUL).
    pub fn id(mut self, id: impl Into<String>) -> Result<Self, InvalidEvent> {
        let id = id.into();
        if has_line_break(&id) {
            return Err(InvalidEvent::new("id", "contains a line break"));
        }
        if id.contains('\0') {
            return Err(InvalidEvent::new("id", "contains a NUL character"));
        }
        self.id = Some(id);
        Ok(self)
    }

    /// Sets the reconnection time (`retry:` field) the client should wait before reconnecting.
    /// It is written in whole milliseconds; a time beyond `u64::MAX` milliseconds is written as
    /// that maximum.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Adds a comment, which clients ignore (useful for debugging with `curl`). Line breaks
    /// start a new comment line.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// The event's data, if set.
    pub fn data_str(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// The event type, if set.
    pub fn event_type(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// Encodes the event into one `text/event-stream` frame, ending with the blank line that
    /// dispatches it.
    pub fn encode(&self) -> Bytes {
        self.encode_with_id(self.id.as_deref())
    }

    /// Encodes the event with `id` in place of its own id. `id` must be free of line breaks and
    /// NUL (the bus's ids are).
    pub(crate) fn encode_with_id(&self, id: Option<&str>) -> Bytes {
        let mut buf = self.encode_body(id.map_or(0, str::len));
        finish_frame(&mut buf, id);
        buf.freeze()
    }

    /// Encodes every field but the id, leaving room for an id of up to `id_len` bytes, so the id
    /// can be assigned later (under the bus's lock) without a second allocation.
    pub(crate) fn encode_body(&self, id_len: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(self.encoded_len_hint() + id_len + 6);
        if let Some(comment) = &self.comment {
            for line in lines(comment) {
                put_field(&mut buf, b"", line);
            }
        }
        if let Some(event) = &self.event {
            put_field(&mut buf, b"event", event);
        }
        if let Some(retry) = self.retry {
            let mut digits = [0u8; 20];
            put_field_bytes(
                &mut buf,
                b"retry",
                format_u64(saturating_millis(retry), &mut digits),
            );
        }
        if let Some(data) = &self.data {
            for line in lines(data) {
                put_field(&mut buf, b"data", line);
            }
        }
        buf
    }

    /// The length of the data in bytes (0 without data).
    pub(crate) fn data_len(&self) -> usize {
        self.data.as_ref().map_or(0, String::len)
    }

    fn encoded_len_hint(&self) -> usize {
        // Field names and separators; more lines than one grow the buffer.
        let data = self.data.as_ref().map_or(0, |d| d.len() + 7);
        let event = self.event.as_ref().map_or(0, |e| e.len() + 8);
        let comment = self.comment.as_ref().map_or(0, |c| c.len() + 3);
        let retry = if self.retry.is_some() { 28 } else { 0 };
        data + event + comment + retry
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("event", &self.event)
            .field("id", &self.id)
            .field("data", &self.data)
            .field("retry", &self.retry)
            .field("comment", &self.comment)
            .finish()
    }
}

/// Ends a frame begun by [`Event::encode_body`]: the `id:` line, if any, and the blank line
/// that dispatches the event. The id goes last, which the format allows (field order does not
/// matter), so a frame can be encoded before its id is known.
pub(crate) fn finish_frame(buf: &mut BytesMut, id: Option<&str>) {
    if let Some(id) = id {
        put_field(buf, b"id", id);
    }
    buf.put_u8(b'\n');
}

/// The frames the crate writes itself, never published: the status event, comments, a
/// reconnection delay, an id alone.
pub(crate) mod frames {
    use std::fmt::Display;

    use bytes::{BufMut, Bytes, BytesMut};

    use super::put_field;
    use super::STATUS_EVENT;

    /// Writes a status event (`sse-status`) with `data` and, when given, the id to resume from.
    pub(crate) fn put_status(buf: &mut BytesMut, data: &str, id: Option<&dyn Display>) {
        put_field(buf, b"event", STATUS_EVENT);
        put_field(buf, b"data", data);
        if let Some(id) = id {
            put_field(buf, b"id", &id.to_string());
        }
        buf.put_u8(b'\n');
    }

    /// Writes the reconnection delay a client should wait (`retry:`).
    pub(crate) fn put_retry(buf: &mut BytesMut, millis: u64) {
        put_field(buf, b"retry", &millis.to_string());
    }

    /// A comment frame, which clients ignore (`text` has no line break).
    pub(crate) fn comment(text: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(text.len() + 4);
        put_field(&mut buf, b"", text);
        buf.put_u8(b'\n');
        buf.freeze()
    }

    /// A frame of an id alone: a browser takes it as its `Last-Event-ID` and dispatches nothing.
    pub(crate) fn id_only(id: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(id.len() + 6);
        put_field(&mut buf, b"id", id);
        buf.put_u8(b'\n');
        buf.freeze()
    }
}

fn has_line_break(s: &str) -> bool {
    memchr::memchr2(b'\n', b'\r', s.as_bytes()).is_some()
}

/// Writes `name: value\n`, or `name:\n` for an empty value (and `: value` for a comment, whose
/// name is empty).
fn put_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    put_field_bytes(buf, name, value.as_bytes());
}

fn put_field_bytes(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.put_slice(name);
    buf.put_u8(b':');
    if !value.is_empty() {
        // One space after the colon: parsers strip exactly one, so a value that itself starts
        // with a space keeps it.
        buf.put_u8(b' ');
        buf.put_slice(value);
    }
    buf.put_u8(b'\n');
}

/// `duration` in whole milliseconds, at most `u64::MAX`.
pub(crate) fn saturating_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn format_u64(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// Splits `s` on CR, LF and CRLF (one break), as the event stream format defines lines. A
/// trailing break yields a final empty line, so `"a\n"` is `["a", ""]`: the data round-trips.
fn lines(s: &str) -> Lines<'_> {
    Lines { rest: Some(s) }
}

struct Lines<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match memchr::memchr2(b'\n', b'\r', rest.as_bytes()) {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(i) => {
                let after =
                    if rest.as_bytes()[i] == b'\r' && rest.as_bytes().get(i + 1) == Some(&b'\n') {
                        i + 2
                    } else {
                        i + 1
                    };
                self.rest = Some(&rest[after..]);
                Some(&rest[..i])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(e: &Event) -> String {
        String::from_utf8(e.encode().to_vec()).unwrap()
    }

    #[test]
    fn data_only() {
        assert_eq!(enc(&Event::new("hello")), "data: hello\n\n");
    }

    #[test]
    fn all_fields_in_order() {
        let e = Event::new("x")
            .event("kind")
            .unwrap()
            .id("7")
            .unwrap()
            .retry(Duration::from_millis(1500))
            .comment("note");
        assert_eq!(
            enc(&e),
            ": note\nevent: kind\nretry: 1500\ndata: x\nid: 7\n\n"
        );
    }

    #[test]
    fn line_breaks_split_data() {
        assert_eq!(
            enc(&Event::new("a\nb\rc\r\nd")),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        // CRLF is one break, not a blank line in between.
        assert_eq!(
            enc(&Event::new("a\r\n\r\nb")),
            "data: a\ndata:\ndata: b\n\n"
        );
        // Trailing and leading breaks survive as empty lines.
        assert_eq!(enc(&Event::new("\na\n")), "data:\ndata: a\ndata:\n\n");
        assert_eq!(enc(&Event::new("")), "data:\n\n");
    }

    #[test]
    fn leading_space_is_kept() {
        assert_eq!(enc(&Event::new(" x")), "data:  x\n\n");
    }

    #[test]
    fn field_names_in_data_are_data() {
        assert_eq!(
            enc(&Event::new("event: x\nid: 3")),
            "data: event: x\ndata: id: 3\n\n"
        );
    }

    #[test]
    fn refuses_breaks_in_event_and_id() {
        assert!(Event::default().event("a\nb").is_err());
        assert!(Event::default().event("a\rb").is_err());
        assert!(Event::default().id("a\r\nb").is_err());
        assert!(Event::default().id("a\0b").is_err());
        assert!(Event::default().id("").is_ok());
    }

    #[test]
    fn reserved_event_types_are_refused() {
        for name in ["sse-status", "sse-", "sse-anything"] {
            let err = Event::default().event(name).unwrap_err().to_string();
            assert!(
                err.contains("reserved") && err.contains("sse-"),
                "{name}: {err}"
            );
        }
        for name in ["status", "my-sse-status", "SSE-status", "sse", "ssestatus"] {
            assert!(Event::default().event(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn retry_saturates() {
        assert_eq!(
            enc(&Event::default().retry(Duration::MAX)),
            format!("retry: {}\n\n", u64::MAX)
        );
        let just_beyond = Duration::from_millis(u64::MAX) + Duration::from_millis(1);
        assert_eq!(saturating_millis(just_beyond), u64::MAX);
        assert_eq!(saturating_millis(Duration::from_micros(1999)), 1);
    }

    #[test]
    fn multi_line_comment() {
        assert_eq!(enc(&Event::default().comment("a\nb")), ": a\n: b\n\n");
    }

    #[test]
    fn bus_id_replaces_own() {
        let e = Event::new("x").id("mine").unwrap();
        assert_eq!(
            &e.encode_with_id(Some("bus-1"))[..],
            b"data: x\nid: bus-1\n\n"
        );
    }
}
