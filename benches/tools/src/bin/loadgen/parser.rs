//! Reading a stream: the frames a subscriber receives, checked for loss, duplicates and order.

/// What one subscriber saw.
#[derive(Default)]
pub(crate) struct SubResult {
    pub(crate) topic: usize,
    pub(crate) connected: bool,
    pub(crate) error: Option<String>,
    pub(crate) seen: Vec<u64>,
    pub(crate) delivered: u64,
    pub(crate) duplicate: u64,
    pub(crate) out_of_order: u64,
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) reconnects: u64,
    pub(crate) resumed: u64,
    pub(crate) reset: u64,
    pub(crate) gaps: u64,
}

/// An incremental parser of `text/event-stream` frames, keeping only what the checks need.
#[derive(Default)]
pub(crate) struct Parser {
    partial: Vec<u8>,
    status_event: bool,
    data: Option<(u64, u64)>,
    status_data: Option<StatusKind>,
    id_seq: Option<u64>,
    id_text: Vec<u8>,
    id_pending: Vec<u8>,
    last_id_seq: Option<u64>,
}

#[derive(Clone, Copy)]
enum StatusKind {
    Fresh,
    Resumed,
    Reset,
    Gap,
    Other,
}

impl Parser {
    /// Feeds a chunk received at `now` (µs); returns the number of new distinct events.
    pub(crate) fn feed(&mut self, chunk: &[u8], now: u64, r: &mut SubResult) -> u64 {
        let before = r.delivered;
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.line(line, now, r);
            } else {
                let mut full = std::mem::take(&mut self.partial);
                full.extend_from_slice(line);
                self.line(&full, now, r);
                full.clear();
                self.partial = full;
            }
        }
        self.partial.extend_from_slice(rest);
        r.delivered - before
    }

    fn line(&mut self, line: &[u8], now: u64, r: &mut SubResult) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(now, r);
        } else if let Some(v) = line.strip_prefix(b"data: ") {
            if self.status_event {
                self.status_data = Some(if contains(v, b"\"resumed\"") {
                    StatusKind::Resumed
                } else if contains(v, b"\"reset\"") {
                    StatusKind::Reset
                } else if contains(v, b"\"gap\"") {
                    StatusKind::Gap
                } else if contains(v, b"\"fresh\"") {
                    StatusKind::Fresh
                } else {
                    StatusKind::Other
                });
            } else {
                self.data = parse_data(v);
            }
        } else if let Some(v) = line.strip_prefix(b"id: ") {
            let digits = v.rsplit(|&b| b == b'-').next().unwrap_or(v);
            self.id_seq = parse_u64(digits).or_else(|| parse_time_tag(v));
            self.id_pending.clear();
            self.id_pending.extend_from_slice(v);
        } else if let Some(v) = line.strip_prefix(b"event: ") {
            self.status_event = v == b"sse-status";
        }
    }

    fn dispatch(&mut self, now: u64, r: &mut SubResult) {
        if !self.id_pending.is_empty() {
            std::mem::swap(&mut self.id_text, &mut self.id_pending);
            self.id_pending.clear();
        }
        if let Some(kind) = self.status_data.take() {
            match kind {
                StatusKind::Resumed => r.resumed += 1,
                StatusKind::Reset => r.reset += 1,
                StatusKind::Gap => r.gaps += 1,
                StatusKind::Fresh | StatusKind::Other => {}
            }
        }
        if let Some((seq, sent)) = self.data.take() {
            let word = (seq / 64) as usize;
            let bit = 1u64 << (seq % 64);
            let duplicate = match r.seen.get_mut(word) {
                Some(w) if *w & bit != 0 => true,
                Some(w) => {
                    *w |= bit;
                    false
                }
                None => false,
            };
            if duplicate {
                r.duplicate += 1;
            } else {
                r.delivered += 1;
                r.latencies_us
                    .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                if let (Some(id), Some(last)) = (self.id_seq, self.last_id_seq) {
                    if id <= last {
                        r.out_of_order += 1;
                    }
                }
            }
            if let Some(id) = self.id_seq {
                self.last_id_seq = Some(self.last_id_seq.map_or(id, |l| l.max(id)));
            }
        }
        self.status_event = false;
        self.id_seq = None;
    }

    /// The id of the last event dispatched (empty before the first): what a reconnection sends
    /// as `Last-Event-ID`.
    pub(crate) fn last_id(&self) -> &[u8] {
        &self.id_text
    }

    /// A new connection starts: frames do not continue across it.
    pub(crate) fn reconnected(&mut self) {
        self.partial.clear();
        self.status_event = false;
        self.data = None;
        self.status_data = None;
        self.id_seq = None;
        self.id_pending.clear();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// Nchan's ids, `TIME:TAG` (seconds, then a counter within the second), as one ordered number.
fn parse_time_tag(v: &[u8]) -> Option<u64> {
    let colon = memchr::memchr(b':', v)?;
    let (time, tag) = (parse_u64(&v[..colon])?, parse_u64(&v[colon + 1..])?);
    (time < 1 << 32 && tag < 1 << 32).then_some((time << 32) | tag)
}

/// `seq=N t=MICROS[ padding]`.
fn parse_data(v: &[u8]) -> Option<(u64, u64)> {
    let v = v.strip_prefix(b"seq=")?;
    let space = memchr::memchr(b' ', v)?;
    let seq = parse_u64(&v[..space])?;
    let t = v[space + 1..].strip_prefix(b"t=")?;
    let end = memchr::memchr(b' ', t).unwrap_or(t.len());
    Some((seq, parse_u64(&t[..end])?))
}
