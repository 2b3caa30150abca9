//! Scenario tests for every ledger rule, each ending with an audit (replay, hash chain,
//! zero-sum) and a reopen that must give back the same balances.

mod common;

use common::*;
use ledger::{Event, PendingStatus, ResultCode, Transfer, TransferFlags};

fn two_accounts(ledger: &TestLedger) {
    assert_eq!(ledger.execute(vec![create(account(1)), create(account(2))]), vec![ResultCode::Ok; 2]);
}

#[test]
fn single_phase_transfer_moves_posted_balances() {
    let mut ledger = TestLedger::new();
    two_accounts(&ledger);
    assert_eq!(ledger.one(send(transfer(100, 1, 2, 250))), ResultCode::Ok);
    let (debit, credit) = (ledger.account(1), ledger.account(2));
    assert_eq!((debit.debits_posted, debit.credits_posted), (250, 0));
    assert_eq!((credit.debits_posted, credit.credits_posted), (0, 250));
    let record = ledger.transfer(100).expect("recorded");
    assert_eq!(record.stored.result, ResultCode::Ok);
    assert!(record.stored.transfer.timestamp >= START, "the ledger stamps transfers");
    ledger.reopen_and_verify();
    assert_eq!(ledger.account(1).debits_posted, 250);
}

#[test]
fn retries_return_the_original_outcome_and_never_apply_twice() {
    let mut ledger = TestLedger::new();
    two_accounts(&ledger);
    let original = transfer(100, 1, 2, 250);
    assert_eq!(ledger.one(send(original)), ResultCode::Ok);
    assert_eq!(ledger.one(send(original)), ResultCode::Exists);
    let cases = [
        (Transfer { amount: 251, ..original }, ResultCode::ExistsWithDifferentAmount),
        (Transfer { credit_account_id: 3, ..original }, ResultCode::ExistsWithDifferentCreditAccountId),
        (Transfer { debit_account_id: 3, ..original }, ResultCode::ExistsWithDifferentDebitAccountId),
        (Transfer { user_data_128: 1, ..original }, ResultCode::ExistsWithDifferentUserData128),
        (Transfer { user_data_64: 1, ..original }, ResultCode::ExistsWithDifferentUserData64),
        (Transfer { user_data_32: 1, ..original }, ResultCode::ExistsWithDifferentUserData32),
        (Transfer { code: 2, ..original }, ResultCode::ExistsWithDifferentCode),
        (Transfer { ledger: 7, ..original }, ResultCode::ExistsWithDifferentLedger),
        (Transfer { flags: TransferFlags(TransferFlags::PENDING), ..original }, ResultCode::ExistsWithDifferentFlags),
    ];
    for (retry, expected) in cases {
        assert_eq!(ledger.one(send(retry)), expected, "{retry:?}");
    }
    // A retry in the same batch as the original is caught too.
    let twice = transfer(101, 1, 2, 5);
    assert_eq!(ledger.execute(vec![send(twice), send(twice)]), vec![ResultCode::Ok, ResultCode::Exists]);
    assert_eq!(ledger.account(1).debits_posted, 255);
    ledger.reopen_and_verify();
    // After a restart the retry is answered from storage.
    assert_eq!(ledger.one(send(original)), ResultCode::Exists);
    assert_eq!(ledger.account(1).debits_posted, 255);
}

#[test]
fn state_failures_are_recorded_and_never_flip() {
    let mut ledger = TestLedger::new();
    assert_eq!(ledger.execute(vec![create(capped_account(1, 100)), create(account(2))]), vec![ResultCode::Ok; 2]);
    let too_much = transfer(100, 1, 2, 101);
    assert_eq!(ledger.one(send(too_much)), ResultCode::ExceedsCredits);
    let recorded_at = ledger.transfer(100).expect("failure is recorded").stored.transfer.timestamp;
    // Raising the cap would let a new transfer through, but not the same id.
    assert_eq!(ledger.one(Event::SetDebitLimit { account_id: 1, debit_limit: 1_000, linked: false }), ResultCode::Ok);
    assert_eq!(ledger.one(send(too_much)), ResultCode::ExceedsCredits);
    assert_eq!(ledger.one(send(Transfer { id: 101, ..too_much })), ResultCode::Ok);
    let record = ledger.transfer(100).expect("failure is recorded");
    assert_eq!(record.stored.result, ResultCode::ExceedsCredits);
    assert_eq!(record.stored.transfer.timestamp, recorded_at, "a retry never rewrites the record");
    // An unknown account now, created later: the id keeps its failure.
    let early = transfer(102, 1, 3, 1);
    assert_eq!(ledger.one(send(early)), ResultCode::CreditAccountNotFound);
    assert_eq!(ledger.one(create(account(3))), ResultCode::Ok);
    assert_eq!(ledger.one(send(early)), ResultCode::CreditAccountNotFound);
    ledger.reopen_and_verify();
    assert_eq!(ledger.one(send(too_much)), ResultCode::ExceedsCredits);
    assert_eq!(ledger.account(1).debits_posted, 101);
}

