//! The Raft log store against openraft's own storage test suite, and against what a crash-safe
//! log must also do here: everything it acknowledged reads back after the process reopens it,
//! and a damaged entry or vote is an error, never a default.

use std::io;
use std::sync::{Arc, Mutex};

use cluster::types::{Applied, EntryPayload, LeaderId};
use cluster::{Entry, LogId, RaftLog, TypeConfig, Vote};
use futures_util::StreamExt;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StoredMembership};

type Meta = SnapshotMeta<LeaderId, u64, cluster::SwitchNode>;
type Membership = StoredMembership<LeaderId, u64, cluster::SwitchNode>;

/// The suite needs a state machine beside the log; this one keeps only what openraft itself
/// tracks (the last applied id and the membership), which is all the suite's entries carry. The
/// ledger's own state machine is tested with the ledger.
#[derive(Clone, Default)]
struct MembershipMachine {
    state: Arc<Mutex<MachineState>>,
}

#[derive(Default)]
struct MachineState {
    applied: Option<LogId>,
    membership: Membership,
    snapshot: Option<Meta>,
}

impl MembershipMachine {
    fn state(&self) -> std::sync::MutexGuard<'_, MachineState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MembershipMachine {
    type SnapshotData = ();

    async fn build_snapshot(&mut self) -> Result<Snapshot<LeaderId, u64, cluster::SwitchNode, ()>, io::Error> {
        let mut state = self.state();
        let meta = Meta { last_log_id: state.applied, last_membership: state.membership.clone() };
        state.snapshot = Some(meta.clone());
        Ok(Snapshot { meta, snapshot: () })
    }
}

impl RaftStateMachine<TypeConfig> for MembershipMachine {
    type SnapshotData = ();
    type SnapshotBuilder = MembershipMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let state = self.state();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + openraft::OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder): (Entry, _) = item?;
            let mut state = self.state();
            state.applied = Some(entry.log_id);
            if let EntryPayload::Membership(membership) = &entry.payload {
                state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
            }
            if let Some(responder) = responder {
                responder.send(Applied(None));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> MembershipMachine {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &Meta, _snapshot: ()) -> Result<(), io::Error> {
        let mut state = self.state();
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<LeaderId, u64, cluster::SwitchNode, ()>>, io::Error> {
        Ok(self.state().snapshot.clone().map(|meta| Snapshot { meta, snapshot: () }))
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, RaftLog, MembershipMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, RaftLog, MembershipMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|error| StorageError::read(TypeConfig::err_from_error(&error)))?;
        let log = RaftLog::open(dir.path()).map_err(|error| StorageError::read(TypeConfig::err_from_error(&error)))?;
        Ok((dir, log, MembershipMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId { leader_id: LeaderId { term, node_id: 1 }, index }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

/// Appends and waits for the durability callback, as openraft does before it counts the entries.
async fn append_durably(log: &mut RaftLog, entries: Vec<Entry>) {
    let (flushed, done) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(flushed)).await.expect("append");
    done.await.expect("the callback fired").expect("the entries are durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_log_acknowledged_reads_back_after_a_reopen() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let vote = Vote { leader_id: LeaderId { term: 3, node_id: 2 }, committed: true };
    {
        let mut log = RaftLog::open(dir.path()).expect("open");
        append_durably(&mut log, (1..=6).map(|index| blank(1, index)).collect()).await;
        // Several appends in flight at once share one WAL sync; each callback still fires.
        let (first, second) = (TypeConfig::oneshot(), TypeConfig::oneshot());
        log.append(vec![blank(2, 7), blank(2, 8)], IOFlushed::signal(first.0)).await.expect("append");
        log.append(vec![blank(2, 9), blank(2, 10)], IOFlushed::signal(second.0)).await.expect("append");
        first.1.await.expect("fired").expect("durable");
        second.1.await.expect("fired").expect("durable");
        log.save_vote(&vote).await.expect("vote");
        log.save_committed(Some(log_id(2, 8))).await.expect("committed");
        log.purge(log_id(1, 3)).await.expect("purge");
        log.truncate_after(Some(log_id(2, 9))).await.expect("truncate");
    }
    let mut log = RaftLog::open(dir.path()).expect("reopen");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 9)));
    let mut reader = log.get_log_reader().await;
    let entries = reader.try_get_log_entries(0..100).await.expect("read");
    let expected: Vec<Entry> =
        (4..=6).map(|index| blank(1, index)).chain((7..=9).map(|index| blank(2, index))).collect();
    assert_eq!(entries, expected);
    assert_eq!(reader.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(2, 8)));
    // Everything purged: the last log id is the purged one.
    log.purge(log_id(2, 9)).await.expect("purge all");
    let state = log.get_log_state().await.expect("state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(2, 9)), Some(log_id(2, 9))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_or_vote_is_an_error_never_a_default() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let mut log = RaftLog::open(dir.path()).expect("open");
        append_durably(&mut log, (1..=3).map(|index| blank(1, index)).collect()).await;
    }
    // Damage entry 2 and the vote behind the store's back.
    {
        let mut options = rocksdb::Options::default();
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&options, dir.path(), ["entries", "meta"]).expect("raw open");
        let entries = db.cf_handle("entries").expect("family");
        let mut bytes = db.get_cf(entries, 2u64.to_be_bytes()).expect("read").expect("entry 2 present");
        bytes.push(0xff);
        db.put_cf(entries, 2u64.to_be_bytes(), &bytes).expect("write");
    }
    let log = RaftLog::open(dir.path()).expect("the bookkeeping is intact");
    let mut reader = log.clone().get_log_reader().await;
    let error = reader.try_get_log_entries(1..=3).await.expect_err("a damaged entry read back");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    assert_eq!(reader.try_get_log_entries(1..2).await.expect("entry 1 is intact"), vec![blank(1, 1)]);
    drop((reader, log));
    {
        let options = rocksdb::Options::default();
        let db = rocksdb::DB::open_cf(&options, dir.path(), ["entries", "meta"]).expect("raw open");
        let meta = db.cf_handle("meta").expect("family");
        db.put_cf(meta, b"vote", [1u8, 0, 0]).expect("write");
    }
    let error = RaftLog::open(dir.path()).err().expect("a damaged vote opened");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
}
