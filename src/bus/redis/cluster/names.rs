//! The keys and channels of one prefix on a cluster: every key and channel of a topic carries
//! the topic as its hash tag, `{prefix}:{TOPIC}:...`.

use crate::bus::Topic;

pub(super) struct Names {
    pub(super) prefix: String,
    /// `t` (Pub/Sub) or `n` (Streams).
    pub(super) channel_kind: &'static str,
}

impl Names {
    pub(super) fn key(&self, topic: &Topic, suffix: &str) -> String {
        format!("{}:{{{}}}:{suffix}", self.prefix, topic.as_str())
    }

    /// The hash with the topic's `epoch` and `seq`.
    pub(super) fn state(&self, topic: &Topic) -> String {
        self.key(topic, "state")
    }

    /// Streams: the topic's stream.
    pub(super) fn stream(&self, topic: &Topic) -> String {
        self.key(topic, "s")
    }

    /// Streams: the key that remembers a publish of the topic with idempotency key `key`.
    pub(super) fn idempotency(&self, topic: &Topic, key: &str) -> String {
        self.key(topic, &format!("i:{key}"))
    }

    pub(super) fn channel(&self, topic: &Topic) -> String {
        self.key(topic, self.channel_kind)
    }

    /// The topic a channel belongs to, as a name; lanes are looked up by it, so a message
    /// costs no allocation. Only names of lanes (valid topics) ever match.
    pub(super) fn topic_of<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let rest = rest.strip_prefix(b":{")?;
        let rest = rest.strip_suffix(self.channel_kind.as_bytes())?;
        let name = rest.strip_suffix(b"}:")?;
        std::str::from_utf8(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_topic_as_hash_tag() {
        let names = Names {
            prefix: "app".to_owned(),
            channel_kind: "n",
        };
        let topic = Topic::new("org:orders").unwrap();
        assert_eq!(names.state(&topic), "app:{org:orders}:state");
        assert_eq!(names.stream(&topic), "app:{org:orders}:s");
        assert_eq!(names.idempotency(&topic, "k"), "app:{org:orders}:i:k");
        let channel = names.channel(&topic);
        assert_eq!(channel, "app:{org:orders}:n");
        assert_eq!(names.topic_of(channel.as_bytes()), Some(topic.as_str()));
        assert_eq!(names.topic_of(b"app:{org:orders}:t"), None);
        assert_eq!(names.topic_of(b"other:{x}:n"), None);
    }
}
