//! The entries of a topic's stream, as `lua/read.lua` answers them.
//!
//! An entry's id is `{seq}-0`; its fields are `f`, the frame as the publish script built it (in
//! its envelope), and on one server `p`, the topic's previous event (see the Streams backend).
//! On a cluster each topic is numbered on its own, without holes, so an entry's previous event
//! is `seq - 1`. Every entry passes [`validate`]; one that fails is left out of
//! its page and counted, so readers find a hole where it was.

use std::time::Duration;

use ::redis::{aio::ConnectionLike, Value};
use bytes::Bytes;

use super::{
    envelope::Meta,
    request::{millis, timed},
    scripts,
    validate::{self, Prev, Rejection},
};
use crate::bus::Topic;

/// How many entries one read of a stream asks for.
pub(super) const PAGE: usize = 256;

/// How a stream's topic is numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Numbering {
    /// By the namespace's one counter (one server): entries carry `p`.
    Global,
    /// By a counter of the topic (cluster): the previous event is the number before.
    PerTopic,
}

/// One entry, checked.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) epoch: u32,
    pub(super) prev: Prev,
    /// The frame, out of its envelope.
    pub(super) frame: Bytes,
    pub(super) meta: Meta,
}

/// One page of a topic's stream.
#[derive(Debug)]
pub(super) struct Page {
    pub(super) exists: bool,
    /// The entries that passed the checks, in order.
    pub(super) entries: Vec<Entry>,
    /// How many entries Redis answered with (a full page may have more after it).
    pub(super) read: usize,
    /// The number of the last entry Redis answered with: the next page starts after it.
    pub(super) last: Option<u64>,
    /// When the stream does not exist: the highest sequence number an expired event of the
    /// topic can have.
    pub(super) horizon: u64,
}

/// The keys a read of a topic's stream touches.
pub(super) struct StreamKeys<'a> {
    pub(super) stream: &'a str,
    pub(super) state: &'a str,
    /// One server: the clock of checkpoints.
    pub(super) clock: Option<&'a str>,
}

/// What a read of one page needs besides the keys.
pub(super) struct Read<'a> {
    pub(super) topic: &'a Topic,
    pub(super) after: u64,
    pub(super) count: usize,
    pub(super) idle_ttl: Duration,
    pub(super) timeout: Duration,
    pub(super) numbering: Numbering,
}

/// Reads up to `read.count` entries of a topic's stream after `read.after`.
pub(super) async fn read_page(
    conn: &mut (impl ConnectionLike + Send),
    keys: StreamKeys<'_>,
    read: Read<'_>,
) -> Result<Page, String> {
    let topic = read.topic;
    let mut invocation = scripts::READ.prepare_invoke();
    invocation.key(keys.stream).key(keys.state);
    if let Some(clock) = keys.clock {
        invocation.key(clock);
    }
    invocation
        .arg(read.after.saturating_add(1))
        .arg(read.count)
        .arg(millis(read.idle_ttl));
    let what = format!("reading the stream of {topic}");
    let reply: Value = timed("Redis", &what, read.timeout, invocation.invoke_async(conn)).await?;
    parse_page(reply, topic, read.numbering)
        .ok_or_else(|| format!("unexpected content in the stream of {topic}"))
}

fn parse_page(reply: Value, topic: &Topic, numbering: Numbering) -> Option<Page> {
    let Value::Array(items) = reply else {
        return None;
    };
    let mut items = items.into_iter();
    let exists = matches!(items.next()?, Value::Int(1));
    let Value::Array(raw) = items.next()? else {
        return None;
    };
    let mut page = Page {
        exists,
        entries: Vec::with_capacity(raw.len()),
        read: raw.len(),
        last: None,
        horizon: 0,
    };
    for raw in raw {
        let (seq, entry) = raw_entry(raw)?;
        page.last = Some(seq);
        match entry.and_then(|fields| checked(seq, fields, numbering)) {
            Ok(entry) => page.entries.push(entry),
            Err(rejection) => validate::reject(topic, rejection),
        }
    }
    if !exists {
        page.horizon = horizon(items.next()?, items.next()?)?;
    }
    Some(page)
}

/// The bound on an expired topic's events: the first checkpoint newer than the idle TTL
/// (`after`), or else the counter (`seq`).
fn horizon(after: Value, seq: Value) -> Option<u64> {
    let Value::BulkString(seq) = seq else {
        return None;
    };
    let seq = validate::number(&seq)?;
    Some(match after {
        // A checkpoint above the counter is left over from an epoch that ended.
        Value::BulkString(after) => match validate::number(&after)? {
            after if after <= seq => after.saturating_sub(1),
            _ => seq,
        },
        _ => seq,
    })
}

/// The fields of an entry that matter: the frame and, on one server, `p`.
#[derive(Default)]
struct Fields {
    frame: Option<Vec<u8>>,
    prev: Option<Vec<u8>>,
}

