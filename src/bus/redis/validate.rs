//! What the bus believes of what comes from Redis.
//!
//! Redis is shared infrastructure: another application, an older instance, a person with
//! `redis-cli` or a bug can publish on the bus's channels and write under its prefix. So every
//! message, notification and stream entry passes here before anything of it is delivered or
//! changes what an instance knows: Pub/Sub messages, Streams notifications, entries read to fill
//! a gap or to replay, and the messages of a cluster's lanes.
//!
//! # The frame
//!
//! The publish scripts (`frame` in `lua/prelude.lua`) store and announce every event as one
//! frame of the `text/event-stream` format, in its [envelope]:
//!
//! ```text
//! :@t=1700000000000000\n      the envelope's line (optional)
//! event: order\n              the event's fields as `Event::encode_body` writes them:
//! data: shipped\n             comments (`: ...`), at most one `event:`, at most one `retry:`
//!                             (digits), any number of `data:` lines
//! id: 0a1b2c3d-42\n           its id, last: 8 lowercase hex digits, `-`, a sequence number
//! \n                          the blank line that ends the event
//! ```
//!
//! A Streams notification is `{p} {frame}`, `{p}` naming the topic's previous event (`42`, or
//! `~42` for a bound). Only exactly this is accepted: no CR anywhere (clients take it for a line
//! break), no blank line before the last (that would be a second event), no other field, an id
//! in canonical form numbered from 1, not the crate's own status event, and a `{p}` below the
//! event's number. A stream entry's id must be the frame's sequence number, `-0`.
//!
//! # Numbers
//!
//! A well-formed frame of the topic's epoch with a plausible number is believed. Its number is
//! plausible when it is at most a few above the highest one the instance knows Redis issued:
//! [`FAR_AHEAD`] on one server, where one counter numbers every topic and an instance listening
//! to some topics hears numbers jump by the events of the others; one on a cluster, where each
//! topic is numbered on its own and a live message follows the last one delivered. A frame of
//! another epoch, or numbered further ahead, is checked against the counter, read on the
//! connection that carried it (so the answer comes after it): believed when Redis issued that
//! number in that epoch, rejected otherwise. Until the answer comes, later messages wait, in
//! order.
//!
//! A rejected message is dropped and counted (`sse_redis_rejected_total`, label `reason`:
//! `malformed`, `epoch`, `ahead` or `stale`), and a warning is logged (at most one every
//! [`WARNING_INTERVAL`], with how many were not logged). It never advances what an instance
//! knows, so one bad message cannot hold back later events nor give a new stream its id. A
//! rejected stream entry leaves a hole that readers see: a fill tells subscribers of a gap, a
//! replay becomes a reset.
//!
//! Within the window a forged number cannot be told from a real one without asking Redis about
//! every message; such a message is delivered, and the damage is bounded by the window.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{
    envelope::{self, Meta},
    state::State,
};
use crate::sync::lock;
use crate::{bus::Topic, last_event_id::EventId, STATUS_EVENT};

/// On one server, how far above the highest sequence number an instance knows Redis issued a
/// number may be and still be believed without asking Redis.
pub(super) const FAR_AHEAD: u64 = 1_024;

/// On a cluster, the same for a topic: only the number after the last one delivered.
pub(super) const NEXT: u64 = 1;