#[test]
fn net_debit_cap_allows_negative_positions_down_to_the_cap() {
    let mut ledger = TestLedger::new();
    assert_eq!(ledger.execute(vec![create(capped_account(1, 500)), create(account(2))]), vec![ResultCode::Ok; 2]);
    assert_eq!(ledger.one(send(transfer(10, 1, 2, 300))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(11, 1, 2, 200))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(12, 1, 2, 1))), ResultCode::ExceedsCredits);
    assert_eq!(ledger.account(1).net_posted(), -500);
    // Incoming credit makes room again.
    assert_eq!(ledger.one(send(transfer(13, 2, 1, 50))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(14, 1, 2, 50))), ResultCode::Ok);
    // The cap cannot be cut below what is already owed; it can be cut to exactly that.
    assert_eq!(
        ledger.one(Event::SetDebitLimit { account_id: 1, debit_limit: 499, linked: false }),
        ResultCode::DebitLimitBelowCurrentDebits
    );
    assert_eq!(ledger.one(Event::SetDebitLimit { account_id: 1, debit_limit: 500, linked: false }), ResultCode::Ok);
    assert_eq!(
        ledger.one(Event::SetDebitLimit { account_id: 2, debit_limit: 5, linked: false }),
        ResultCode::AccountHasNoDebitLimit
    );
    assert_eq!(
        ledger.one(Event::SetDebitLimit { account_id: 9, debit_limit: 5, linked: false }),
        ResultCode::AccountNotFound
    );
    assert_eq!(
        ledger.one(Event::SetDebitLimit { account_id: 0, debit_limit: 5, linked: false }),
        ResultCode::IdReserved
    );
    ledger.reopen_and_verify();
    assert_eq!(ledger.account(1).debit_limit, 500);
}

#[test]
fn credits_must_not_exceed_debits() {
    let mut ledger = TestLedger::new();
    let limited = ledger::Account {
        flags: ledger::AccountFlags(ledger::AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
        ..account(2)
    };
    assert_eq!(ledger.execute(vec![create(account(1)), create(limited)]), vec![ResultCode::Ok; 2]);
    assert_eq!(ledger.one(send(transfer(10, 1, 2, 1))), ResultCode::ExceedsDebits);
    assert_eq!(ledger.one(send(transfer(11, 2, 1, 5))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(12, 1, 2, 5))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(13, 1, 2, 1))), ResultCode::ExceedsDebits);
    ledger.reopen_and_verify();
}

#[test]
fn pending_reserves_against_the_cap_then_posts_in_full() {
    let mut ledger = TestLedger::new();
    assert_eq!(ledger.execute(vec![create(capped_account(1, 100)), create(account(2))]), vec![ResultCode::Ok; 2]);
    assert_eq!(ledger.one(send(pending(10, 1, 2, 80, 0))), ResultCode::Ok);
    assert_eq!((ledger.account(1).debits_pending, ledger.account(2).credits_pending), (80, 80));
    // The reservation counts against the cap.
    assert_eq!(ledger.one(send(transfer(11, 1, 2, 21))), ResultCode::ExceedsCredits);
    assert_eq!(ledger.one(send(post(12, 10, 0))), ResultCode::Ok);
    let (debit, credit) = (ledger.account(1), ledger.account(2));
    assert_eq!((debit.debits_pending, debit.debits_posted), (0, 80));
    assert_eq!((credit.credits_pending, credit.credits_posted), (0, 80));
    let resolved = ledger.transfer(10).expect("pending recorded").resolution.expect("resolved");
    assert_eq!((resolved.status, resolved.resolved_by), (PendingStatus::Posted, 12));
    let posting = ledger.transfer(12).expect("post recorded").stored.transfer;
    assert_eq!((posting.debit_account_id, posting.credit_account_id, posting.amount), (1, 2, 80));
    // At most one resolution.
    assert_eq!(ledger.one(send(post(13, 10, 0))), ResultCode::PendingTransferAlreadyPosted);
    assert_eq!(ledger.one(send(void(14, 10))), ResultCode::PendingTransferAlreadyPosted);
    assert_eq!(ledger.one(send(post(12, 10, 0))), ResultCode::Exists);
    ledger.reopen_and_verify();
    assert_eq!(ledger.one(send(post(15, 10, 0))), ResultCode::PendingTransferAlreadyPosted);
}

#[test]
fn partial_post_releases_the_rest_and_void_releases_all() {
    let mut ledger = TestLedger::new();
    two_accounts(&ledger);
    assert_eq!(
        ledger.execute(vec![send(pending(10, 1, 2, 100, 0)), send(pending(11, 1, 2, 40, 0))]),
        vec![ResultCode::Ok; 2]
    );
    assert_eq!(ledger.one(send(post(12, 10, 101))), ResultCode::ExceedsPendingTransferAmount);
    assert_eq!(ledger.one(send(post(13, 10, 60))), ResultCode::Ok);
    let debit = ledger.account(1);
    assert_eq!((debit.debits_pending, debit.debits_posted), (40, 60));
    assert_eq!(
        ledger.one(send(Transfer { amount: 39, ..void(14, 11) })),
        ResultCode::PendingTransferHasDifferentAmount
    );
    assert_eq!(ledger.one(send(void(15, 11))), ResultCode::Ok);
    let debit = ledger.account(1);
    assert_eq!((debit.debits_pending, debit.debits_posted), (0, 60));
    assert_eq!(ledger.one(send(void(16, 11))), ResultCode::PendingTransferAlreadyVoided);
    assert_eq!(ledger.one(send(post(17, 11, 0))), ResultCode::PendingTransferAlreadyVoided);
    ledger.reopen_and_verify();
}

