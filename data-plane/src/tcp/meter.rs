//! Byte counts of one splice direction, for the splice in a task and for the engine alike.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes counted locally before they are added to the listener's shared counter.
const METER_BATCH: u64 = 256 * 1024;

/// Counts one direction's bytes locally and adds them to the listener's shared counter in
/// batches: one shared cache line touched per `METER_BATCH` bytes instead of per read. Whoever
/// holds it calls [`Meter::flush`] when the direction ends, however it ends.
#[derive(Default)]
pub(super) struct Meter {
    pending: u64,
    /// All this connection's bytes in this direction.
    pub(super) total: u64,
}

impl Meter {
    pub(super) fn add(&mut self, n: usize, shared: &AtomicU64) {
        self.pending += n as u64;
        self.total += n as u64;
        if self.pending >= METER_BATCH {
            self.flush(shared);
        }
    }

    pub(super) fn flush(&mut self, shared: &AtomicU64) {
        if self.pending > 0 {
            shared.fetch_add(std::mem::take(&mut self.pending), Ordering::Relaxed);
        }
    }
}