/// Splits an entry into its sequence number and fields; the fields are an error when the id is
/// not one the scripts write. `None` when the reply is not shaped like an entry at all.
fn raw_entry(raw: Value) -> Option<(u64, Result<Fields, Rejection>)> {
    let Value::Array(parts) = raw else {
        return None;
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(id)), Some(fields)) = (parts.next(), parts.next()) else {
        return None;
    };
    let text = std::str::from_utf8(&id).ok()?;
    let (seq, sub) = text.split_once('-')?;
    let seq = validate::number(seq.as_bytes())?;
    if sub != "0" || seq == 0 {
        return Some((seq, Err(Rejection::Malformed)));
    }
    let fields = match fields {
        Value::Array(fields) => fields,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let mut found = Fields::default();
    let mut fields = fields.into_iter();
    while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
        (fields.next(), fields.next())
    {
        match &name[..] {
            b"f" => found.frame = Some(value),
            b"p" => found.prev = Some(value),
            _ => {}
        }
    }
    Some((seq, Ok(found)))
}

fn checked(seq: u64, fields: Fields, numbering: Numbering) -> Result<Entry, Rejection> {
    let frame = fields.frame.ok_or(Rejection::Malformed)?;
    let checked = validate::entry(seq, Bytes::from(frame))?;
    let prev = match numbering {
        Numbering::PerTopic => Prev {
            seq: seq - 1,
            exact: true,
        },
        Numbering::Global => fields
            .prev
            .and_then(|raw| validate::prev(&raw))
            .filter(|prev| prev.seq < seq)
            .ok_or(Rejection::Malformed)?,
    };
    Ok(Entry {
        seq,
        epoch: checked.id.epoch(),
        prev,
        frame: checked.frame,
        meta: checked.meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let fields = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    fn page(entries: Vec<Value>, numbering: Numbering) -> Page {
        let reply = Value::Array(vec![Value::Int(1), Value::Array(entries)]);
        parse_page(reply, &Topic::new("t").unwrap(), numbering).unwrap()
    }

    fn frame(seq: u64) -> String {
        format!(":@t=1\ndata: x\nid: 0000002a-{seq}\n\n")
    }

    #[test]
    fn entries_of_one_server() {
        let page = page(
            vec![
                entry("5-0", &[("f", &frame(5)), ("p", "~3")]),
                entry("9-0", &[("f", &frame(9)), ("p", "5")]),
            ],
            Numbering::Global,
        );
        assert!(page.exists);
        let seen: Vec<_> = page
            .entries
            .iter()
            .map(|e| (e.seq, e.epoch, e.prev.seq, e.prev.exact))
            .collect();
        assert_eq!(seen, [(5, 0x2a, 2, false), (9, 0x2a, 5, true)]);
        assert_eq!(&page.entries[0].frame[..], b"data: x\nid: 0000002a-5\n\n");
        assert_eq!((page.read, page.last), (2, Some(9)));
    }

    #[test]
    fn entries_of_a_cluster() {
        let page = page(
            vec![
                entry("7-0", &[("t", "1"), ("f", &frame(7))]),
                entry("8-0", &[("t", "1"), ("f", &frame(8))]),
            ],
            Numbering::PerTopic,
        );
        let prevs: Vec<_> = page.entries.iter().map(|e| e.prev.seq).collect();
        assert_eq!(prevs, [6, 7]);
    }

    #[test]
    fn entries_that_are_not_ours_leave_a_hole() {
        let page = page(
            vec![
                entry("5-0", &[("f", &frame(5)), ("p", "4")]),
                entry("6-0", &[("f", &frame(7)), ("p", "5")]),
                entry("7-0", &[("f", "garbage"), ("p", "6")]),
                entry("8-0", &[("f", &frame(8)), ("p", "8")]),
                entry("8-1", &[("f", &frame(8)), ("p", "7")]),
                entry("9-0", &[("p", "8")]),
                entry("10-0", &[("f", &frame(10)), ("p", "9")]),
            ],
            Numbering::Global,
        );
        let seqs: Vec<_> = page.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 10]);
        assert_eq!((page.read, page.last), (7, Some(10)));
    }

    #[test]
    fn missing_streams() {
        let missing = |after: Value| {
            let reply = Value::Array(vec![Value::Int(0), Value::Array(vec![]), after, bulk("70")]);
            parse_page(reply, &Topic::new("t").unwrap(), Numbering::Global).unwrap()
        };
        let page = missing(bulk("12"));
        assert!(!page.exists);
        assert_eq!(page.horizon, 11);
        assert_eq!(missing(Value::Nil).horizon, 70);
        assert_eq!(missing(Value::Boolean(false)).horizon, 70);
        assert_eq!(missing(bulk("99")).horizon, 70);
    }
}