#[test]
fn resolving_something_that_is_not_an_open_pending_transfer_fails() {
    let mut ledger = TestLedger::new();
    assert_eq!(
        ledger.execute(vec![create(account(1)), create(account(2)), create(account(3))]),
        vec![ResultCode::Ok; 3]
    );
    assert_eq!(ledger.one(send(transfer(10, 1, 2, 5))), ResultCode::Ok);
    assert_eq!(ledger.one(send(pending(11, 1, 2, 5, 0))), ResultCode::Ok);
    let cases = [
        (post(20, 99, 0), ResultCode::PendingTransferNotFound),
        (post(21, 10, 0), ResultCode::PendingTransferNotPending),
        (Transfer { debit_account_id: 3, ..post(22, 11, 0) }, ResultCode::PendingTransferHasDifferentDebitAccountId),
        (Transfer { credit_account_id: 3, ..post(23, 11, 0) }, ResultCode::PendingTransferHasDifferentCreditAccountId),
        (Transfer { ledger: 1, ..post(24, 11, 0) }, ResultCode::PendingTransferHasDifferentLedger),
        (Transfer { code: 9, ..post(25, 11, 0) }, ResultCode::PendingTransferHasDifferentCode),
    ];
    for (attempt, expected) in cases {
        assert_eq!(ledger.one(send(attempt)), expected, "{attempt:?}");
        // Each of these failures depends on state, so it is recorded against its id.
        assert_eq!(ledger.transfer(attempt.id).map(|record| record.stored.result), Some(expected));
    }
    assert_eq!(ledger.account(1).debits_pending, 5, "failed resolutions changed nothing");
    ledger.reopen_and_verify();
}

#[test]
fn pending_transfers_expire_at_their_timeout_by_batch_time() {
    let mut ledger = TestLedger::new();
    two_accounts(&ledger);
    assert_eq!(ledger.one(send(pending(10, 1, 2, 70, 10))), ResultCode::Ok);
    assert_eq!(ledger.one(send(pending(11, 1, 2, 30, 100))), ResultCode::Ok);
    ledger.clock.advance_seconds(9);
    assert_eq!(ledger.one(create(account(3))), ResultCode::Ok);
    assert_eq!(ledger.account(1).debits_pending, 100, "not due yet");
    ledger.clock.advance_seconds(2);
    // The next batch sweeps it, whatever that batch holds.
    assert_eq!(ledger.one(send(post(12, 10, 0))), ResultCode::PendingTransferExpired);
    assert_eq!(ledger.account(1).debits_pending, 30);
    let resolution = ledger.transfer(10).expect("recorded").resolution.expect("resolved");
    assert_eq!(resolution.status, PendingStatus::Expired);
    assert_eq!(ledger.one(send(void(13, 10))), ResultCode::PendingTransferExpired);
    ledger.reopen_and_verify();
    // The other one still expires after a restart: expiry state survives it.
    ledger.clock.advance_seconds(100);
    assert_eq!(ledger.one(send(post(14, 11, 0))), ResultCode::PendingTransferExpired);
    assert_eq!(ledger.account(1).debits_pending, 0);
    assert_eq!(ledger.account(1).debits_posted, 0);
    ledger.reopen_and_verify();
}

#[test]
fn linked_chains_succeed_or_fail_together() {
    let mut ledger = TestLedger::new();
    assert_eq!(ledger.execute(vec![create(capped_account(1, 100)), create(account(2))]), vec![ResultCode::Ok; 2]);
    let chain = vec![
        send(linked(transfer(10, 1, 2, 60))),
        send(linked(pending(11, 1, 2, 30, 0))),
        send(transfer(12, 1, 2, 20)), // breaks the cap: 110 > 100
        send(transfer(13, 1, 2, 5)),  // not in the chain
    ];
    assert_eq!(
        ledger.execute(chain),
        vec![ResultCode::LinkedEventFailed, ResultCode::LinkedEventFailed, ResultCode::ExceedsCredits, ResultCode::Ok]
    );
    let debit = ledger.account(1);
    assert_eq!((debit.debits_posted, debit.debits_pending), (5, 0), "only the unlinked transfer applied");
    assert!(ledger.transfer(10).is_none() && ledger.transfer(11).is_none(), "rolled back ids are free");
    assert_eq!(ledger.transfer(12).map(|record| record.stored.result), Some(ResultCode::ExceedsCredits));

    // The rolled-back ids can be used again; a chain that fits succeeds as a whole.
    let chain =
        vec![send(linked(transfer(10, 1, 2, 60))), send(linked(pending(11, 1, 2, 30, 0))), send(post(14, 11, 10))];
    assert_eq!(ledger.execute(chain), vec![ResultCode::Ok; 3]);
    let debit = ledger.account(1);
    assert_eq!((debit.debits_posted, debit.debits_pending), (75, 0));

    // A chain left open at the end of a submission fails as a whole.
    let open =
        vec![send(transfer(20, 1, 2, 1)), send(linked(transfer(21, 1, 2, 1))), send(linked(transfer(22, 1, 2, 1)))];
    assert_eq!(
        ledger.execute(open),
        vec![ResultCode::Ok, ResultCode::LinkedEventChainOpen, ResultCode::LinkedEventChainOpen]
    );
    // A chain may end with an account creation; its failure undoes the transfers before it.
    let chain = vec![send(linked(transfer(30, 1, 2, 1))), create(account(0))];
    assert_eq!(ledger.execute(chain), vec![ResultCode::LinkedEventFailed, ResultCode::IdReserved]);
    let chain = vec![send(linked(transfer(31, 1, 2, 99))), create(account(3))];
    assert_eq!(ledger.execute(chain), vec![ResultCode::ExceedsCredits, ResultCode::LinkedEventFailed]);
    assert!(ledger.ledger().lookup_accounts(&[3]).expect("lookup")[0].is_none(), "account creation rolled back");
    assert_eq!(ledger.account(1).debits_posted, 76);
    ledger.reopen_and_verify();
}

