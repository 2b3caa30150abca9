//! The two threads that own the ledger: the sequencer (batches and applies) and the committer
//! (writes durably, then releases results).
//!
//! ```text
//! submitters --bounded queue--> sequencer: drain <= batch_size_max events, stamp sequence and time,
//!                                 prefetch stored transfers, apply in memory
//!            --rendezvous--> committer: one synced WriteBatch, then complete every submission
//! ```
//! The sequencer runs one batch ahead of the disk, so applying batch N+1 overlaps the fsync of
//! batch N. Results are released only after their batch is durable. If a write fails, memory is
//! ahead of the disk and cannot be trusted: the ledger stops taking work (every later submission
//! fails) until it is reopened from storage.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::clock::Clock;
use crate::codec::HASH_SIZE;
use crate::error::LedgerError;
use crate::event::{Batch, Event};
use crate::histogram::{self, Histogram};
use crate::result::ResultCode;
use crate::state::{Effects, Known, Prefetched, StateMachine};
use crate::store::{Store, WriteScratch};

/// The results of one submission: a window onto its batch's results (one allocation per batch,
/// not per submission).
#[derive(Clone, Debug)]
pub struct Results {
    pub(crate) batch: Arc<Vec<ResultCode>>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The numbers the batch gave its appended records, and this submission's window of them.
    pub(crate) sequences: Arc<Vec<u64>>,
    pub(crate) sequences_start: usize,
    pub(crate) sequences_end: usize,
    /// The batch that committed these results.
    pub sequence: u64,
    /// Timestamp of the submission's first event.
    pub timestamp: u64,
}

impl Results {
    /// The number given to each of this submission's appended records that succeeded
    /// (`Record::append`), in event order: a subscriber can be handed what it would read.
    pub fn appended(&self) -> &[u64] {
        &self.sequences[self.sequences_start..self.sequences_end]
    }
}

impl std::ops::Deref for Results {
    type Target = [ResultCode];
    fn deref(&self) -> &[ResultCode] {
        &self.batch[self.start..self.end]
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Results, LedgerError>>;

pub(crate) struct Submission {
    pub events: Vec<Event>,
    pub reply: Reply,
}

/// What travels on the submission queue.
pub(crate) enum Message {
    Submit(Submission),
    /// Commit everything queued so far, then stop.
    Shutdown,
}

/// Counters shared between the threads and readers (metrics, benchmarks).
#[derive(Debug)]
pub struct Stats {
    pub batches_committed: AtomicU64,
    pub events_committed: AtomicU64,
    pub commit_nanoseconds_total: AtomicU64,
    pub last_batch_events: AtomicUsize,
    /// Events per committed batch: how well group commit is batching.
    pub batch_events: Histogram,
    /// The synced write of one batch, whole.
    pub commit_nanoseconds: Histogram,
    /// The part of it spent appending to and syncing the WAL (RocksDB's own timer).
    pub wal_sync_nanoseconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            batches_committed: AtomicU64::new(0),
            events_committed: AtomicU64::new(0),
            commit_nanoseconds_total: AtomicU64::new(0),
            last_batch_events: AtomicUsize::new(0),
            batch_events: Histogram::new(histogram::BATCH_EVENTS),
            commit_nanoseconds: Histogram::new(histogram::DURATION_NANOSECONDS_FAST),
            wal_sync_nanoseconds: Histogram::new(histogram::DURATION_NANOSECONDS_FAST),
        }
    }
}

pub(crate) struct Shared {
    /// Swapped whole when a replicated node installs a snapshot (a new database); `None` while
    /// it does.
    pub store: arc_swap::ArcSwapOption<Store>,
    pub events_in_flight: AtomicUsize,
    pub committed_sequence: AtomicU64,
    pub failed: AtomicBool,
    pub failure: Mutex<Option<String>>,
    pub stats: Stats,
}

