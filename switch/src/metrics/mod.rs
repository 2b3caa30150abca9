//! What the switch counts for its operators, and how it is read out.
//!
//! The request path records into plain atomics: counters per gRPC method and code, per PSP, per
//! payment outcome, and fixed-bucket histograms (`ledger::Histogram`). Nothing on that path takes
//! a lock or allocates: per-PSP and per-outcome cells live in lock-free maps, created once on
//! first use, and batch calls add their counts once per batch. Everything that is a level rather
//! than an event (positions, queue depth, RocksDB health, the zero-sum invariant) is not tracked
//! at all but read from the switch when someone asks (`reading`), once per scrape.
//!
//! Two readers share that: the Prometheus exposition at `/metrics` (`exposition`) and the live
//! dashboard (`crate::dashboard`). Names follow ENGINEERING.md §5: `switch_*`, base units,
//! `_total` counters, explicit histogram buckets, labels only from bounded sets (method, code,
//! PSP id, state, reason).

pub mod exposition;
pub mod grpc;
pub mod reading;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ledger::{Histogram, HistogramSnapshot};

use crate::proto::{PaymentState, Reason};

/// Upper bounds in nanoseconds from 500 µs to 30 s, for request and payment durations.
pub const DURATION_NANOSECONDS: &[u64] = &ledger::histogram::microseconds([
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
]);

/// The gRPC methods the switch serves, by path; anything else counts as `other`.
pub const METHODS: &[&str] = &[
    "/paymentswitch.v1.PaymentService/Pay",
    "/paymentswitch.v1.PaymentService/PayBatch",
    "/paymentswitch.v1.PaymentService/PayStream",
    "/paymentswitch.v1.PaymentService/GetPaymentStatus",
    "/paymentswitch.v1.PaymentService/RequestCollect",
    "/paymentswitch.v1.PaymentService/Refund",
    "/paymentswitch.v1.PaymentService/GetPosition",
    "/paymentswitch.v1.DirectoryService/RegisterAlias",
    "/paymentswitch.v1.DirectoryService/RegisterAliasBatch",
    "/paymentswitch.v1.DirectoryService/RemoveAlias",
    "/paymentswitch.v1.DirectoryService/ResolveAlias",
    "/paymentswitch.v1.EventService/Subscribe",
    "/paymentswitch.v1.OperatorService/RegisterParticipant",
    "/paymentswitch.v1.OperatorService/GetParticipant",
    "/paymentswitch.v1.OperatorService/ListParticipants",
    "/paymentswitch.v1.OperatorService/FundIn",
    "/paymentswitch.v1.OperatorService/FundOut",
    "/paymentswitch.v1.OperatorService/SetNetDebitCap",
    "/paymentswitch.v1.OperatorService/SuspendParticipant",
    "/paymentswitch.v1.OperatorService/ReactivateParticipant",
    "/paymentswitch.v1.OperatorService/CloseSettlementWindow",
    "/paymentswitch.v1.OperatorService/GetSettlementReport",
    "/paymentswitch.v1.OperatorService/GetPayment",
    "/paymentswitch.v1.OperatorService/GetPayments",
    "/paymentswitch.v1.OperatorService/AddNode",
    "/paymentswitch.v1.OperatorService/RemoveNode",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// gRPC status code names, by code number (0..=16).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Most PSPs with their own series: participants are bounded by config, and only certificates
/// from the switch's CA get this far, but the bound keeps a misissued CA from growing the map.
const PSP_SERIES_MAX: usize = 10_000;

/// Requests by status code and their durations: RED for one method or one PSP.
#[derive(Debug)]
pub struct Red {
    codes: [AtomicU64; CODE_NAMES.len()],
    pub duration: Histogram,
}

impl Default for Red {
    fn default() -> Self {
        Red { codes: Default::default(), duration: Histogram::new(DURATION_NANOSECONDS) }
    }
}

impl Red {
    pub fn record(&self, code: usize, elapsed: Duration) {
        self.codes[code.min(CODE_NAMES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(nanoseconds(elapsed));
    }

    /// Requests so far by code number.
    pub fn codes(&self) -> [u64; CODE_NAMES.len()] {
        std::array::from_fn(|code| self.codes[code].load(Ordering::Relaxed))
    }
}

/// What one PSP did: its requests, and the payments it completed as payer and as payee.
#[derive(Debug, Default)]
pub struct PspMetrics {
    pub requests: Red,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub sent_minor: AtomicU64,
    pub received_minor: AtomicU64,
}

/// Point-in-time copy of a PSP's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PspCounts {
    pub codes: Vec<u64>,
    pub duration: HistogramSnapshot,
    pub sent: u64,
    pub received: u64,
    pub sent_minor: u64,
    pub received_minor: u64,
}

#[derive(Debug)]
pub struct Metrics {
    /// One per entry of `METHODS`, plus `other` last.
    methods: Box<[Red]>,
    psps: papaya::HashMap<Arc<str>, PspMetrics>,
    /// Payments answered, by (state, reason).
    outcomes: papaya::HashMap<(i32, i32), AtomicU64>,
    /// Admission to answer, per payment.
    pub payment_duration: Histogram,
    /// Reads of stored records that did not decode (`crate::records`): any is a failed switch.
    pub store_corrupt_records: AtomicU64,
    pub started: SystemTime,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            methods: (0..=METHODS.len()).map(|_| Red::default()).collect(),
            psps: papaya::HashMap::new(),
            outcomes: papaya::HashMap::new(),
            payment_duration: Histogram::new(DURATION_NANOSECONDS),
            store_corrupt_records: AtomicU64::new(0),
            started: SystemTime::now(),
        }
    }
}

