//! Where the sequencer gets time from. Only the sequencer reads a clock (to stamp each batch);
//! the state machine reads time only from the batch. Tests drive a [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch. May stall or step back: the sequencer never lets batch
    /// timestamps go backwards whatever the clock says.
    fn now_nanoseconds(&self) -> u64;
}

/// The machine's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanoseconds(&self) -> u64 {
        // A clock before 1970 reads as 0; the sequencer then keeps counting from the last batch.
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX / 2)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(nanoseconds: u64) -> Self {
        ManualClock(AtomicU64::new(nanoseconds))
    }
    pub fn set(&self, nanoseconds: u64) {
        self.0.store(nanoseconds, Ordering::SeqCst);
    }
    pub fn advance_seconds(&self, seconds: u64) {
        self.0.fetch_add(seconds * 1_000_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanoseconds(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<T: Clock> Clock for std::sync::Arc<T> {
    fn now_nanoseconds(&self) -> u64 {
        (**self).now_nanoseconds()
    }
}
