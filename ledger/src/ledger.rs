//! The ledger handle: open (with recovery), submit, query, close.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

use crate::clock::Clock;
use crate::codec::{PendingResolution, StoredTransfer};
use crate::error::LedgerError;
use crate::event::Event;
use crate::proposer::{Proposer, Proposing};
use crate::sequencer::{self, Committer, Message, Results, Sequencer, Shared, Stats, Submission};
use crate::state::StateMachine;
use crate::store::{Head, Store, StoreOptions, TransferPage};
use crate::types::Account;

/// TigerBeetle's batch bound; also the switch's bulk-call bound. A batch of this many transfers
/// is ~1 MB of log entry.
pub const BATCH_SIZE_MAX_DEFAULT: usize = 8_190;

#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub path: PathBuf,
    /// Most events in one batch (one synced write). Also the most in one submission.
    pub batch_size_max: usize,
    /// Most submissions waiting in the queue.
    pub queue_depth_max: usize,
    /// Most events accepted but not yet committed; beyond it `submit` answers `Busy`.
    pub events_in_flight_max: usize,
    /// Bound of the in-memory cache of recent transfers (idempotency checks without disk reads).
    pub recent_transfers_max: usize,
    /// How many of the newest log entries are hash-checked at open.
    pub tail_check_batches: u64,
    pub store: StoreOptions,
}

impl LedgerConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LedgerConfig {
            path: path.into(),
            batch_size_max: BATCH_SIZE_MAX_DEFAULT,
            queue_depth_max: 65_536,
            events_in_flight_max: 1 << 20,
            recent_transfers_max: 1 << 20,
            tail_check_batches: 1_024,
            store: StoreOptions::default(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), LedgerError> {
        let problem = if self.batch_size_max == 0 || self.batch_size_max > 1 << 20 {
            "batch_size_max must be 1 to 1048576"
        } else if self.queue_depth_max == 0 {
            "queue_depth_max must be positive"
        } else if self.events_in_flight_max < self.batch_size_max {
            "events_in_flight_max must be at least batch_size_max"
        } else if self.recent_transfers_max < 4 * self.batch_size_max {
            // The cache must hold the uncommitted window: two batches in the pipeline plus one
            // being applied, each up to two entries per event.
            "recent_transfers_max must be at least 4 x batch_size_max"
        } else {
            return Ok(());
        };
        Err(LedgerError::Config(problem.into()))
    }
}

/// A running ledger. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Ledger {
    shared: Arc<Shared>,
    /// The submission queue: bounded, lock-free (crossbeam's array channel).
    queue: Sender<Message>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    config: LedgerConfig,
    closed: AtomicBool,
}

/// Resolves to a submission's results once its batch is durable. Wait on it from a thread with
/// [`Completion::wait`], or `.await` it from async code.
pub struct Completion(oneshot::Receiver<Result<Results, LedgerError>>);

impl Completion {
    pub fn wait(self) -> Result<Results, LedgerError> {
        self.0.recv().unwrap_or(Err(LedgerError::Closed))
    }
}

impl std::future::IntoFuture for Completion {
    type Output = Result<Results, LedgerError>;
    type IntoFuture = CompletionFuture;
    fn into_future(self) -> CompletionFuture {
        CompletionFuture(self.0.into_future())
    }
}

/// The future of a [`Completion`], for async callers.
pub struct CompletionFuture(oneshot::AsyncReceiver<Result<Results, LedgerError>>);

impl Future for CompletionFuture {
    type Output = Result<Results, LedgerError>;
    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(context).map(|result| result.unwrap_or(Err(LedgerError::Closed)))
    }
}

/// A transfer as queried: the record and, for a pending transfer, its resolution if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    pub stored: StoredTransfer,
    pub resolution: Option<PendingResolution>,
}

impl Ledger {
    /// Opens (or creates) the ledger at `config.path`, verifying the tail of the batch log and
    /// restoring accounts and open pending transfers into memory.
    pub fn open(config: LedgerConfig, clock: impl Clock) -> Result<Ledger, LedgerError> {
        config.check()?;
        let store = Store::open(&config.path, &config.store)?;
        let (state, head) = restore(&store, &config)?;
        let shared = Shared::new(store, head.sequence);
        let (queue_sender, queue) = crossbeam_channel::bounded(config.queue_depth_max);
        let (commit_sender, commits) = sequencer::commit_channel();
        let sequencer = Sequencer {
            state,
            queue,
            commits: commit_sender,
            shared: Arc::clone(&shared),
            clock: Box::new(clock),
            batch_size_max: config.batch_size_max,
            stopping: false,
        };
        let committer = Committer { commits, shared: Arc::clone(&shared), previous_hash: head.hash };
        let threads = vec![
            std::thread::Builder::new().name("ledger-sequencer".into()).spawn(move || sequencer.run()),
            std::thread::Builder::new().name("ledger-committer".into()).spawn(move || committer.run()),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| LedgerError::Config(format!("cannot start ledger threads: {error}")))?;
        Ok(Ledger { shared, queue: queue_sender, threads: Mutex::new(threads), config, closed: AtomicBool::new(false) })
    }

