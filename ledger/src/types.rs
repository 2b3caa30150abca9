//! The ledger's records: accounts, transfers and their flags.
//!
//! Field layout follows TigerBeetle's: client-chosen `u128` ids, amounts as integers in minor units,
//! one `ledger` (currency) per account, and separate pending and posted balances. Amounts and balances
//! are `u128` so that a balance that accumulates for decades cannot overflow before the heat death of
//! the sun; overflow is still checked on every change (result codes `overflows_*`).

/// Ids 0 and `u128::MAX` are reserved: 0 means "none" in optional id fields (`pending_id`) and
/// `u128::MAX` is kept free as a sentinel for range scans.
pub fn id_is_reserved(id: u128) -> bool {
    id == 0 || id == u128::MAX
}

/// Account flags (bit set). Unknown bits are rejected so that a new flag can be given meaning later
/// without an old client silently setting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccountFlags(pub u16);

impl AccountFlags {
    /// Debits (pending + posted) may not exceed posted credits plus the account's `debit_limit`.
    /// A participant's position account carries this flag; `debit_limit` is its net debit cap.
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 0;
    /// Credits (pending + posted) may not exceed posted debits.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 1;
    /// The account's net position stays within what a signed 64-bit integer holds: its credits
    /// (posted + pending) beyond its posted debits, and its debits (posted + pending) beyond its
    /// posted credits, each at most `i64::MAX`. A transfer past it fails with `OverflowsCredits`
    /// or `OverflowsDebits`. For accounts whose balances an API reports as int64 (the switch's
    /// participants): without it, a balance past 2^63 - 1 would be reported clamped, a lie.
    pub const BALANCES_WITHIN_I64: u16 = 1 << 2;
    /// Every bit with a meaning; all others must be zero.
    pub const KNOWN: u16 =
        Self::DEBITS_MUST_NOT_EXCEED_CREDITS | Self::CREDITS_MUST_NOT_EXCEED_DEBITS | Self::BALANCES_WITHIN_I64;

    pub fn contains(self, bit: u16) -> bool {
        self.0 & bit == bit
    }
}

/// Transfer flags (bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransferFlags(pub u16);

impl TransferFlags {
    /// This event and the next one in the same submission succeed or fail together.
    pub const LINKED: u16 = 1 << 0;
    /// Reserve the amount (pending balances) until posted, voided or expired.
    pub const PENDING: u16 = 1 << 1;
    /// Post (all or part of) the pending transfer named by `pending_id`.
    pub const POST_PENDING: u16 = 1 << 2;
    /// Void the pending transfer named by `pending_id`, releasing its reservation.
    pub const VOID_PENDING: u16 = 1 << 3;
    pub const KNOWN: u16 = Self::LINKED | Self::PENDING | Self::POST_PENDING | Self::VOID_PENDING;

    pub fn contains(self, bit: u16) -> bool {
        self.0 & bit == bit
    }
    pub fn linked(self) -> bool {
        self.contains(Self::LINKED)
    }
    pub fn pending(self) -> bool {
        self.contains(Self::PENDING)
    }
    pub fn post_pending(self) -> bool {
        self.contains(Self::POST_PENDING)
    }
    pub fn void_pending(self) -> bool {
        self.contains(Self::VOID_PENDING)
    }
    /// Post or void: the transfer resolves an earlier pending transfer.
    pub fn resolves_pending(self) -> bool {
        self.post_pending() || self.void_pending()
    }
}

/// An account and its balances. Balances are changed only by transfers; `debit_limit` only by a
/// recorded `SetDebitLimit` event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub id: u128,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    /// How far debits may exceed posted credits when `DEBITS_MUST_NOT_EXCEED_CREDITS` is set
    /// (a participant's net debit cap). Must be 0 without that flag.
    pub debit_limit: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// The currency; transfers only move value between accounts of the same ledger.
    pub ledger: u32,
    /// What the account is for (chart of accounts), chosen by the user; never zero.
    pub code: u16,
    pub flags: AccountFlags,
    /// Assigned by the sequencer when the account is created (nanoseconds, unique, increasing).
    pub timestamp: u64,
}

impl Account {
    /// Net position: credits posted minus debits posted (positive means the ledger owes the owner).
    pub fn net_posted(&self) -> i128 {
        // Wrapping here is impossible in practice (both are u128 sums of u128 amounts that were
        // checked for overflow), but a report must never panic: saturate instead.
        let credits = i128::try_from(self.credits_posted).unwrap_or(i128::MAX);
        let debits = i128::try_from(self.debits_posted).unwrap_or(i128::MAX);
        credits.saturating_sub(debits)
    }
}

/// A transfer of `amount` from `debit_account_id` to `credit_account_id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Chosen by the client; it is the idempotency key.
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    /// For post/void: the pending transfer resolved. Zero otherwise.
    pub pending_id: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// For pending transfers: seconds until the reservation expires; 0 means never.
    pub timeout: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: TransferFlags,
    /// Assigned by the sequencer (nanoseconds, unique, increasing); clients leave it zero.
    pub timestamp: u64,
}

/// What became of a pending transfer. Recorded once; a pending transfer is resolved at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingStatus {
    Pending,
    Posted,
    Voided,
    Expired,
}

impl PendingStatus {
    pub fn code(self) -> u8 {
        match self {
            PendingStatus::Pending => 0,
            PendingStatus::Posted => 1,
            PendingStatus::Voided => 2,
            PendingStatus::Expired => 3,
        }
    }
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(PendingStatus::Pending),
            1 => Some(PendingStatus::Posted),
            2 => Some(PendingStatus::Voided),
            3 => Some(PendingStatus::Expired),
            _ => None,
        }
    }
}

/// A ledger-wide sum wide enough never to overflow: 256 bits as (high, low) `u128` halves.
/// Used by the zero-sum checks, which add up every account of a ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WideSum {
    pub high: u128,
    pub low: u128,
}

impl WideSum {
    pub fn add(&mut self, value: u128) {
        let (low, carried) = self.low.overflowing_add(value);
        self.low = low;
        if carried {
            // 2^128 carries fit in the high half for any number of accounts a machine can hold.
            self.high = self.high.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ids() {
        assert!(id_is_reserved(0));
        assert!(id_is_reserved(u128::MAX));
        assert!(!id_is_reserved(1));
    }

    #[test]
    fn wide_sum_carries() {
        let mut sum = WideSum::default();
        sum.add(u128::MAX);
        sum.add(2);
        assert_eq!(sum, WideSum { high: 1, low: 1 });
    }

    #[test]
    fn pending_status_codes_round_trip() {
        for status in [PendingStatus::Pending, PendingStatus::Posted, PendingStatus::Voided, PendingStatus::Expired] {
            assert_eq!(PendingStatus::from_code(status.code()), Some(status));
        }
        assert_eq!(PendingStatus::from_code(9), None);
    }
}
