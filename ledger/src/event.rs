//! Events (the inputs of the state machine) and batches (what the sequencer commits at once).

use crate::types::{Account, Transfer};

/// Table 0 is the ledger's own (sequence counters); services use tables 1 to 255.
pub const RECORD_TABLE_RESERVED: u8 = 0;
/// Longest record key, in bytes.
pub const RECORD_KEY_BYTES_MAX: usize = 128;
/// Longest record value, in bytes.
pub const RECORD_VALUE_BYTES_MAX: usize = 4_096;

/// A key-value record of the service built on the ledger (the switch's participants, aliases,
/// payment metadata), committed in the same batch and fsync as the money it belongs with, and
/// replayed with it. The ledger stores the latest value per (table, key); an empty value
/// removes the key. The batch log keeps every version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub table: u8,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// This event and the next one in the submission succeed or fail together.
    pub linked: bool,
    /// Append to a gap-free sequence: the stored key becomes `key ++ n` (u64, big-endian), where
    /// n counts 1, 2, 3, ... per (table, key) in commit order. The sequencer assigns n, so many
    /// writers can append to one sequence without coordinating (a PSP's event outbox).
    pub sequenced: bool,
}

impl Record {
    /// A record stored under exactly `key` (empty `value`: remove it).
    pub fn put(table: u8, key: impl Into<Vec<u8>>, value: Vec<u8>, linked: bool) -> Event {
        Event::Record(Record { table, key: key.into(), value, linked, sequenced: false })
    }

    /// A record appended to the sequence named by (table, key).
    pub fn append(table: u8, key: impl Into<Vec<u8>>, value: Vec<u8>, linked: bool) -> Event {
        Event::Record(Record { table, key: key.into(), value, linked, sequenced: true })
    }
}

/// One request to change the ledger. Its outcome is one [`crate::ResultCode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Create an account. Balances and timestamp must be zero.
    CreateAccount(Account),
    /// Create a transfer: single-phase, pending, post or void.
    CreateTransfer(Transfer),
    /// Change an account's debit limit (a participant's net debit cap). Recorded like any event,
    /// so that a limit is never changed silently.
    /// `linked`: this event and the next one succeed or fail together.
    SetDebitLimit { account_id: u128, debit_limit: u128, linked: bool },
    /// Store a service record (see [`Record`]).
    Record(Record),
}

impl Event {
    /// True when this event's chain continues with the next event of the submission.
    pub fn linked(&self) -> bool {
        match self {
            Event::CreateTransfer(transfer) => transfer.flags.linked(),
            Event::SetDebitLimit { linked, .. } => *linked,
            Event::Record(record) => record.linked,
            Event::CreateAccount(_) => false,
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
