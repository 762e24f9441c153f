//! The keys and channels of one prefix on one server.

use crate::bus::{
    redis::publish::{idempotency_key, Target},
    Topic,
};

pub(super) struct Names {
    /// The hash with the namespace's `epoch` and `seq`.
    pub(super) state: String,
    channel_prefix: String,
    /// Matches every topic's channel (Pub/Sub pattern mode).
    pub(super) pattern: String,
    stream_prefix: String,
    /// Streams: the checkpoints of sequence numbers and times.
    pub(super) clock: String,
    idempotency_prefix: String,
}

impl Names {
    /// The names under `prefix`; channels are `{prefix}:{channel_kind}:{topic}`.
    pub(super) fn new(prefix: &str, channel_kind: &str) -> Self {
        Self {
            state: format!("{prefix}:state"),
            channel_prefix: format!("{prefix}:{channel_kind}:"),
            pattern: format!("{}:{channel_kind}:*", escape_glob(prefix)),
            stream_prefix: format!("{prefix}:s:"),
            clock: format!("{prefix}:clock"),
            idempotency_prefix: format!("{prefix}:i:"),
        }
    }

    /// The channel of `topic`.
    pub(super) fn channel(&self, topic: &Topic) -> String {
        let mut channel = String::with_capacity(self.channel_prefix.len() + topic.as_str().len());
        channel.push_str(&self.channel_prefix);
        channel.push_str(topic.as_str());
        channel
    }

    /// The topic a channel belongs to.
    pub(super) fn topic_of(&self, channel: &[u8]) -> Option<Topic> {
        let name = channel.strip_prefix(self.channel_prefix.as_bytes())?;
        Topic::new(std::str::from_utf8(name).ok()?).ok()
    }

    /// Streams: the stream of `topic`.
    pub(super) fn stream(&self, topic: &Topic) -> String {
        format!("{}{}", self.stream_prefix, topic.as_str())
    }

    /// Streams: the key that remembers a publish with idempotency key `key`.
    pub(super) fn idempotency(&self, key: &str) -> String {
        format!("{}{key}", self.idempotency_prefix)
    }
}

impl Names {
    /// Where a publish to `topic` goes; with `stores` (Streams), its stream, clock and
    /// idempotency key too.
    pub(super) fn target(&self, topic: &Topic, stores: bool) -> Target {
        Target {
            state: self.state.clone(),
            channel: self.channel(topic),
            stream: stores.then(|| self.stream(topic)),
            idempotency: stores.then(|| self.idempotency(&idempotency_key())),
            clock: stores.then(|| self.clock.clone()),
        }
    }
}

/// Escapes the characters `PSUBSCRIBE` patterns treat specially.
fn escape_glob(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let names = Names::new("app[1]*", "t");
        assert_eq!(names.state, "app[1]*:state");
        assert_eq!(names.pattern, "app\\[1\\]\\*:t:*");
        let topic = Topic::new("org:orders").unwrap();
        let channel = names.channel(&topic);
        assert_eq!(channel, "app[1]*:t:org:orders");
        assert_eq!(names.topic_of(channel.as_bytes()), Some(topic.clone()));
        assert_eq!(names.topic_of(b"app[1]*:t:bad topic"), None);
        assert_eq!(names.topic_of(b"other:t:x"), None);
        assert_eq!(names.stream(&topic), "app[1]*:s:org:orders");
        assert_eq!(names.idempotency("k"), "app[1]*:i:k");
        let streams = Names::new("app", "n");
        assert_eq!(streams.channel(&Topic::new("x").unwrap()), "app:n:x");
        assert_eq!(streams.topic_of(b"app:t:x"), None);
    }
}
