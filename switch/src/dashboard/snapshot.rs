//! One dashboard update: counters and levels at an instant, and the JSON the page draws from
//! two of them (rates and latency percentiles are over the interval between the two).
//!
//! The schema is what `page.html` reads; ARCHITECTURE.md ("Operators") lists it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ledger::HistogramSnapshot;
use serde_json::{json, Value};

use crate::core::Switch;
use crate::metrics::reading::Reading;
use crate::metrics::{Metrics, PspCounts, CODE_NAMES, METHODS};

/// The switch's counters and levels at one instant.
pub struct Sample {
    at: Instant,
    outcomes: Vec<(&'static str, &'static str, u64)>,
    psps: HashMap<Arc<str>, PspCounts>,
    methods: Vec<([u64; CODE_NAMES.len()], HistogramSnapshot)>,
    payment_duration: HistogramSnapshot,
    reading: Reading,
}

impl Sample {
    pub fn take(metrics: &Metrics, reading: Reading) -> Sample {
        Sample {
            at: Instant::now(),
            outcomes: metrics.outcomes(),
            psps: metrics.psps().into_iter().collect(),
            methods: (0..=METHODS.len())
                .map(|index| (metrics.method(index).codes(), metrics.method(index).duration.snapshot()))
                .collect(),
            payment_duration: metrics.payment_duration.snapshot(),
            reading,
        }
    }
}

/// Counts per second between two readings of a counter.
fn rate(now: u64, then: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        now.saturating_sub(then) as f64 / seconds
    }
}

fn seconds(nanoseconds: Option<f64>) -> Value {
    nanoseconds.map_or(Value::Null, |nanoseconds| json!(nanoseconds * 1e-9))
}

/// The histogram of the interval (or everything so far, on the first snapshot).
fn interval(now: &HistogramSnapshot, then: Option<&HistogramSnapshot>) -> HistogramSnapshot {
    then.map_or_else(|| now.clone(), |then| now.since(then))
}

pub fn json(switch: &Switch, current: &Sample, previous: Option<&Sample>) -> Value {
    let elapsed = previous.map_or(0.0, |previous| current.at.duration_since(previous.at).as_secs_f64());
    let previous_count = |state: &str, reason: &str| {
        previous.map_or(0, |previous| {
            previous.outcomes.iter().find(|(s, r, _)| *s == state && *r == reason).map_or(0, |entry| entry.2)
        })
    };
    let mut outcomes = Vec::new();
    let (mut total, mut completed, mut declined, mut expired, mut rejected) = (0, 0, 0, 0, 0);
    let (mut interval_total, mut interval_completed) = (0u64, 0u64);
    let mut declines = Vec::new();
    for (state, reason, count) in &current.outcomes {
        let then = if previous.is_some() { previous_count(state, reason) } else { *count };
        let per_second = rate(*count, then, elapsed);
        total += count;
        interval_total += count.saturating_sub(then);
        match *state {
            "COMPLETED" => {
                completed += count;
                interval_completed += count.saturating_sub(then);
            }
            "DECLINED" => declined += count,
            "EXPIRED" => expired += count,
            "REJECTED" | "FAILED" => rejected += count,
            _ => {}
        }
        if !matches!(*state, "COMPLETED" | "PENDING") {
            declines.push(json!({ "reason": reason, "state": state, "total": count, "per_second": per_second }));
        }
        outcomes.push(json!({ "state": state, "reason": reason, "total": count, "per_second": per_second }));
    }
    declines.sort_by_key(|entry| std::cmp::Reverse(entry["total"].as_u64().unwrap_or(0)));
    let latency = interval(&current.payment_duration, previous.map(|previous| &previous.payment_duration));
    let reading = &current.reading;
    let started = switch.metrics.started;
    let uptime = SystemTime::now().duration_since(started).map_or(0.0, |uptime| uptime.as_secs_f64());
    let completed_minor: u64 = current.psps.values().map(|counts| counts.sent_minor).sum();
    json!({
        "time_unix_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": uptime,
        "interval_seconds": elapsed,
        "throughput": {
            "payments_per_second": rate(interval_total, 0, elapsed),
            "completed_per_second": rate(interval_completed, 0, elapsed),
            "requests_per_second": requests_per_second(current, previous, elapsed),
        },
        "success_ratio": if interval_total > 0 { json!(interval_completed as f64 / interval_total as f64) } else { Value::Null },
        "latency_seconds": {
            "p50": seconds(latency.quantile(0.5)),
            "p90": seconds(latency.quantile(0.9)),
            "p99": seconds(latency.quantile(0.99)),
            "p999": seconds(latency.quantile(0.999)),
        },
        "totals": {
            "payments": total, "completed": completed, "declined": declined, "expired": expired,
            "rejected": rejected, "amount_completed_minor": completed_minor,
        },
        "outcomes": outcomes,
        "declines": declines,
        "methods": methods(current, previous, elapsed),
        "psps": psps(current, previous, elapsed),
        "pipeline": pipeline(current, previous, elapsed),
        "invariant": {
            "zero_sum": reading.zero_sum(),
            "sums": reading.sums.iter().map(|sum| json!({
                "currency": sum.currency,
                "balance_sum_minor": clamp(sum.posted_minor),
                "pending_sum_minor": clamp(sum.pending_minor),
            })).collect::<Vec<_>>(),
        },
        "settlement": {
            "window": reading.settlement_window,
            "opened_unix_ms": reading.settlement_opened_unix_ns / 1_000_000,
            "closed_windows": reading.settlement_window.saturating_sub(1),
        },
    })
}

