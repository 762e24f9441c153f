//! The encoder against an independent, spec-conformant parser.

use std::convert::Infallible;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use proptest::prelude::*;
use tower_sse::Event;

/// Parses `bytes` as a whole event stream with `eventsource-stream`.
fn parse(bytes: bytes::Bytes) -> Vec<eventsource_stream::Event> {
    let stream = futures_util::stream::iter([Ok::<_, Infallible>(bytes)]).eventsource();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(stream.map(|e| e.unwrap()).collect())
}

fn field() -> impl Strategy<Value = String> {
    // Anything but CR, LF and NUL, including text that looks like other fields.
    prop_oneof![
        "[^\r\n\u{0}]{0,40}",
        Just("data: x".to_owned()),
        Just(": comment".to_owned()),
        Just(" leading space".to_owned()),
    ]
}

fn data() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(\r\n|\r|\n|data: |id: |event: |:| |x|é|\u{1F600}){0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_event_round_trips(data in data(), event in proptest::option::of(field()), id in proptest::option::of(field())) {
        let mut e = Event::new(data.clone());
        if let Some(event) = &event {
            e = e.event(event.clone()).unwrap();
        }
        if let Some(id) = &id {
            e = e.id(id.clone()).unwrap();
        }
        let parsed = parse(e.encode());
        prop_assert_eq!(parsed.len(), 1, "{:?}", e.encode());
        let p = &parsed[0];
        // Line breaks of any kind come back as LF.
        let expected = data.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(&p.data, &expected);
        let expected_type = event.filter(|e| !e.is_empty()).unwrap_or_else(|| "message".to_owned());
        prop_assert_eq!(&p.event, &expected_type);
        prop_assert_eq!(&p.id, &id.unwrap_or_default());
    }

    #[test]
    fn several_events_stay_separate(datas in proptest::collection::vec(data(), 1..8)) {
        let mut stream = Vec::new();
        for d in &datas {
            stream.extend_from_slice(&Event::new(d.clone()).encode());
        }
        let parsed = parse(stream.into());
        prop_assert_eq!(parsed.len(), datas.len());
        for (p, d) in parsed.iter().zip(&datas) {
            let expected = d.replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(&p.data, &expected);
        }
    }
}

#[test]
fn exact_bytes() {
    let e = Event::new("line one\r\nline two\rline three\n\nafter blank")
        .event("update")
        .unwrap()
        .id("42")
        .unwrap()
        .retry(std::time::Duration::from_secs(2))
        .comment("hello");
    assert_eq!(
        &e.encode()[..],
        b": hello\nevent: update\nretry: 2000\ndata: line one\ndata: line two\ndata: line three\ndata:\ndata: after blank\nid: 42\n\n"
    );
}
