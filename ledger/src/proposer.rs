//! The ledger's write door under a replicated log. Submissions are gathered into batches exactly
//! as for a single node (`sequencer::gather`); instead of applying a batch here, the proposing
//! thread hands it to a `Proposer` (the replicated log, outside this crate), which has it applied
//! on every node by the `Applier` and answers with the batch as applied on this one. Each
//! submission then gets its window of the results, as the committer gives them on a single node.
//!
//! A few proposals are in flight at once, no more: whatever arrives meanwhile joins the next
//! batch, so batches grow with the load instead of queueing up as many small entries.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::applier::AppliedBatch;
use crate::clock::Clock;
use crate::error::LedgerError;
use crate::event::Event;
use crate::result::ResultCode;
use crate::sequencer::{fail_replies, gather, next_submission, Message, Reply, Results, Shared, Submission};

/// Called exactly once per proposal: the batch as applied on this node, or why it was not.
pub type ProposalDone = Box<dyn FnOnce(Result<AppliedBatch, LedgerError>) + Send>;

/// The replicated log, as the ledger sees it.
pub trait Proposer: Send + Sync + 'static {
    /// Proposes the batch `events` formed at `timestamp` (nanoseconds); calls `done` once.
    fn propose(&self, timestamp: u64, events: Vec<Event>, done: ProposalDone);
}

/// Proposals in flight at once (the replicated log pipelines them; more only makes batches
/// smaller).
const PROPOSALS_IN_FLIGHT_MAX: usize = 4;
/// At shutdown, how long to wait for proposals in flight to be answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts proposals in flight; the proposing thread waits for a free one.
#[derive(Default)]
struct Slots {
    in_flight: Mutex<usize>,
    changed: Condvar,
}

impl Slots {
    fn take(&self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *in_flight >= PROPOSALS_IN_FLIGHT_MAX {
            in_flight = self.changed.wait(in_flight).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *in_flight += 1;
    }

    fn give_back(&self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *in_flight = in_flight.saturating_sub(1);
        self.changed.notify_all();
    }

    fn wait_idle(&self, timeout: Duration) {
        let in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = self.changed.wait_timeout_while(in_flight, timeout, |in_flight| *in_flight > 0);
    }
}

pub(crate) struct Proposing {
    queue: Receiver<Message>,
    shared: Arc<Shared>,
    clock: Box<dyn Clock>,
    batch_size_max: usize,
    proposer: Arc<dyn Proposer>,
    slots: Arc<Slots>,
    stopping: bool,
    last_timestamp: u64,
}

impl Proposing {
    pub fn new(
        queue: Receiver<Message>,
        shared: Arc<Shared>,
        clock: Box<dyn Clock>,
        batch_size_max: usize,
        proposer: Arc<dyn Proposer>,
    ) -> Proposing {
        Proposing {
            queue,
            shared,
            clock,
            batch_size_max,
            proposer,
            slots: Arc::default(),
            stopping: false,
            last_timestamp: 0,
        }
    }

    pub fn run(mut self) {
        let mut carry: Option<Submission> = None;
        while let Some(first) = next_submission(&self.queue, &mut carry, &mut self.stopping) {
            let (events, replies) = gather(&self.queue, first, &mut carry, self.batch_size_max, &mut self.stopping);
            self.propose(events, replies);
        }
        self.slots.wait_idle(DRAIN_TIMEOUT);
    }

    fn propose(&mut self, events: Vec<Event>, replies: Vec<(Reply, usize)>) {
        let count = events.len();
        // Which positions append a numbered record: their numbers are handed out per submission.
        let sequenced: Vec<bool> =
            events.iter().map(|event| matches!(event, Event::Record(record) if record.sequenced)).collect();
        self.slots.take();
        // Strictly increasing on this node; the appliers clamp it to the state's next timestamp.
        let timestamp = self.clock.now_nanoseconds().max(self.last_timestamp.saturating_add(1));
        self.last_timestamp = timestamp;
        let (shared, slots) = (Arc::clone(&self.shared), Arc::clone(&self.slots));
        // A batch's commit time on a replicated ledger: proposed to applied on this node, the
        // quorum's round trip and fsyncs included (the same histogram as one node's group commit).
        let started = std::time::Instant::now();
        self.proposer.propose(
            timestamp,
            events,
            Box::new(move |outcome| {
                match outcome {
                    Ok(applied) => {
                        shared.committed_sequence.fetch_max(applied.sequence, Ordering::AcqRel);
                        shared.stats.batches_committed.fetch_add(1, Ordering::Relaxed);
                        shared.stats.events_committed.fetch_add(count as u64, Ordering::Relaxed);
                        shared.stats.batch_events.observe(count as u64);
                        let nanoseconds = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        shared.stats.commit_nanoseconds_total.fetch_add(nanoseconds, Ordering::Relaxed);
                        shared.stats.last_batch_events.store(count, Ordering::Relaxed);
                        shared.stats.commit_nanoseconds.observe(nanoseconds);
                        shared.events_in_flight.fetch_sub(count, Ordering::AcqRel);
                        release(applied, replies, &sequenced);
                    }
                    Err(error) => fail_replies(replies, &error, &shared, count),
                }
                slots.give_back();
            }),
        );
    }
}

/// Hands each submission its window of the applied batch's results.
fn release(applied: AppliedBatch, replies: Vec<(Reply, usize)>, sequenced: &[bool]) {
    if applied.results.len() != sequenced.len() {
        // The log applied another batch than the one proposed: a bug; nobody gets a wrong answer.
        let error = LedgerError::Replication(format!(
            "applied {} results for {} events proposed",
            applied.results.len(),
            sequenced.len()
        ));
        for (reply, _) in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    let results = Arc::new(applied.results);
    let sequences = Arc::new(applied.record_sequences);
    let (mut start, mut sequences_start) = (0, 0);
    for (reply, count) in replies {
        let end = start + count;
        let appended = (start..end).filter(|&index| sequenced[index] && results[index] == ResultCode::Ok).count();
        let window = Results {
            batch: Arc::clone(&results),
            start,
            end,
            sequences: Arc::clone(&sequences),
            sequences_start,
            sequences_end: (sequences_start + appended).min(sequences.len()),
            sequence: applied.sequence,
            timestamp: applied.timestamp.saturating_add(start as u64),
        };
        start = end;
        sequences_start = (sequences_start + appended).min(sequences.len());
        let _ = reply.send(Ok(window));
    }
}
