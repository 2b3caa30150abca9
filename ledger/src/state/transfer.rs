//! Transfer rules: single-phase, pending (reserve), post (full or partial) and void.
//!
//! Every function here decides first and changes state last: a transfer that fails has changed
//! nothing, so only linked chains need an undo log.

use super::{validate, Context, Effects, Known, OpenPending, Prefetched, StateMachine, Undo};
use crate::codec::{PendingResolution, StoredTransfer};
use crate::result::ResultCode;
use crate::types::{Account, AccountFlags, PendingStatus, Transfer};

const NANOSECONDS_PER_SECOND: u64 = 1_000_000_000;

/// A transfer's code, and whether it was decided now or answered from an existing record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TransferOutcome {
    Evaluated(ResultCode),
    /// The id exists: `exists`, `exists_with_different_*`, or the original recorded failure.
    Retry(ResultCode),
}

impl TransferOutcome {
    pub(super) fn code(self) -> ResultCode {
        match self {
            TransferOutcome::Evaluated(code) | TransferOutcome::Retry(code) => code,
        }
    }
    pub(super) fn is_retry(self) -> bool {
        matches!(self, TransferOutcome::Retry(_))
    }
    pub(super) fn is_recorded_failure(self) -> bool {
        self.code().is_recorded_failure()
    }
}

impl StateMachine {
    pub(super) fn create_transfer(
        &mut self,
        transfer: &Transfer,
        context: Context,
        prefetched: &Prefetched,
        effects: &mut Effects,
    ) -> TransferOutcome {
        if let Err(code) = validate::transfer(transfer) {
            return TransferOutcome::Evaluated(code);
        }
        if let Some(existing) = self.find(transfer.id, prefetched) {
            return TransferOutcome::Retry(match validate::transfer_difference(&existing.stored.transfer, transfer) {
                Some(difference) => difference,
                None if existing.stored.result == ResultCode::Ok => ResultCode::Exists,
                None => existing.stored.result,
            });
        }
        let transfer = Transfer { timestamp: context.timestamp, ..*transfer };
        TransferOutcome::Evaluated(if transfer.flags.resolves_pending() {
            self.resolve_pending(&transfer, context, prefetched, effects)
        } else {
            self.create_new(&transfer, context, effects)
        })
    }

    /// A single-phase or pending transfer.
    fn create_new(&mut self, transfer: &Transfer, context: Context, effects: &mut Effects) -> ResultCode {
        let (debit, credit) = match self.transfer_accounts(transfer) {
            Ok(accounts) => accounts,
            Err(code) => return code,
        };
        let (debit, credit) = match balances_after(&debit, &credit, transfer) {
            Ok(accounts) => accounts,
            Err(code) => return code,
        };
        let expires_at = match expiry(transfer) {
            Ok(expires_at) => expires_at,
            Err(code) => return code,
        };
        if let Err(code) = check_limits(&debit, &credit) {
            return code;
        }

        self.replace_account(debit, context);
        self.replace_account(credit, context);
        let stored = StoredTransfer { transfer: *transfer, result: ResultCode::Ok };
        effects.transfers.push(stored);
        self.remember(Known { stored, resolution: None }, context);
        if transfer.flags.pending() {
            let open = OpenPending { transfer: *transfer, expires_at };
            self.open_pending(open);
            effects.pending_opened.push(open);
            if context.chained {
                self.scratch.undo.push(Undo::PendingOpened(transfer.id));
            }
        }
        ResultCode::Ok
    }

    /// Looks up both accounts of a new transfer and checks their ledgers.
    fn transfer_accounts(&self, transfer: &Transfer) -> Result<(Account, Account), ResultCode> {
        let debit = self.accounts.get(&transfer.debit_account_id).ok_or(ResultCode::DebitAccountNotFound)?;
        let credit = self.accounts.get(&transfer.credit_account_id).ok_or(ResultCode::CreditAccountNotFound)?;
        if debit.ledger != credit.ledger {
            return Err(ResultCode::AccountsMustHaveTheSameLedger);
        }
        if transfer.ledger != debit.ledger {
            return Err(ResultCode::TransferMustHaveTheSameLedgerAsAccounts);
        }
        Ok((*debit, *credit))
    }

