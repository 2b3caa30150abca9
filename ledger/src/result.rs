//! The result-code catalogue: one stable code per outcome of an event.
//!
//! Codes are part of the contract with clients (the switch maps them onto its reason codes) and are
//! recorded in the batch log, so a code's number and meaning never change once published; new codes
//! are only ever appended.
//!
//! # Precedence
//! An event gets exactly one code: the first rule it breaks, checked in this order.
//! 1. Chain structure: `linked_event_failed` (another event of its chain failed),
//!    `linked_event_chain_open` (the submission ends inside a chain).
//! 2. The event alone (no state): reserved ids, unknown or contradictory flags, missing ledger or
//!    code, zero amount, fields that must or must not be set for the transfer's kind.
//! 3. Idempotency: the id already exists. Same fields: `exists` if the original succeeded, or the
//!    original's failure code if it failed; different fields: `exists_with_different_<field>`,
//!    fields compared in the order of the codes below.
//! 4. State: accounts exist and share the transfer's ledger; the pending transfer exists, is
//!    pending, matches, is unresolved and unexpired; the amounts fit (`exceeds_pending_amount`,
//!    overflow); limits hold (`exceeds_credits`, `exceeds_debits`).
//!
//! Failures in group 4 depend on the ledger's state, so they are *recorded* against the id: a
//! retry returns the same failure even if the state has since changed, and an outcome can never
//! flip. Failures in groups 1-3 are not recorded: they depend only on the event (or chain) itself,
//! so a retry gets the same answer anyway.

macro_rules! result_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal, $name:literal; )*) => {
        /// The outcome of one event. See the module documentation for precedence.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ResultCode {
            $( $(#[doc = $doc])* $variant = $code, )*
        }

        impl ResultCode {
            /// Every code, in numeric order (for the catalogue and exhaustive tests).
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$variant,)*];

            /// The stable snake_case name clients see.
            pub fn name(self) -> &'static str {
                match self { $(ResultCode::$variant => $name,)* }
            }

            /// The stable number recorded in the batch log.
            pub fn code(self) -> u8 {
                self as u8
            }

            /// Decodes a recorded number; `None` for a number no release has used.
            pub fn from_code(code: u8) -> Option<Self> {
                match code { $($code => Some(ResultCode::$variant),)* _ => None }
            }
        }
    };
}