/// The least time between two warnings about rejected messages.
pub(super) const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why something from Redis was refused: the `reason` of `sse_redis_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejection {
    /// Not exactly one event frame as the scripts write it.
    Malformed,
    /// Of an epoch Redis does not number in.
    Epoch,
    /// Numbered beyond what Redis issued.
    Ahead,
    /// Numbered at or below what was delivered, with no sign the counter went back.
    Stale,
}

impl Rejection {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Epoch => "epoch",
            Self::Ahead => "ahead",
            Self::Stale => "stale",
        }
    }
}

/// A frame in the layout the scripts write, out of its envelope.
#[derive(Debug, Clone)]
pub(super) struct Checked {
    pub(super) id: EventId,
    /// The frame clients receive, sharing the buffer the message was read into.
    pub(super) frame: Bytes,
    pub(super) meta: Meta,
}

/// The `p` of a notification or stream entry: the highest number the topic's previous event
/// can have, and whether it is that event exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Prev {
    pub(super) seq: u64,
    pub(super) exact: bool,
}

/// Checks a message: one frame, in its envelope.
pub(super) fn frame(payload: Bytes) -> Result<Checked, Rejection> {
    let (meta, frame) = envelope::open(payload);
    let id = layout(&frame).ok_or(Rejection::Malformed)?;
    Ok(Checked { id, frame, meta })
}

/// Checks a Streams notification: `{p} {frame}`.
pub(super) fn notice(payload: &Bytes) -> Result<(Prev, Checked), Rejection> {
    let space = memchr::memchr(b' ', payload).ok_or(Rejection::Malformed)?;
    let prev = prev(&payload[..space]).ok_or(Rejection::Malformed)?;
    let checked = frame(payload.slice(space + 1..))?;
    if prev.seq >= checked.id.sequence() {
        return Err(Rejection::Malformed);
    }
    Ok((prev, checked))
}

/// Checks the frame of the stream entry numbered `seq`.
pub(super) fn entry(seq: u64, payload: Bytes) -> Result<Checked, Rejection> {
    let checked = frame(payload)?;
    if checked.id.sequence() != seq {
        return Err(Rejection::Malformed);
    }
    Ok(checked)
}

/// Parses a `p`: `42` (exactly), or `~42` (the previous event is numbered below 42).
pub(super) fn prev(raw: &[u8]) -> Option<Prev> {
    match raw.strip_prefix(b"~") {
        Some(bound) => Some(Prev {
            seq: number(bound)?.saturating_sub(1),
            exact: false,
        }),
        None => Some(Prev {
            seq: number(raw)?,
            exact: true,
        }),
    }
}

/// Parses decimal digits, and nothing else.
pub(super) fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The id of a frame in the scripts' layout, or `None` when it is not one.
fn layout(frame: &[u8]) -> Option<EventId> {
    if memchr::memchr(b'\r', frame).is_some() {
        return None;
    }
    let lines = frame.strip_suffix(b"\n\n")?;
    let (fields, id) = match memchr::memrchr(b'\n', lines) {
        Some(end) => (Some(&lines[..end]), &lines[end + 1..]),
        None => (None, lines),
    };
    let id = canonical_id(id.strip_prefix(b"id: ")?)?;
    let mut seen = Fields::default();
    for line in fields.into_iter().flat_map(|f| f.split(|&b| b == b'\n')) {
        seen.check(line)?;
    }
    Some(id)
}

/// The fields seen so far in a frame.
#[derive(Default)]
struct Fields {
    event: bool,
    retry: bool,
}

impl Fields {
    /// Checks one line before the id: `name: value` or `name:`, of a field the encoder writes.
    fn check(&mut self, line: &[u8]) -> Option<()> {
        let colon = memchr::memchr(b':', line)?;
        let (name, rest) = (&line[..colon], &line[colon + 1..]);
        let value = match rest {
            [] => rest,
            [b' ', value @ ..] => value,
            _ => return None,
        };
        match name {
            b"" | b"data" => Some(()),
            b"event" if !self.event && value != STATUS_EVENT.as_bytes() => {
                self.event = true;
                Some(())
            }
            b"retry" if !self.retry && number(value).is_some() => {
                self.retry = true;
                Some(())
            }
            _ => None,
        }
    }
}

/// An id as the scripts write it: `{8 lowercase hex digits}-{sequence number}`, the number from
/// 1 and without leading zeros.
fn canonical_id(text: &[u8]) -> Option<EventId> {
    let (epoch, seq) = (text.get(..8)?, text.get(9..)?);
    let hex = epoch.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex || text[8] != b'-' || seq.first() == Some(&b'0') {
        return None;
    }
    let epoch = u32::from_str_radix(std::str::from_utf8(epoch).ok()?, 16).ok()?;
    Some(EventId::new(epoch, number(seq)?))
}

/// What an instance knows of a numbering: its epoch and the highest sequence number it knows
/// Redis issued in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Known {
    pub(super) epoch: u32,
    pub(super) seq: u64,
}

/// Whether a number is believed as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Believe,
    /// Check it against the counter first.
    Ask,
}

impl Known {
    /// Judges `id`: believed when of this epoch and at most `far` above what is known.
    pub(super) fn judge(&self, id: EventId, far: u64) -> Verdict {
        if id.epoch() == self.epoch && id.sequence() <= self.seq.saturating_add(far) {
            Verdict::Believe
        } else {
            Verdict::Ask
        }
    }

    /// Learns that Redis issued `seq`.
    pub(super) fn saw(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }
}

/// Checks `id` against the counter read after it arrived, on the same connection.
pub(super) fn confirm(id: EventId, counter: State) -> Result<(), Rejection> {
    if id.epoch() != counter.epoch {
        return Err(Rejection::Epoch);
    }
    if id.sequence() > counter.seq {
        return Err(Rejection::Ahead);
    }
    Ok(())
}

/// Warnings not logged since the last one.
struct Warnings {
    last: Option<Instant>,
    suppressed: u64,
}

static WARNINGS: Mutex<Warnings> = Mutex::new(Warnings {
    last: None,
    suppressed: 0,
});

/// Counts a rejected message of `topic` and logs it (rate limited).
pub(super) fn reject(topic: &Topic, rejection: Rejection) {
    crate::metrics::redis_rejected(rejection.as_str());
    let now = Instant::now();
    let mut warnings = lock(&WARNINGS);
    if let Some(last) = warnings.last {
        if now.duration_since(last) < WARNING_INTERVAL {
            warnings.suppressed += 1;
            return;
        }
    }
    warnings.last = Some(now);
    let suppressed = std::mem::take(&mut warnings.suppressed);
    drop(warnings);
    tracing::warn!(
        %topic,
        reason = rejection.as_str(),
        suppressed,
        "dropped a message from Redis that is not an event of this bus (something else \
         publishes on its channels or writes under its prefix)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn id(frame: &[u8]) -> Option<String> {
        layout(frame).map(|id| id.to_string())
    }

    #[test]
    fn accepts_what_the_encoder_and_the_scripts_write() {
        let events = [
            Event::default(),
            Event::new(""),
            Event::new("a\nb\r\nc\rd\n"),
            Event::new("x").event("kind").unwrap().comment("one\ntwo"),
            Event::new("x")
                .retry(Duration::from_millis(1500))
                .event("")
                .unwrap(),
            Event::new("id: 00000001-1\n\ndata: injected"),
            Event::new("\0 binary \u{7f}").comment(""),
        ];
        for event in events {
            // What `frame` in lua/prelude.lua appends to the body.
            let mut scripted = event.encode_body(0).to_vec();
            scripted.extend_from_slice(b"id: 0000002a-17\n\n");
            assert_eq!(id(&scripted).as_deref(), Some("0000002a-17"), "{event:?}");
            let encoded = event.id("0000002a-17").unwrap().encode();
            assert_eq!(&encoded[..], &scripted[..], "the encoder agrees");
        }
    }

    #[test]
    fn refuses_anything_else() {
        let bad: &[&[u8]] = &[
            b"",
            b"garbage",
            b"\xff\x00\n\n",
            b"data: x\n\n",
            b"data: x\nid: 0000002a-17\n",
            b"data: x\nid: 0000002a-17\n\n\n",
            b"data: one\n\ndata: two\nid: 0000002a-17\n\n",
            b"data: one\nid: 0000002a-16\n\ndata: two\nid: 0000002a-17\n\n",
            b"\nid: 0000002a-17\n\n",
            b"data: x\r\nid: 0000002a-17\n\n",
            b"data: x\rdata: y\nid: 0000002a-17\n\n",
            b"id: 0000002a-1\ndata: x\nid: 0000002a-17\n\n",
            b"event: a\nevent: b\nid: 0000002a-17\n\n",
            b"event: sse-status\ndata: {}\nid: 0000002a-17\n\n",
            b"retry: 10\nretry: 10\nid: 0000002a-17\n\n",
            b"retry: soon\nid: 0000002a-17\n\n",
            b"data:x\nid: 0000002a-17\n\n",
            b"other: x\nid: 0000002a-17\n\n",
            b"data\nid: 0000002a-17\n\n",
            b"id: 0000002A-17\n\n",
            b"id: 0000002a-017\n\n",
            b"id: 0000002a-0\n\n",
            b"id: 2a-17\n\n",
            b"id: 0000002a-\n\n",
            b"id: 0000002a-18446744073709551616\n\n",
            b"id:0000002a-17\n\n",
            b"id: 0000002a-17 \n\n",
        ];
        for frame in bad {
            assert_eq!(id(frame), None, "{:?}", String::from_utf8_lossy(frame));
        }
        assert_eq!(
            id(b"id: ffffffff-18446744073709551615\n\n").as_deref(),
            Some("ffffffff-18446744073709551615")
        );
    }

    #[test]
    fn messages_in_their_envelope() {
        let checked = frame(Bytes::from_static(b":@t=1\ndata: x\nid: 0000002a-9\n\n")).unwrap();
        assert_eq!(checked.id, EventId::new(0x2a, 9));
        assert_eq!(&checked.frame[..], b"data: x\nid: 0000002a-9\n\n");
        let enveloped_twice = Bytes::from_static(b":@t=1\n:@t=2\ndata: x\nid: 0000002a-9\n\n");
        assert_eq!(frame(enveloped_twice).unwrap_err(), Rejection::Malformed);
        let unfinished = Bytes::from_static(b":@t=1");
        assert_eq!(frame(unfinished).unwrap_err(), Rejection::Malformed);
    }

    #[test]
    fn notices() {
        let payload = Bytes::from_static(b"~7 :@t=1\ndata: x\nid: 0000002a-9\n\n");
        let (prev, checked) = notice(&payload).unwrap();
        assert_eq!(
            prev,
            Prev {
                seq: 6,
                exact: false
            }
        );
        assert_eq!(&checked.frame[..], b"data: x\nid: 0000002a-9\n\n");
        let exact = Bytes::from_static(b"8 data: x\nid: 0000002a-9\n\n");
        assert_eq!(
            notice(&exact).unwrap().0,
            Prev {
                seq: 8,
                exact: true
            }
        );
        for bad in [
            &b"data: x\nid: 0000002a-9\n\n"[..],
            b"9 data: x\nid: 0000002a-9\n\n",
            b"-1 data: x\nid: 0000002a-9\n\n",
            b"~ data: x\nid: 0000002a-9\n\n",
            b"3 garbage",
        ] {
            let bad = Bytes::from_static(bad);
            assert_eq!(notice(&bad).unwrap_err(), Rejection::Malformed);
        }
    }

    #[test]
    fn previous_events() {
        assert_eq!(
            prev(b"42"),
            Some(Prev {
                seq: 42,
                exact: true
            })
        );
        assert_eq!(
            prev(b"~42"),
            Some(Prev {
                seq: 41,
                exact: false
            })
        );
        assert_eq!(
            prev(b"~0"),
            Some(Prev {
                seq: 0,
                exact: false
            })
        );
        for bad in [&b""[..], b"~", b"-1", b"+1", b"1 "] {
            assert_eq!(prev(bad), None);
        }
    }

    #[test]
    fn entries_carry_their_own_number() {
        let frame = || Bytes::from_static(b"data: x\nid: 0000002a-9\n\n");
        assert!(entry(9, frame()).is_ok());
        assert_eq!(entry(8, frame()).unwrap_err(), Rejection::Malformed);
    }

    #[test]
    fn numbers_far_ahead_or_of_another_epoch_are_checked() {
        let known = Known { epoch: 1, seq: 100 };
        let judge = |epoch, seq, far| known.judge(EventId::new(epoch, seq), far);
        assert_eq!(judge(1, 5, FAR_AHEAD), Verdict::Believe);
        assert_eq!(judge(1, 100 + FAR_AHEAD, FAR_AHEAD), Verdict::Believe);
        assert_eq!(judge(1, 101 + FAR_AHEAD, FAR_AHEAD), Verdict::Ask);
        assert_eq!(judge(1, u64::MAX, FAR_AHEAD), Verdict::Ask);
        assert_eq!(judge(2, 101, FAR_AHEAD), Verdict::Ask);
        assert_eq!(judge(1, 101, NEXT), Verdict::Believe);
        assert_eq!(judge(1, 102, NEXT), Verdict::Ask);
        let top = Known {
            epoch: 1,
            seq: u64::MAX,
        };
        assert_eq!(
            top.judge(EventId::new(1, u64::MAX), FAR_AHEAD),
            Verdict::Believe
        );

        let counter = State { epoch: 1, seq: 500 };
        assert_eq!(confirm(EventId::new(1, 500), counter), Ok(()));
        assert_eq!(
            confirm(EventId::new(1, 501), counter),
            Err(Rejection::Ahead)
        );
        assert_eq!(confirm(EventId::new(2, 5), counter), Err(Rejection::Epoch));
    }
}