/// Amounts as JSON numbers: exact up to 2^53 minor units, beyond it still right to display.
fn clamp(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

fn requests_per_second(current: &Sample, previous: Option<&Sample>, elapsed: f64) -> f64 {
    let Some(previous) = previous else { return 0.0 };
    let sum = |sample: &Sample| sample.methods.iter().map(|(codes, _)| codes.iter().sum::<u64>()).sum::<u64>();
    rate(sum(current), sum(previous), elapsed)
}

fn methods(current: &Sample, previous: Option<&Sample>, elapsed: f64) -> Vec<Value> {
    let mut methods = Vec::new();
    for (index, (codes, duration)) in current.methods.iter().enumerate() {
        let total: u64 = codes.iter().sum();
        if total == 0 {
            continue;
        }
        let (then_codes, then_duration) = match previous.and_then(|previous| previous.methods.get(index)) {
            Some((codes, duration)) => (*codes, Some(duration)),
            None => (*codes, None),
        };
        let errors = |codes: &[u64]| codes.iter().skip(1).sum::<u64>();
        methods.push(json!({
            "method": Metrics::method_name(index),
            "per_second": rate(total, then_codes.iter().sum(), elapsed),
            "error_per_second": rate(errors(codes), errors(&then_codes), elapsed),
            "total": total,
            "p99_seconds": seconds(interval(duration, then_duration).quantile(0.99)),
        }));
    }
    methods
}

fn psps(current: &Sample, previous: Option<&Sample>, elapsed: f64) -> Vec<Value> {
    let mut psps: Vec<Value> = current
        .reading
        .positions
        .iter()
        .map(|position| {
            let counts = current.psps.get(&position.psp).cloned().unwrap_or_default();
            let then = previous.and_then(|previous| previous.psps.get(&position.psp)).cloned();
            let then = then.unwrap_or_else(|| if previous.is_some() { PspCounts::default() } else { counts.clone() });
            json!({
                "psp": &*position.psp,
                "name": position.name,
                "currency": position.currency,
                "active": position.active,
                "sent_per_second": rate(counts.sent, then.sent, elapsed),
                "received_per_second": rate(counts.received, then.received, elapsed),
                "sent_total": counts.sent,
                "received_total": counts.received,
                "balance_minor": clamp(position.balance_minor),
                "reserved_minor": clamp(i128::try_from(position.reserved_minor).unwrap_or(i128::MAX)),
                "net_debit_cap_minor": position.net_debit_cap_minor,
                "available_minor": clamp(position.available_minor),
                "liquidity_used_ratio": position.liquidity_used_ratio,
                "events_awaiting_ack": position.events_awaiting_ack,
                "stream_connected": position.stream_connected,
                "collects_awaiting_approval": position.collects_awaiting_approval,
            })
        })
        .collect();
    psps.sort_by(|left, right| {
        let key = |value: &Value| value["sent_per_second"].as_f64().unwrap_or(0.0);
        key(right).total_cmp(&key(left))
    });
    psps
}

fn pipeline(current: &Sample, previous: Option<&Sample>, elapsed: f64) -> Value {
    let now = &current.reading.pipeline;
    let then = previous.map(|previous| &previous.reading.pipeline);
    let batches = rate(now.batches_total, then.map_or(now.batches_total, |then| then.batches_total), elapsed);
    let events = rate(now.events_total, then.map_or(now.events_total, |then| then.events_total), elapsed);
    let commit = interval(&now.commit_nanoseconds, then.map(|then| &then.commit_nanoseconds));
    let wal = interval(&now.wal_sync_nanoseconds, then.map(|then| &then.wal_sync_nanoseconds));
    let batch_sizes = interval(&now.batch_events, then.map(|then| &then.batch_events));
    let rocksdb = &current.reading.rocksdb;
    json!({
        "events_in_flight": now.events_in_flight,
        "events_in_flight_max": now.events_in_flight_max,
        "batches_per_second": batches,
        "events_per_second": events,
        "mean_batch_events": if batch_sizes.count() > 0 { json!(batch_sizes.sum as f64 / batch_sizes.count() as f64) } else { Value::Null },
        "commit_p99_seconds": seconds(commit.quantile(0.99)),
        "wal_sync_p99_seconds": seconds(wal.quantile(0.99)),
        "committed_sequence": now.committed_sequence,
        "ledger_failed": now.failed,
        "payments_awaiting_payee": now.payments_awaiting_payee,
        "rocksdb": {
            "write_stopped": rocksdb.write_stopped,
            "delayed_write_rate_bytes": rocksdb.delayed_write_rate_bytes,
            "write_stalls_total": rocksdb.write_stalls_total,
            "pending_compaction_bytes": rocksdb.pending_compaction_bytes,
            "running_compactions": rocksdb.running_compactions,
            "sst_bytes": rocksdb.sst_bytes,
            "memtable_bytes": rocksdb.memtable_bytes,
        },
        "disk_free_bytes": current.reading.disk_free_bytes,
        "disk_total_bytes": current.reading.disk_total_bytes,
    })
}
