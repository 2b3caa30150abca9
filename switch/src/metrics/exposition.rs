//! The Prometheus text exposition (format 0.0.4) of the switch's counters and a fresh reading.
//!
//! Hand-written rather than a metrics crate: the counters already live in the switch's own
//! atomics (and the ledger's), the format is a few lines of rules, and writing it here keeps
//! every name, unit and bucket in one reviewable place. Checked by `promtool check metrics` and
//! a real Prometheus scrape in the tests.

use std::fmt::Write;

use ledger::HistogramSnapshot;

use super::reading::Reading;
use super::{Metrics, CODE_NAMES, METHODS};

const SECONDS_PER_NANOSECOND: f64 = 1e-9;

/// Builds the page, family by family.
struct Page {
    out: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            let _ = write!(self.out, "{name}=\"");
            escape(&mut self.out, value);
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// A histogram's cumulative buckets, sum and count; bounds and sum multiplied by `scale`
    /// into the base unit (nanoseconds to seconds).
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], snapshot: &HistogramSnapshot, scale: f64) {
        let mut cumulative = 0u64;
        for (index, count) in snapshot.counts.iter().enumerate() {
            cumulative += count;
            let le =
                snapshot.bounds.get(index).map_or_else(|| "+Inf".to_string(), |bound| number(*bound as f64 * scale));
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.sample(&format!("{name}_sum"), labels, number(snapshot.sum as f64 * scale));
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

/// A float without noise from binary scaling (0.0005, not 0.0005000000000000001).
fn number(value: f64) -> String {
    let text = format!("{value:.9}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// The whole exposition.
pub fn render(metrics: &Metrics, reading: &Reading) -> String {
    let mut page = Page { out: String::with_capacity(64 << 10) };
    requests(&mut page, metrics);
    payments(&mut page, metrics);
    positions(&mut page, reading);
    pipeline(&mut page, reading);
    storage(&mut page, reading);
    invariant(&mut page, metrics, reading);
    page.out
}

/// The node's place in the replicated log, for every node whatever its role (a follower serves
/// only these): term, leader, log indexes, and on the leader each follower's lag and the age of
/// the last quorum acknowledgement.
pub fn render_cluster(status: &crate::leadership::ClusterStatus, leader_changes: u64) -> String {
    let mut page = Page { out: String::with_capacity(2 << 10) };
    let gauge = |page: &mut Page, name: &str, help: &str, value: u64| {
        page.family(name, "gauge", help);
        page.sample(name, &[], value);
    };
    gauge(&mut page, "switch_raft_node_id", "This node's id in the cluster.", status.node_id);
    gauge(&mut page, "switch_raft_term", "The Raft term this node is in.", status.term);
    gauge(
        &mut page,
        "switch_raft_is_leader",
        "1 on the node that leads the cluster, else 0.",
        u64::from(status.role == "leader"),
    );
    gauge(
        &mut page,
        "switch_raft_has_leader",
        "1 while this node knows a leader, 0 while none (election, or no quorum).",
        u64::from(status.leader.is_some()),
    );
    gauge(&mut page, "switch_raft_voters", "Voting members of the cluster.", status.voters.len() as u64);
    gauge(
        &mut page,
        "switch_raft_learners",
        "Members receiving the log without a vote (nodes being added).",
        status.learners.len() as u64,
    );
    page.family(
        "switch_raft_leader_changes_total",
        "counter",
        "Leaders this node has seen take over since it started.",
    );
    page.sample("switch_raft_leader_changes_total", &[], leader_changes);
    gauge(&mut page, "switch_raft_last_log_index", "The last entry in this node's durable log.", status.last_log_index);
    gauge(
        &mut page,
        "switch_raft_committed_index",
        "The last entry known committed (on a quorum).",
        status.committed_index,
    );
    gauge(
        &mut page,
        "switch_raft_applied_index",
        "The last entry applied to this node's ledger.",
        status.applied_index,
    );
    gauge(
        &mut page,
        "switch_raft_snapshot_index",
        "The last entry in this node's latest snapshot.",
        status.snapshot_index,
    );
    if !status.replication.is_empty() {
        page.family(
            "switch_raft_follower_lag_entries",
            "gauge",
            "On the leader: entries each follower is behind its log.",
        );
        for follower in &status.replication {
            let id = follower.node_id.to_string();
            page.sample(
                "switch_raft_follower_lag_entries",
                &[("follower", &id)],
                follower.lag.unwrap_or(status.last_log_index),
            );
        }
    }
    if let Some(milliseconds) = status.quorum_acked_ms_ago {
        page.family(
            "switch_raft_quorum_ack_age_seconds",
            "gauge",
            "On the leader: time since a quorum last acknowledged it.",
        );
        page.sample("switch_raft_quorum_ack_age_seconds", &[], milliseconds as f64 / 1_000.0);
    }
    page.out
}

fn requests(page: &mut Page, metrics: &Metrics) {
    page.family("switch_grpc_requests_total", "counter", "gRPC calls finished, by method and status code.");
    for index in 0..=METHODS.len() {
        let method = Metrics::method_name(index);
        for (code, count) in metrics.method(index).codes().iter().enumerate().filter(|(_, count)| **count > 0) {
            page.sample("switch_grpc_requests_total", &[("method", method), ("code", CODE_NAMES[code])], count);
        }
    }
    let name = "switch_grpc_request_duration_seconds";
    page.family(name, "histogram", "gRPC call duration, from request to status (a stream's whole life).");
    for index in 0..=METHODS.len() {
        let snapshot = metrics.method(index).duration.snapshot();
        if snapshot.count() > 0 {
            page.histogram(name, &[("method", Metrics::method_name(index))], &snapshot, SECONDS_PER_NANOSECOND);
        }
    }
    let psps = metrics.psps();
    page.family("switch_psp_grpc_requests_total", "counter", "gRPC calls finished, by calling PSP and status code.");
    for (psp, counts) in &psps {
        for (code, count) in counts.codes.iter().enumerate().filter(|(_, count)| **count > 0) {
            page.sample("switch_psp_grpc_requests_total", &[("psp", psp), ("code", CODE_NAMES[code])], count);
        }
    }
    let name = "switch_psp_grpc_request_duration_seconds";
    page.family(name, "histogram", "gRPC call duration by calling PSP.");
    for (psp, counts) in &psps {
        if counts.duration.count() > 0 {
            page.histogram(name, &[("psp", psp)], &counts.duration, SECONDS_PER_NANOSECOND);
        }
    }
    type Volume = fn(&super::PspCounts) -> u64;
    let volumes: [(&str, &str, Volume); 4] = [
        ("switch_psp_payments_sent_total", "Payments completed with the PSP as payer.", |counts| counts.sent),
        ("switch_psp_payments_received_total", "Payments completed with the PSP as payee.", |counts| counts.received),
        ("switch_psp_sent_minor_total", "Amount of completed payments sent, minor units.", |counts| counts.sent_minor),
        ("switch_psp_received_minor_total", "Amount of completed payments received, minor units.", |counts| {
            counts.received_minor
        }),
    ];
    for (name, help, value) in volumes {
        page.family(name, "counter", help);
        for (psp, counts) in &psps {
            page.sample(name, &[("psp", psp)], value(counts));
        }
    }
}

fn payments(page: &mut Page, metrics: &Metrics) {
    page.family("switch_payments_total", "counter", "Payments answered, by final or current state and reason.");
    for (state, reason, count) in metrics.outcomes() {
        page.sample("switch_payments_total", &[("state", state), ("reason", reason)], count);
    }
    let name = "switch_payment_duration_seconds";
    page.family(name, "histogram", "Time from a payment's admission to its answer.");
    page.histogram(name, &[], &metrics.payment_duration.snapshot(), SECONDS_PER_NANOSECOND);
}

fn positions(page: &mut Page, reading: &Reading) {
    type Figure = fn(&super::reading::Position) -> String;
    let figures: [(&str, &str, Figure); 4] = [
        ("switch_psp_balance_minor", "Posted credits minus posted debits, minor units.", |p| {
            p.balance_minor.to_string()
        }),
        ("switch_psp_reserved_minor", "Debits reserved for payments awaiting the payee.", |p| {
            p.reserved_minor.to_string()
        }),
        ("switch_psp_net_debit_cap_minor", "Net debit cap, minor units.", |p| p.net_debit_cap_minor.to_string()),
        ("switch_psp_available_minor", "Balance - reserved + cap: what the PSP can still send.", |p| {
            p.available_minor.to_string()
        }),
    ];
    for (name, help, figure) in figures {
        page.family(name, "gauge", help);
        for position in &reading.positions {
            page.sample(name, &[("psp", &position.psp), ("currency", &position.currency)], figure(position));
        }
    }
    let per_psp: [(&str, &str, Figure); 5] = [
        ("switch_psp_liquidity_used_ratio", "Share of prefunded balance plus cap in use (1 = at the cap).", |p| {
            number(p.liquidity_used_ratio)
        }),
        ("switch_psp_active", "1 when the participant is active, 0 when suspended.", |p| {
            u8::from(p.active).to_string()
        }),
        ("switch_psp_events_awaiting_ack", "Events in the PSP's outbox not yet acknowledged.", |p| {
            p.events_awaiting_ack.to_string()
        }),
        ("switch_psp_event_stream_connected", "1 while the PSP has an event stream open.", |p| {
            u8::from(p.stream_connected).to_string()
        }),
        ("switch_psp_collects_awaiting_approval", "The PSP's collect requests awaiting the payer's decision.", |p| {
            p.collects_awaiting_approval.to_string()
        }),
    ];
    for (name, help, figure) in per_psp {
        page.family(name, "gauge", help);
        for position in &reading.positions {
            page.sample(name, &[("psp", &position.psp)], figure(position));
        }
    }
    let name = "switch_collects_awaiting_approval_max";
    page.family(name, "gauge", "Most collect requests of one PSP awaiting approval (then COLLECTS_PENDING_LIMIT).");
    page.sample(name, &[], reading.collects_pending_max);
    page.family("switch_participants", "gauge", "Registered participants.");
    page.sample("switch_participants", &[], reading.positions.len());
    page.family("switch_aliases", "gauge", "Aliases in the directory.");
    page.sample("switch_aliases", &[], reading.aliases);
}

fn pipeline(page: &mut Page, reading: &Reading) {
    let pipeline = &reading.pipeline;
    let gauges: [(&str, &str, u64); 4] = [
        ("switch_ledger_events_in_flight", "Ledger events accepted, not yet durable.", pipeline.events_in_flight),
        (
            "switch_ledger_events_in_flight_max",
            "Bound on events in flight (then SWITCH_BUSY).",
            pipeline.events_in_flight_max,
        ),
        ("switch_ledger_committed_sequence", "Number of the last durable ledger batch.", pipeline.committed_sequence),
        (
            "switch_payments_awaiting_payee",
            "Payers waiting for a confirming payee's answer.",
            pipeline.payments_awaiting_payee,
        ),
    ];
    for (name, help, value) in gauges {
        page.family(name, "gauge", help);
        page.sample(name, &[], value);
    }
    page.family("switch_ledger_failed", "gauge", "1 when a storage failure stopped the ledger.");
    page.sample("switch_ledger_failed", &[], u8::from(pipeline.failed));
    page.family("switch_ledger_batches_total", "counter", "Ledger batches committed (one synced write each).");
    page.sample("switch_ledger_batches_total", &[], pipeline.batches_total);
    page.family("switch_ledger_events_total", "counter", "Ledger events committed.");
    page.sample("switch_ledger_events_total", &[], pipeline.events_total);
    page.family("switch_ledger_batch_events", "histogram", "Events per committed batch (group commit).");
    page.histogram("switch_ledger_batch_events", &[], &pipeline.batch_events, 1.0);
    let name = "switch_ledger_commit_duration_seconds";
    page.family(name, "histogram", "The synced RocksDB write of one batch.");
    page.histogram(name, &[], &pipeline.commit_nanoseconds, SECONDS_PER_NANOSECOND);
    let name = "switch_ledger_wal_sync_duration_seconds";
    page.family(name, "histogram", "WAL append and fdatasync within a batch's write.");
    page.histogram(name, &[], &pipeline.wal_sync_nanoseconds, SECONDS_PER_NANOSECOND);
}

fn storage(page: &mut Page, reading: &Reading) {
    let rocksdb = &reading.rocksdb;
    let gauges: [(&str, &str, u64); 8] = [
        ("switch_rocksdb_write_stopped", "1 while RocksDB has stopped writes.", u64::from(rocksdb.write_stopped)),
        (
            "switch_rocksdb_delayed_write_rate_bytes",
            "RocksDB's write slowdown rate (0: none).",
            rocksdb.delayed_write_rate_bytes,
        ),
        (
            "switch_rocksdb_pending_compaction_bytes",
            "Bytes RocksDB estimates compaction must rewrite.",
            rocksdb.pending_compaction_bytes,
        ),
        ("switch_rocksdb_running_compactions", "Compactions running.", rocksdb.running_compactions),
        ("switch_rocksdb_sst_bytes", "Size of all SST files.", rocksdb.sst_bytes),
        ("switch_rocksdb_memtable_bytes", "Size of all memtables.", rocksdb.memtable_bytes),
        ("switch_disk_free_bytes", "Free bytes on the data directory's filesystem.", reading.disk_free_bytes),
        ("switch_disk_total_bytes", "Size of the data directory's filesystem.", reading.disk_total_bytes),
    ];
    for (name, help, value) in gauges {
        page.family(name, "gauge", help);
        page.sample(name, &[], value);
    }
    page.family("switch_rocksdb_write_stalls_total", "counter", "RocksDB write stops and slowdowns since start.");
    page.sample("switch_rocksdb_write_stalls_total", &[], rocksdb.write_stalls_total);
}

fn invariant(page: &mut Page, metrics: &Metrics, reading: &Reading) {
    page.family("switch_ledger_balance_sum_minor", "gauge", "Sum of all posted balances of a currency: must be 0.");
    for sum in &reading.sums {
        page.sample("switch_ledger_balance_sum_minor", &[("currency", &sum.currency)], sum.posted_minor);
    }
    page.family("switch_ledger_balanced", "gauge", "1 when every currency's balances sum to zero, else 0.");
    page.sample("switch_ledger_balanced", &[], u8::from(reading.zero_sum()));
    page.family("switch_settlement_window", "gauge", "Number of the open settlement window.");
    page.sample("switch_settlement_window", &[], reading.settlement_window);
    let name = "switch_settlement_window_opened_timestamp_seconds";
    page.family(name, "gauge", "When the open settlement window opened (0: at the start).");
    page.sample(name, &[], number(reading.settlement_opened_unix_ns as f64 * SECONDS_PER_NANOSECOND));
    let name = "switch_store_corrupt_records_total";
    page.family(name, "counter", "Reads of stored records that did not decode; any means the switch has failed.");
    page.sample(name, &[], metrics.store_corrupt_records.load(std::sync::atomic::Ordering::Relaxed));
    page.family("switch_build_info", "gauge", "The running build.");
    page.sample("switch_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    let started = metrics.started.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
    page.family("switch_start_time_seconds", "gauge", "When the switch started, seconds since the epoch.");
    page.sample("switch_start_time_seconds", &[], number(started));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_are_plain() {
        let mut out = String::new();
        escape(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
        assert_eq!(number(0.0005), "0.0005");
        assert_eq!(number(30.0), "30");
        assert_eq!(number(0.0), "0");
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let histogram = ledger::Histogram::new(&[1_000_000, 5_000_000]);
        histogram.observe(500_000);
        histogram.observe(2_000_000);
        histogram.observe(9_000_000);
        let mut page = Page { out: String::new() };
        page.histogram("x_seconds", &[("method", "M")], &histogram.snapshot(), SECONDS_PER_NANOSECOND);
        let expected = "x_seconds_bucket{method=\"M\",le=\"0.001\"} 1\n\
                        x_seconds_bucket{method=\"M\",le=\"0.005\"} 2\n\
                        x_seconds_bucket{method=\"M\",le=\"+Inf\"} 3\n\
                        x_seconds_sum{method=\"M\"} 0.0115\n\
                        x_seconds_count{method=\"M\"} 3\n";
        assert_eq!(page.out, expected);
    }
}
