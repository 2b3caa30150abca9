//! Errors of the ledger as a service (not of single events: those are [`crate::ResultCode`]s).

use crate::store::StoreError;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    /// Storage failed or holds something we did not write. The message names the record.
    #[error("storage: {0}")]
    Store(String),
    /// The batch log does not verify (torn or corrupt tail, broken hash chain, head mismatch).
    #[error("ledger log is corrupt at batch {sequence}: {reason}")]
    CorruptLog { sequence: u64, reason: String },
    /// Too much work is queued; retry later. Never blocks, never queues without bound.
    #[error("ledger busy: {in_flight} events in flight, limit {limit}")]
    Busy { in_flight: usize, limit: usize },
    /// A submission must hold between 1 and `batch_size_max` events.
    #[error("submission has {events} events; it must have 1 to {limit}")]
    BadSubmissionSize { events: usize, limit: usize },
    /// A write failed, so memory is ahead of the disk: the ledger refuses work until reopened.
    #[error("ledger stopped after a storage failure, reopen it: {0}")]
    Failed(String),
    /// The ledger was shut down.
    #[error("ledger is shut down")]
    Closed,
    /// Replicated: this node is not the leader (`leader`: the node that is, when known, and
    /// `address`: where that node takes its clients' calls, when known); the submission was not
    /// proposed, so sending it again to the leader cannot apply it twice.
    #[error("not the leader (leader: {leader:?} at {address:?})")]
    NotLeader { leader: Option<u64>, address: Option<String> },
    /// Replicated: the replicated log did not give an outcome (no quorum, the node stopped): the
    /// submission may or may not have been applied; its ids tell which.
    #[error("replicated log: {0}")]
    Replication(String),
    /// The configuration is unusable.
    #[error("invalid ledger configuration: {0}")]
    Config(String),
}

impl From<StoreError> for LedgerError {
    fn from(error: StoreError) -> Self {
        LedgerError::Store(error.to_string())
    }
}
