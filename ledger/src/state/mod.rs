//! The ledger state machine: `apply(state, batch) -> (state', effects)`, deterministic.
//!
//! Apply reads nothing but its inputs: the in-memory state, the batch (which carries its sequence
//! number and timestamp) and `prefetched`, the stored transfers the batch refers to, read from
//! committed storage by the caller *before* apply. It never reads a clock, a random number or the
//! environment, and never iterates a hash map in an order that reaches its output. That is what
//! makes the batch log replayable (recovery audit, `verify`) and, later, replicable.
//!
//! What lives in memory (see the crate header for sizing):
//! - every account with its balances (a payment touches two; they must be at hand);
//! - every *open* pending transfer, with an expiry index ordered by (expires_at, id);
//! - a bounded cache of recently seen transfers, which also holds every transfer of batches not
//!   yet committed (apply runs one batch ahead of the disk). Older transfers are read from
//!   storage through `prefetched`.

mod recent;
mod transfer;
pub mod validate;

use std::collections::BTreeSet;

use crate::codec::{PendingResolution, StoredTransfer};
use crate::event::{Batch, Event};
use crate::result::ResultCode;
use crate::types::{Account, AccountFlags, PendingStatus, Transfer};

pub use recent::RecentTransfers;

/// Hash maps keyed by client-chosen ids use a randomly seeded hasher: a client must not be able to
/// choose ids that collide. Iteration order is therefore random, and apply never depends on it.
pub type IdMap<V> = std::collections::HashMap<u128, V, ahash::RandomState>;

/// A transfer as the state machine knows it: what was stored and, for a pending transfer that
/// was resolved, how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub stored: StoredTransfer,
    pub resolution: Option<PendingResolution>,
}

/// An open (unresolved) pending transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenPending {
    pub transfer: Transfer,
    /// Timestamp at which the reservation lapses; 0 means never.
    pub expires_at: u64,
}

/// Stored transfers a batch refers to that are not in memory, read by the caller before apply.
pub type Prefetched = IdMap<Known>;

/// Everything a batch changed, for the storage layer to write in one atomic write.
#[derive(Debug, Default)]
pub struct Effects {
    /// One result per event, in order.
    pub results: Vec<ResultCode>,
    /// Transfers to record: successes and recorded failures, in event order.
    pub transfers: Vec<StoredTransfer>,
    /// Pending transfers opened in this batch.
    pub pending_opened: Vec<OpenPending>,
    /// Pending transfers resolved (posted, voided, expired) in this batch.
    pub resolutions: Vec<(u128, PendingResolution)>,
    /// Final values of every account the batch created or changed, in id order.
    pub accounts: Vec<Account>,
    /// The number given to each appended record that succeeded, in event order.
    pub record_sequences: Vec<u64>,
}

/// The undo log of a linked chain: how to put back what a failed chain changed.
enum Undo {
    Account(Account),
    AccountCreated(u128),
    Recent(u128, Option<Known>),
    PendingOpened(u128),
    PendingClosed(OpenPending),
    Sequence(Vec<u8>, u64),
}

/// Per-batch scratch state, reused across batches so the hot path does not allocate.
#[derive(Default)]
struct BatchScratch {
    touched: IdMap<()>,
    touched_order: Vec<u128>,
    undo: Vec<Undo>,
}

pub struct StateMachine {
    accounts: IdMap<Account>,
    pending: IdMap<OpenPending>,
    expiries: BTreeSet<(u64, u128)>,
    recent: RecentTransfers,
    /// Last number appended per sequence (table ++ key), for appended records.
    record_sequences: std::collections::HashMap<Vec<u8>, u64, ahash::RandomState>,
    last_sequence: u64,
    next_timestamp: u64,
    scratch: BatchScratch,
}

impl StateMachine {
    /// An empty ledger. `recent_transfers_max` bounds the cache of recent transfers.
    pub fn new(recent_transfers_max: usize) -> Self {
        StateMachine {
            accounts: IdMap::default(),
            pending: IdMap::default(),
            expiries: BTreeSet::new(),
            recent: RecentTransfers::new(recent_transfers_max),
            record_sequences: Default::default(),
            last_sequence: 0,
            next_timestamp: 1,
            scratch: BatchScratch::default(),
        }
    }

