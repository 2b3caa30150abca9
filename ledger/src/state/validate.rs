//! Checks that depend on the event alone (precedence group 2). They read no state, so their
//! failures are not recorded: a retry of the same event always gets the same answer.

use crate::event::{Record, RECORD_KEY_BYTES_MAX, RECORD_TABLE_RESERVED, RECORD_VALUE_BYTES_MAX};
use crate::result::ResultCode;
use crate::types::{id_is_reserved, Account, AccountFlags, Transfer, TransferFlags};

/// Validates a transfer on its own. Order is the documented precedence.
pub fn transfer(transfer: &Transfer) -> Result<(), ResultCode> {
    let flags = transfer.flags;
    if transfer.timestamp != 0 {
        return Err(ResultCode::TimestampMustBeZero);
    }
    if id_is_reserved(transfer.id) {
        return Err(ResultCode::IdReserved);
    }
    if flags.0 & !TransferFlags::KNOWN != 0 {
        return Err(ResultCode::FlagsUnknown);
    }
    let kinds = [flags.pending(), flags.post_pending(), flags.void_pending()];
    if kinds.iter().filter(|set| **set).count() > 1 {
        return Err(ResultCode::FlagsAreMutuallyExclusive);
    }
    if flags.resolves_pending() {
        resolving_transfer(transfer)
    } else {
        new_transfer(transfer)
    }
}

/// A post or void: account ids, ledger, code and amount may be zero (taken from the pending
/// transfer), but must not be reserved or contradictory.
fn resolving_transfer(transfer: &Transfer) -> Result<(), ResultCode> {
    if transfer.pending_id == 0 {
        return Err(ResultCode::PendingIdMustNotBeZero);
    }
    if transfer.pending_id == u128::MAX {
        return Err(ResultCode::PendingIdReserved);
    }
    if transfer.pending_id == transfer.id {
        return Err(ResultCode::PendingIdMustBeDifferent);
    }
    if transfer.timeout != 0 {
        return Err(ResultCode::TimeoutReservedForPendingTransfer);
    }
    if transfer.debit_account_id == u128::MAX {
        return Err(ResultCode::DebitAccountIdReserved);
    }
    if transfer.credit_account_id == u128::MAX {
        return Err(ResultCode::CreditAccountIdReserved);
    }
    if transfer.debit_account_id != 0 && transfer.debit_account_id == transfer.credit_account_id {
        return Err(ResultCode::AccountsMustBeDifferent);
    }
    Ok(())
}

/// A single-phase or pending transfer: every field must be present.
fn new_transfer(transfer: &Transfer) -> Result<(), ResultCode> {
    if id_is_reserved(transfer.debit_account_id) {
        return Err(ResultCode::DebitAccountIdReserved);
    }
    if id_is_reserved(transfer.credit_account_id) {
        return Err(ResultCode::CreditAccountIdReserved);
    }
    if transfer.debit_account_id == transfer.credit_account_id {
        return Err(ResultCode::AccountsMustBeDifferent);
    }
    if transfer.pending_id != 0 {
        return Err(ResultCode::PendingIdMustBeZero);
    }
    if !transfer.flags.pending() && transfer.timeout != 0 {
        return Err(ResultCode::TimeoutReservedForPendingTransfer);
    }
    if transfer.ledger == 0 {
        return Err(ResultCode::LedgerMustNotBeZero);
    }
    if transfer.code == 0 {
        return Err(ResultCode::CodeMustNotBeZero);
    }
    if transfer.amount == 0 {
        return Err(ResultCode::AmountMustNotBeZero);
    }
    Ok(())
}

