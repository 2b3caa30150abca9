//! Events (the inputs of the state machine) and batches (what the sequencer commits at once).

use crate::types::{Account, Transfer};

/// One request to change the ledger. Its outcome is one [`crate::ResultCode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Create an account. Balances and timestamp must be zero.
    CreateAccount(Account),
    /// Create a transfer: single-phase, pending, post or void.
    CreateTransfer(Transfer),
    /// Change an account's debit limit (a participant's net debit cap). Recorded like any event,
    /// so that a limit is never changed silently.
    SetDebitLimit { account_id: u128, debit_limit: u128 },
}

impl Event {
    /// True when this event's chain continues with the next event of the submission.
    pub fn linked(&self) -> bool {
        match self {
            Event::CreateTransfer(transfer) => transfer.flags.linked(),
            Event::CreateAccount(_) | Event::SetDebitLimit { .. } => false,
        }
    }
}

/// A batch as committed: the sequencer assigns `sequence` (strictly increasing, from 1) and
/// `timestamp` (nanoseconds; event `i` gets `timestamp + i`, and every batch starts after the
/// previous batch's last event). The state machine reads time only from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub sequence: u64,
    pub timestamp: u64,
    pub events: Vec<Event>,
}

impl Batch {
    /// The timestamp of event `index`.
    pub fn event_timestamp(&self, index: usize) -> u64 {
        // `index` < batch_size_max (asserted at submission), and timestamps are nanoseconds since
        // 1970, far from u64::MAX: the addition cannot overflow (checked anyway in release).
        self.timestamp + index as u64
    }

    /// The first timestamp the next batch may use.
    pub fn next_timestamp(&self) -> u64 {
        self.timestamp + (self.events.len() as u64).max(1)
    }
}