    /// Posts or voids an open pending transfer.
    fn resolve_pending(
        &mut self,
        transfer: &Transfer,
        context: Context,
        prefetched: &Prefetched,
        effects: &mut Effects,
    ) -> ResultCode {
        let pending = match self.pending_to_resolve(transfer, prefetched) {
            Ok(pending) => pending,
            Err(code) => return code,
        };
        let posting = transfer.flags.post_pending();
        let amount = if posting && transfer.amount != 0 { transfer.amount } else { pending.transfer.amount };
        let resolved = Transfer {
            debit_account_id: pending.transfer.debit_account_id,
            credit_account_id: pending.transfer.credit_account_id,
            ledger: pending.transfer.ledger,
            code: pending.transfer.code,
            amount,
            ..*transfer
        };

        let (Some(debit), Some(credit)) = (
            self.accounts.get(&resolved.debit_account_id).copied(),
            self.accounts.get(&resolved.credit_account_id).copied(),
        ) else {
            // Accounts are never deleted, so a pending transfer's accounts always exist.
            unreachable!("accounts of an open pending transfer exist");
        };
        let released = released_balances(&debit, &credit, &pending.transfer);
        let (debit, credit) = if posting {
            match posted_balances(&released.0, &released.1, amount) {
                Ok(accounts) => accounts,
                Err(code) => return code,
            }
        } else {
            released
        };

        self.replace_account(debit, context);
        self.replace_account(credit, context);
        self.close_pending(pending, context);
        let status = if posting { PendingStatus::Posted } else { PendingStatus::Voided };
        let resolution = PendingResolution { status, timestamp: context.timestamp, resolved_by: transfer.id };
        effects.resolutions.push((pending.transfer.id, resolution));
        let pending_stored = StoredTransfer { transfer: pending.transfer, result: ResultCode::Ok };
        self.remember(Known { stored: pending_stored, resolution: Some(resolution) }, context);
        let stored = StoredTransfer { transfer: resolved, result: ResultCode::Ok };
        effects.transfers.push(stored);
        self.remember(Known { stored, resolution: None }, context);
        ResultCode::Ok
    }

    /// Finds the open pending transfer a post or void names, and checks it in the documented
    /// order: it exists and is pending; the named fields match; it is unresolved and unexpired
    /// (whether or not the expiry sweep has run yet); the amount fits.
    fn pending_to_resolve(&self, transfer: &Transfer, prefetched: &Prefetched) -> Result<OpenPending, ResultCode> {
        let open = self.pending.get(&transfer.pending_id).copied();
        let (pending, status) = match open {
            Some(open) => {
                // Due but not yet swept (the sweep runs at the start of each batch) is expired.
                let due = open.expires_at != 0 && open.expires_at <= transfer.timestamp;
                (open.transfer, if due { Some(PendingStatus::Expired) } else { None })
            }
            None => self.resolved_pending(transfer.pending_id, prefetched)?,
        };
        if transfer.debit_account_id != 0 && transfer.debit_account_id != pending.debit_account_id {
            return Err(ResultCode::PendingTransferHasDifferentDebitAccountId);
        }
        if transfer.credit_account_id != 0 && transfer.credit_account_id != pending.credit_account_id {
            return Err(ResultCode::PendingTransferHasDifferentCreditAccountId);
        }
        if transfer.ledger != 0 && transfer.ledger != pending.ledger {
            return Err(ResultCode::PendingTransferHasDifferentLedger);
        }
        if transfer.code != 0 && transfer.code != pending.code {
            return Err(ResultCode::PendingTransferHasDifferentCode);
        }
        match status {
            Some(PendingStatus::Posted) => return Err(ResultCode::PendingTransferAlreadyPosted),
            Some(PendingStatus::Voided) => return Err(ResultCode::PendingTransferAlreadyVoided),
            Some(PendingStatus::Expired) => return Err(ResultCode::PendingTransferExpired),
            Some(PendingStatus::Pending) | None => {}
        }
        if transfer.flags.post_pending() && transfer.amount > pending.amount {
            return Err(ResultCode::ExceedsPendingTransferAmount);
        }
        if transfer.flags.void_pending() && transfer.amount != 0 && transfer.amount != pending.amount {
            return Err(ResultCode::PendingTransferHasDifferentAmount);
        }
        // Only an open transfer has no status; a resolved one returned above.
        open.ok_or(ResultCode::PendingTransferNotFound)
    }

    /// A pending transfer that is not open: it and how it was resolved, or why it is not one.
    fn resolved_pending(
        &self,
        pending_id: u128,
        prefetched: &Prefetched,
    ) -> Result<(Transfer, Option<PendingStatus>), ResultCode> {
        let Some(known) = self.find(pending_id, prefetched) else {
            return Err(ResultCode::PendingTransferNotFound);
        };
        if known.stored.result != ResultCode::Ok {
            // A recorded failure is not a transfer that exists.
            return Err(ResultCode::PendingTransferNotFound);
        }
        if !known.stored.transfer.flags.pending() {
            return Err(ResultCode::PendingTransferNotPending);
        }
        match known.resolution.map(|resolution| resolution.status) {
            // A successful pending transfer with no resolution is open, and was looked up first.
            Some(PendingStatus::Pending) | None => Err(ResultCode::PendingTransferNotFound),
            status => Ok((known.stored.transfer, status)),
        }
    }

    fn close_pending(&mut self, open: OpenPending, context: Context) {
        self.pending.remove(&open.transfer.id);
        if open.expires_at != 0 {
            self.expiries.remove(&(open.expires_at, open.transfer.id));
        }
        if context.chained {
            self.scratch.undo.push(Undo::PendingClosed(open));
        }
    }