impl Metrics {
    /// The index of a request path in `METHODS` (`METHODS.len()` for any other path).
    pub fn method_index(path: &str) -> usize {
        METHODS.iter().position(|method| *method == path).unwrap_or(METHODS.len())
    }

    /// The short name of a method index: `Service/Method`, or `other`.
    pub fn method_name(index: usize) -> &'static str {
        // Made once: the label of every request is one of these, never formatted per request.
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| {
            METHODS
                .iter()
                .map(|path| {
                    let (service, method) = path.trim_start_matches('/').rsplit_once('/').unwrap_or(("", path));
                    format!("{}/{method}", service.rsplit('.').next().unwrap_or(service))
                })
                .collect()
        });
        names.get(index).map_or("other", String::as_str)
    }

    pub fn method(&self, index: usize) -> &Red {
        &self.methods[index.min(self.methods.len() - 1)]
    }

    /// Runs `record` on the PSP's cells, creating them on first use.
    pub fn with_psp(&self, psp: &str, record: impl FnOnce(&PspMetrics)) {
        let psps = self.psps.pin();
        if let Some(cells) = psps.get(psp) {
            return record(cells);
        }
        if psps.len() >= PSP_SERIES_MAX {
            return;
        }
        record(psps.get_or_insert_with(Arc::from(psp), PspMetrics::default));
    }

    /// A completed payment, counted once: as sent for the payer and received for the payee.
    pub fn completed(&self, payer: &str, payee: &str, amount_minor: u64) {
        self.completed_many(payer, 1, amount_minor);
        self.received(payee, amount_minor);
    }

    /// The payer's side of `count` completed payments totalling `amount_minor` (a batch adds
    /// its payer's count once).
    pub fn completed_many(&self, payer: &str, count: u64, amount_minor: u64) {
        self.with_psp(payer, |cells| {
            cells.sent.fetch_add(count, Ordering::Relaxed);
            cells.sent_minor.fetch_add(amount_minor, Ordering::Relaxed);
        });
    }

    /// The payee's side of one completed payment.
    pub fn received(&self, payee: &str, amount_minor: u64) {
        self.received_many(payee, 1, amount_minor);
    }

    /// The payee's side of `count` completed payments totalling `amount_minor`.
    pub fn received_many(&self, payee: &str, count: u64, amount_minor: u64) {
        if count == 0 {
            return;
        }
        self.with_psp(payee, |cells| {
            cells.received.fetch_add(count, Ordering::Relaxed);
            cells.received_minor.fetch_add(amount_minor, Ordering::Relaxed);
        });
    }

    /// `count` payments answered with `state` and `reason`, each after `elapsed`.
    pub fn answered(&self, state: i32, reason: i32, count: u64, elapsed: Duration) {
        let outcomes = self.outcomes.pin();
        outcomes.get_or_insert_with((state, reason), || AtomicU64::new(0)).fetch_add(count, Ordering::Relaxed);
        self.payment_duration.observe_many(nanoseconds(elapsed), count);
    }

    /// Payments answered so far: (state name, reason name, count), in a stable order.
    pub fn outcomes(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut outcomes: Vec<_> = self
            .outcomes
            .pin()
            .iter()
            .map(|((state, reason), count)| (state_name(*state), reason_name(*reason), count.load(Ordering::Relaxed)))
            .collect();
        outcomes.sort_unstable();
        outcomes
    }

    /// Every PSP's counters, by PSP id.
    pub fn psps(&self) -> Vec<(Arc<str>, PspCounts)> {
        let mut psps: Vec<_> = self
            .psps
            .pin()
            .iter()
            .map(|(psp, cells)| {
                let counts = PspCounts {
                    codes: cells.requests.codes().to_vec(),
                    duration: cells.requests.duration.snapshot(),
                    sent: cells.sent.load(Ordering::Relaxed),
                    received: cells.received.load(Ordering::Relaxed),
                    sent_minor: cells.sent_minor.load(Ordering::Relaxed),
                    received_minor: cells.received_minor.load(Ordering::Relaxed),
                };
                (Arc::clone(psp), counts)
            })
            .collect();
        psps.sort_unstable_by(|left, right| left.0.cmp(&right.0));
        psps
    }
}

