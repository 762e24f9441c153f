//! What a stream says about itself: its status event's data, and the comments that end it.

use crate::{
    bus::{GapReason, Message, ResumeStatus},
    last_event_id::Cursor,
};

/// The data of the first status event: how the stream started.
pub(super) fn started(status: ResumeStatus) -> String {
    match status {
        ResumeStatus::Fresh => r#"{"status":"fresh"}"#.to_owned(),
        ResumeStatus::Resumed { replayed } => {
            format!(r#"{{"status":"resumed","replayed":{replayed}}}"#)
        }
        ResumeStatus::Reset(reason) => {
            format!(r#"{{"status":"reset","reason":"{}"}}"#, reason.as_str())
        }
    }
}

/// The data of a status event for events that may have been lost.
pub(super) fn gap(reason: GapReason) -> String {
    format!(r#"{{"status":"gap","reason":"{}"}}"#, reason.as_str())
}

/// The comment that ends a stream the bus ended (`end`), naming the id to resume from.
pub(super) fn ended(end: &Message, cursor: &Cursor) -> String {
    let why = match end {
        Message::Lagged => "disconnected: this client fell too far behind",
        Message::Stalled => "disconnected: this client stopped reading",
        _ => "the server is shutting down",
    };
    format!("{why}; reconnect with Last-Event-ID {cursor} to resume")
}

/// The comment that ends a stream whose grant expired.
pub(super) fn expired(cursor: &Cursor) -> String {
    format!("token expired; reconnect with a fresh token and Last-Event-ID {cursor} to resume")
}