result_codes! {
    /// The event was applied.
    Ok = 0, "ok";
    /// Another event in the same linked chain failed; nothing in the chain was applied.
    LinkedEventFailed = 1, "linked_event_failed";
    /// The submission's last event has the `linked` flag: the chain never closes.
    LinkedEventChainOpen = 2, "linked_event_chain_open";
    /// The id is 0 or `u128::MAX`.
    IdReserved = 3, "id_reserved";
    /// A flag bit with no meaning is set.
    FlagsUnknown = 4, "flags_unknown";
    /// Two flags that exclude each other are set (pending/post/void; the two balance limits).
    FlagsAreMutuallyExclusive = 5, "flags_are_mutually_exclusive";
    /// `ledger` is zero.
    LedgerMustNotBeZero = 6, "ledger_must_not_be_zero";
    /// `code` is zero.
    CodeMustNotBeZero = 7, "code_must_not_be_zero";
    /// An account's `timestamp` or a balance was set by the client.
    BalancesMustBeZero = 8, "balances_must_be_zero";
    /// `debit_limit` is set on an account without `debits_must_not_exceed_credits`.
    DebitLimitRequiresFlag = 9, "debit_limit_requires_flag";
    /// `debit_account_id` is 0 or `u128::MAX`.
    DebitAccountIdReserved = 10, "debit_account_id_reserved";
    /// `credit_account_id` is 0 or `u128::MAX`.
    CreditAccountIdReserved = 11, "credit_account_id_reserved";
    /// Debit and credit account are the same.
    AccountsMustBeDifferent = 12, "accounts_must_be_different";
    /// `pending_id` is set on a transfer that neither posts nor voids.
    PendingIdMustBeZero = 13, "pending_id_must_be_zero";
    /// A post or void without `pending_id`.
    PendingIdMustNotBeZero = 14, "pending_id_must_not_be_zero";
    /// `pending_id` is `u128::MAX`.
    PendingIdReserved = 15, "pending_id_reserved";
    /// `pending_id` names the transfer itself.
    PendingIdMustBeDifferent = 16, "pending_id_must_be_different";
    /// `timeout` is set on a transfer that is not pending.
    TimeoutReservedForPendingTransfer = 17, "timeout_reserved_for_pending_transfer";
    /// `amount` is zero on a single-phase or pending transfer.
    AmountMustNotBeZero = 18, "amount_must_not_be_zero";
    /// The client set `timestamp`; the ledger assigns it.
    TimestampMustBeZero = 19, "timestamp_must_be_zero";
    /// The id exists and succeeded with exactly these fields (idempotent retry).
    Exists = 20, "exists";
    /// The id exists with other flags.
    ExistsWithDifferentFlags = 21, "exists_with_different_flags";
    /// The id exists with another `pending_id`.
    ExistsWithDifferentPendingId = 22, "exists_with_different_pending_id";
    /// The id exists with another `timeout`.
    ExistsWithDifferentTimeout = 23, "exists_with_different_timeout";
    /// The id exists with another debit account.
    ExistsWithDifferentDebitAccountId = 24, "exists_with_different_debit_account_id";
    /// The id exists with another credit account.
    ExistsWithDifferentCreditAccountId = 25, "exists_with_different_credit_account_id";
    /// The id exists with another amount.
    ExistsWithDifferentAmount = 26, "exists_with_different_amount";
    /// The id exists with other `user_data_128`.
    ExistsWithDifferentUserData128 = 27, "exists_with_different_user_data_128";
    /// The id exists with other `user_data_64`.
    ExistsWithDifferentUserData64 = 28, "exists_with_different_user_data_64";
    /// The id exists with other `user_data_32`.
    ExistsWithDifferentUserData32 = 29, "exists_with_different_user_data_32";
    /// The id exists with another ledger.
    ExistsWithDifferentLedger = 30, "exists_with_different_ledger";
    /// The id exists with another code.
    ExistsWithDifferentCode = 31, "exists_with_different_code";
    /// The account exists with another `debit_limit`.
    ExistsWithDifferentDebitLimit = 32, "exists_with_different_debit_limit";
    /// No account has the debit account id.
    DebitAccountNotFound = 33, "debit_account_not_found";
    /// No account has the credit account id.
    CreditAccountNotFound = 34, "credit_account_not_found";
    /// The two accounts are on different ledgers (currencies).
    AccountsMustHaveTheSameLedger = 35, "accounts_must_have_the_same_ledger";
    /// The transfer's ledger is not the accounts' ledger.
    TransferMustHaveTheSameLedgerAsAccounts = 36, "transfer_must_have_the_same_ledger_as_accounts";
    /// No transfer has the id in `pending_id`.
    PendingTransferNotFound = 37, "pending_transfer_not_found";
    /// The transfer named by `pending_id` is not a pending transfer.
    PendingTransferNotPending = 38, "pending_transfer_not_pending";
    /// A post or void names a debit account other than the pending transfer's.
    PendingTransferHasDifferentDebitAccountId = 39, "pending_transfer_has_different_debit_account_id";
    /// A post or void names a credit account other than the pending transfer's.
    PendingTransferHasDifferentCreditAccountId = 40, "pending_transfer_has_different_credit_account_id";
    /// A post or void names a ledger other than the pending transfer's.
    PendingTransferHasDifferentLedger = 41, "pending_transfer_has_different_ledger";
    /// A post or void names a code other than the pending transfer's.
    PendingTransferHasDifferentCode = 42, "pending_transfer_has_different_code";
    /// A post asks for more than the pending amount.
    ExceedsPendingTransferAmount = 43, "exceeds_pending_transfer_amount";
    /// A void names an amount other than 0 or the pending amount.
    PendingTransferHasDifferentAmount = 44, "pending_transfer_has_different_amount";
    /// The pending transfer was already posted.
    PendingTransferAlreadyPosted = 45, "pending_transfer_already_posted";
    /// The pending transfer was already voided.
    PendingTransferAlreadyVoided = 46, "pending_transfer_already_voided";
    /// The pending transfer's timeout has passed.
    PendingTransferExpired = 47, "pending_transfer_expired";
    /// The debit account's pending debits would overflow.
    OverflowsDebitsPending = 48, "overflows_debits_pending";
    /// The credit account's pending credits would overflow.
    OverflowsCreditsPending = 49, "overflows_credits_pending";
    /// The debit account's posted debits would overflow.
    OverflowsDebitsPosted = 50, "overflows_debits_posted";
    /// The credit account's posted credits would overflow.
    OverflowsCreditsPosted = 51, "overflows_credits_posted";
    /// The debit account's pending + posted debits would overflow.
    OverflowsDebits = 52, "overflows_debits";
    /// The credit account's pending + posted credits would overflow.
    OverflowsCredits = 53, "overflows_credits";
    /// The expiry time (timestamp + timeout) would overflow.
    OverflowsTimeout = 54, "overflows_timeout";
    /// The debit account's debits would exceed its posted credits plus its debit limit.
    ExceedsCredits = 55, "exceeds_credits";
    /// The credit account's credits would exceed its posted debits.
    ExceedsDebits = 56, "exceeds_debits";
    /// `SetDebitLimit` names an account that does not exist.
    AccountNotFound = 57, "account_not_found";
    /// `SetDebitLimit` on an account without `debits_must_not_exceed_credits`.
    AccountHasNoDebitLimit = 58, "account_has_no_debit_limit";
    /// `SetDebitLimit` would put the account's current debits above the new limit. Suspend the
    /// participant instead of cutting its cap below what it already owes.
    DebitLimitBelowCurrentDebits = 59, "debit_limit_below_current_debits";
    /// A record's table is 0 (the ledger's own), or its key is empty or longer than
    /// `RECORD_KEY_BYTES_MAX`.
    RecordKeyInvalid = 60, "record_key_invalid";
    /// A record's value is longer than `RECORD_VALUE_BYTES_MAX`, or empty on an appended record.
    RecordValueTooLarge = 61, "record_value_too_large";
}