    /// The ledger under a replicated log: submissions are gathered into batches as by `open`,
    /// but each batch is handed to `proposer` (the replicated log), which applies it on every
    /// node (`Applier`) and answers with the applied batch; results are released from that.
    /// `store` is the database the local applier writes (the same handle: reads see what is
    /// applied). Submitting on a node that is not the leader fails `NotLeader`.
    pub fn open_replicated(
        config: LedgerConfig,
        clock: impl Clock,
        store: Store,
        proposer: Arc<dyn Proposer>,
    ) -> Result<Ledger, LedgerError> {
        config.check()?;
        let head = store.head()?;
        let shared = Shared::new(store, head.sequence);
        let (queue_sender, queue) = crossbeam_channel::bounded(config.queue_depth_max);
        let proposing = Proposing::new(queue, Arc::clone(&shared), Box::new(clock), config.batch_size_max, proposer);
        let thread = std::thread::Builder::new()
            .name("ledger-proposer".into())
            .spawn(move || proposing.run())
            .map_err(|error| LedgerError::Config(format!("cannot start the ledger thread: {error}")))?;
        Ok(Ledger {
            shared,
            queue: queue_sender,
            threads: Mutex::new(vec![thread]),
            config,
            closed: AtomicBool::new(false),
        })
    }

    /// Replicated: a snapshot install is replacing the store (`None` while it does: readers are
    /// refused, so that the old database can close), then the store it opened.
    pub fn replace_store(&self, store: Option<Store>) {
        self.shared.store.store(store.map(Arc::new));
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Queues a submission without blocking. Its events are applied in order, in one batch;
    /// linked chains must close within it. Fails at once with `Busy` when the ledger is full.
    pub fn submit(&self, events: Vec<Event>) -> Result<Completion, LedgerError> {
        let count = events.len();
        if count == 0 || count > self.config.batch_size_max {
            return Err(LedgerError::BadSubmissionSize { events: count, limit: self.config.batch_size_max });
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(self.shared.failure());
        }
        let limit = self.config.events_in_flight_max;
        let before = self.shared.events_in_flight.fetch_add(count, Ordering::AcqRel);
        if before + count > limit {
            self.shared.events_in_flight.fetch_sub(count, Ordering::AcqRel);
            return Err(LedgerError::Busy { in_flight: before, limit });
        }
        let (reply, receiver) = oneshot::channel();
        let outcome = if self.closed.load(Ordering::SeqCst) {
            Err(LedgerError::Closed)
        } else {
            self.queue.try_send(Message::Submit(Submission { events, reply })).map_err(|error| match error {
                TrySendError::Full(_) => LedgerError::Busy { in_flight: before, limit },
                TrySendError::Disconnected(_) => LedgerError::Closed,
            })
        };
        if let Err(error) = outcome {
            self.shared.events_in_flight.fetch_sub(count, Ordering::AcqRel);
            return Err(error);
        }
        Ok(Completion(receiver))
    }

    /// Submits and waits for the results (blocking the calling thread).
    pub fn execute(&self, events: Vec<Event>) -> Result<Results, LedgerError> {
        self.submit(events)?.wait()
    }

    /// Committed accounts by id, in the order asked.
    pub fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Option<Account>>, LedgerError> {
        Ok(self.shared.store()?.accounts(ids)?)
    }

    /// Committed transfers by id (successes and recorded failures), in the order asked.
    pub fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Option<TransferRecord>>, LedgerError> {
        let stored = self.shared.store()?.transfers(ids)?;
        let resolutions = self.shared.store()?.resolutions(ids)?;
        Ok(stored
            .into_iter()
            .zip(resolutions)
            .map(|(stored, resolution)| stored.map(|stored| TransferRecord { stored, resolution }))
            .collect())
    }

    /// An account's successful transfers with timestamps in `timestamp_min..=timestamp_max`,
    /// oldest first, at most `limit` (capped at `batch_size_max`) per page.
    pub fn account_transfers(
        &self,
        account_id: u128,
        timestamp_min: u64,
        timestamp_max: u64,
        limit: usize,
    ) -> Result<TransferPage, LedgerError> {
        let limit = limit.clamp(1, self.config.batch_size_max);
        Ok(self.shared.store()?.account_transfers(account_id, timestamp_min, timestamp_max, limit)?)
    }

    /// The latest committed value of a service record.
    pub fn record(&self, table: u8, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.shared.store()?.record(table, key)?)
    }

