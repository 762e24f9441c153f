//! An arbitrary event, encoded and parsed back as the event stream specification says a client
//! parses it: one dispatch at the very end, and data, type, id and retry as they were set.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::{arbitrary, fuzz_target};
use tower_sse::Event;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    data: Option<String>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u32>,
    comment: Option<String>,
}

/// What a client made of a stream.
#[derive(Debug, Default)]
struct Parsed {
    /// Dispatched events: type buffer and data.
    events: Vec<(String, String)>,
    /// Blank lines seen (each ends a frame), and whether the last line was one.
    dispatches: usize,
    last_event_id: String,
    retry: Option<u64>,
}

/// The specification's parser ("Interpreting an event stream"), for one complete stream.
fn parse(stream: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut data = String::new();
    let mut event_type = String::new();
    let mut id = String::new();
    let stream = stream.strip_prefix('\u{feff}').unwrap_or(stream);
    // Lines end with CRLF, LF or CR; a stream that does not end with one has an unfinished
    // last line, which is discarded.
    let mut rest = stream;
    while let Some(i) = rest.find(['\r', '\n']) {
        let line = &rest[..i];
        let after = if rest[i..].starts_with("\r\n") {
            i + 2
        } else {
            i + 1
        };
        rest = &rest[after..];
        if line.is_empty() {
            out.dispatches += 1;
            out.last_event_id = id.clone();
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            data.pop();
            out.events
                .push((std::mem::take(&mut event_type), std::mem::take(&mut data)));
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => id = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                out.retry = value.parse().ok();
            }
            _ => {}
        }
    }
    assert!(rest.is_empty(), "unfinished last line {rest:?}");
    out
}

fn has_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

fuzz_target!(|input: Input| {
    let mut event = Event::default();
    if let Some(data) = &input.data {
        event = event.data(data.clone());
    }
    if let Some(comment) = &input.comment {
        event = event.comment(comment.clone());
    }
    if let Some(retry) = input.retry {
        event = event.retry(Duration::from_millis(retry.into()));
    }
    let event_type = input.event.clone().filter(|e| {
        let refused = Event::default().event(e.clone()).is_err();
        assert_eq!(refused, has_break(e), "event {e:?}");
        !refused
    });
    if let Some(e) = &event_type {
        event = event.event(e.clone()).unwrap();
    }
    let id = input.id.clone().filter(|i| {
        let refused = Event::default().id(i.clone()).is_err();
        assert_eq!(refused, has_break(i) || i.contains('\0'), "id {i:?}");
        !refused
    });
    if let Some(i) = &id {
        event = event.id(i.clone()).unwrap();
    }

    let encoded = event.encode();
    let text = std::str::from_utf8(&encoded).expect("frames are UTF-8");
    let parsed = parse(text);

    // Exactly one frame: nothing in the fields ended it early.
    assert_eq!(parsed.dispatches, 1, "{text:?}");
    match &input.data {
        Some(data) => {
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(parsed.events.len(), 1, "{text:?}");
            let (got_type, got_data) = &parsed.events[0];
            assert_eq!(got_data, &expected, "{text:?}");
            assert_eq!(got_type, event_type.as_deref().unwrap_or(""), "{text:?}");
        }
        None => assert!(parsed.events.is_empty(), "{text:?}"),
    }
    assert_eq!(parsed.last_event_id, id.unwrap_or_default(), "{text:?}");
    assert_eq!(parsed.retry, input.retry.map(u64::from), "{text:?}");
});
