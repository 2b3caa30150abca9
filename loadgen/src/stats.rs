//! What a run measured: latency histograms (HdrHistogram, from each operation's *intended* send time,
//! so a stalled switch cannot hide its latency behind requests that were never sent), outcomes by
//! kind, state and reason, a per-second timeline, and the record of every payment sent (for the
//! verification). Recording goes to one of several shards picked per thread, so concurrent tasks
//! rarely touch the same lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switch::proto::{PaymentState, Reason};

use crate::report::model::{LatencySummary, OutcomeCount, Second};
use crate::workload::Kind;

const SHARDS: usize = 16;
/// Latencies above this are clamped into the histogram's last bucket (and still counted).
const LATENCY_MAX_US: u64 = 600_000_000;

/// How one operation ended, as loadgen saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// An answer with a payment state (batch and stream items, unary successes).
    State(PaymentState, Reason),
    /// A unary call refused with a gRPC status and a reason (nothing recorded, or recorded FAILED).
    Refused(tonic::Code, Reason),
    /// No answer: the connection failed, the stream broke, or the call timed out. The payment may
    /// or may not exist; the verification looks it up.
    Unanswered(tonic::Code),
    /// A status query answered.
    Found,
    /// Never sent: loadgen's own bound on operations in flight was reached (open loop against a
    /// switch that stopped keeping up). Counted, never hidden.
    Overrun,
}

impl Outcome {
    pub fn from_status(status: &tonic::Status) -> Outcome {
        match switch::reason::reason_of(status) {
            Some(reason) => Outcome::Refused(status.code(), reason),
            None => Outcome::Unanswered(status.code()),
        }
    }

    /// Whether it counts as an error for the live error rate and the abort rule. A payee's decline
    /// is a business outcome the run asked for, not an error.
    pub fn is_error(self) -> bool {
        match self {
            Outcome::State(state, _) => {
                matches!(state, PaymentState::Rejected | PaymentState::Failed | PaymentState::Expired)
            }
            Outcome::Refused(..) | Outcome::Unanswered(_) | Outcome::Overrun => true,
            Outcome::Found => false,
        }
    }

    /// The reason when the switch shed this operation at admission (RATE_LIMITED or
    /// SWITCH_BUSY, on a unary call or in-band on a batch or stream item).
    pub fn shed(self) -> Option<Reason> {
        match self {
            Outcome::Refused(_, reason @ (Reason::RateLimited | Reason::SwitchBusy))
            | Outcome::State(PaymentState::Rejected, reason @ (Reason::RateLimited | Reason::SwitchBusy)) => {
                Some(reason)
            }
            _ => None,
        }
    }

    pub fn label(self, kind: Kind) -> String {
        let reason = |reason: Reason| match reason {
            Reason::Unspecified => String::new(),
            reason => format!(" {}", reason.as_str_name().trim_start_matches("REASON_")),
        };
        match self {
            Outcome::State(state, why) => {
                format!("{} {}{}", kind.name(), state.as_str_name().trim_start_matches("PAYMENT_STATE_"), reason(why))
            }
            Outcome::Refused(code, why) => format!("{} refused {code:?}{}", kind.name(), reason(why)),
            Outcome::Unanswered(code) => format!("{} no answer ({code:?})", kind.name()),
            Outcome::Found => format!("{} found", kind.name()),
            Outcome::Overrun => format!("{} not sent (loadgen in-flight bound)", kind.name()),
        }
    }
}

/// One payment, collect or refund that loadgen sent, for the verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub id: u128,
    pub kind: Kind,
    /// PSP indexes: who is debited and who is credited if it completes.
    pub payer_psp: u16,
    pub payee_psp: u16,
    pub amount: u64,
    pub outcome: Outcome,
}

struct Shard {
    latency: Histogram<u64>,
    /// Latency of completed payments alone, and of operations shed at admission alone.
    completed: Histogram<u64>,
    shed: Histogram<u64>,
    /// The fairness run's bystanders: operations whose payer is not the first PSP (the flooder).
    others: GroupShard,
    seconds: Vec<SecondShard>,
    outcomes: HashMap<(Kind, Outcome), u64>,
    sent: Vec<Sent>,
}

