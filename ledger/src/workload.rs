//! Synthetic workloads for benchmarks and crash tests: accounts, and transfers drawn uniformly or
//! with a hot set (80% of transfers debit the top 1% of accounts, as a few big banks do).
//!
//! Transfer `i` of a run is a pure function of (seed, i), and its id encodes both, so a checker
//! can recompute every field of an acknowledged transfer from its id alone.

use crate::event::Event;
use crate::types::{Account, AccountFlags, Transfer, TransferFlags};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skew {
    Uniform,
    /// `share` of transfers debit one of the first `fraction` of the accounts.
    Hot {
        fraction: f64,
        share: f64,
    },
}

impl Skew {
    /// 80% of transfers from the top 1% of accounts.
    pub const HOT: Skew = Skew::Hot { fraction: 0.01, share: 0.8 };
}

#[derive(Clone, Debug)]
pub struct Workload {
    /// Accounts are ids `1..=accounts`.
    pub accounts: u64,
    pub ledger: u32,
    pub skew: Skew,
    /// Distinguishes runs against the same ledger; the high 64 bits of every transfer id.
    pub seed: u64,
}

/// A fast, well-mixed hash of a 64-bit value (splitmix64's finaliser).
fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

fn unit(value: u64) -> f64 {
    (value >> 11) as f64 / (1u64 << 53) as f64
}

impl Workload {
    pub fn new(accounts: u64, skew: Skew, seed: u64) -> Self {
        assert!(accounts >= 2, "a transfer needs two accounts");
        assert!(seed != 0 && seed != u64::MAX, "seed 0 and u64::MAX would give reserved ids");
        Workload { accounts, ledger: 1, skew, seed }
    }

    /// Events creating every account. Each may go net negative by a large cap, so limits are
    /// checked on every transfer (as for participants) without refusing the workload.
    pub fn account_events(&self) -> Vec<Event> {
        (1..=self.accounts)
            .map(|id| {
                Event::CreateAccount(Account {
                    id: u128::from(id),
                    ledger: self.ledger,
                    code: 1,
                    flags: AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
                    debit_limit: u128::from(u64::MAX),
                    ..Account::default()
                })
            })
            .collect()
    }

    /// The id of transfer `index` of this run.
    pub fn transfer_id(&self, index: u64) -> u128 {
        (u128::from(self.seed) << 64) | u128::from(index)
    }

    /// Transfer `index` of this run.
    pub fn transfer(&self, index: u64) -> Transfer {
        let random = mix(self.seed ^ mix(index));
        let debit = match self.skew {
            Skew::Uniform => random % self.accounts,
            Skew::Hot { fraction, share } => {
                let hot = ((self.accounts as f64 * fraction) as u64).max(1);
                if unit(mix(random)) < share {
                    random % hot
                } else {
                    random % self.accounts
                }
            }
        };
        let offset = 1 + mix(random ^ 1) % (self.accounts - 1);
        let credit = (debit + offset) % self.accounts;
        Transfer {
            id: self.transfer_id(index),
            debit_account_id: u128::from(debit + 1),
            credit_account_id: u128::from(credit + 1),
            amount: u128::from(1 + mix(random ^ 2) % 100_000),
            ledger: self.ledger,
            code: 1,
            flags: TransferFlags::default(),
            ..Transfer::default()
        }
    }

    /// Recomputes the transfer an id of this run stands for, or `None` if the id is not one.
    pub fn transfer_for_id(&self, id: u128) -> Option<Transfer> {
        ((id >> 64) as u64 == self.seed).then(|| self.transfer(id as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_valid_and_recomputable() {
        let workload = Workload::new(10, Skew::HOT, 7);
        for index in 0..1_000 {
            let transfer = workload.transfer(index);
            assert_ne!(transfer.debit_account_id, transfer.credit_account_id);
            assert!((1..=10).contains(&transfer.debit_account_id));
            assert!((1..=10).contains(&transfer.credit_account_id));
            assert!(transfer.amount > 0);
            assert_eq!(workload.transfer_for_id(transfer.id), Some(transfer));
        }
        assert_eq!(Workload::new(10, Skew::HOT, 8).transfer_for_id(workload.transfer_id(1)), None);
    }

    #[test]
    fn hot_skew_concentrates_debits() {
        let workload = Workload::new(1_000, Skew::HOT, 3);
        let hot = (0..10_000).filter(|index| workload.transfer(*index).debit_account_id <= 10).count();
        // 80% by construction plus the uniform part's 1%: far above uniform's 1%.
        assert!(hot > 7_000, "only {hot} of 10000 debits hit the hot set");
        let uniform = Workload::new(1_000, Skew::Uniform, 3);
        let cold = (0..10_000).filter(|index| uniform.transfer(*index).debit_account_id <= 10).count();
        assert!(cold < 500, "{cold} of 10000 uniform debits hit the first 1%");
    }
}
