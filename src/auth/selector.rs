//! [`Selector`]: which topics a grant covers.

use std::{borrow::Cow, error::Error as StdError, fmt, str::FromStr};

use crate::bus::Topic;

/// A topic selector: an exact topic (`org1:orders`), every topic (`*`), or every topic under a
/// prefix (`org1:*`).
///
/// The rule, so that a selector never grants a topic its author did not mean:
///
/// - without `*`, a selector is a topic and matches that topic only;
/// - `*` alone matches every topic;
/// - otherwise `*` comes last, directly after a separator, one of `: . - _ @ =`, and matches
///   every topic that starts with what comes before it: `org1:*` matches `org1:a` and
///   `org1:b:c`, but not `org10:secrets`. `org1*` is refused (it would match `org10`), as is
///   a `*` anywhere but at the end.
///
/// What comes before `*` follows the topic rule (ASCII letters, digits and `_ - . : @ =`, at
/// most 256 characters).
///
/// # Example
///
/// ```
/// use tower_sse::Selector;
///
/// let org = Selector::new("org1:*")?;
/// assert!(org.matches("org1:orders") && org.matches("org1:eu:orders"));
/// assert!(!org.matches("org10:secrets"));
/// assert!(Selector::new("org1:orders")?.matches("org1:orders"));
/// assert!(Selector::new("*")?.matches("anything"));
/// let refused = Selector::new("org1*").unwrap_err();
/// assert!(refused.to_string().contains("write `org1:*`"));
/// assert!(Selector::new("org1:*:x").is_err());
/// # Ok::<_, tower_sse::InvalidSelector>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    /// The topic, or the prefix without its `*`.
    text: Box<str>,
    prefix: bool,
}

impl Selector {
    /// Validates `selector`.
    ///
    /// # Errors
    ///
    /// When `selector` is empty, has `*` anywhere but at the end or after something other than
    /// a separator, or its topic (or prefix) breaks the topic rule.
    pub fn new(selector: &str) -> Result<Self, InvalidSelector> {
        let (text, prefix) = match selector.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (selector, false),
        };
        if text.contains('*') {
            return Err(InvalidSelector::new("`*` may only come last"));
        }
        // `*` alone selects every topic; anything else follows the topic rule.
        if !(prefix && text.is_empty()) {
            Topic::new(text).map_err(InvalidSelector::topic)?;
        }
        if prefix && !text.is_empty() && !text.ends_with(is_separator) {
            return Err(InvalidSelector::unanchored(text));
        }
        Ok(Self {
            text: text.into(),
            prefix,
        })
    }

    /// Whether `topic` is selected: equal to the topic, or starting with the prefix (which ends
    /// with a separator).
    pub fn matches(&self, topic: impl AsRef<str>) -> bool {
        let topic = topic.as_ref();
        if self.prefix {
            topic.starts_with(&*self.text)
        } else {
            topic == &*self.text
        }
    }

    /// Whether this selects every topic with a prefix (it ends with `*`), rather than one topic.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }
}

/// The characters after which a selector may end in `*`: every topic character that is not a
/// letter or a digit.
fn is_separator(c: char) -> bool {
    matches!(c, ':' | '.' | '-' | '_' | '@' | '=')
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = InvalidSelector;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Selector {
    type Error = InvalidSelector;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// A string that is not a topic [`Selector`].
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidSelector {
    problem: Cow<'static, str>,
}

impl InvalidSelector {
    fn new(problem: &'static str) -> Self {
        Self {
            problem: Cow::Borrowed(problem),
        }
    }

    fn topic(e: crate::InvalidTopic) -> Self {
        Self {
            problem: Cow::Owned(e.to_string()),
        }
    }

    /// `prefix*` where `prefix` (a valid topic) does not end with a separator.
    fn unanchored(prefix: &str) -> Self {
        Self {
            problem: Cow::Owned(format!(
                "`*` must stand alone or follow a separator, one of `: . - _ @ =`, so that \
                 `{prefix}*` cannot select `{prefix}0` or any longer name; write `{prefix}:*` \
                 for every topic under `{prefix}:`, or `{prefix}` for that topic alone"
            )),
        }
    }
}

impl fmt::Debug for InvalidSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InvalidSelector")
            .field(&self.problem)
            .finish()
    }
}

impl fmt::Display for InvalidSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid topic selector ({}); a selector is a topic, `*` alone, or a prefix ending \
             in a separator followed by `*`",
            self.problem
        )
    }
}

impl StdError for InvalidSelector {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let all = Selector::new("*").unwrap();
        assert!(all.matches("anything") && all.is_prefix());
        let exact = Selector::new("a:b").unwrap();
        assert!(exact.matches("a:b") && !exact.matches("a:bc") && !exact.is_prefix());
        let prefix = Selector::new("a:*").unwrap();
        assert!(prefix.matches("a:") && prefix.matches("a:b") && !prefix.matches("b:a"));
        assert!(prefix.matches("a:b:c") && !prefix.matches("ab"));
        assert_eq!(prefix.to_string(), "a:*");
        assert!(Selector::new(&format!("{}:*", "x".repeat(255))).is_ok());
        for bad in ["", "**", "a*b", "*a", "a b*", "é*", &"x".repeat(257)] {
            let err = Selector::new(bad).unwrap_err().to_string();
            assert!(err.contains("invalid topic selector"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_star_follows_a_separator() {
        for sep in [':', '.', '-', '_', '@', '='] {
            let selector = Selector::new(&format!("org1{sep}*")).unwrap();
            assert!(selector.matches(format!("org1{sep}x")), "{sep}");
            assert!(!selector.matches("org10:x"), "{sep}");
        }
        for bad in [
            "org1*",
            "a*",
            "org1:x*",
            "9*",
            &format!("{}*", "x".repeat(256)),
        ] {
            let err = Selector::new(bad).unwrap_err().to_string();
            assert!(
                err.contains("must stand alone or follow a separator"),
                "{bad}: {err}"
            );
        }
        let err = Selector::new("org1*").unwrap_err().to_string();
        assert!(err.contains("write `org1:*`"), "{err}");
    }
}
