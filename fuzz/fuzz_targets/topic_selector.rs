//! Topic and selector parsing: what is accepted follows the rule, and a selector matches exactly
//! what its definition says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_sse::{Selector, Topic};

fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '=')
}

fn follows_rule(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(topic_char)
}

/// A prefix may only end in `*` right after a separator, so it never reaches into a longer
/// name (`org1*` would select `org10`).
fn ends_with_separator(s: &str) -> bool {
    s.ends_with(|c: char| topic_char(c) && !c.is_ascii_alphanumeric())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is a selector, the rest a topic.
    let (selector, topic) = text.split_once('\n').unwrap_or((text, text));

    let parsed_topic = Topic::new(topic);
    assert_eq!(parsed_topic.is_ok(), follows_rule(topic), "{topic:?}");
    if let Ok(t) = &parsed_topic {
        assert_eq!(t.as_str(), topic);
    }

    let prefix = selector.strip_suffix('*');
    let valid = match prefix {
        Some("") => true,
        Some(prefix) => follows_rule(prefix) && ends_with_separator(prefix),
        None => follows_rule(selector),
    };
    match Selector::new(selector) {
        Ok(parsed) => {
            assert!(valid, "accepted {selector:?}");
            assert_eq!(parsed.to_string(), selector);
            assert_eq!(Selector::new(&parsed.to_string()).as_ref(), Ok(&parsed));
            assert_eq!(parsed.is_prefix(), prefix.is_some());
            if let Ok(t) = &parsed_topic {
                let expected = match prefix {
                    Some(p) => t.as_str().starts_with(p),
                    None => t.as_str() == selector,
                };
                assert_eq!(parsed.matches(t), expected, "{selector:?} {topic:?}");
                // What a prefix selects starts after a separator: the selector never ends in the
                // middle of a name of the topic (`org1` of `org10`).
                if let (Some(p), true) = (prefix, parsed.matches(t)) {
                    let cut = t.as_str()[..p.len()].chars().next_back();
                    assert!(
                        cut.is_none_or(|c| !c.is_ascii_alphanumeric()),
                        "{p:?} {t:?}"
                    );
                }
            }
            match prefix {
                Some(p) => {
                    if let Ok(longer) = Topic::new(&format!("{p}x")) {
                        assert!(parsed.matches(&longer));
                    }
                }
                None => assert!(parsed.matches(selector)),
            }
        }
        Err(e) => {
            assert!(!valid, "refused {selector:?}: {e}");
            assert!(e.to_string().contains("invalid topic selector"));
        }
    }
});