    /// Restores a state machine from storage: its accounts, its open pending transfers and the
    /// position of the last committed batch.
    pub fn restore(
        recent_transfers_max: usize,
        accounts: impl IntoIterator<Item = Account>,
        pending: impl IntoIterator<Item = OpenPending>,
        record_sequences: impl IntoIterator<Item = (Vec<u8>, u64)>,
        last_sequence: u64,
        next_timestamp: u64,
    ) -> Self {
        let mut state = StateMachine::new(recent_transfers_max);
        state.record_sequences.extend(record_sequences);
        for account in accounts {
            state.accounts.insert(account.id, account);
        }
        for open in pending {
            state.open_pending(open);
        }
        state.last_sequence = last_sequence;
        state.next_timestamp = next_timestamp.max(1);
        state
    }

    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// The earliest timestamp the next batch may carry.
    pub fn next_timestamp(&self) -> u64 {
        self.next_timestamp
    }

    pub fn account(&self, id: u128) -> Option<&Account> {
        self.accounts.get(&id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn open_pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn open_pending_transfer(&self, id: u128) -> Option<&OpenPending> {
        self.pending.get(&id)
    }

    /// Drops cached transfers of committed batches beyond the cache bound. Call it before
    /// computing the ids to prefetch, never between prefetch and apply: an id must be either in
    /// memory or in what the caller read from storage.
    pub fn evict_recent(&mut self, committed_sequence: u64) {
        self.recent.evict(committed_sequence);
    }

    /// The transfer ids `events` refer to that memory cannot answer: the caller reads them from
    /// committed storage and passes them to [`StateMachine::apply`].
    pub fn ids_to_prefetch(&self, events: &[Event], out: &mut Vec<u128>) {
        out.clear();
        for event in events {
            let Event::CreateTransfer(transfer) = event else { continue };
            for id in [transfer.id, transfer.pending_id] {
                let in_memory = self.recent.get(id).is_some() || self.pending.contains_key(&id);
                if id != 0 && id != u128::MAX && !in_memory {
                    out.push(id);
                }
            }
        }
    }

    /// Applies one batch. The batch must follow the last one applied (sequence + 1, timestamp not
    /// before [`StateMachine::next_timestamp`]); that is the sequencer's promise, asserted here.
    pub fn apply(&mut self, batch: &Batch, prefetched: &Prefetched) -> Effects {
        assert_eq!(batch.sequence, self.last_sequence + 1, "batches are applied in sequence");
        assert!(batch.timestamp >= self.next_timestamp, "batch timestamps strictly increase");
        let mut effects = Effects { results: Vec::with_capacity(batch.events.len()), ..Effects::default() };
        self.expire(batch.timestamp, batch.sequence, &mut effects);

        let mut start = 0;
        while start < batch.events.len() {
            let end = batch.events[start..].iter().position(|event| !event.linked()).map(|offset| start + offset);
            match end {
                None => {
                    // The batch (a submission never spans batches) ends inside a chain.
                    let open = batch.events.len() - start;
                    effects.results.extend(std::iter::repeat_n(ResultCode::LinkedEventChainOpen, open));
                    start = batch.events.len();
                }
                Some(end) => {
                    self.apply_chain(batch, start, end, prefetched, &mut effects);
                    start = end + 1;
                }
            }
        }

        self.last_sequence = batch.sequence;
        self.next_timestamp = batch.next_timestamp();
        self.finish_batch(&mut effects);
        assert_eq!(effects.results.len(), batch.events.len(), "one result per event");
        effects
    }

    /// Applies events `start..=end`, which succeed or fail together.
    fn apply_chain(&mut self, batch: &Batch, start: usize, end: usize, prefetched: &Prefetched, effects: &mut Effects) {
        let chained = end > start;
        let transfers_before = effects.transfers.len();
        let opened_before = effects.pending_opened.len();
        let resolutions_before = effects.resolutions.len();
        let sequences_before = effects.record_sequences.len();
        self.scratch.undo.clear();
        for index in start..=end {
            let context = Context { sequence: batch.sequence, timestamp: batch.event_timestamp(index), chained };
            let (result, record) = self.apply_event(&batch.events[index], context, prefetched, effects);
            if result == ResultCode::Ok {
                effects.results.push(result);
                continue;
            }
            if chained {
                self.roll_back();
                effects.transfers.truncate(transfers_before);
                effects.pending_opened.truncate(opened_before);
                effects.resolutions.truncate(resolutions_before);
                effects.record_sequences.truncate(sequences_before);
                effects.results.truncate(start);
                for other in start..=end {
                    effects.results.push(if other == index { result } else { ResultCode::LinkedEventFailed });
                }
                // A new failure that depends on state is recorded even though its chain rolled back,
                // so that the chain's outcome can never flip on a retry.
                if let (Event::CreateTransfer(transfer), true) = (&batch.events[index], record) {
                    self.record_failure(transfer, context, result, effects);
                }
            } else {
                effects.results.push(result);
            }
            return;
        }
    }

    /// Applies one event; the flag says whether its failure is new and must be recorded against
    /// its id (a retry that returns a recorded failure is not recorded again).
    fn apply_event(
        &mut self,
        event: &Event,
        context: Context,
        prefetched: &Prefetched,
        effects: &mut Effects,
    ) -> (ResultCode, bool) {
        match event {
            Event::CreateAccount(account) => (self.create_account(account, context), false),
            Event::CreateTransfer(transfer) => {
                let outcome = self.create_transfer(transfer, context, prefetched, effects);
                let record = outcome.is_recorded_failure() && !outcome.is_retry();
                // In a chain the failure is recorded after the roll-back (it must survive it).
                if record && !context.chained {
                    self.record_failure(transfer, context, outcome.code(), effects);
                }
                (outcome.code(), record)
            }
            Event::SetDebitLimit { account_id, debit_limit, .. } => {
                (self.set_debit_limit(*account_id, *debit_limit, context), false)
            }
            // Records touch no money; storage writes those whose result is ok.
            Event::Record(record) => (self.record(record, context, effects), false),
        }
    }

    fn create_account(&mut self, account: &Account, context: Context) -> ResultCode {
        if let Err(code) = validate::account(account) {
            return code;
        }
        if let Some(existing) = self.accounts.get(&account.id) {
            return validate::account_difference(existing, account).unwrap_or(ResultCode::Exists);
        }
        let created = Account { timestamp: context.timestamp, ..*account };
        self.accounts.insert(created.id, created);
        self.touch(created.id);
        if context.chained {
            self.scratch.undo.push(Undo::AccountCreated(created.id));
        }
        ResultCode::Ok
    }

    fn set_debit_limit(&mut self, account_id: u128, debit_limit: u128, context: Context) -> ResultCode {
        if crate::types::id_is_reserved(account_id) {
            return ResultCode::IdReserved;
        }
        let Some(account) = self.accounts.get(&account_id) else {
            return ResultCode::AccountNotFound;
        };
        if !account.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
            return ResultCode::AccountHasNoDebitLimit;
        }
        let debits = account.debits_pending.saturating_add(account.debits_posted);
        if debits > account.credits_posted.saturating_add(debit_limit) {
            return ResultCode::DebitLimitBelowCurrentDebits;
        }
        let updated = Account { debit_limit, ..*account };
        self.replace_account(updated, context);
        ResultCode::Ok
    }

    fn record(&mut self, record: &crate::event::Record, context: Context, effects: &mut Effects) -> ResultCode {
        if let Err(code) = validate::record(record) {
            return code;
        }
        if record.sequenced {
            let mut name = Vec::with_capacity(1 + record.key.len());
            name.push(record.table);
            name.extend_from_slice(&record.key);
            let counter = self.record_sequences.entry(name.clone()).or_insert(0);
            let previous = *counter;
            *counter += 1;
            effects.record_sequences.push(*counter);
            if context.chained {
                self.scratch.undo.push(Undo::Sequence(name, previous));
            }
        }
        ResultCode::Ok
    }

    /// Stores a failure that depends on state against the transfer's id, so that a retry returns
    /// it again and the outcome can never flip.
    fn record_failure(&mut self, transfer: &Transfer, context: Context, result: ResultCode, effects: &mut Effects) {
        debug_assert!(result.is_recorded_failure());
        let stored = StoredTransfer { transfer: Transfer { timestamp: context.timestamp, ..*transfer }, result };
        effects.transfers.push(stored);
        self.remember(Known { stored, resolution: None }, context);
    }

    /// Releases every pending reservation whose timeout passed by `timestamp`.
    fn expire(&mut self, timestamp: u64, sequence: u64, effects: &mut Effects) {
        while let Some(&(expires_at, id)) = self.expiries.first() {
            if expires_at > timestamp {
                break;
            }
            self.expiries.pop_first();
            let Some(open) = self.pending.remove(&id) else { continue };
            let context = Context { sequence, timestamp: expires_at, chained: false };
            self.release_reservation(&open.transfer, context);
            let resolution =
                PendingResolution { status: PendingStatus::Expired, timestamp: expires_at, resolved_by: 0 };
            effects.resolutions.push((id, resolution));
            let stored = StoredTransfer { transfer: open.transfer, result: ResultCode::Ok };
            self.remember(Known { stored, resolution: Some(resolution) }, context);
        }
    }

    fn finish_batch(&mut self, effects: &mut Effects) {
        effects.accounts.reserve(self.scratch.touched_order.len());
        for id in self.scratch.touched_order.drain(..) {
            // An account created by a chain that was rolled back is gone again: skip it.
            if let Some(account) = self.accounts.get(&id) {
                effects.accounts.push(*account);
            }
        }
        // Id order: storage writes them in key order (cheap memtable inserts).
        effects.accounts.sort_unstable_by_key(|account| account.id);
        self.scratch.touched.clear();
        self.scratch.undo.clear();
    }

    fn roll_back(&mut self) {
        while let Some(undo) = self.scratch.undo.pop() {
            match undo {
                Undo::Account(account) => {
                    self.accounts.insert(account.id, account);
                }
                Undo::AccountCreated(id) => {
                    self.accounts.remove(&id);
                }
                Undo::Recent(id, previous) => self.recent.restore(id, previous),
                Undo::PendingOpened(id) => {
                    if let Some(open) = self.pending.remove(&id) {
                        self.expiries.remove(&(open.expires_at, id));
                    }
                }
                Undo::PendingClosed(open) => self.open_pending(open),
                Undo::Sequence(name, previous) => {
                    self.record_sequences.insert(name, previous);
                }
            }
        }
    }

    fn touch(&mut self, id: u128) {
        if self.scratch.touched.insert(id, ()).is_none() {
            self.scratch.touched_order.push(id);
        }
    }

    /// Replaces an account, keeping the old value for a chain's roll-back.
    fn replace_account(&mut self, account: Account, context: Context) {
        let previous = self.accounts.insert(account.id, account);
        self.touch(account.id);
        if context.chained {
            if let Some(previous) = previous {
                self.scratch.undo.push(Undo::Account(previous));
            }
        }
    }

    fn remember(&mut self, known: Known, context: Context) {
        let previous = self.recent.insert(known, context.sequence);
        if context.chained {
            self.scratch.undo.push(Undo::Recent(known.stored.transfer.id, previous));
        }
    }

    fn open_pending(&mut self, open: OpenPending) {
        if open.expires_at != 0 {
            self.expiries.insert((open.expires_at, open.transfer.id));
        }
        self.pending.insert(open.transfer.id, open);
    }

    /// Finds a transfer: open pending transfers and the recent cache first, then what was read
    /// from storage for this batch.
    fn find(&self, id: u128, prefetched: &Prefetched) -> Option<Known> {
        if let Some(known) = self.recent.get(id) {
            return Some(*known);
        }
        if let Some(open) = self.pending.get(&id) {
            let stored = StoredTransfer { transfer: open.transfer, result: ResultCode::Ok };
            return Some(Known { stored, resolution: None });
        }
        prefetched.get(&id).copied()
    }
}

/// Where an event stands: its batch, its own timestamp, and whether it is part of a chain (and so
/// must keep an undo log).
#[derive(Clone, Copy)]
struct Context {
    sequence: u64,
    timestamp: u64,
    chained: bool,
}
