//! Filling in from the streams what the pipeline did not hear: the entries of each topic
//! after the last one delivered, merged by sequence number across topics. Events that are gone
//! (trimmed, refused, or expired with their stream) become gaps; so does everything left when
//! reading fails.

use std::collections::VecDeque;

use super::pipeline::Pipeline;
use crate::sync::lock;
use crate::{
    bus::{
        redis::{
            entries::{Entry, Page, PAGE},
            replay::Pages,
        },
        GapReason, Topic,
    },
    last_event_id::EventId,
};

/// The reading position of one topic during a fill.
struct FillCursor {
    topic: Topic,
    /// The last event of the topic delivered before the fill.
    baseline: u64,
    /// No event of the topic up to here can be missing, except one a `p` names exactly: up to
    /// the pipeline's watermark, every event of a topic listened to was delivered. (A stream
    /// recreated after expiring bounds its previous event only roughly; anything it had up to
    /// here was heard.)
    settled: u64,
    /// The next page starts after this.
    after: u64,
    /// Entries read, each with the gap to announce before it (the events up to it are gone).
    buffer: VecDeque<(Entry, Option<u64>)>,
    /// The last entry taken into the buffer.
    taken: Option<u64>,
    exhausted: bool,
    /// Whether the first entry after the baseline (or the stream's absence) was looked at.
    checked: bool,
    /// A gap to announce at the end (the stream is gone).
    end_gap: Option<u64>,
}

impl Pipeline {
    /// Reads the entries of each topic after its start, up to `until`, and delivers them in
    /// sequence order across topics. With `advance`, every topic is complete up to `until`
    /// afterwards.
    pub(super) async fn fill(&mut self, ranges: Vec<(Topic, u64)>, until: u64, advance: bool) {
        let epoch = self.core.hub.epoch();
        let watermark = self.watermark;
        let mut cursors: Vec<FillCursor> = ranges
            .into_iter()
            .filter(|(_, after)| *after < until)
            .map(|(topic, after)| FillCursor::new(topic, after, watermark))
            .collect();
        let merged = self.merge(&mut cursors, until, epoch).await;
        if let Err(reason) = &merged {
            tracing::warn!(%reason, "could not read missed events from Redis; telling subscribers");
        }
        self.finish(&cursors, until, merged.is_err(), advance);
    }

    /// Delivers the entries of every cursor in sequence order, until all are read or reading
    /// fails.
    async fn merge(
        &mut self,
        cursors: &mut [FillCursor],
        until: u64,
        epoch: u32,
    ) -> Result<(), String> {
        loop {
            // Every topic that may have more needs an entry at hand before the lowest is known.
            while let Some(cursor) = cursors
                .iter_mut()
                .find(|c| c.buffer.is_empty() && !c.exhausted)
            {
                let page = self.pages.read_page(&cursor.topic, cursor.after, PAGE);
                cursor.take(page.await?, until, epoch);
            }
            let next = cursors
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.buffer.front().map(|(e, _)| (e.seq, i)))
                .min();
            let Some((_, i)) = next else {
                return Ok(());
            };
            let cursor = &mut cursors[i];
            let (entry, gap) = cursor.buffer.pop_front().expect("looked at above");
            let topic = cursor.topic.clone();
            let id = EventId::new(entry.epoch, entry.seq);
            self.deliver(&topic, id, entry.frame, entry.meta, gap);
        }
    }

    /// Announces the gaps left at the end, and with `advance` moves every topic to `until`.
    fn finish(&mut self, cursors: &[FillCursor], until: u64, failed: bool, advance: bool) {
        let hub = &self.core.hub;
        let _gate = lock(&self.core.gate);
        for cursor in cursors {
            let at = if failed && !(cursor.exhausted && cursor.buffer.is_empty()) {
                Some(until)
            } else {
                cursor.end_gap
            };
            if let Some(at) = at {
                let topics = std::slice::from_ref(&cursor.topic);
                hub.gap(Some(topics), at.min(until), GapReason::BrokerDisconnected);
            }
            if advance {
                let last = self.last.entry(cursor.topic.clone()).or_insert(until);
                *last = (*last).max(until);
            }
        }
        if advance {
            hub.advance(until);
            self.watermark = self.watermark.max(until);
        }
    }
}

impl FillCursor {
    fn new(topic: Topic, after: u64, watermark: u64) -> Self {
        Self {
            topic,
            baseline: after,
            settled: after.max(watermark),
            after,
            buffer: VecDeque::new(),
            taken: None,
            exhausted: false,
            checked: false,
            end_gap: None,
        }
    }

    /// Takes in a page read after `self.after`.
    fn take(&mut self, page: Page, until: u64, epoch: u32) {
        if !page.exists {
            self.exhausted = true;
            if !self.checked && page.horizon > self.settled {
                // The stream expired; events after the baseline may have gone with it.
                self.end_gap = Some(page.horizon);
            }
            self.checked = true;
            return;
        }
        if page.read < PAGE {
            self.exhausted = true;
        }
        self.after = page.last.unwrap_or(self.after).max(self.after);
        for entry in page.entries {
            if entry.seq > until {
                self.exhausted = true;
                break;
            }
            if entry.epoch != epoch {
                // Of an epoch that ended (or one this instance has not seen yet): not ours.
                continue;
            }
            // The previous event must be the last one taken (or, first, the baseline): a hole
            // means events are gone.
            let last = self.taken.unwrap_or(self.baseline);
            let floor = if entry.prev.exact {
                last
            } else {
                last.max(self.settled)
            };
            let gap = (entry.prev.seq > floor).then_some(entry.prev.seq);
            self.checked = true;
            self.taken = Some(entry.seq);
            self.buffer.push_back((entry, gap));
        }
        if self.after >= until {
            self.exhausted = true;
        }
    }
}