impl ResultCode {
    /// True when the id exists with other content (`exists_with_different_*`): an id reused for
    /// something else, which callers report as a conflict. `Exists` (an identical retry) is not.
    pub fn is_id_conflict(self) -> bool {
        matches!(
            self,
            ResultCode::ExistsWithDifferentFlags
                | ResultCode::ExistsWithDifferentPendingId
                | ResultCode::ExistsWithDifferentTimeout
                | ResultCode::ExistsWithDifferentDebitAccountId
                | ResultCode::ExistsWithDifferentCreditAccountId
                | ResultCode::ExistsWithDifferentAmount
                | ResultCode::ExistsWithDifferentUserData128
                | ResultCode::ExistsWithDifferentUserData64
                | ResultCode::ExistsWithDifferentUserData32
                | ResultCode::ExistsWithDifferentLedger
                | ResultCode::ExistsWithDifferentCode
                | ResultCode::ExistsWithDifferentDebitLimit
        )
    }

    /// True when the code depends on the ledger's state and is therefore recorded against the
    /// transfer id (precedence group 4).
    pub fn is_recorded_failure(self) -> bool {
        matches!(
            self,
            ResultCode::DebitAccountNotFound
                | ResultCode::CreditAccountNotFound
                | ResultCode::AccountsMustHaveTheSameLedger
                | ResultCode::TransferMustHaveTheSameLedgerAsAccounts
                | ResultCode::PendingTransferNotFound
                | ResultCode::PendingTransferNotPending
                | ResultCode::PendingTransferHasDifferentDebitAccountId
                | ResultCode::PendingTransferHasDifferentCreditAccountId
                | ResultCode::PendingTransferHasDifferentLedger
                | ResultCode::PendingTransferHasDifferentCode
                | ResultCode::ExceedsPendingTransferAmount
                | ResultCode::PendingTransferHasDifferentAmount
                | ResultCode::PendingTransferAlreadyPosted
                | ResultCode::PendingTransferAlreadyVoided
                | ResultCode::PendingTransferExpired
                | ResultCode::OverflowsDebitsPending
                | ResultCode::OverflowsCreditsPending
                | ResultCode::OverflowsDebitsPosted
                | ResultCode::OverflowsCreditsPosted
                | ResultCode::OverflowsDebits
                | ResultCode::OverflowsCredits
                | ResultCode::OverflowsTimeout
                | ResultCode::ExceedsCredits
                | ResultCode::ExceedsDebits
        )
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_unique_and_round_trip() {
        for (index, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.code()), index, "{code} is out of order");
            assert_eq!(ResultCode::from_code(code.code()), Some(*code));
        }
        let names: std::collections::HashSet<_> = ResultCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ResultCode::ALL.len());
        assert_eq!(ResultCode::from_code(u8::MAX), None);
    }

    #[test]
    fn id_conflicts_are_exactly_the_exists_with_different_codes() {
        for code in ResultCode::ALL {
            assert_eq!(code.is_id_conflict(), code.name().starts_with("exists_with_different_"), "{code}");
        }
        assert!(!ResultCode::Exists.is_id_conflict());
    }

    #[test]
    fn only_state_failures_are_recorded() {
        assert!(!ResultCode::Ok.is_recorded_failure());
        assert!(!ResultCode::Exists.is_recorded_failure());
        assert!(!ResultCode::AmountMustNotBeZero.is_recorded_failure());
        assert!(ResultCode::ExceedsCredits.is_recorded_failure());
    }
}
