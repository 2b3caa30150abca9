//! # ledger: the switch's books
//!
//! An append-only, double-entry ledger on RocksDB. Every payment debits one account and credits
//! another; the ledger guarantees that money is never created or lost, that every acknowledged
//! transfer survives a crash, and that a retry can never change an outcome.
//!
//! ## The path of a transfer
//! ```text
//! submit(events) --bounded lock-free queue--> sequencer thread
//!     drains up to batch_size_max events (group commit), stamps sequence + timestamp,
//!     prefetches the stored transfers it refers to, applies the batch in memory
//! --bounded (2)--> committer thread
//!     one RocksDB WriteBatch with sync: log entry + records + balances + indexes
//!     then completes every submission of the batch
//! ```
//! One thread owns all state, so there are no locks and no contention on hot accounts: a batch
//! of 8,190 transfers from one payer costs what 8,190 from different payers cost. The price of
//! durability (one fdatasync) is paid per batch, not per transfer, and applying batch N+1
//! overlaps the fsync of batch N.
//!
//! ## Determinism
//! [`state::StateMachine::apply`] depends only on its inputs: the batch carries its sequence and
//! timestamp (assigned by the sequencer, which alone reads a clock), and pending-transfer expiry is
//! driven by batch timestamps. Replaying the log from empty reproduces every result and balance;
//! [`verify()`] does exactly that, and later a consensus engine can replicate the same log.
//!
//! ## Semantics (after TigerBeetle)
//! Client-chosen u128 ids are idempotency keys. Amounts are integers in minor units; each account
//! belongs to one ledger (currency). Balances are kept pending and posted. Transfers are
//! single-phase, or two-phase (pending reserves against limits; then post in full or part, void,
//! or expiry at the timeout, at most one of them). Consecutive `linked` events succeed or fail
//! together. Limits: `debits_must_not_exceed_credits` (plus a `debit_limit`: a participant's
//! net debit cap, changed only by a recorded event) and `credits_must_not_exceed_debits`. Every
//! event gets one [`ResultCode`]; precedence is documented in [`result`].
//!
//! ## Storage and recovery
//! Column families hold the hash-chained batch log, transfers by id, accounts, an index of
//! transfers by account and time, and pending-transfer state (layout in [`store`]). Records are
//! never updated or deleted. A batch is one atomic, synced write, so storage always holds a
//! prefix of committed batches. Opening checks that the log ends where the head says, re-hashes
//! the newest entries and follows their chain; a torn or corrupt tail is an error, never accepted.
//!
//! ## Sizing (10M accounts, 100M transfers on a 24 GiB machine)
//! | in memory | per item | at scale |
//! |---|---|---|
//! | every account with balances (hash map) | ~185 B | 10M → ~1.9 GB |
//! | open pending transfers + expiry index | ~230 B | bounded by timeouts; 1M → ~230 MB |
//! | recent-transfer cache (idempotency) | ~260 B | `recent_transfers_max` 1M → ~260 MB |
//! | RocksDB block cache (filters, indexes, hot blocks) | | 512 MB (configurable) |
//! | RocksDB memtables | | one active per column family: 5 × `write_buffer_bytes` (128 MB) + 3 small; at most 4 per family while flushes lag, ~2.7 GB |
//!
//! Transfers live on disk: ~130 B of log, ~145 B of record and ~80 B of index each before LZ4,
//! so 100M transfers take ~35 GB. A retry of an old transfer, or a post of an old pending
//! transfer, costs one batched RocksDB read per batch (bloom filters answer for new ids). Opening
//! reads every account (10M → seconds), not every transfer.
//!
//! ## Failure
//! A failed write leaves memory ahead of disk; the ledger then refuses all work
//! ([`LedgerError::Failed`]) until reopened, which rebuilds memory from what is durable.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod applier;
pub mod clock;
pub mod codec;
mod error;
pub mod event;
pub mod histogram;
mod ledger;
pub mod proposer;
pub mod result;
mod sequencer;
pub mod state;
pub mod store;
pub mod types;
pub mod verify;
pub mod workload;

pub use applier::{AppliedBatch, Applier};
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{PendingResolution, StoredTransfer};
pub use error::LedgerError;
pub use event::{Batch, Event, Record, RECORD_KEY_BYTES_MAX, RECORD_TABLE_RESERVED, RECORD_VALUE_BYTES_MAX};
pub use histogram::{Histogram, HistogramSnapshot};
pub use ledger::{default_path, Completion, Ledger, LedgerConfig, TransferRecord, BATCH_SIZE_MAX_DEFAULT};
pub use proposer::{ProposalDone, Proposer};
pub use result::ResultCode;
pub use sequencer::{Results, Stats};
pub use store::{Durability, Head, Store, StoreError, StoreOptions, TransferPage};
pub use types::{id_is_reserved, Account, AccountFlags, PendingStatus, Transfer, TransferFlags, WideSum};
pub use verify::{verify, VerifyReport};