#[test]
fn invalid_events_get_their_own_code_and_change_nothing() {
    let mut ledger = TestLedger::new();
    assert_eq!(
        ledger.execute(vec![
            create(account(1)),
            create(account(2)),
            create(ledger::Account { ledger: 7, ..account(3) })
        ]),
        vec![ResultCode::Ok; 3]
    );
    let base = transfer(100, 1, 2, 10);
    let cases = [
        (Transfer { timestamp: 5, ..base }, ResultCode::TimestampMustBeZero),
        (Transfer { id: 0, ..base }, ResultCode::IdReserved),
        (Transfer { id: u128::MAX, ..base }, ResultCode::IdReserved),
        (Transfer { flags: TransferFlags(1 << 9), ..base }, ResultCode::FlagsUnknown),
        (
            Transfer { flags: TransferFlags(TransferFlags::PENDING | TransferFlags::POST_PENDING), ..base },
            ResultCode::FlagsAreMutuallyExclusive,
        ),
        (Transfer { debit_account_id: 0, ..base }, ResultCode::DebitAccountIdReserved),
        (Transfer { credit_account_id: u128::MAX, ..base }, ResultCode::CreditAccountIdReserved),
        (Transfer { credit_account_id: 1, ..base }, ResultCode::AccountsMustBeDifferent),
        (Transfer { pending_id: 5, ..base }, ResultCode::PendingIdMustBeZero),
        (Transfer { timeout: 5, ..base }, ResultCode::TimeoutReservedForPendingTransfer),
        (Transfer { ledger: 0, ..base }, ResultCode::LedgerMustNotBeZero),
        (Transfer { code: 0, ..base }, ResultCode::CodeMustNotBeZero),
        (Transfer { amount: 0, ..base }, ResultCode::AmountMustNotBeZero),
        (post(100, 0, 0), ResultCode::PendingIdMustNotBeZero),
        (post(100, u128::MAX, 0), ResultCode::PendingIdReserved),
        (post(100, 100, 0), ResultCode::PendingIdMustBeDifferent),
        (Transfer { timeout: 1, ..post(100, 5, 0) }, ResultCode::TimeoutReservedForPendingTransfer),
        (Transfer { debit_account_id: 9, ..base }, ResultCode::DebitAccountNotFound),
        (Transfer { id: 101, credit_account_id: 9, ..base }, ResultCode::CreditAccountNotFound),
        (Transfer { id: 102, credit_account_id: 3, ..base }, ResultCode::AccountsMustHaveTheSameLedger),
        (Transfer { id: 103, ledger: 7, ..base }, ResultCode::TransferMustHaveTheSameLedgerAsAccounts),
    ];
    for (bad, expected) in cases {
        assert_eq!(ledger.one(send(bad)), expected, "{bad:?}");
    }
    let bad_accounts = [
        (ledger::Account { id: 0, ..account(5) }, ResultCode::IdReserved),
        (ledger::Account { flags: ledger::AccountFlags(3), ..account(5) }, ResultCode::FlagsAreMutuallyExclusive),
        (ledger::Account { flags: ledger::AccountFlags(1 << 7), ..account(5) }, ResultCode::FlagsUnknown),
        (ledger::Account { debits_posted: 1, ..account(5) }, ResultCode::BalancesMustBeZero),
        (ledger::Account { timestamp: 1, ..account(5) }, ResultCode::TimestampMustBeZero),
        (ledger::Account { ledger: 0, ..account(5) }, ResultCode::LedgerMustNotBeZero),
        (ledger::Account { code: 0, ..account(5) }, ResultCode::CodeMustNotBeZero),
        (ledger::Account { debit_limit: 5, ..account(5) }, ResultCode::DebitLimitRequiresFlag),
        (ledger::Account { code: 11, ..account(1) }, ResultCode::ExistsWithDifferentCode),
        (account(1), ResultCode::Exists),
    ];
    for (bad, expected) in bad_accounts {
        assert_eq!(ledger.one(create(bad)), expected, "{bad:?}");
    }
    let accounts = ledger.all_accounts();
    assert_eq!(accounts.len(), 3);
    assert!(accounts.iter().all(|account| account.debits_posted == 0 && account.credits_posted == 0));
    ledger.reopen_and_verify();
}

