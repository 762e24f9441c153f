//! Query strings and percent-encoded path segments, decoded for the route and the policies.
//!
//! Bad escapes are kept as they are (`%zz` stays `%zz`), and bytes that do not form UTF-8 become
//! U+FFFD, which no topic accepts: a malformed request is refused by the topic rule, never
//! silently read as another topic.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Splits a query string into decoded key/value pairs (`+` is a space, `%XX` a byte); empty
/// pairs are skipped, and a key without `=` has an empty value.
pub(crate) fn query_pairs(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// The first non-empty value of `key` in the request's query, if any.
pub(crate) fn query_value<'a>(uri: &'a http::Uri, key: &str) -> Option<Cow<'a, str>> {
    query_pairs(uri.query()?)
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v)
}

/// Decodes the `%XX` escapes of a path segment (`+` stays a `+`).
pub(crate) fn percent_decode(segment: &str) -> Cow<'_, str> {
    percent_decode_str(segment).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_path_segments() {
        assert_eq!(percent_decode("org1%3Aa%40b"), "org1:a@b");
        assert_eq!(percent_decode("a+b"), "a+b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert!(matches!(percent_decode("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn pairs() {
        let pairs: Vec<_> =
            query_pairs("topic=a&topic=b%3Ac&&last_event_id=x&flag&s=a+b&bad=%ff%zz")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        assert_eq!(
            pairs,
            [
                ("topic".into(), "a".into()),
                ("topic".into(), "b:c".into()),
                ("last_event_id".into(), "x".into()),
                ("flag".into(), String::new()),
                ("s".into(), "a b".into()),
                ("bad".into(), "\u{fffd}%zz".into()),
            ]
        );
    }

    #[test]
    fn first_non_empty_value() {
        let uri: http::Uri = "/e?access_token=&access_token=t&x=1".parse().unwrap();
        assert_eq!(query_value(&uri, "access_token").as_deref(), Some("t"));
        assert_eq!(query_value(&uri, "y"), None);
        let uri: http::Uri = "/e".parse().unwrap();
        assert_eq!(query_value(&uri, "x"), None);
    }
}
