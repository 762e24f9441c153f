//! The most event streams open at once, counted across the layer's route and the handlers that
//! serve streams with its settings.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// The most event streams open at once, shared by every clone of a layer or service.
#[derive(Debug, Clone)]
pub(crate) struct StreamLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open stream counted against a [`StreamLimit`]; released on drop.
#[derive(Debug)]
pub(crate) struct StreamPermit {
    open: Arc<AtomicUsize>,
}

impl StreamLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    pub(crate) fn acquire(&self) -> Option<StreamPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamPermit {
                open: self.open.clone(),
            })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}