#[test]
fn overflowing_balances_are_refused() {
    let mut ledger = TestLedger::new();
    assert_eq!(
        ledger.execute(vec![create(account(1)), create(account(2)), create(account(3))]),
        vec![ResultCode::Ok; 3]
    );
    assert_eq!(ledger.one(send(transfer(10, 1, 2, u128::MAX))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(11, 1, 3, 1))), ResultCode::OverflowsDebitsPosted);
    assert_eq!(ledger.one(send(transfer(12, 3, 2, 1))), ResultCode::OverflowsCreditsPosted);
    assert_eq!(ledger.one(send(pending(13, 1, 3, 1, 0))), ResultCode::OverflowsDebits);
    assert_eq!(ledger.one(send(pending(14, 3, 2, 1, 0))), ResultCode::OverflowsCredits);
    assert_eq!(
        ledger.one(send(pending(15, 3, 1, 5, u32::MAX))),
        ResultCode::Ok,
        "an expiry centuries away still fits in u64 ns"
    );
    ledger.reopen_and_verify();
}

#[test]
fn account_history_pages_in_time_order() {
    let mut ledger = TestLedger::new();
    assert_eq!(
        ledger.execute(vec![create(account(1)), create(account(2)), create(account(3))]),
        vec![ResultCode::Ok; 3]
    );
    for id in 0..25u128 {
        let (debit, credit) = if id % 2 == 0 { (1, 2) } else { (3, 1) };
        assert_eq!(ledger.one(send(transfer(100 + id, debit, credit, 1 + id))), ResultCode::Ok);
    }
    assert_eq!(ledger.one(send(transfer(200, 2, 3, 1))), ResultCode::Ok);
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let page = ledger.ledger().account_transfers(1, from, u64::MAX, 10).expect("page");
        assert!(page.transfers.len() <= 10);
        seen.extend(page.transfers.iter().map(|transfer| transfer.id));
        match page.next_timestamp {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, (100..125).collect::<Vec<u128>>(), "every transfer of account 1, oldest first, none of others");
    let first = ledger.transfer(105).expect("exists").stored.transfer.timestamp;
    let last = ledger.transfer(110).expect("exists").stored.transfer.timestamp;
    let window = ledger.ledger().account_transfers(1, first, last, 100).expect("page");
    assert_eq!(
        window.transfers.iter().map(|transfer| transfer.id).collect::<Vec<_>>(),
        (105..=110).collect::<Vec<u128>>()
    );
    ledger.reopen_and_verify();
}

#[test]
fn old_transfers_are_found_in_storage_after_the_cache_forgets_them() {
    // A tiny batch bound makes the recent-transfer cache tiny (4 x 8 entries).
    let mut ledger = TestLedger::with_config(|config| {
        config.batch_size_max = 8;
        config.events_in_flight_max = 64;
        config.recent_transfers_max = 32;
    });
    two_accounts(&ledger);
    assert_eq!(ledger.one(send(pending(10, 1, 2, 50, 0))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(11, 1, 2, 5))), ResultCode::Ok);
    for id in 0..200u128 {
        assert_eq!(ledger.one(send(transfer(1_000 + id, 2, 1, 1))), ResultCode::Ok);
    }
    assert_eq!(ledger.one(send(transfer(11, 1, 2, 5))), ResultCode::Exists);
    assert_eq!(ledger.one(send(transfer(11, 1, 2, 6))), ResultCode::ExistsWithDifferentAmount);
    assert_eq!(ledger.one(send(post(12, 11, 0))), ResultCode::PendingTransferNotPending);
    assert_eq!(ledger.one(send(post(13, 10, 0))), ResultCode::Ok);
    for id in 0..200u128 {
        assert_eq!(ledger.one(send(transfer(2_000 + id, 2, 1, 1))), ResultCode::Ok);
    }
    assert_eq!(ledger.one(send(void(14, 10))), ResultCode::PendingTransferAlreadyPosted);
    assert_eq!(ledger.one(send(post(13, 10, 0))), ResultCode::Exists);
    ledger.reopen_and_verify();
}

#[test]
fn submissions_outside_the_bounds_are_refused_before_queueing() {
    let ledger = TestLedger::with_config(|config| {
        config.batch_size_max = 8;
        config.events_in_flight_max = 64;
        config.recent_transfers_max = 32;
    });
    let error = ledger.ledger().submit(Vec::new()).err().expect("empty refused");
    assert!(matches!(error, ledger::LedgerError::BadSubmissionSize { events: 0, limit: 8 }));
    let nine = (1..=9).map(|id| create(account(id))).collect();
    let error = ledger.ledger().submit(nine).err().expect("oversized refused");
    assert!(matches!(error, ledger::LedgerError::BadSubmissionSize { events: 9, limit: 8 }));
    assert!(ledger.all_accounts().is_empty());
}

