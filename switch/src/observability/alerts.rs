//! # Prometheus alert rules of the switch, generated from code
//!
//! `rules()` returns a Prometheus rule file (YAML, group `payment-switch`) built from the table `ALERTS`:
//! one row per alert, so every alert has the same shape (a `severity` label, a `summary` and a `description`
//! that says what to look at) and a review sees the whole policy on one screen. Like the Grafana dashboard
//! (`grafana.rs`), the committed `alerts.yml` is this function's output; regenerate it, never edit it.
//! `alerts_test.yml` (next to this file) is its `promtool test rules` unit test.
//!
//! Severity: `critical` pages someone now (money or availability at stake: the ledger stopped, the zero-sum
//! invariant broken, the switch down, a PSP at its cap, the disk nearly full); `warning` is for working hours.
//! A warning and a critical alert on the same condition share a name and differ by `severity`, so that
//! Alertmanager can inhibit the warning while the critical one fires; two alerts with the same severity never
//! share a name (Alertmanager would take them for one alert).
//!
//! YAML: every value is written as a single-quoted scalar (a `'` is doubled, nothing else is special), so
//! PromQL's double quotes and the `{{ $labels.psp }}` templates need no other escaping.

use std::fmt::Write as _;

#[derive(Clone, Copy)]
enum Severity {
    Warning,
    Critical,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

struct Alert {
    name: &'static str,
    severity: Severity,
    expr: &'static str,
    /// How long the condition must hold before the alert fires (`0m`: at once).
    for_duration: &'static str,
    summary: &'static str,
    description: &'static str,
}

use Severity::{Critical, Warning};

const ALERTS: &[Alert] = &[
    Alert {
        name: "SwitchHighErrorRatio",
        severity: Warning,
        expr:
            "sum(rate(switch_payments_total{state!~\"COMPLETED|PENDING\"}[5m])) / sum(rate(switch_payments_total[5m])) \
               > 0.05 and sum(rate(switch_payments_total[5m])) > 1",
        for_duration: "5m",
        summary: "{{ $value | humanizePercentage }} of payments are declined, rejected or expired",
        description: "Over 5% of the payments answered in the last 5 minutes did not complete (at least 1 payment/s). \
                      See the dashboard's declines by reason: INSUFFICIENT_LIQUIDITY means a PSP at its cap, \
                      SWITCH_BUSY or RATE_LIMITED overload, UNKNOWN_ALIAS a PSP's directory.",
    },
    Alert {
        name: "SwitchGrpcErrors",
        severity: Warning,
        expr: "sum by (method) (rate(switch_grpc_requests_total{code!~\"OK|CANCELLED\"}[5m])) \
               / sum by (method) (rate(switch_grpc_requests_total[5m])) > 0.05",
        for_duration: "5m",
        summary: "{{ $value | humanizePercentage }} of {{ $labels.method }} calls fail",
        description: "Over 5% of gRPC calls to {{ $labels.method }} ended with a code other than OK in the last 5 \
                      minutes (CANCELLED, a client hanging up or closing its stream, is not counted).",
    },
    Alert {
        name: "SwitchGrpcInternalErrors",
        severity: Critical,
        expr: "sum by (method) (rate(switch_grpc_requests_total{code=~\"INTERNAL|UNKNOWN|DATA_LOSS\"}[5m])) \
               / sum by (method) (rate(switch_grpc_requests_total[5m])) > 0.01",
        for_duration: "5m",
        summary: "{{ $value | humanizePercentage }} of {{ $labels.method }} calls fail with a server error",
        description: "Over 1% of gRPC calls to {{ $labels.method }} ended with INTERNAL, UNKNOWN or DATA_LOSS: \
                      a bug or a storage problem in the switch. Check the switch logs.",
    },
    Alert {
        name: "SwitchPaymentLatencyP99High",
        severity: Warning,
        expr: "histogram_quantile(0.99, sum by (le) (rate(switch_payment_duration_seconds_bucket[5m]))) > 0.25",
        for_duration: "5m",
        summary: "Payment latency p99 is {{ $value | humanizeDuration }}",
        description: "The 99th percentile of payment latency (admission to answer) has been over 250ms for 5 \
                      minutes. Check the commit and WAL sync p99, events in flight and RocksDB stalls.",
    },
    Alert {
        name: "SwitchPaymentLatencyP99High",
        severity: Critical,
        expr: "histogram_quantile(0.99, sum by (le) (rate(switch_payment_duration_seconds_bucket[5m]))) > 1",
        for_duration: "5m",
        summary: "Payment latency p99 is {{ $value | humanizeDuration }}",
        description: "The 99th percentile of payment latency (admission to answer) has been over 1s for 5 minutes: \
                      PSPs are timing payments out. Check the commit and WAL sync p99 and RocksDB stalls.",
    },
    Alert {
        name: "SwitchPspNearCap",
        severity: Warning,
        expr: "switch_psp_liquidity_used_ratio > 0.9",
        for_duration: "2m",
        summary: "PSP {{ $labels.psp }} has used {{ $value | humanizePercentage }} of its liquidity",
        description: "PSP {{ $labels.psp }} is close to its net debit cap; its payments will soon be declined with \
                      INSUFFICIENT_LIQUIDITY. It should prefund or the operator raise its cap.",
    },
    Alert {
        name: "SwitchPspAtCap",
        severity: Critical,
        expr: "switch_psp_liquidity_used_ratio >= 0.99",
        for_duration: "1m",
        summary: "PSP {{ $labels.psp }} is at its net debit cap ({{ $value | humanizePercentage }} used)",
        description: "PSP {{ $labels.psp }} has no liquidity left: its outgoing payments are declined with \
                      INSUFFICIENT_LIQUIDITY until it prefunds, receives payments or the window settles.",
    },
    Alert {
        name: "SwitchCommitLatencyHigh",
        severity: Warning,
        expr: "histogram_quantile(0.99, sum by (le) (rate(switch_ledger_commit_duration_seconds_bucket[5m]))) \
               > 0.05",
        for_duration: "5m",
        summary: "Ledger commit p99 is {{ $value | humanizeDuration }}",
        description: "The 99th percentile of the synced RocksDB write of one batch has been over 50ms for 5 \
                      minutes; every payment waits for it. The disk is slow or saturated, or RocksDB is stalling.",
    },
    Alert {
        name: "SwitchDiskFillingUp",
        severity: Warning,
        expr: "switch_disk_free_bytes / switch_disk_total_bytes < 0.1",
        for_duration: "5m",
        summary: "Only {{ $value | humanizePercentage }} of the switch data disk is free",
        description: "The filesystem of the switch data dir on {{ $labels.instance }} has less than 10% free. \
                      When it is full the ledger stops and the switch refuses all payments.",
    },
    Alert {
        name: "SwitchDiskFillingUp",
        severity: Critical,
        expr: "switch_disk_free_bytes / switch_disk_total_bytes < 0.05",
        for_duration: "5m",
        summary: "Only {{ $value | humanizePercentage }} of the switch data disk is free",
        description: "The filesystem of the switch data dir on {{ $labels.instance }} has less than 5% free. \
                      When it is full the ledger stops and the switch refuses all payments: add space now.",
    },
    Alert {
        name: "SwitchDiskWillFillIn24h",
        severity: Warning,
        expr: "predict_linear(switch_disk_free_bytes[6h], 24 * 3600) < 0 \
               and switch_disk_free_bytes / switch_disk_total_bytes < 0.4",
        for_duration: "1h",
        summary: "The switch data disk on {{ $labels.instance }} will be full within 24h",
        description: "At the rate of the last 6 hours the filesystem of the switch data dir fills up within a day \
                      (predicted free space in 24h: {{ $value | humanize1024 }}B). Add space or check compaction.",
    },
    Alert {
        name: "SwitchEventsPilingUp",
        severity: Warning,
        expr: "switch_psp_events_awaiting_ack > 10000 or (switch_psp_events_awaiting_ack > 1000 \
               and deriv(switch_psp_events_awaiting_ack[15m]) > 0)",
        for_duration: "10m",
        summary: "{{ $value | humanize }} events await an ack from PSP {{ $labels.psp }}",
        description: "PSP {{ $labels.psp }} is not acknowledging its events: over 10000 unacknowledged, or over \
                      1000 and still growing, for 10 minutes. Its outbox grows on the switch's disk.",
    },
    Alert {
        name: "SwitchPspStreamDisconnected",
        severity: Warning,
        expr: "switch_psp_events_awaiting_ack > 0 and switch_psp_event_stream_connected == 0",
        for_duration: "5m",
        summary: "PSP {{ $labels.psp }} has events waiting and no event stream",
        description: "PSP {{ $labels.psp }} has {{ $value | humanize }} events awaiting ack and has not been \
                      subscribed to its event stream for 5 minutes: it does not learn of incoming payments.",
    },
    Alert {
        name: "SwitchPspCollectsNearLimit",
        severity: Warning,
        expr: "switch_psp_collects_awaiting_approval / on (job, instance) group_left \
               switch_collects_awaiting_approval_max > 0.9",
        for_duration: "5m",
        summary:
            "PSP {{ $labels.psp }} has {{ $value | humanizePercentage }} of its limit of collects awaiting approval",
        description: "PSP {{ $labels.psp }} has over 90% of the collect requests it may have open awaiting the \
                      payers' decisions; at the limit its new requests are refused (COLLECTS_PENDING_LIMIT). The \
                      payers' PSPs may not be deciding: check their event streams and events awaiting ack.",
    },
    Alert {
        name: "SwitchLedgerQueueNearFull",
        severity: Warning,
        expr: "switch_ledger_events_in_flight / switch_ledger_events_in_flight_max > 0.9",
        for_duration: "2m",
        summary: "The ledger queue is {{ $value | humanizePercentage }} full",
        description: "Events accepted but not yet durable are near their limit: the ledger cannot keep up and the \
                      switch is about to answer RESOURCE_EXHAUSTED (SWITCH_BUSY). Check commit latency and stalls.",
    },
    Alert {
        name: "SwitchRocksdbWriteStopped",
        severity: Critical,
        expr: "switch_rocksdb_write_stopped == 1",
        for_duration: "1m",
        summary: "RocksDB has stopped writes on {{ $labels.instance }}",
        description: "RocksDB stopped all writes (too many L0 files, memtables or pending compaction bytes): \
                      no batch commits and payments time out. Check pending compaction and the disk.",
    },
    Alert {
        name: "SwitchRocksdbWritesDelayed",
        severity: Warning,
        expr: "switch_rocksdb_delayed_write_rate_bytes > 0",
        for_duration: "10m",
        summary: "RocksDB has slowed writes on {{ $labels.instance }} for 10 minutes",
        description: "RocksDB throttles writes to {{ $value | humanize1024 }}B/s because compaction is behind; \
                      commit latency rises and a write stop may follow.",
    },
    Alert {
        name: "SwitchLedgerFailed",
        severity: Critical,
        expr: "switch_ledger_failed == 1",
        for_duration: "0m",
        summary: "The ledger of {{ $labels.instance }} stopped on a storage failure",
        description: "The switch refuses all work until it is restarted on healthy storage. Check the switch \
                      logs and the disk; do not delete the data dir.",
    },
    Alert {
        name: "SwitchZeroSumBroken",
        severity: Critical,
        expr: "switch_ledger_balanced == 0",
        for_duration: "0m",
        summary: "The ledger's balances no longer sum to zero on {{ $labels.instance }}",
        description: "The sum of all balances of some currency is not zero (switch_ledger_balance_sum_minor shows \
                      which): money was created or lost. Stop and investigate before settling the window.",
    },
    Alert {
        name: "SwitchDown",
        severity: Critical,
        expr: "up{job=\"switch\"} == 0",
        for_duration: "1m",
        summary: "Switch {{ $labels.instance }} is down",
        description: "Prometheus cannot scrape the switch's operator port on {{ $labels.instance }}: the switch \
                      is down or unreachable, and PSPs cannot pay through it.",
    },
    Alert {
        name: "SwitchMetricsAbsent",
        severity: Warning,
        expr: "absent(up{job=\"switch\"})",
        for_duration: "5m",
        summary: "Prometheus has no scrape target for the switch",
        description: "No target of job switch exists: the scrape configuration or service discovery is broken, \
                      so no other switch alert can fire.",
    },
    Alert {
        name: "SwitchClusterNoLeader",
        severity: Critical,
        expr: "max(switch_raft_has_leader{job=\"switch\"}) == 0",
        for_duration: "1m",
        summary: "No node of the replicated switch has a leader",
        description: "Every node that answers says no node leads: nothing is acknowledged and PSPs get \
                      NO_LEADER. A majority of the nodes is down or cannot reach each other (no quorum). \
                      `switch cluster status` shows each node's view; bring a majority back.",
    },
    Alert {
        name: "SwitchClusterQuorumLost",
        severity: Critical,
        expr: "switch_raft_quorum_ack_age_seconds{job=\"switch\"} > 5",
        for_duration: "1m",
        summary: "Leader {{ $labels.instance }} has not heard from a quorum for {{ $value }} s",
        description: "The node that leads has had no acknowledgement from a majority for over 5 s: it refuses \
                      new payments (NO_LEADER) and its writes in flight end with an unknown outcome. The \
                      followers are down or cut off from it; see `switch cluster status` and the peer port.",
    },
    Alert {
        name: "SwitchClusterFollowerLagging",
        severity: Warning,
        expr: "switch_raft_follower_lag_entries{job=\"switch\"} > 10000",
        for_duration: "5m",
        summary: "Follower {{ $labels.follower }} is {{ $value }} entries behind leader {{ $labels.instance }}",
        description: "A follower has stayed far behind the leader's log for 5 minutes: it is catching up from \
                      a long outage, or its disk or network is too slow. While it lags, one more failure \
                      could leave no quorum able to serve at once.",
    },
];

/// Single-quoted YAML scalar: only `'` is special inside, and it is written twice.
fn yaml_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The Prometheus rule file (YAML) with every alert of `ALERTS`.
pub fn rules() -> String {
    let mut out = String::from(
        "# Generated by switch/src/observability/alerts.rs: do not edit by hand.\n\
         groups:\n  - name: payment-switch\n    rules:\n",
    );
    for alert in ALERTS {
        assert!(alert.name.starts_with("Switch") && alert.name.chars().all(|c| c.is_ascii_alphanumeric()));
        let fields = [alert.expr, alert.summary, alert.description];
        assert!(fields.iter().all(|field| !field.is_empty() && !field.contains('\n')), "{}", alert.name);
        let _ = write!(
            out,
            "      - alert: {name}\n        expr: {expr}\n        for: {for_duration}\n        labels:\n          \
             severity: {severity}\n        annotations:\n          summary: {summary}\n          description: \
             {description}\n",
            name = alert.name,
            expr = yaml_quote(alert.expr),
            for_duration = alert.for_duration,
            severity = alert.severity.as_str(),
            summary = yaml_quote(alert.summary),
            description = yaml_quote(alert.description),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_alerts_share_name_and_severity() {
        let mut keys: Vec<(&str, &str)> = ALERTS.iter().map(|a| (a.name, a.severity.as_str())).collect();
        keys.sort_unstable();
        let count = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), count);
        assert_eq!(rules().matches("- alert: ").count(), ALERTS.len());
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(yaml_quote("it's {{ $labels.psp }}"), "'it''s {{ $labels.psp }}'");
    }
}
