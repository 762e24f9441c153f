use std::{borrow::Borrow, fmt, sync::Arc};

use crate::error::{InvalidTopic, TopicProblem};

/// The longest topic allowed, in bytes (topics are ASCII, so also in characters).
pub const MAX_TOPIC_LEN: usize = 256;

/// A validated topic name: 1 to 256 ASCII characters from `A-Z a-z 0-9 _ - . : @ =`.
///
/// `*` is not allowed in a topic: it is reserved for selectors (`org1:*`). Cloning is cheap (a
/// reference count).
///
/// # Example
///
/// ```
/// use tower_sse::Topic;
///
/// let topic = Topic::new("org1:orders")?;
/// assert_eq!(topic.as_str(), "org1:orders");
/// assert!(Topic::new("no spaces").is_err());
/// assert!(Topic::new("").is_err());
/// # Ok::<_, tower_sse::InvalidTopic>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a topic.
    ///
    /// # Errors
    ///
    /// When `name` is empty, longer than [`MAX_TOPIC_LEN`], or contains a character outside the
    /// rule; the error says which.
    pub fn new(name: &str) -> Result<Self, InvalidTopic> {
        validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The topic's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `name` against the topic rule.
pub(crate) fn validate(name: &str) -> Result<(), InvalidTopic> {
    if name.is_empty() {
        return Err(InvalidTopic::new(TopicProblem::Empty));
    }
    if let Some(c) = name.chars().find(|&c| !is_topic_char(c)) {
        return Err(InvalidTopic::new(TopicProblem::BadChar(c)));
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(InvalidTopic::new(TopicProblem::TooLong(name.len())));
    }
    Ok(())
}

pub(crate) fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '=')
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Topic {
    type Error = InvalidTopic;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl std::str::FromStr for Topic {
    type Err = InvalidTopic;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule() {
        for ok in ["a", "A-Z_0.9:x@y=z", &"x".repeat(256)] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "a*", "a/b", "é", "a\n", &"x".repeat(257)] {
            let err = Topic::new(bad).unwrap_err().to_string();
            assert!(err.contains("1 to 256 ASCII characters"), "{err}");
        }
        assert!(Topic::new("a*").unwrap_err().to_string().contains("'*'"));
    }
}
