//! The audit: replay the whole batch log and check it against everything stored.
//!
//! - every log entry decodes, hashes to what it says, and chains to the previous one;
//! - replaying the events from an empty ledger gives exactly the recorded results;
//! - the replayed balances equal the stored accounts, account by account;
//! - the replayed open pending transfers equal the stored ones;
//! - the number of stored transfer records equals the number the replay recorded;
//! - on every ledger (currency) debits and credits net to zero, posted and pending.
//!
//! It reads stored transfers during replay (so memory stays bounded by accounts, not transfers)
//! and hides records stamped at or after the batch being replayed: what did not exist yet.

use std::collections::BTreeMap;

use crate::codec::HASH_SIZE;
use crate::error::LedgerError;
use crate::sequencer::read_known;
use crate::state::StateMachine;
use crate::store::Store;
use crate::types::{Account, WideSum};

/// What the audit found. `problems` is empty when the ledger is sound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub batches: u64,
    pub events: u64,
    pub transfer_records: u64,
    pub accounts: u64,
    pub open_pending: u64,
    /// Per ledger (currency): (debits posted, credits posted, debits pending, credits pending).
    pub totals: BTreeMap<u32, LedgerTotals>,
    pub problems: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    pub debits_posted: WideSum,
    pub credits_posted: WideSum,
    pub debits_pending: WideSum,
    pub credits_pending: WideSum,
}

impl VerifyReport {
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Problems beyond this many are counted, not listed: a corrupt ledger must not exhaust memory.
const PROBLEMS_LISTED_MAX: usize = 100;

fn note(report: &mut VerifyReport, problem: String) {
    if report.problems.len() < PROBLEMS_LISTED_MAX {
        report.problems.push(problem);
    }
}

/// Audits a store that nothing is writing to (a closed ledger).
pub fn verify(store: &Store, recent_transfers_max: usize) -> Result<VerifyReport, LedgerError> {
    let mut report = VerifyReport::default();
    let mut state = StateMachine::new(recent_transfers_max.max(1));
    let mut previous_hash = [0u8; HASH_SIZE];
    let mut ids = Vec::new();
    store.scan_log(1, |entry| {
        let sequence = entry.batch.sequence;
        if sequence != report.batches + 1 {
            let problem = format!("batch {sequence} follows batch {}", report.batches);
            note(&mut report, problem);
            return Err(LedgerError::CorruptLog { sequence, reason: "gap in the log".into() });
        }
        if entry.previous_hash != previous_hash {
            note(&mut report, format!("batch {sequence}: hash chain broken"));
        }
        if entry.batch.timestamp < state.next_timestamp() {
            note(&mut report, format!("batch {sequence}: timestamp goes backwards"));
            return Err(LedgerError::CorruptLog { sequence, reason: "timestamp goes backwards".into() });
        }
        state.evict_recent(sequence - 1);
        state.ids_to_prefetch(&entry.batch.events, &mut ids);
        let timestamp = entry.batch.timestamp;
        let prefetched = read_known(store, &ids, |stamped| stamped < timestamp)?;
        let effects = state.apply(&entry.batch, &prefetched);
        if effects.results != entry.results {
            let index = effects.results.iter().zip(&entry.results).position(|(a, b)| a != b).unwrap_or(0);
            note(&mut report, format!("batch {sequence} event {index}: replay gives a different result"));
        }
        report.batches += 1;
        report.events += entry.batch.events.len() as u64;
        report.transfer_records += effects.transfers.len() as u64;
        previous_hash = entry.hash;
        Ok(())
    })?;

    let head = store.head()?;
    if head.sequence != report.batches || (report.batches > 0 && head.hash != previous_hash) {
        let problem = format!("head (batch {}) does not match the log (batch {})", head.sequence, report.batches);
        note(&mut report, problem);
    }
    compare_accounts(store, &state, &mut report)?;
    compare_open_pending(store, &state, &mut report)?;
    let stored_records = store.transfer_count(true)?;
    if stored_records != report.transfer_records {
        let problem = format!("{stored_records} transfer records stored, replay recorded {}", report.transfer_records);
        note(&mut report, problem);
    }
    check_zero_sum(state.accounts(), &mut report);
    Ok(report)
}

fn compare_accounts(store: &Store, state: &StateMachine, report: &mut VerifyReport) -> Result<(), LedgerError> {
    let stored = store.all_accounts()?;
    report.accounts = stored.len() as u64;
    if stored.len() != state.account_count() {
        note(report, format!("{} accounts stored, replay created {}", stored.len(), state.account_count()));
    }
    for account in &stored {
        if state.account(account.id) != Some(account) {
            note(report, format!("account {}: stored balances differ from the replay", account.id));
        }
    }
    Ok(())
}

fn compare_open_pending(store: &Store, state: &StateMachine, report: &mut VerifyReport) -> Result<(), LedgerError> {
    let stored = store.open_pending()?;
    report.open_pending = stored.len() as u64;
    if stored.len() != state.open_pending_count() {
        note(report, format!("{} open pending stored, replay has {}", stored.len(), state.open_pending_count()));
    }
    for open in &stored {
        if state.open_pending_transfer(open.transfer.id) != Some(open) {
            note(report, format!("pending transfer {}: stored state differs from the replay", open.transfer.id));
        }
    }
    Ok(())
}

/// Double entry: on each ledger every debit has its credit, posted and pending alike.
pub fn check_zero_sum<'a>(accounts: impl Iterator<Item = &'a Account>, report: &mut VerifyReport) {
    for account in accounts {
        let totals = report.totals.entry(account.ledger).or_default();
        totals.debits_posted.add(account.debits_posted);
        totals.credits_posted.add(account.credits_posted);
        totals.debits_pending.add(account.debits_pending);
        totals.credits_pending.add(account.credits_pending);
    }
    let unbalanced: Vec<u32> = report
        .totals
        .iter()
        .filter(|(_, totals)| {
            totals.debits_posted != totals.credits_posted || totals.debits_pending != totals.credits_pending
        })
        .map(|(ledger, _)| *ledger)
        .collect();
    for ledger in unbalanced {
        note(report, format!("ledger {ledger}: debits and credits do not net to zero"));
    }
}
