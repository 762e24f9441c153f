//! Frames gathered for one body chunk, and the clock read once per poll.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

/// The clock, read at most once per poll.
#[derive(Default)]
pub(super) struct Clock(Option<Instant>);

impl Clock {
    pub(super) fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// Frames gathered for one chunk: the first as it is (not copied), further ones concatenated.
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) first: Option<Bytes>,
    pub(super) batch: Option<BytesMut>,
    pub(super) len: usize,
    pub(super) events: u64,
}

impl Chunk {
    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(super) fn push_owned(&mut self, bytes: Bytes) {
        if self.first.is_none() {
            self.len += bytes.len();
            self.first = Some(bytes);
        } else {
            self.push(&bytes);
        }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        match (&self.first, &mut self.batch) {
            (None, _) => self.first = Some(Bytes::copy_from_slice(bytes)),
            (Some(first), None) => {
                let mut batch = BytesMut::with_capacity((first.len() + bytes.len()) * 2);
                batch.put_slice(first);
                batch.put_slice(bytes);
                self.batch = Some(batch);
            }
            (Some(_), Some(batch)) => batch.put_slice(bytes),
        }
    }

    /// The chunk's bytes, if it has any.
    pub(super) fn into_bytes(self) -> Option<Bytes> {
        match self.batch {
            Some(batch) => Some(batch.freeze()),
            None => self.first,
        }
    }
}