impl Shared {
    /// The state shared by a ledger's handle and its threads, for `store` at `committed_sequence`.
    pub fn new(store: Store, committed_sequence: u64) -> Arc<Shared> {
        Arc::new(Shared {
            store: arc_swap::ArcSwapOption::from_pointee(store),
            events_in_flight: AtomicUsize::new(0),
            committed_sequence: AtomicU64::new(committed_sequence),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            stats: Stats::default(),
        })
    }

    /// The store, unless a snapshot install is replacing it.
    pub fn store(&self) -> Result<Arc<Store>, LedgerError> {
        self.store
            .load_full()
            .ok_or_else(|| LedgerError::Replication("the store is being replaced by a snapshot".into()))
    }

    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "ledger stopped: storage failure");
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(reason);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn failure(&self) -> LedgerError {
        let reason = self.failure.lock().ok().and_then(|failure| failure.clone());
        LedgerError::Failed(reason.unwrap_or_else(|| "unknown".into()))
    }
}

pub(crate) struct Commit {
    batch: Batch,
    effects: Effects,
    replies: Vec<(Reply, usize)>,
}

pub(crate) struct Sequencer {
    pub state: StateMachine,
    pub queue: Receiver<Message>,
    pub commits: Sender<Commit>,
    pub shared: Arc<Shared>,
    pub clock: Box<dyn Clock>,
    pub batch_size_max: usize,
    /// Set by `Shutdown`: drain the queue without waiting, then stop.
    pub stopping: bool,
}

pub(crate) fn commit_channel() -> (Sender<Commit>, Receiver<Commit>) {
    // A rendezvous: the committer writes one batch while the sequencer holds the next, applied
    // and waiting to be handed over, so apply still overlaps the fsync. Each batch buffered
    // beyond that is one more whole sync that a newly arrived submission waits behind; while
    // syncs slow down (a memtable flush writing beside them), such a queue of small batches
    // held payments at 25,000/s for 3-5 syncs. Capacity 2 here (four batches in the pipeline) gave
    // ~20% more, smaller batches and a higher p99 in 5 of 6 paired runs, with no closed-loop
    // throughput gain beyond the spread (BENCHMARKS.md, seventh session). What arrives
    // meanwhile waits in the submission queue and joins the next batch.
    crossbeam_channel::bounded(0)
}

impl Sequencer {
    pub fn run(mut self) {
        let mut carry: Option<Submission> = None;
        let mut ids = Vec::new();
        // Ends when the queue is drained after a shutdown, or every handle is dropped.
        while let Some(first) = next_submission(&self.queue, &mut carry, &mut self.stopping) {
            let (batch, replies) = self.gather(first, &mut carry);
            if self.shared.failed.load(Ordering::SeqCst) {
                let error = self.shared.failure();
                fail_replies(replies, &error, &self.shared, batch.events.len());
                continue;
            }
            let prefetched = match self.prefetch(&batch, &mut ids) {
                Ok(prefetched) => prefetched,
                Err(error) => {
                    self.shared.fail(format!("reading stored transfers: {error}"));
                    fail_replies(replies, &self.shared.failure(), &self.shared, batch.events.len());
                    continue;
                }
            };
            let effects = self.state.apply(&batch, &prefetched);
            if self.commits.send(Commit { batch, effects, replies }).is_err() {
                break; // the committer is gone; only at shutdown
            }
        }
        // Dropping `commits` lets the committer drain what is in flight and stop.
    }

    /// Takes submissions from the queue until the batch is full or the queue is empty. A
    /// submission never spans two batches (its chains and its results stay together).
    fn gather(&mut self, first: Submission, carry: &mut Option<Submission>) -> (Batch, Vec<(Reply, usize)>) {
        let (events, replies) = gather(&self.queue, first, carry, self.batch_size_max, &mut self.stopping);
        let timestamp = self.clock.now_nanoseconds().max(self.state.next_timestamp());
        let batch = Batch { sequence: self.state.last_sequence() + 1, timestamp, events };
        (batch, replies)
    }