pub fn nanoseconds(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// `COMPLETED` for `PAYMENT_STATE_COMPLETED`.
pub fn state_name(state: i32) -> &'static str {
    PaymentState::try_from(state)
        .map_or("UNKNOWN", |state| state.as_str_name().strip_prefix("PAYMENT_STATE_").unwrap_or(state.as_str_name()))
}

/// `UNKNOWN_ALIAS` for `REASON_UNKNOWN_ALIAS`; `NONE` for no reason.
pub fn reason_name(reason: i32) -> &'static str {
    match Reason::try_from(reason) {
        Ok(Reason::Unspecified) => "NONE",
        Ok(reason) => reason.as_str_name().strip_prefix("REASON_").unwrap_or(reason.as_str_name()),
        Err(_) => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_named_service_slash_method_and_unknown_paths_are_other() {
        let pay = Metrics::method_index("/paymentswitch.v1.PaymentService/Pay");
        assert_eq!(Metrics::method_name(pay), "PaymentService/Pay");
        let other = Metrics::method_index("/evil.Service/Probe");
        assert_eq!(other, METHODS.len());
        assert_eq!(Metrics::method_name(other), "other");
    }

    #[test]
    fn outcomes_and_psp_volumes_add_up() {
        let metrics = Metrics::default();
        metrics.answered(PaymentState::Completed as i32, Reason::Unspecified as i32, 3, Duration::from_millis(2));
        metrics.answered(PaymentState::Rejected as i32, Reason::UnknownAlias as i32, 1, Duration::from_millis(1));
        metrics.completed("bank-a", "bank-b", 500);
        metrics.completed_many("bank-a", 2, 300);
        assert_eq!(metrics.outcomes(), vec![("COMPLETED", "NONE", 3), ("REJECTED", "UNKNOWN_ALIAS", 1)]);
        assert_eq!(metrics.payment_duration.snapshot().count(), 4);
        let psps = metrics.psps();
        let names: Vec<&str> = psps.iter().map(|(psp, _)| &**psp).collect();
        assert_eq!(names, ["bank-a", "bank-b"]);
        assert_eq!((psps[0].1.sent, psps[0].1.sent_minor), (3, 800));
        assert_eq!((psps[1].1.received, psps[1].1.received_minor), (1, 500));
    }
}
