//! The ledger as openraft's state machine: openraft's storage suite with the real log and the
//! real ledger; entries of payments applied on two nodes give the same ledger (head hash,
//! balances summing to zero); the applied position survives a reopen; and a snapshot carries the
//! whole ledger to a node that has nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cluster::state_machine::LedgerMachine;
use cluster::types::{EntryPayload, LeaderId};
use cluster::{Entry, LogId, Membership, Proposal, RaftLog, SwitchNode, TypeConfig};
use futures_util::stream;
use ledger::{Account, Event, LedgerConfig, ResultCode, Transfer, WideSum};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;

fn config(directory: &Path) -> LedgerConfig {
    // Small bounds: a test ledger needs no gigabyte of cache.
    let mut config = LedgerConfig::new(directory.join("ledger"));
    config.batch_size_max = 1_024;
    config.events_in_flight_max = 4_096;
    config.recent_transfers_max = 8_192;
    config
}

fn machine(directory: &Path) -> LedgerMachine {
    LedgerMachine::open(config(directory), &directory.join("snapshots")).expect("open the ledger machine")
}

struct Builder;

impl StoreBuilder<TypeConfig, RaftLog, LedgerMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, RaftLog, LedgerMachine), StorageError<TypeConfig>> {
        let io = |error: std::io::Error| StorageError::read(TypeConfig::err_from_error(&error));
        let directory = tempfile::tempdir().map_err(io)?;
        let log = RaftLog::open(&directory.path().join("raft")).map_err(io)?;
        let machine = LedgerMachine::open(config(directory.path()), &directory.path().join("snapshots")).map_err(io)?;
        Ok((directory, log, machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_with_the_ledger() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId { leader_id: LeaderId { term, node_id: 1 }, index }
}

fn entry(index: u64, payload: EntryPayload) -> Entry {
    Entry { log_id: log_id(1, index), payload }
}

fn account(id: u128) -> Account {
    Account { id, ledger: 1, code: 10, ..Account::default() }
}

fn transfer(id: u128, from: u128, to: u128, amount: u128) -> Transfer {
    Transfer { id, debit_account_id: from, credit_account_id: to, amount, ledger: 1, code: 1, ..Transfer::default() }
}

/// A membership entry, two batches of payments (one refused: a repeated id with another amount),
/// and a blank entry, as a leader would commit them.
fn entries() -> Vec<Entry> {
    let node = |n: u64| SwitchNode { peer_address: format!("127.0.0.1:{}", 7100 + n), psp_address: String::new() };
    let membership =
        Membership::new(vec![BTreeSet::from([1, 2, 3])], BTreeMap::from([(1, node(1)), (2, node(2)), (3, node(3))]))
            .expect("valid membership");
    let accounts = (1..=4).map(|id| Event::CreateAccount(account(id))).collect();
    let payments = vec![
        Event::CreateTransfer(transfer(100, 1, 2, 500)),
        Event::CreateTransfer(transfer(101, 2, 3, 200)),
        Event::CreateTransfer(transfer(102, 4, 1, 75)),
        Event::CreateTransfer(transfer(100, 1, 2, 999)),
    ];
    vec![
        entry(1, EntryPayload::Membership(membership)),
        entry(2, EntryPayload::Normal(Proposal { timestamp: 1_000, events: accounts })),
        // A timestamp behind the state's: clamped, never applied out of order.
        entry(3, EntryPayload::Normal(Proposal { timestamp: 5, events: payments })),
        entry(4, EntryPayload::Blank),
    ]
}

/// Applies `entries` as openraft does for a follower (no client waiting on them).
async fn apply(machine: &mut LedgerMachine, entries: Vec<Entry>) {
    let items: Vec<_> = entries.into_iter().map(|entry| Ok((entry, None))).collect();
    machine.apply(stream::iter(items)).await.expect("apply");
}

fn balances(machine: &LedgerMachine) -> Vec<(u128, u128, u128)> {
    machine
        .read(|applier| {
            let mut accounts: Vec<_> =
                applier.accounts().map(|account| (account.id, account.debits_posted, account.credits_posted)).collect();
            accounts.sort_unstable();
            accounts
        })
        .expect("read")
}

fn assert_money_conserved(balances: &[(u128, u128, u128)]) {
    let mut debits = WideSum::default();
    let mut credits = WideSum::default();
    for (_, debited, credited) in balances {
        debits.add(*debited);
        credits.add(*credited);
    }
    assert_eq!(debits, credits, "debits and credits sum to the same: no money made or lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_applying_the_same_entries_holds_the_same_ledger() {
    let (first_directory, second_directory) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (mut first, mut second) = (machine(first_directory.path()), machine(second_directory.path()));
    apply(&mut first, entries()).await;
    // The second node gets the same entries one by one: the result cannot depend on grouping.
    for entry in entries() {
        apply(&mut second, vec![entry]).await;
    }
    assert_eq!(first.head().expect("head"), second.head().expect("head"));
    assert_eq!(first.head().expect("head").sequence, 2, "two batches");
    let balances_first = balances(&first);
    assert_eq!(balances_first, balances(&second));
    // Account 1 paid 500 once: the repeated id with another amount was refused, not applied.
    assert_eq!(balances_first[0], (1, 500, 75));
    let stored = first.read(|applier| applier.store().transfers(&[100, 103]).expect("read transfers")).expect("read");
    assert_eq!(stored[0].as_ref().map(|stored| (stored.transfer.amount, stored.result)), Some((500, ResultCode::Ok)));
    assert!(stored[1].is_none(), "no transfer 103 yet");
    // The stale proposal timestamp (5) was clamped past the first batch's.
    assert!(stored[0].as_ref().is_some_and(|stored| stored.transfer.timestamp > 1_000));
    assert_money_conserved(&balances_first);
    assert_eq!(first.applied_state().await.expect("applied").0, Some(log_id(1, 4)));

    // Reopened from disk: the same position and ledger (nothing to re-apply, nothing lost).
    let head = first.head().expect("head");
    drop(first);
    let mut reopened = machine(first_directory.path());
    let (applied, membership) = reopened.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(reopened.head().expect("head"), head);
    assert_eq!(balances(&reopened), balances_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_the_whole_ledger_to_an_empty_node() {
    let (leader_directory, follower_directory) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (mut leader, mut follower) = (machine(leader_directory.path()), machine(follower_directory.path()));
    apply(&mut leader, entries()).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.expect("build a snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 4)));
    let current = leader.get_current_snapshot().await.expect("current").expect("a current snapshot");
    assert_eq!(current.meta, snapshot.meta);

    follower.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()).await.expect("install");
    assert_eq!(follower.applied_state().await.expect("applied").0, Some(log_id(1, 4)));
    assert_eq!(follower.head().expect("head"), leader.head().expect("head"));
    assert_eq!(balances(&follower), balances(&leader));

    // Both go on from there identically.
    let next = vec![entry(
        5,
        EntryPayload::Normal(Proposal {
            timestamp: 9_000,
            events: vec![Event::CreateTransfer(transfer(103, 3, 4, 10))],
        }),
    )];
    apply(&mut leader, next.clone()).await;
    apply(&mut follower, next).await;
    assert_eq!(follower.head().expect("head"), leader.head().expect("head"));
    assert_money_conserved(&balances(&follower));

    // The installed snapshot is the follower's current one, also after a reopen.
    drop(follower);
    let mut reopened = machine(follower_directory.path());
    let current = reopened.get_current_snapshot().await.expect("current").expect("a current snapshot");
    assert_eq!(current.meta, snapshot.meta);
}