    /// Reads from storage the transfers the batch refers to that memory does not hold.
    fn prefetch(&mut self, batch: &Batch, ids: &mut Vec<u128>) -> Result<Prefetched, LedgerError> {
        self.state.evict_recent(self.shared.committed_sequence.load(Ordering::Acquire));
        self.state.ids_to_prefetch(&batch.events, ids);
        read_known(&*self.shared.store()?, ids, |_| true)
    }
}

/// The first submission of the next batch: the one left over from the last batch, or the next
/// in the queue (waiting for it, unless stopping). `None` once the queue is drained after a
/// shutdown or every handle is gone.
pub(crate) fn next_submission(
    queue: &Receiver<Message>,
    carry: &mut Option<Submission>,
    stopping: &mut bool,
) -> Option<Submission> {
    if let Some(submission) = carry.take() {
        return Some(submission);
    }
    loop {
        let message = if *stopping { queue.try_recv().ok() } else { queue.recv().ok() };
        match message? {
            Message::Submit(submission) => return Some(submission),
            Message::Shutdown => *stopping = true,
        }
    }
}

/// Takes submissions from `queue` after `first` until `batch_size_max` events or an empty queue;
/// a submission that does not fit is left in `carry` for the next batch. Sets `stopping` on a
/// shutdown message. Returns the events and each submission's reply with its event count.
pub(crate) fn gather(
    queue: &Receiver<Message>,
    first: Submission,
    carry: &mut Option<Submission>,
    batch_size_max: usize,
    stopping: &mut bool,
) -> (Vec<Event>, Vec<(Reply, usize)>) {
    // Grows as needed; starting at the batch bound would map 1.4 MB for every lone payment.
    let mut events = Vec::with_capacity(first.events.len().max(64));
    let mut replies = Vec::new();
    let mut add = |submission: Submission, events: &mut Vec<Event>| {
        replies.push((submission.reply, submission.events.len()));
        events.extend(submission.events);
    };
    add(first, &mut events);
    while events.len() < batch_size_max {
        let next = match queue.try_recv() {
            Ok(Message::Submit(next)) => next,
            Ok(Message::Shutdown) => {
                *stopping = true;
                break;
            }
            Err(_) => break,
        };
        if events.len() + next.events.len() > batch_size_max {
            *carry = Some(next);
            break;
        }
        add(next, &mut events);
    }
    (events, replies)
}

/// Reads stored transfers (and, for pending ones, their resolutions) into a prefetch map,
/// keeping only records `visible` says existed (replay uses this to hide later records).
pub(crate) fn read_known(
    store: &Store,
    ids: &[u128],
    visible: impl Fn(u64) -> bool,
) -> Result<Prefetched, LedgerError> {
    let mut prefetched = Prefetched::default();
    if ids.is_empty() {
        return Ok(prefetched);
    }
    let mut pending_ids = Vec::new();
    for stored in store.transfers(ids)?.into_iter().flatten() {
        if !visible(stored.transfer.timestamp) {
            continue;
        }
        if stored.transfer.flags.pending() && stored.result == ResultCode::Ok {
            pending_ids.push(stored.transfer.id);
        }
        prefetched.insert(stored.transfer.id, Known { stored, resolution: None });
    }
    for (id, resolution) in pending_ids.iter().zip(store.resolutions(&pending_ids)?) {
        if let (Some(resolution), Some(known)) = (resolution, prefetched.get_mut(id)) {
            if visible(resolution.timestamp) {
                known.resolution = Some(resolution);
            }
        }
    }
    Ok(prefetched)
}

pub(crate) fn fail_replies(replies: Vec<(Reply, usize)>, error: &LedgerError, shared: &Shared, events: usize) {
    shared.events_in_flight.fetch_sub(events, Ordering::AcqRel);
    for (reply, _) in replies {
        // The submitter may have gone away; nothing to tell it then.
        let _ = reply.send(Err(error.clone()));
    }
}

