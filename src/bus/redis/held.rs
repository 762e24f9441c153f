//! Messages held back until something is ready for them (a new connection, a sync, a check of
//! the counter), bounded by count and by bytes.

/// At most `MESSAGES` messages and `BYTES` bytes of payload. Past either, it drops them all and
/// remembers that it did: what it dropped is then read from Redis again or signalled as a gap.
pub(super) struct HeldMessages<T, const MESSAGES: usize, const BYTES: usize> {
    messages: Vec<T>,
    bytes: usize,
    overflowed: bool,
}

impl<T, const MESSAGES: usize, const BYTES: usize> Default for HeldMessages<T, MESSAGES, BYTES> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            bytes: 0,
            overflowed: false,
        }
    }
}

impl<T, const MESSAGES: usize, const BYTES: usize> HeldMessages<T, MESSAGES, BYTES> {
    /// Holds `message`, whose payload is `len` bytes long, if there is room.
    pub(super) fn hold(&mut self, message: T, len: usize) {
        let full = self.messages.len() >= MESSAGES || self.bytes.saturating_add(len) > BYTES;
        if self.overflowed || full {
            self.overflowed = true;
            self.messages = Vec::new();
            return;
        }
        self.bytes += len;
        self.messages.push(message);
    }

    /// Whether a message was dropped for lack of room.
    pub(super) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The messages held, in the order they came.
    pub(super) fn into_messages(self) -> Vec<T> {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_everything_past_either_bound() {
        let mut by_count = HeldMessages::<u8, 2, 100>::default();
        by_count.hold(1, 1);
        by_count.hold(2, 1);
        assert!(!by_count.overflowed());
        by_count.hold(3, 1);
        assert!(by_count.overflowed());
        by_count.hold(4, 0);
        assert!(by_count.into_messages().is_empty());

        let mut by_bytes = HeldMessages::<u8, 10, 100>::default();
        by_bytes.hold(1, 60);
        by_bytes.hold(2, 41);
        assert!(by_bytes.overflowed());
        let mut fits = HeldMessages::<u8, 10, 100>::default();
        fits.hold(1, 60);
        fits.hold(2, 40);
        assert_eq!(fits.into_messages(), [1, 2]);
    }
}
