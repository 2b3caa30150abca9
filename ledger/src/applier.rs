//! The ledger under a replicated log: applies batches that the log has already made durable on a
//! quorum, one at a time, with the same deterministic state machine and the same atomic write as
//! the single node's sequencer and committer, minus the fsync (the log's sync is the durable
//! write) and plus the log's position in the same write.
//!
//! Deterministic across nodes: a batch's sequence number is the applied state's next one and its
//! timestamp is the proposer's clamped to the state's next timestamp, so every node that applies
//! the same entries in the same order computes the same results, balances and log hash chain,
//! whatever its clock and whatever entries a deposed leader proposed and lost.

use crate::codec::HASH_SIZE;
use crate::error::LedgerError;
use crate::event::{Batch, Event};
use crate::ledger::{restore, LedgerConfig};
use crate::result::ResultCode;
use crate::sequencer::read_known;
use crate::state::StateMachine;
use crate::store::{Durability, Head, Store, WriteScratch};
use crate::types::Account;

/// One batch as applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedBatch {
    pub sequence: u64,
    pub timestamp: u64,
    /// One per event, in order.
    pub results: Vec<ResultCode>,
    /// The number given to each sequenced record that succeeded, in event order.
    pub record_sequences: Vec<u64>,
    /// The batch's hash in the ledger's log chain: equal on every node that applied the same.
    pub hash: [u8; HASH_SIZE],
}

pub struct Applier {
    store: Store,
    state: StateMachine,
    previous_hash: [u8; HASH_SIZE],
    scratch: WriteScratch,
    ids: Vec<u128>,
    /// Set when a write failed: memory is then ahead of the disk, and nothing more may be
    /// applied until the ledger is reopened (from the disk and the replicated log).
    failure: Option<String>,
}

impl Applier {
    /// Opens the ledger's store at `config.path` and restores its state, checking the log tail
    /// as the single node's ledger does.
    pub fn open(config: &LedgerConfig) -> Result<Applier, LedgerError> {
        config.check()?;
        let store = Store::open(&config.path, &config.store)?;
        Applier::from_store(store, config)
    }

    /// Restores the state from `store`, already open (and shared with the ledger's readers).
    pub fn from_store(store: Store, config: &LedgerConfig) -> Result<Applier, LedgerError> {
        config.check()?;
        let (state, head) = restore(&store, config)?;
        Ok(Applier {
            store,
            state,
            previous_hash: head.hash,
            scratch: WriteScratch::default(),
            ids: Vec::new(),
            failure: None,
        })
    }

    /// Applies one batch of events proposed at `timestamp` and writes it, unsynced, with `meta`
    /// (the replicated log's position) in the same atomic write. An empty batch writes `meta`
    /// alone and takes no sequence number.
    pub fn apply(
        &mut self,
        timestamp: u64,
        events: Vec<Event>,
        meta: &[(&[u8], &[u8])],
    ) -> Result<Option<AppliedBatch>, LedgerError> {
        if let Some(failure) = &self.failure {
            return Err(LedgerError::Failed(failure.clone()));
        }
        if events.is_empty() {
            self.write_meta(meta)?;
            return Ok(None);
        }
        let batch = Batch {
            sequence: self.state.last_sequence() + 1,
            timestamp: timestamp.max(self.state.next_timestamp()),
            events,
        };
        // Everything before this batch is written: the whole recent cache may be evicted.
        self.state.evict_recent(self.state.last_sequence());
        self.state.ids_to_prefetch(&batch.events, &mut self.ids);
        let prefetched = match read_known(&self.store, &self.ids, |_| true) {
            Ok(prefetched) => prefetched,
            Err(error) => return Err(self.fail(format!("reading stored transfers: {error}"))),
        };
        let effects = self.state.apply(&batch, &prefetched);
        let written = match self.store.write_batch_with(
            &batch,
            &effects,
            &self.previous_hash,
            &mut self.scratch,
            Durability::Replicated { meta },
        ) {
            Ok(written) => written,
            Err(error) => return Err(self.fail(format!("writing batch {}: {error}", batch.sequence))),
        };
        self.previous_hash = written.hash;
        Ok(Some(AppliedBatch {
            sequence: batch.sequence,
            timestamp: batch.timestamp,
            results: effects.results,
            record_sequences: effects.record_sequences,
            hash: written.hash,
        }))
    }

    /// Writes the replicated log's bookkeeping for an entry without events.
    pub fn write_meta(&mut self, meta: &[(&[u8], &[u8])]) -> Result<(), LedgerError> {
        if let Some(failure) = &self.failure {
            return Err(LedgerError::Failed(failure.clone()));
        }
        self.store.put_replicated_meta(meta).map_err(|error| self.fail(format!("writing log position: {error}")))
    }

    fn fail(&mut self, reason: String) -> LedgerError {
        tracing::error!(%reason, "ledger applier failed: nothing more is applied until it is reopened");
        self.failure = Some(reason.clone());
        LedgerError::Failed(reason)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn head(&self) -> Result<Head, LedgerError> {
        Ok(self.store.head()?)
    }

    pub fn account(&self, id: u128) -> Option<&Account> {
        self.state.account(id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.state.accounts()
    }
}
