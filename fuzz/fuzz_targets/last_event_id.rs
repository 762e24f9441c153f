//! `EventId` parsing, and the resume point read from a request's header or query.

#![no_main]

use http::{HeaderMap, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use tower_sse::EventId;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_id(text);
    }

    // As a `Last-Event-ID` header: whatever bytes a header value may hold.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", value);
        let id = tower_sse::last_event_id(&headers, &Uri::from_static("/events/t"));
        if let Some(id) = &id {
            assert!(!id.is_empty());
            assert_eq!(id.trim(), id);
            check_id(id);
        }
        // The header wins over the query.
        let uri = Uri::from_static("/events/t?last_event_id=00000000-1");
        assert_eq!(tower_sse::last_event_id(&headers, &uri), id);
    }

    // As a query string.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(uri) = format!("/events/t?{text}").parse::<Uri>() {
            if let Some(id) = tower_sse::last_event_id(&HeaderMap::new(), &uri) {
                assert!(!id.is_empty());
                check_id(&id);
            }
        }
    }
});

/// An id that parses prints in a form that parses back to it, never longer than the input.
fn check_id(text: &str) {
    if let Ok(id) = text.parse::<EventId>() {
        let printed = id.to_string();
        assert!(printed.len() <= text.len(), "{text:?} -> {printed:?}");
        assert_eq!(printed.parse::<EventId>().ok(), Some(id), "{text:?}");
        assert!(text.len() <= 64);
    }
}