#[test]
fn a_full_ledger_answers_busy_at_once() {
    // Room for exactly one submission of 8 events in flight.
    let ledger = TestLedger::with_config(|config| {
        config.batch_size_max = 8;
        config.events_in_flight_max = 8;
        config.recent_transfers_max = 32;
    });
    let mut busy = 0;
    let mut completions = Vec::new();
    // Submitting without waiting fills the ledger faster than a synced write drains it; each
    // refusal must come back at once rather than block.
    for round in 0..50u128 {
        let events = (0..8).map(|offset| create(account(1 + round * 8 + offset))).collect();
        match ledger.ledger().submit(events) {
            Ok(completion) => completions.push(completion),
            Err(ledger::LedgerError::Busy { limit, .. }) => {
                assert_eq!(limit, 8);
                busy += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    let accepted = completions.len();
    for completion in completions {
        assert!(completion.wait().expect("commits").iter().all(|code| *code == ResultCode::Ok));
    }
    assert!(busy > 0, "50 back-to-back submissions never found the ledger full");
    assert_eq!(ledger.all_accounts().len(), accepted * 8, "refused submissions changed nothing");
}

#[test]
fn a_corrupt_log_tail_is_reported_at_open() {
    let mut ledger = TestLedger::new();
    two_accounts(&ledger);
    assert_eq!(ledger.one(send(transfer(10, 1, 2, 5))), ResultCode::Ok);
    ledger.close();
    let store = ledger::Store::open(&ledger.config.path, &ledger.config.store).expect("open store");
    let mut bytes = store.raw_log_entry_for_test(2).expect("read").expect("batch 2 exists");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    store.corrupt_log_entry_for_test(2, &bytes).expect("write");
    let report = ledger::verify(&store, 1 << 10);
    assert!(report.is_err() || !report.expect("report").is_sound(), "verify must notice a flipped bit");
    drop(store);
    let error = ledger::Ledger::open(ledger.config.clone(), ledger::SystemClock).err().expect("open must refuse");
    assert!(matches!(error, ledger::LedgerError::CorruptLog { sequence: 2, .. }), "{error}");
}

#[test]
fn a_log_entry_beyond_the_head_is_reported_at_open() {
    let mut ledger = TestLedger::new();
    two_accounts(&ledger);
    ledger.close();
    let store = ledger::Store::open(&ledger.config.path, &ledger.config.store).expect("open store");
    let bytes = store.raw_log_entry_for_test(1).expect("read").expect("batch 1 exists");
    store.corrupt_log_entry_for_test(2, &bytes).expect("write");
    drop(store);
    let error = ledger::Ledger::open(ledger.config.clone(), ledger::SystemClock).err().expect("open must refuse");
    assert!(matches!(error, ledger::LedgerError::CorruptLog { .. }), "{error}");
}

#[test]
fn records_commit_with_their_chain_and_survive_a_restart() {
    let mut ledger = TestLedger::new();
    assert_eq!(ledger.execute(vec![create(capped_account(1, 10)), create(account(2))]), vec![ResultCode::Ok; 2]);
    let note = |key: &[u8], value: &[u8], linked: bool| ledger::Record::put(3, key.to_vec(), value.to_vec(), linked);
    // A record linked to a transfer that fails is taken back with it.
    let results = ledger.execute(vec![note(b"p1", b"rent", true), send(transfer(10, 1, 2, 11))]);
    assert_eq!(results, vec![ResultCode::LinkedEventFailed, ResultCode::ExceedsCredits]);
    assert_eq!(ledger.ledger().record(3, b"p1").expect("read"), None);
    let results = ledger.execute(vec![note(b"p2", b"rent", true), send(transfer(11, 1, 2, 5))]);
    assert_eq!(results, vec![ResultCode::Ok; 2]);
    assert_eq!(ledger.ledger().record(3, b"p2").expect("read"), Some(b"rent".to_vec()));
    // Other tables do not see it; an empty value removes a key; bad keys and values are refused.
    assert_eq!(ledger.ledger().record(4, b"p2").expect("read"), None);
    assert_eq!(ledger.execute(vec![note(b"p3", b"x", false)]), vec![ResultCode::Ok]);
    assert_eq!(ledger.execute(vec![note(b"p3", b"", false)]), vec![ResultCode::Ok]);
    assert_eq!(ledger.execute(vec![note(b"", b"x", false)]), vec![ResultCode::RecordKeyInvalid]);
    let huge = vec![0u8; ledger::RECORD_VALUE_BYTES_MAX + 1];
    assert_eq!(ledger.execute(vec![note(b"p4", &huge, false)]), vec![ResultCode::RecordValueTooLarge]);
    // A linked debit-limit change takes part in its chain like a transfer: account 1 owes 5, so
    // taking its limit to 0 fails, and the transfer chained to it is not applied.
    let chain = vec![Event::SetDebitLimit { account_id: 1, debit_limit: 0, linked: true }, send(transfer(12, 1, 2, 1))];
    assert_eq!(ledger.execute(chain), vec![ResultCode::DebitLimitBelowCurrentDebits, ResultCode::LinkedEventFailed]);
    // And a later failure in the chain undoes a limit change that succeeded.
    let chain = vec![Event::SetDebitLimit { account_id: 1, debit_limit: 7, linked: true }, send(transfer(13, 1, 2, 3))];
    assert_eq!(ledger.execute(chain), vec![ResultCode::LinkedEventFailed, ResultCode::ExceedsCredits]);
    assert_eq!(ledger.account(1).debit_limit, 10, "the chain's limit change was rolled back");
    ledger.reopen_and_verify();
    let records = ledger.ledger().records(3).expect("scan");
    assert_eq!(records, vec![(b"p2".to_vec(), b"rent".to_vec())]);
}

#[test]
fn appended_records_are_numbered_without_gaps_across_chains_and_restarts() {
    let mut ledger = TestLedger::new();
    assert_eq!(ledger.execute(vec![create(capped_account(1, 10)), create(account(2))]), vec![ResultCode::Ok; 2]);
    let event =
        |text: &str, linked: bool| ledger::Record::append(4, b"bank-b".to_vec(), text.as_bytes().to_vec(), linked);
    assert_eq!(ledger.execute(vec![event("one", false), event("two", false)]), vec![ResultCode::Ok; 2]);
    // A rolled-back chain takes its number back: the next append is 3, not 4.
    let failed = ledger.execute(vec![send(linked(transfer(10, 1, 2, 11))), event("lost", false)]);
    assert_eq!(failed, vec![ResultCode::ExceedsCredits, ResultCode::LinkedEventFailed]);
    // Submissions from several threads land in one batch or several; numbers follow commit order.
    // Each submission learns the numbers its own appends got (1 and 2 went to "one" and "two").
    let completions: Vec<_> = (0..8)
        .map(|index| {
            let events = vec![event(&format!("many-{index}"), false), event(&format!("more-{index}"), false)];
            ledger.ledger().submit(events).expect("queued")
        })
        .collect();
    for (index, completion) in completions.into_iter().enumerate() {
        let results = completion.wait().expect("commits");
        assert_eq!(results.to_vec(), vec![ResultCode::Ok; 2]);
        let first = 3 + 2 * index as u64;
        assert_eq!(results.appended(), &[first, first + 1], "submission {index}");
    }
    // A failed append, and a record put among appends, take no number.
    let mixed = ledger.ledger().submit(vec![
        ledger::Record::put(3, b"k".to_vec(), b"v".to_vec(), false),
        ledger::Record::append(4, b"bank-b".to_vec(), Vec::new(), false),
        event("mixed", false),
    ]);
    let mixed = mixed.expect("queued").wait().expect("commits");
    assert_eq!(mixed.to_vec(), vec![ResultCode::Ok, ResultCode::RecordValueTooLarge, ResultCode::Ok]);
    assert_eq!(mixed.appended(), &[19]);
    ledger.reopen_and_verify();
    assert_eq!(ledger.execute(vec![event("after restart", false)]), vec![ResultCode::Ok]);
    let entries = ledger.ledger().records_after(4, b"bank-b", None, 100).expect("scan");
    let numbers: Vec<u64> = entries
        .iter()
        .map(|(key, _)| u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8-byte suffix")))
        .collect();
    assert_eq!(numbers, (1..=20).collect::<Vec<u64>>());
    assert_eq!(entries[2].1, b"many-0".to_vec(), "submissions are numbered in queue order");
    assert_eq!(entries[18].1, b"mixed".to_vec());
    assert_eq!(entries.last().map(|entry| entry.1.clone()), Some(b"after restart".to_vec()));
    // Reading after a key continues from there; other sequences are separate.
    let after = entries[17].0.clone();
    assert_eq!(ledger.ledger().records_after(4, b"bank-b", Some(&after), 100).expect("scan").len(), 2);
    assert!(ledger.ledger().records_after(4, b"bank-c", None, 100).expect("scan").is_empty());
    let empty = ledger::Record::append(4, b"bank-b".to_vec(), Vec::new(), false);
    assert_eq!(ledger.execute(vec![empty]), vec![ResultCode::RecordValueTooLarge]);
    let reserved = ledger::Record::put(0, b"x".to_vec(), b"y".to_vec(), false);
    assert_eq!(ledger.execute(vec![reserved]), vec![ResultCode::RecordKeyInvalid]);
}

/// Every synced batch reports the time RocksDB spent appending it to the WAL and syncing it. With
/// the perf level one step too low (rust-rocksdb's level numbers predate RocksDB's `kEnableWait`)
/// every batch reported 0 and the operators' WAL sync histogram was empty of meaning.
#[test]
fn every_commit_reports_its_wal_append_and_sync_time() {
    let mut ledger = TestLedger::new();
    two_accounts(&ledger);
    assert_eq!(ledger.execute(vec![create(account(3))]), vec![ResultCode::Ok]);
    let stats = ledger.ledger().stats();
    let commits = stats.batches_committed.load(std::sync::atomic::Ordering::Relaxed);
    let wal = stats.wal_sync_nanoseconds.snapshot();
    assert!(commits >= 2, "two submissions, at least two batches");
    assert_eq!(wal.counts.iter().sum::<u64>(), commits, "one observation per batch");
    assert!(wal.sum >= commits, "a WAL append and sync takes time: {} ns over {commits} batches", wal.sum);
    ledger.reopen_and_verify();
}

#[test]
fn accounts_kept_within_int64_refuse_a_transfer_past_it_and_others_do_not() {
    use ledger::{Account, AccountFlags};
    let mut ledger = TestLedger::new();
    let bounded = |id| Account { flags: AccountFlags(AccountFlags::BALANCES_WITHIN_I64), ..account(id) };
    let created = ledger.execute(vec![create(bounded(1)), create(bounded(2)), create(account(3)), create(account(4))]);
    assert_eq!(created, vec![ResultCode::Ok; 4]);
    let max = i64::MAX as u128;
    // Up to the bound is fine on both sides.
    assert_eq!(ledger.one(send(transfer(100, 1, 2, max))), ResultCode::Ok);
    // One more unit would take account 2's credits, then account 1's debits, past it: recorded
    // failures that move nothing, the credit side's checked for a transfer into it.
    assert_eq!(ledger.one(send(transfer(101, 3, 2, 1))), ResultCode::OverflowsCredits);
    assert_eq!(ledger.one(send(transfer(102, 1, 4, 1))), ResultCode::OverflowsDebits);
    // A reservation counts too (pending credits and debits).
    let reserve = Transfer { flags: TransferFlags(TransferFlags::PENDING), ..transfer(103, 3, 2, 1) };
    assert_eq!(ledger.one(send(reserve)), ResultCode::OverflowsCredits);
    // Money back the other way nets the position down, and then there is room again.
    assert_eq!(ledger.one(send(transfer(104, 2, 3, 10))), ResultCode::Ok);
    assert_eq!(ledger.one(send(transfer(105, 3, 2, 10))), ResultCode::Ok);
    // Accounts without the flag go past i64 as the u128 ledger allows.
    assert_eq!(ledger.one(send(transfer(106, 3, 4, max + 1))), ResultCode::Ok);
    assert_eq!((ledger.account(1).debits_posted, ledger.account(2).credits_posted), (max, max + 10));
    assert_eq!(ledger.account(4).credits_posted, max + 1);
    ledger.reopen_and_verify();
    assert_eq!(ledger.one(send(transfer(101, 3, 2, 1))), ResultCode::OverflowsCredits, "recorded, never flips");
}

/// The replicated log of one node without replication: applies each proposal with the ledger's
/// `Applier` on a thread of its own, in order. Stands where openraft stands in `cluster`, so the
/// ledger's proposing path is tested here on its own.
struct LogOfOne {
    proposals: std::sync::Mutex<std::sync::mpsc::Sender<(u64, Vec<Event>, ledger::ProposalDone)>>,
}

impl LogOfOne {
    fn start(store: ledger::Store, config: ledger::LedgerConfig) -> LogOfOne {
        let (proposals, queue) = std::sync::mpsc::channel::<(u64, Vec<Event>, ledger::ProposalDone)>();
        std::thread::spawn(move || {
            let mut applier = ledger::Applier::from_store(store, &config).expect("restore");
            for (timestamp, events, done) in queue {
                let applied =
                    applier.apply(timestamp, events, &[]).map(|applied| applied.expect("events make a batch"));
                done(applied);
            }
        });
        LogOfOne { proposals: std::sync::Mutex::new(proposals) }
    }
}

impl ledger::Proposer for LogOfOne {
    fn propose(&self, timestamp: u64, events: Vec<Event>, done: ledger::ProposalDone) {
        let sent = self.proposals.lock().expect("lock").send((timestamp, events, done));
        sent.expect("the log of one is running");
    }
}

/// A log that is never the leader.
struct Follower;

impl ledger::Proposer for Follower {
    fn propose(&self, _timestamp: u64, _events: Vec<Event>, done: ledger::ProposalDone) {
        done(Err(ledger::LedgerError::NotLeader { leader: Some(2), address: None }));
    }
}

#[test]
fn a_replicated_ledger_hands_each_submission_its_results_and_record_numbers() {
    use ledger::{Ledger, LedgerConfig, Record, Store, SystemClock};
    let directory = tempfile::tempdir().expect("directory");
    let mut config = LedgerConfig::new(directory.path().join("ledger"));
    config.recent_transfers_max = 1 << 16;
    let store = Store::open(&config.path, &config.store).expect("open the store");
    let log = std::sync::Arc::new(LogOfOne::start(store.clone(), config.clone()));
    let ledger = Ledger::open_replicated(config, SystemClock, store, log).expect("open replicated");
    // Submitted together, so they may share batches; each gets its own window either way.
    let first = ledger
        .submit(vec![
            Record::append(5, "outbox-a", b"x".to_vec(), false),
            Record::append(5, "outbox-a", b"y".to_vec(), false),
        ])
        .expect("queued");
    let second = ledger.submit(vec![Record::append(5, "outbox-a", b"z".to_vec(), false)]).expect("queued");
    let third = ledger.submit(vec![Record::put(6, "key", b"value".to_vec(), false)]).expect("queued");
    let (first, second, third) =
        (first.wait().expect("applied"), second.wait().expect("applied"), third.wait().expect("applied"));
    assert!(first.iter().chain(second.iter()).chain(third.iter()).all(|result| *result == ResultCode::Ok));
    let numbers: Vec<u64> = first.appended().iter().chain(second.appended()).copied().collect();
    assert_eq!(numbers.len(), 3, "{numbers:?}");
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "consecutive numbers in submission order: {numbers:?}"
    );
    assert!(third.appended().is_empty());
    assert_eq!(ledger.record(6, b"key").expect("read"), Some(b"value".to_vec()), "reads see what was applied");
    assert!(ledger.committed_sequence() >= 1);

    // A log that is not the leader: the submission is refused, naming the leader.
    let directory = tempfile::tempdir().expect("directory");
    let config = LedgerConfig::new(directory.path().join("ledger"));
    let store = Store::open(&config.path, &config.store).expect("open the store");
    let follower = Ledger::open_replicated(config, SystemClock, store, std::sync::Arc::new(Follower)).expect("open");
    let refused = follower.submit(vec![Record::put(6, "key", b"value".to_vec(), false)]).expect("queued").wait();
    assert_eq!(refused.expect_err("not the leader"), ledger::LedgerError::NotLeader { leader: Some(2), address: None });
    assert_eq!(follower.record(6, b"key").expect("read"), None, "nothing was applied");
    assert_eq!(follower.events_in_flight(), 0, "the refused submission's room was given back");
}