/// Validates a new account on its own. Order is the documented precedence.
pub fn account(account: &Account) -> Result<(), ResultCode> {
    let flags = account.flags;
    if account.timestamp != 0 {
        return Err(ResultCode::TimestampMustBeZero);
    }
    if id_is_reserved(account.id) {
        return Err(ResultCode::IdReserved);
    }
    if flags.0 & !AccountFlags::KNOWN != 0 {
        return Err(ResultCode::FlagsUnknown);
    }
    if flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
        && flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
    {
        return Err(ResultCode::FlagsAreMutuallyExclusive);
    }
    let balances = [account.debits_pending, account.debits_posted, account.credits_pending, account.credits_posted];
    if balances.iter().any(|balance| *balance != 0) {
        return Err(ResultCode::BalancesMustBeZero);
    }
    if account.ledger == 0 {
        return Err(ResultCode::LedgerMustNotBeZero);
    }
    if account.code == 0 {
        return Err(ResultCode::CodeMustNotBeZero);
    }
    if account.debit_limit != 0 && !flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
        return Err(ResultCode::DebitLimitRequiresFlag);
    }
    Ok(())
}

/// For a retry of an existing transfer id: the first field that differs, in catalogue order.
/// Fields a post or void may leave zero (inherit from the pending transfer) match anything.
pub fn transfer_difference(existing: &Transfer, retry: &Transfer) -> Option<ResultCode> {
    let inherits = retry.flags.resolves_pending();
    let differs =
        |retry_value: u128, existing_value: u128| retry_value != existing_value && !(inherits && retry_value == 0);
    if existing.flags != retry.flags {
        return Some(ResultCode::ExistsWithDifferentFlags);
    }
    if existing.pending_id != retry.pending_id {
        return Some(ResultCode::ExistsWithDifferentPendingId);
    }
    if existing.timeout != retry.timeout {
        return Some(ResultCode::ExistsWithDifferentTimeout);
    }
    if differs(retry.debit_account_id, existing.debit_account_id) {
        return Some(ResultCode::ExistsWithDifferentDebitAccountId);
    }
    if differs(retry.credit_account_id, existing.credit_account_id) {
        return Some(ResultCode::ExistsWithDifferentCreditAccountId);
    }
    if differs(retry.amount, existing.amount) {
        return Some(ResultCode::ExistsWithDifferentAmount);
    }
    if existing.user_data_128 != retry.user_data_128 {
        return Some(ResultCode::ExistsWithDifferentUserData128);
    }
    if existing.user_data_64 != retry.user_data_64 {
        return Some(ResultCode::ExistsWithDifferentUserData64);
    }
    if existing.user_data_32 != retry.user_data_32 {
        return Some(ResultCode::ExistsWithDifferentUserData32);
    }
    if differs(retry.ledger.into(), existing.ledger.into()) {
        return Some(ResultCode::ExistsWithDifferentLedger);
    }
    if differs(retry.code.into(), existing.code.into()) {
        return Some(ResultCode::ExistsWithDifferentCode);
    }
    None
}

/// For a retry of an existing account id: the first field that differs.
pub fn account_difference(existing: &Account, retry: &Account) -> Option<ResultCode> {
    if existing.flags != retry.flags {
        return Some(ResultCode::ExistsWithDifferentFlags);
    }
    if existing.debit_limit != retry.debit_limit {
        return Some(ResultCode::ExistsWithDifferentDebitLimit);
    }
    if existing.user_data_128 != retry.user_data_128 {
        return Some(ResultCode::ExistsWithDifferentUserData128);
    }
    if existing.user_data_64 != retry.user_data_64 {
        return Some(ResultCode::ExistsWithDifferentUserData64);
    }
    if existing.user_data_32 != retry.user_data_32 {
        return Some(ResultCode::ExistsWithDifferentUserData32);
    }
    if existing.ledger != retry.ledger {
        return Some(ResultCode::ExistsWithDifferentLedger);
    }
    if existing.code != retry.code {
        return Some(ResultCode::ExistsWithDifferentCode);
    }
    None
}

/// Validates a service record.
pub fn record(record: &Record) -> Result<(), ResultCode> {
    if record.table == RECORD_TABLE_RESERVED || record.key.is_empty() || record.key.len() > RECORD_KEY_BYTES_MAX {
        return Err(ResultCode::RecordKeyInvalid);
    }
    if record.sequenced && record.value.is_empty() {
        // An appended entry is removed later by its full key, never appended empty.
        return Err(ResultCode::RecordValueTooLarge);
    }
    if record.value.len() > RECORD_VALUE_BYTES_MAX {
        return Err(ResultCode::RecordValueTooLarge);
    }
    Ok(())
}