    /// Gives back a pending transfer's reservation (expiry; void goes through `resolve_pending`).
    pub(super) fn release_reservation(&mut self, pending: &Transfer, context: Context) {
        let debit = self.accounts.get(&pending.debit_account_id).copied();
        let credit = self.accounts.get(&pending.credit_account_id).copied();
        let (Some(debit), Some(credit)) = (debit, credit) else {
            unreachable!("accounts of an open pending transfer exist");
        };
        let (debit, credit) = released_balances(&debit, &credit, pending);
        self.replace_account(debit, context);
        self.replace_account(credit, context);
    }
}

/// Balances after a new transfer, or the first overflow, in catalogue precedence.
fn balances_after(debit: &Account, credit: &Account, transfer: &Transfer) -> Result<(Account, Account), ResultCode> {
    let amount = transfer.amount;
    let (mut debit, mut credit) = (*debit, *credit);
    if transfer.flags.pending() {
        debit.debits_pending = debit.debits_pending.checked_add(amount).ok_or(ResultCode::OverflowsDebitsPending)?;
        credit.credits_pending =
            credit.credits_pending.checked_add(amount).ok_or(ResultCode::OverflowsCreditsPending)?;
    } else {
        debit.debits_posted = debit.debits_posted.checked_add(amount).ok_or(ResultCode::OverflowsDebitsPosted)?;
        credit.credits_posted = credit.credits_posted.checked_add(amount).ok_or(ResultCode::OverflowsCreditsPosted)?;
    }
    let debits = debit.debits_pending.checked_add(debit.debits_posted).ok_or(ResultCode::OverflowsDebits)?;
    let credits = credit.credits_pending.checked_add(credit.credits_posted).ok_or(ResultCode::OverflowsCredits)?;
    // A transfer only adds to the debit side's debits and the credit side's credits, so each
    // side's own direction is the one that can pass the int64 bound.
    let within_i64 =
        |flags: AccountFlags, net: u128| !flags.contains(AccountFlags::BALANCES_WITHIN_I64) || net <= I64_MAX;
    if !within_i64(debit.flags, debits.saturating_sub(debit.credits_posted)) {
        return Err(ResultCode::OverflowsDebits);
    }
    if !within_i64(credit.flags, credits.saturating_sub(credit.debits_posted)) {
        return Err(ResultCode::OverflowsCredits);
    }
    Ok((debit, credit))
}

/// `i64::MAX` as the ledger's amounts (`AccountFlags::BALANCES_WITHIN_I64`).
const I64_MAX: u128 = i64::MAX as u128;

/// When a pending transfer lapses: its timestamp plus its timeout, or 0 for never.
fn expiry(transfer: &Transfer) -> Result<u64, ResultCode> {
    if !transfer.flags.pending() || transfer.timeout == 0 {
        return Ok(0);
    }
    u64::from(transfer.timeout)
        .checked_mul(NANOSECONDS_PER_SECOND)
        .and_then(|timeout| transfer.timestamp.checked_add(timeout))
        .ok_or(ResultCode::OverflowsTimeout)
}

/// The balance limits, on balances that already include the transfer.
fn check_limits(debit: &Account, credit: &Account) -> Result<(), ResultCode> {
    if debit.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
        // Sums cannot overflow: `balances_after` checked pending + posted, and the allowance
        // saturates (a limit near u128::MAX means "no limit").
        let debits = debit.debits_pending + debit.debits_posted;
        if debits > debit.credits_posted.saturating_add(debit.debit_limit) {
            return Err(ResultCode::ExceedsCredits);
        }
    }
    if credit.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) {
        let credits = credit.credits_pending + credit.credits_posted;
        if credits > credit.debits_posted {
            return Err(ResultCode::ExceedsDebits);
        }
    }
    Ok(())
}

/// Balances with a pending transfer's reservation given back.
fn released_balances(debit: &Account, credit: &Account, pending: &Transfer) -> (Account, Account) {
    let (mut debit, mut credit) = (*debit, *credit);
    // Invariant, not input: an open reservation is always part of the pending balances. If it is
    // not, the state is corrupt and stopping (overflow checks are on in release) is right.
    debit.debits_pending -= pending.amount;
    credit.credits_pending -= pending.amount;
    (debit, credit)
}

/// Balances after posting `amount` of a released reservation.
fn posted_balances(debit: &Account, credit: &Account, amount: u128) -> Result<(Account, Account), ResultCode> {
    let (mut debit, mut credit) = (*debit, *credit);
    debit.debits_posted = debit.debits_posted.checked_add(amount).ok_or(ResultCode::OverflowsDebitsPosted)?;
    credit.credits_posted = credit.credits_posted.checked_add(amount).ok_or(ResultCode::OverflowsCreditsPosted)?;
    Ok((debit, credit))
}