/// Counts and completed latency of one group of payers.
#[derive(Clone)]
pub struct GroupShard {
    /// Operations answered or given up on (every recorded outcome).
    pub recorded: u64,
    pub completed: u64,
    pub completed_latency: Histogram<u64>,
}

impl GroupShard {
    fn new() -> GroupShard {
        GroupShard { recorded: 0, completed: 0, completed_latency: histogram() }
    }
}

#[derive(Default)]
struct SecondShard {
    sent: u64,
    answered: u64,
    failed: u64,
    latency: Option<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to 10 minutes; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

impl Shard {
    fn new() -> Shard {
        Shard {
            latency: histogram(),
            completed: histogram(),
            shed: histogram(),
            others: GroupShard::new(),
            seconds: Vec::new(),
            outcomes: HashMap::new(),
            sent: Vec::new(),
        }
    }

    fn second(&mut self, index: usize) -> &mut SecondShard {
        if self.seconds.len() <= index {
            self.seconds.resize_with(index + 1, SecondShard::default);
        }
        &mut self.seconds[index]
    }
}

/// Shared by every task of a run.
pub struct Recorder {
    start: Instant,
    shards: Vec<Mutex<Shard>>,
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub errors: AtomicU64,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn shard(&self) -> std::sync::MutexGuard<'_, Shard> {
        let index = SHARD.with(|index| *index);
        // A poisoned shard only means another recording task panicked; its data is still counts.
        self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.start).as_secs() as usize
    }

    /// Counts operations about to be sent, at their intended time.
    pub fn sending(&self, intended: Instant, count: u64) {
        self.sent.fetch_add(count, Ordering::Relaxed);
        let second = self.second_of(intended);
        self.shard().second(second).sent += count;
    }

    /// Records operations answered (or failed) now, each with the time it was due to be sent.
    pub fn record(&self, kind: Kind, outcomes: impl IntoIterator<Item = (Instant, Outcome, Option<Sent>)>) {
        let now = Instant::now();
        let second = self.second_of(now);
        let mut shard = self.shard();
        let (mut answered, mut errors) = (0, 0);
        for (intended, outcome, sent) in outcomes {
            let latency_us =
                now.saturating_duration_since(intended).as_micros().clamp(1, u128::from(LATENCY_MAX_US)) as u64;
            answered += 1;
            let error = outcome.is_error();
            errors += u64::from(error);
            // Clamped to the histogram's bounds above, so recording cannot fail.
            let _ = shard.latency.record(latency_us);
            let completed = matches!(outcome, Outcome::State(PaymentState::Completed, _));
            if completed {
                let _ = shard.completed.record(latency_us);
            } else if outcome.shed().is_some() {
                let _ = shard.shed.record(latency_us);
            }
            if sent.is_some_and(|sent| sent.payer_psp != 0) {
                shard.others.recorded += 1;
                if completed {
                    shard.others.completed += 1;
                    let _ = shard.others.completed_latency.record(latency_us);
                }
            }
            *shard.outcomes.entry((kind, outcome)).or_default() += 1;
            if let Some(sent) = sent {
                shard.sent.push(sent);
            }
            let slot = shard.second(second);
            slot.answered += 1;
            slot.failed += u64::from(error);
            let _ = slot.latency.get_or_insert_with(histogram).record(latency_us);
        }
        drop(shard);
        self.answered.fetch_add(answered, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
    }

    /// The latency of everything answered so far (for the live progress line).
    pub fn latency_so_far(&self) -> Histogram<u64> {
        let mut merged = histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = merged.add(&shard.latency);
        }
        merged
    }

    /// Errors among the operations answered in the last `seconds` whole seconds before `now`.
    pub fn recent(&self, now: Instant, seconds: usize) -> (u64, u64) {
        let end = self.second_of(now);
        let begin = end.saturating_sub(seconds);
        let (mut answered, mut failed) = (0, 0);
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for slot in shard.seconds.iter().take(end).skip(begin) {
                answered += slot.answered;
                failed += slot.failed;
            }
        }
        (answered, failed)
    }

    /// Everything, merged: the run's summary.
    pub fn finish(&self, measured: Duration) -> Totals {
        let (mut latency, mut completed, mut shed) = (histogram(), histogram(), histogram());
        let mut others = GroupShard::new();
        let mut outcomes: HashMap<(Kind, Outcome), u64> = HashMap::new();
        let mut seconds: Vec<SecondShard> = Vec::new();
        let mut sent = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = latency.add(&shard.latency);
            let _ = completed.add(&shard.completed);
            let _ = shed.add(&shard.shed);
            others.recorded += shard.others.recorded;
            others.completed += shard.others.completed;
            let _ = others.completed_latency.add(&shard.others.completed_latency);
            for (key, count) in &shard.outcomes {
                *outcomes.entry(*key).or_default() += count;
            }
            if seconds.len() < shard.seconds.len() {
                seconds.resize_with(shard.seconds.len(), SecondShard::default);
            }
            for (total, slot) in seconds.iter_mut().zip(&shard.seconds) {
                total.sent += slot.sent;
                total.answered += slot.answered;
                total.failed += slot.failed;
                if let Some(histogram) = &slot.latency {
                    let _ = total.latency.get_or_insert_with(self::histogram).add(histogram);
                }
            }
            sent.append(&mut shard.sent);
        }
        let mut outcome_counts: Vec<(Kind, Outcome, u64)> =
            outcomes.into_iter().map(|((kind, outcome), count)| (kind, outcome, count)).collect();
        outcome_counts
            .sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then_with(|| a.1.label(a.0).cmp(&b.1.label(b.0))));
        let timeline = seconds
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let at =
                    |quantile: f64| slot.latency.as_ref().map_or(0, |histogram| histogram.value_at_quantile(quantile));
                Second {
                    t_s: index as u32,
                    sent: slot.sent,
                    answered: slot.answered,
                    failed: slot.failed,
                    p50_us: at(0.5),
                    p99_us: at(0.99),
                    max_us: slot.latency.as_ref().map_or(0, Histogram::max),
                }
            })
            .collect();
        Totals {
            measured,
            sent_count: self.sent.load(Ordering::Relaxed),
            latency,
            completed_latency: completed,
            shed_latency: shed,
            others,
            outcomes: outcome_counts,
            timeline,
            sent,
        }
    }
}