/// A WAL write-and-sync this slow is logged: ~100 times the disk's usual sync, and on its own
/// longer than the switch's whole 5 ms latency goal.
const SLOW_WAL_SYNC_NANOSECONDS: u64 = 20_000_000;

pub(crate) struct Committer {
    pub commits: Receiver<Commit>,
    pub shared: Arc<Shared>,
    pub previous_hash: [u8; HASH_SIZE],
}

impl Committer {
    pub fn run(mut self) {
        let mut scratch = WriteScratch::default();
        for commit in self.commits.iter() {
            let events = commit.batch.events.len();
            if self.shared.failed.load(Ordering::SeqCst) {
                fail_replies(commit.replies, &self.shared.failure(), &self.shared, events);
                continue;
            }
            let started = Instant::now();
            // A single node's store is never replaced, so `store()` only fails on a bug.
            let written = self.shared.store().and_then(|store| {
                store
                    .write_batch(&commit.batch, &commit.effects, &self.previous_hash, &mut scratch)
                    .map_err(LedgerError::from)
            });
            match written {
                Ok(written) => {
                    self.previous_hash = written.hash;
                    self.shared.committed_sequence.store(commit.batch.sequence, Ordering::Release);
                    self.record_stats(events, started, written.wal_nanoseconds);
                    // Room is made before results are released: a submitter that resubmits as
                    // soon as it hears back must find the room it just freed.
                    self.shared.events_in_flight.fetch_sub(events, Ordering::AcqRel);
                    release(commit);
                }
                Err(error) => {
                    self.shared.fail(format!("writing batch {}: {error}", commit.batch.sequence));
                    fail_replies(commit.replies, &self.shared.failure(), &self.shared, events);
                }
            }
        }
    }

    fn record_stats(&self, events: usize, started: Instant, wal_nanoseconds: u64) {
        let stats = &self.shared.stats;
        stats.batches_committed.fetch_add(1, Ordering::Relaxed);
        stats.events_committed.fetch_add(events as u64, Ordering::Relaxed);
        let nanoseconds = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.commit_nanoseconds_total.fetch_add(nanoseconds, Ordering::Relaxed);
        stats.last_batch_events.store(events, Ordering::Relaxed);
        stats.batch_events.observe(events as u64);
        stats.commit_nanoseconds.observe(nanoseconds);
        stats.wal_sync_nanoseconds.observe(wal_nanoseconds);
        if wal_nanoseconds >= SLOW_WAL_SYNC_NANOSECONDS {
            // Every submission in the pipeline waits on this one sync, so a slow disk shows here
            // first; the time of day lets an operator line it up with the host's own records.
            tracing::warn!(
                wal_ms = wal_nanoseconds / 1_000_000,
                commit_ms = nanoseconds / 1_000_000,
                events,
                "slow ledger WAL sync: every acknowledgement waited on it"
            );
        }
    }
}

/// Hands each submission its window of the committed batch's results.
fn release(commit: Commit) {
    let Commit { batch, effects, replies } = commit;
    let results = Arc::new(effects.results);
    let sequences = Arc::new(effects.record_sequences);
    let (mut start, mut sequences_start) = (0, 0);
    for (reply, count) in replies {
        // The state machine numbers exactly the appended records that succeeded, in event order.
        let appended = batch.events[start..start + count]
            .iter()
            .zip(&results[start..start + count])
            .filter(|(event, result)| matches!((event, result), (Event::Record(record), ResultCode::Ok) if record.sequenced))
            .count();
        let window = Results {
            batch: Arc::clone(&results),
            start,
            end: start + count,
            sequences: Arc::clone(&sequences),
            sequences_start,
            sequences_end: sequences_start + appended,
            sequence: batch.sequence,
            timestamp: batch.event_timestamp(start),
        };
        start += count;
        sequences_start += appended;
        let _ = reply.send(Ok(window));
    }
    assert_eq!(start, results.len(), "every result reaches its submission");
    assert_eq!(sequences_start, sequences.len(), "every appended number reaches its submission");
}