    /// The latest committed values of many records of one table, in the order asked (one
    /// batched read; `None` where a key has no record).
    pub fn records_many(&self, table: u8, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        Ok(self.shared.store()?.records_many(table, keys)?)
    }

    /// Every committed record of a table as (key, value), in key order (for loading at start).
    pub fn records(&self, table: u8) -> Result<Vec<crate::store::KeyValue>, LedgerError> {
        Ok(self.shared.store()?.records(table)?)
    }

    /// Records of `table` under `prefix` after key `after` (exclusive), in key order, at most
    /// `limit`: how a reader follows an appended sequence.
    pub fn records_after(
        &self,
        table: u8,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<crate::store::KeyValue>, LedgerError> {
        Ok(self.shared.store()?.records_after(table, prefix, after, limit)?)
    }

    /// The last committed batch.
    pub fn head(&self) -> Result<Head, LedgerError> {
        Ok(self.shared.store()?.head()?)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The last batch known durable.
    pub fn committed_sequence(&self) -> u64 {
        self.shared.committed_sequence.load(Ordering::Acquire)
    }

    /// Whether a storage failure stopped the ledger (it refuses all work until reopened).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    pub fn events_in_flight(&self) -> usize {
        self.shared.events_in_flight.load(Ordering::Relaxed)
    }

    /// The store, for read-only use by operators' tooling (metrics, audit of a closed ledger).
    /// Replicated, a snapshot install replaces it (and there is none while it does): hold it for
    /// one use, not for the process.
    pub fn store(&self) -> Result<Arc<Store>, LedgerError> {
        self.shared.store()
    }

    /// Stops taking work, lets every queued submission commit, and joins the threads.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Blocks only while the queue is full, which the sequencer is draining.
        let _ = self.queue.send(Message::Shutdown);
        let threads = self.threads.lock().map(|mut threads| std::mem::take(&mut *threads)).unwrap_or_default();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a ledger thread panicked");
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

/// The in-memory state of a ledger from its store, after checking the log's tail: shared by the
/// single node's ledger and the replicated log's applier.
pub(crate) fn restore(store: &Store, config: &LedgerConfig) -> Result<(StateMachine, Head), LedgerError> {
    let head = check_tail(store, config.tail_check_batches)?;
    let accounts = store.all_accounts()?;
    let pending = store.open_pending()?;
    let record_sequences = store.record_sequences()?;
    tracing::info!(
        path = %config.path.display(),
        sequence = head.sequence,
        accounts = accounts.len(),
        open_pending = pending.len(),
        "ledger opened"
    );
    let state = StateMachine::restore(
        config.recent_transfers_max,
        accounts,
        pending,
        record_sequences,
        head.sequence,
        head.next_timestamp,
    );
    Ok((state, head))
}

/// Checks that the log ends where the head says and that its newest `batches` entries are intact
/// and chained. Returns the head.
fn check_tail(store: &Store, batches: u64) -> Result<Head, LedgerError> {
    let head = store.head()?;
    let last = store.last_log_sequence()?;
    if last != head.sequence {
        return Err(LedgerError::CorruptLog {
            sequence: last,
            reason: format!("log ends at batch {last} but the head records batch {}", head.sequence),
        });
    }
    if head.sequence == 0 {
        return Ok(head);
    }
    let first = head.sequence.saturating_sub(batches).max(1);
    let mut expected_previous = None;
    let mut expected_sequence = first;
    let mut last_hash = None;
    let result = store.scan_log(first, |entry| {
        let sequence = entry.batch.sequence;
        if sequence != expected_sequence {
            return Err(LedgerError::CorruptLog { sequence, reason: format!("expected batch {expected_sequence}") });
        }
        if expected_previous.is_some_and(|previous| previous != entry.previous_hash) {
            return Err(LedgerError::CorruptLog { sequence, reason: "hash chain broken".into() });
        }
        expected_previous = Some(entry.hash);
        expected_sequence += 1;
        last_hash = Some(entry.hash);
        Ok(())
    });
    result.map_err(|error| match error {
        LedgerError::Store(reason) => LedgerError::CorruptLog { sequence: expected_sequence, reason },
        other => other,
    })?;
    if last_hash != Some(head.hash) {
        return Err(LedgerError::CorruptLog {
            sequence: head.sequence,
            reason: "head hash does not match the log".into(),
        });
    }
    Ok(head)
}

/// Where a ledger keeps its data by default, relative to the working directory.
pub fn default_path() -> &'static Path {
    Path::new("data/ledger")
}
