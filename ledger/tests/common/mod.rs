//! Shared test harness: a real ledger in a temporary directory, driven by a manual clock, with
//! helpers that check the money invariants after every test.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use ledger::{
    Account, AccountFlags, Event, Ledger, LedgerConfig, ManualClock, ResultCode, Transfer, TransferFlags,
    TransferRecord,
};

pub const LEDGER: u32 = 986;
pub const START: u64 = 1_700_000_000_000_000_000;

pub struct TestLedger {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub config: LedgerConfig,
    ledger: Option<Ledger>,
}

impl TestLedger {
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    pub fn with_config(adjust: impl FnOnce(&mut LedgerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = LedgerConfig::new(dir.path().join("ledger"));
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(START));
        let ledger = Ledger::open(config.clone(), Arc::clone(&clock)).expect("open ledger");
        TestLedger { dir, clock, config, ledger: Some(ledger) }
    }

    pub fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().expect("ledger is open")
    }

    pub fn execute(&self, events: Vec<Event>) -> Vec<ResultCode> {
        self.ledger().execute(events).expect("submission commits").to_vec()
    }

    pub fn one(&self, event: Event) -> ResultCode {
        self.execute(vec![event])[0]
    }

    pub fn account(&self, id: u128) -> Account {
        self.ledger().lookup_accounts(&[id]).expect("lookup")[0].expect("account exists")
    }

    pub fn transfer(&self, id: u128) -> Option<TransferRecord> {
        self.ledger().lookup_transfers(&[id]).expect("lookup")[0]
    }

    pub fn close(&mut self) {
        if let Some(ledger) = self.ledger.take() {
            ledger.close();
        }
    }

    /// Closes, audits (replay, chain, zero-sum) and reopens: the state after must equal before.
    pub fn reopen_and_verify(&mut self) {
        let accounts_before = self.all_accounts();
        self.close();
        let files_before = files(&self.config.path);
        let store = ledger::Store::open_read_only(&self.config.path, &self.config.store).expect("open store");
        let report = ledger::verify(&store, 1 << 16).expect("verify runs");
        assert!(report.is_sound(), "audit found problems: {:?}", report.problems);
        drop(store);
        assert_eq!(files(&self.config.path), files_before, "the audit changed the directory it audited");
        let ledger = Ledger::open(self.config.clone(), Arc::clone(&self.clock)).expect("reopen ledger");
        self.ledger = Some(ledger);
        assert_eq!(self.all_accounts(), accounts_before, "reopening changed balances");
        assert_zero_sum(&self.all_accounts());
    }

    pub fn all_accounts(&self) -> Vec<Account> {
        self.ledger().store().expect("the store").all_accounts().expect("scan accounts")
    }
}

impl Drop for TestLedger {
    fn drop(&mut self) {
        self.close();
    }
}

/// Every debit has its credit: per ledger, posted and pending sums match.
pub fn assert_zero_sum(accounts: &[Account]) {
    let mut report = ledger::VerifyReport::default();
    ledger::verify::check_zero_sum(accounts.iter(), &mut report);
    assert!(report.is_sound(), "{:?}", report.problems);
}

pub fn account(id: u128) -> Account {
    Account { id, ledger: LEDGER, code: 10, ..Account::default() }
}

/// A participant-style account: may go net negative down to `debit_limit`.
pub fn capped_account(id: u128, debit_limit: u128) -> Account {
    Account { flags: AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS), debit_limit, ..account(id) }
}

pub fn create(account: Account) -> Event {
    Event::CreateAccount(account)
}

pub fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: LEDGER,
        code: 1,
        ..Transfer::default()
    }
}

pub fn pending(id: u128, debit: u128, credit: u128, amount: u128, timeout: u32) -> Transfer {
    Transfer { flags: TransferFlags(TransferFlags::PENDING), timeout, ..transfer(id, debit, credit, amount) }
}

pub fn post(id: u128, pending_id: u128, amount: u128) -> Transfer {
    Transfer { id, pending_id, amount, flags: TransferFlags(TransferFlags::POST_PENDING), ..Transfer::default() }
}

pub fn void(id: u128, pending_id: u128) -> Transfer {
    Transfer { id, pending_id, flags: TransferFlags(TransferFlags::VOID_PENDING), ..Transfer::default() }
}

pub fn linked(transfer: Transfer) -> Transfer {
    Transfer { flags: TransferFlags(transfer.flags.0 | TransferFlags::LINKED), ..transfer }
}

pub fn send(transfer: Transfer) -> Event {
    Event::CreateTransfer(transfer)
}

/// Every file of a directory with its length, sorted by name.
fn files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("list ledger directory")
        .map(|entry| {
            let entry = entry.expect("directory entry");
            (entry.file_name().to_string_lossy().into_owned(), entry.metadata().expect("metadata").len())
        })
        .collect();
    files.sort();
    files
}