/// The merged figures of a run.
pub struct Totals {
    pub measured: Duration,
    pub sent_count: u64,
    pub latency: Histogram<u64>,
    /// Latency of completed payments, and of operations shed at admission (`Outcome::shed`).
    pub completed_latency: Histogram<u64>,
    pub shed_latency: Histogram<u64>,
    /// Operations whose payer is not the first PSP: the bystanders of the fairness run.
    pub others: GroupShard,
    pub outcomes: Vec<(Kind, Outcome, u64)>,
    pub timeline: Vec<Second>,
    pub sent: Vec<Sent>,
}

impl Totals {
    pub fn answered(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(_, outcome, _)| !matches!(outcome, Outcome::Unanswered(_) | Outcome::Overrun))
            .map(|(_, _, count)| count)
            .sum()
    }

    pub fn unanswered(&self) -> u64 {
        let unanswered = |outcome: &Outcome| matches!(outcome, Outcome::Unanswered(_) | Outcome::Overrun);
        self.outcomes.iter().filter(|(_, outcome, _)| unanswered(outcome)).map(|(_, _, count)| count).sum()
    }

    /// Payments completed.
    pub fn completed(&self) -> u64 {
        let completed = |outcome: &Outcome| matches!(outcome, Outcome::State(PaymentState::Completed, _));
        self.outcomes.iter().filter(|(_, outcome, _)| completed(outcome)).map(|(_, _, count)| count).sum()
    }

    /// Operations shed at admission with `reason`.
    pub fn shed(&self, reason: Reason) -> u64 {
        self.outcomes.iter().filter(|(_, outcome, _)| outcome.shed() == Some(reason)).map(|(_, _, count)| count).sum()
    }

    pub fn outcome_counts(&self) -> Vec<OutcomeCount> {
        self.outcomes
            .iter()
            .map(|(kind, outcome, count)| OutcomeCount { label: outcome.label(*kind), count: *count })
            .collect()
    }
}

/// Percentiles of a latency histogram in microseconds.
pub fn summarize(histogram: &Histogram<u64>) -> LatencySummary {
    if histogram.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: histogram.len(),
        mean_us: histogram.mean(),
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed() -> Outcome {
        Outcome::State(PaymentState::Completed, Reason::Unspecified)
    }

    #[test]
    fn latency_counts_from_the_intended_send_time() {
        // An operation due 200 ms ago and answered now has ~200 ms latency, however fast the call
        // itself was: this is what keeps a stalled server from hiding its latency.
        let start = Instant::now() - Duration::from_secs(1);
        let recorder = Recorder::new(start);
        let intended = Instant::now() - Duration::from_millis(200);
        recorder.sending(intended, 1);
        recorder.record(Kind::Pay, [(intended, completed(), None)]);
        let totals = recorder.finish(Duration::from_secs(1));
        let summary = summarize(&totals.latency);
        assert_eq!(summary.count, 1);
        assert!((200_000..300_000).contains(&summary.p50_us), "p50 {} µs", summary.p50_us);
    }

    #[test]
    fn percentiles_match_a_known_distribution() {
        let mut histogram = histogram();
        for value in 1..=10_000u64 {
            histogram.record(value).expect("in range");
        }
        let summary = summarize(&histogram);
        let close = |found: u64, expected: u64| found.abs_diff(expected) <= expected / 500 + 1;
        assert!(close(summary.p50_us, 5_000), "p50 {}", summary.p50_us);
        assert!(close(summary.p90_us, 9_000), "p90 {}", summary.p90_us);
        assert!(close(summary.p99_us, 9_900), "p99 {}", summary.p99_us);
        assert!(close(summary.p999_us, 9_990), "p99.9 {}", summary.p999_us);
        assert!(close(summary.max_us, 10_000), "max {}", summary.max_us);
        assert_eq!(summarize(&self::histogram()).count, 0, "an empty histogram summarizes to zeros");
    }

    #[test]
    fn outcomes_timeline_and_sent_records_merge_across_threads() {
        let start = Instant::now();
        let recorder = std::sync::Arc::new(Recorder::new(start));
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for index in 0..1_000u128 {
                        let intended = Instant::now();
                        recorder.sending(intended, 1);
                        let outcome =
                            if index % 10 == 0 { Outcome::Unanswered(tonic::Code::Unavailable) } else { completed() };
                        let sent = Sent {
                            id: thread * 1_000 + index,
                            kind: Kind::Pay,
                            payer_psp: 0,
                            payee_psp: 1,
                            amount: 5,
                            outcome,
                        };
                        recorder.record(Kind::Pay, [(intended, outcome, Some(sent))]);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording thread");
        }
        let totals = recorder.finish(start.elapsed());
        assert_eq!(totals.sent_count, 4_000);
        assert_eq!((totals.answered(), totals.unanswered()), (3_600, 400));
        assert_eq!(totals.sent.len(), 4_000);
        let mut ids: Vec<u128> = totals.sent.iter().map(|sent| sent.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4_000, "every record kept once");
        let timeline_answered: u64 = totals.timeline.iter().map(|second| second.answered).sum();
        let timeline_failed: u64 = totals.timeline.iter().map(|second| second.failed).sum();
        assert_eq!((timeline_answered, timeline_failed), (4_000, 400));
        let labels = totals.outcome_counts();
        assert_eq!(labels[0].label, "pay COMPLETED");
        assert_eq!(labels[0].count, 3_600);
        assert_eq!(labels[1].label, "pay no answer (Unavailable)");
    }

    #[test]
    fn refusals_are_labelled_with_their_reason_and_count_as_errors() {
        let status = switch::reason::Refusal::new(Reason::SwitchBusy, "busy");
        let status: tonic::Status = status.into();
        let outcome = Outcome::from_status(&status);
        assert_eq!(outcome, Outcome::Refused(tonic::Code::ResourceExhausted, Reason::SwitchBusy));
        assert_eq!(outcome.label(Kind::Pay), "pay refused ResourceExhausted SWITCH_BUSY");
        assert!(outcome.is_error());
        assert_eq!(outcome.shed(), Some(Reason::SwitchBusy));
        assert_eq!(Outcome::State(PaymentState::Rejected, Reason::RateLimited).shed(), Some(Reason::RateLimited));
        assert_eq!(Outcome::State(PaymentState::Rejected, Reason::AmountZero).shed(), None);
        assert!(!Outcome::State(PaymentState::Declined, Reason::PayeeDeclined).is_error());
        assert_eq!(
            Outcome::from_status(&tonic::Status::unavailable("down")),
            Outcome::Unanswered(tonic::Code::Unavailable)
        );
    }
}
