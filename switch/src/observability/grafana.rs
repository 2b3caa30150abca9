//! # The Grafana dashboard of the switch, generated from code
//!
//! `dashboard()` returns the complete Grafana dashboard model (schemaVersion 39) over the metrics the switch
//! exports on its operator port (`GET /metrics`, see the metrics spec). It shows what the live page (`GET /`)
//! shows, but from Prometheus: with history, across restarts, next to the alerts of `alerts.rs`.
//!
//! Why generated, never edited in Grafana's UI (TiKV keeps its dashboards the same way): a hand-edited JSON
//! drifts. Panel ids collide, one panel forgets the `$datasource` or the `$psp` filter, a renamed metric leaves
//! a silently empty graph, and a 3,000-line JSON diff cannot be reviewed. Here every panel goes through the same
//! few helpers (datasource, legend, units, thresholds), ids are assigned in order, the layout is computed
//! (each line of panels shares Grafana's 24-unit width equally), and a change is reviewed as a short Rust diff
//! next to the metric it is about. The committed JSON is this function's output; regenerate it, never edit it
//! (the dashboard is marked `editable: false` for that reason).
//!
//! Rates use `$__rate_interval` (at least four scrapes, so a rate never goes blank when zoomed in); gauges
//! and histograms are aggregated with `max`/`sum` so the panels stay right if the scrape adds labels.

use serde_json::{json, Value};

/// Grafana's grid is 24 units wide.
const GRID_WIDTH: u64 = 24;
/// Height of a line of stat panels and of a line of graphs, in grid units.
const STAT_HEIGHT: u64 = 4;
const GRAPH_HEIGHT: u64 = 8;

/// Every target and panel points at the datasource chosen in the `datasource` template variable.
fn datasource() -> Value {
    json!({ "type": "prometheus", "uid": "${datasource}" })
}

/// `histogram_quantile` of a histogram, aggregated over everything but `le` and the `by` labels.
fn quantile(q: &str, histogram: &str, selector: &str, by: &str) -> String {
    let by = if by.is_empty() { "le".to_string() } else { format!("{by}, le") };
    format!("histogram_quantile({q}, sum by ({by}) (rate({histogram}_bucket{selector}[$__rate_interval])))")
}

/// Lays panels out in lines that share Grafana's 24-unit width equally, and numbers them 1, 2, 3...
#[derive(Default)]
struct Layout {
    panels: Vec<Value>,
    y: u64,
}

impl Layout {
    fn row(&mut self, title: &str) {
        self.line(1, vec![json!({ "type": "row", "title": title, "collapsed": false, "panels": [] })]);
    }

    fn line(&mut self, height: u64, panels: Vec<Value>) {
        let count = panels.len() as u64;
        assert!(count > 0 && GRID_WIDTH.is_multiple_of(count), "{count} panels cannot share a line equally");
        let width = GRID_WIDTH / count;
        for (index, mut panel) in (0..count).zip(panels) {
            panel["id"] = json!(self.panels.len() + 1);
            panel["gridPos"] = json!({ "h": height, "w": width, "x": index * width, "y": self.y });
            self.panels.push(panel);
        }
        self.y += height;
    }

    fn stats(&mut self, panels: Vec<Value>) {
        self.line(STAT_HEIGHT, panels);
    }

    fn graphs(&mut self, panels: Vec<Value>) {
        self.line(GRAPH_HEIGHT, panels);
    }
}

/// Targets `A`, `B`, ... from `(expr, legend)` pairs; instant table queries for table panels.
fn targets(queries: &[(&str, &str)], instant: bool) -> Value {
    assert!(!queries.is_empty() && queries.len() <= 26, "a panel has 1..=26 queries");
    let targets = queries.iter().zip('A'..='Z').map(|(&(expr, legend), ref_id)| {
        assert!(!expr.contains("$datasource"), "$datasource is a datasource reference, not PromQL: {expr}");
        let mut target = json!({ "datasource": datasource(), "expr": expr, "legendFormat": legend,
                                 "refId": ref_id.to_string() });
        if instant {
            target["instant"] = json!(true);
            target["range"] = json!(false);
            target["format"] = json!("table");
        }
        target
    });
    Value::Array(targets.collect())
}

fn panel(kind: &str, title: &str, unit: &str, queries: &[(&str, &str)]) -> Value {
    json!({
        "type": kind, "title": title, "datasource": datasource(),
        "targets": targets(queries, kind == "table"),
        "fieldConfig": { "defaults": { "unit": unit }, "overrides": [] },
    })
}

/// Threshold steps: `base` below the first step, then each `(value, color)`.
fn thresholds(base: &str, steps: &[(f64, &str)]) -> Value {
    let mut list = vec![json!({ "color": base, "value": null })];
    list.extend(steps.iter().map(|&(value, color)| json!({ "color": color, "value": value })));
    json!({ "mode": "absolute", "steps": list })
}

fn timeseries(title: &str, unit: &str, queries: &[(&str, &str)]) -> Value {
    let mut panel = panel("timeseries", title, unit, queries);
    panel["fieldConfig"]["defaults"]["custom"] = json!({ "fillOpacity": 10, "lineWidth": 1, "showPoints": "never" });
    panel["options"] = json!({
        "legend": { "displayMode": "list", "placement": "bottom", "showLegend": true },
        "tooltip": { "mode": "multi", "sort": "desc" },
    });
    panel
}

/// One big number per series, colored by `thresholds`.
fn stat(title: &str, unit: &str, query: (&str, &str), thresholds: Value) -> Value {
    let mut panel = panel("stat", title, unit, &[query]);
    panel["fieldConfig"]["defaults"]["thresholds"] = thresholds;
    panel["options"] = json!({
        "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false },
        "colorMode": "background", "graphMode": "none", "justifyMode": "auto", "orientation": "auto",
        "textMode": "auto",
    });
    panel
}

/// A 0/1 gauge shown as text: `(value, text, color)` for each of the two states.
fn flag(title: &str, query: (&str, &str), states: [(u8, &str, &str); 2]) -> Value {
    let [(low, _, low_color), (high, _, high_color)] = states;
    assert!(low == 0 && high == 1, "flags are 0/1 gauges");
    let mut panel = stat(title, "short", query, thresholds(low_color, &[(1.0, high_color)]));
    let options: serde_json::Map<String, Value> = (0..)
        .zip(states)
        .map(|(index, (value, text, color))| {
            (value.to_string(), json!({ "text": text, "color": color, "index": index }))
        })
        .collect();
    panel["fieldConfig"]["defaults"]["mappings"] = json!([{ "type": "value", "options": options }]);
    panel
}

fn bargauge(title: &str, unit: &str, query: (&str, &str), max: f64, thresholds: Value) -> Value {
    let mut panel = panel("bargauge", title, unit, &[query]);
    let defaults = &mut panel["fieldConfig"]["defaults"];
    defaults["min"] = json!(0);
    defaults["max"] = json!(max);
    defaults["thresholds"] = thresholds;
    panel["options"] = json!({
        "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false },
        "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": true,
    });
    panel
}

/// Instant queries merged into one table on their common labels; each legend names its value column.
fn table(title: &str, unit: &str, queries: &[(&str, &str)]) -> Value {
    let mut panel = panel("table", title, unit, queries);
    let mut rename: serde_json::Map<String, Value> =
        queries.iter().zip('A'..='Z').map(|(&(_, column), id)| (format!("Value #{id}"), json!(column))).collect();
    if let [(_, column)] = queries {
        rename.insert("Value".to_string(), json!(column)); // Grafana does not suffix a lone query's column.
    }
    panel["transformations"] = json!([
        { "id": "merge", "options": {} },
        { "id": "organize", "options": { "excludeByName": { "Time": true }, "renameByName": rename } },
    ]);
    panel["options"] = json!({ "showHeader": true, "cellHeight": "sm" });
    panel
}

const PAYMENT_RATE: &str = "sum(rate(switch_payments_total[$__rate_interval]))";
const COMPLETED_RATE: &str = "sum(rate(switch_payments_total{state=\"COMPLETED\"}[$__rate_interval]))";
/// Completed / every payment answered, as the live page computes its success ratio.
const SUCCESS_RATIO: &str = "sum(rate(switch_payments_total{state=\"COMPLETED\"}[$__rate_interval])) \
                             / sum(rate(switch_payments_total[$__rate_interval]))";
/// Window 0 has no opening time (`opened` = 0): it has been open since the switch started.
const WINDOW_AGE: &str = "time() - max(switch_settlement_window_opened_timestamp_seconds > 0 \
                          or switch_start_time_seconds)";
/// Declines: every payment answered that neither completed nor is pending (as the live page counts them).
const DECLINE_RATE: &str = "sum by (state, reason) \
                            (rate(switch_payments_total{state!~\"COMPLETED|PENDING\"}[$__rate_interval]))";
/// The `$psp` template variable (multi-value, "All" = `.*`).
const PSP: &str = "{psp=~\"$psp\"}";

fn overview(layout: &mut Layout) {
    let info = || thresholds("blue", &[]);
    let success = thresholds("red", &[(0.9, "orange"), (0.95, "green")]);
    let latency = thresholds("green", &[(0.25, "orange"), (1.0, "red")]);
    let p99 = quantile("0.99", "switch_payment_duration_seconds", "", "");
    let zero_sum = [(0, "BROKEN", "red"), (1, "OK", "green")];
    let failed = [(0, "OK", "green"), (1, "FAILED", "red")];
    let mut version = stat("Version", "short", ("max by (version) (switch_build_info)", "{{version}}"), info());
    version["options"]["textMode"] = json!("name");
    layout.row("Overview");
    layout.stats(vec![
        stat("Payments/s", "reqps", (PAYMENT_RATE, ""), info()),
        stat("Success ratio", "percentunit", (SUCCESS_RATIO, ""), success),
        stat("Payment latency p99", "s", (&p99, ""), latency),
        flag("Zero-sum invariant", ("min(switch_ledger_balanced)", ""), zero_sum),
        flag("Ledger", ("max(switch_ledger_failed)", ""), failed),
        stat("Settlement window", "short", ("max(switch_settlement_window)", ""), info()),
    ]);
    layout.stats(vec![
        stat("Window open for", "s", (WINDOW_AGE, ""), info()),
        stat("Uptime", "s", ("time() - max(switch_start_time_seconds)", ""), info()),
        stat("Participants", "short", ("max(switch_participants)", ""), info()),
        stat("Aliases", "short", ("max(switch_aliases)", ""), info()),
        stat("Payments awaiting payee", "short", ("sum(switch_payments_awaiting_payee)", ""), info()),
        version,
    ]);
}

/// A node's value of a `switch_raft_*` family. Every node exports those (a follower only those),
/// so these graphs have one line per node, named by its scrape target (`instance`).
fn per_node(metric: &str) -> String {
    format!("max by (instance) ({metric})")
}

/// The replicated log: who leads, in which term, how far each node's log, commit and apply have
/// come, and the leader's view of its followers (what `switch cluster status` prints, with history).
fn cluster(layout: &mut Layout) {
    let leader = [(0, "NONE", "red"), (1, "ELECTED", "green")];
    // The id of the node that says it leads (`switch_raft_is_leader` is 1 there only).
    let leading = "max(switch_raft_node_id and on (instance) (switch_raft_is_leader == 1))";
    // Members the cluster has minus nodes Prometheus reached: a node down or cut off from it.
    let missing = "max(switch_raft_voters) - count(switch_raft_node_id)";
    let missing_thresholds = thresholds("green", &[(1.0, "orange"), (2.0, "red")]);
    // Red where the alerts fire: SwitchClusterQuorumLost above 5 s, SwitchClusterFollowerLagging
    // above 10,000 entries. A heartbeat goes every 100 ms, so a healthy leader's age stays small.
    let ack_thresholds = thresholds("green", &[(1.0, "orange"), (5.0, "red")]);
    let lag_thresholds = thresholds("green", &[(1000.0, "orange"), (10000.0, "red")]);
    let changes = "60 * sum by (instance) (rate(switch_raft_leader_changes_total[$__rate_interval]))";
    let lag = "max by (follower) (switch_raft_follower_lag_entries)";
    let [is_leader, has_leader, term, last_log, committed, applied, snapshot, node_id, ack_age] = [
        "is_leader",
        "has_leader",
        "term",
        "last_log_index",
        "committed_index",
        "applied_index",
        "snapshot_index",
        "node_id",
        "quorum_ack_age_seconds",
    ]
    .map(|name| per_node(&format!("switch_raft_{name}")));
    let node = "{{instance}}";
    let columns = [
        (node_id.as_str(), "Node"),
        (&is_leader, "Leads"),
        (&has_leader, "Knows a leader"),
        (&term, "Term"),
        (&last_log, "Last log"),
        (&committed, "Committed"),
        (&applied, "Applied"),
        (&snapshot, "Snapshot"),
    ];
    layout.row("Cluster");
    layout.stats(vec![
        flag("Leader", ("max(switch_raft_has_leader)", ""), leader),
        stat("Leading node", "short", (leading, ""), thresholds("blue", &[])),
        stat("Term", "short", ("max(switch_raft_term)", ""), thresholds("blue", &[])),
        stat("Voters not answering", "short", (missing, ""), missing_thresholds),
        stat("Quorum ack age", "s", ("max(switch_raft_quorum_ack_age_seconds)", ""), ack_thresholds),
        stat("Largest follower lag", "short", ("max(switch_raft_follower_lag_entries)", ""), lag_thresholds),
    ]);
    layout.graphs(vec![
        timeseries("Leader per node (1 = leads)", "short", &[(&is_leader, node)]),
        timeseries("Term per node", "short", &[(&term, node)]),
        timeseries("Leader changes per minute, per node", "short", &[(changes, node)]),
    ]);
    layout.graphs(vec![
        timeseries("Last log index per node", "short", &[(&last_log, node)]),
        timeseries("Committed index per node", "short", &[(&committed, node)]),
        timeseries("Applied index per node", "short", &[(&applied, node)]),
    ]);
    layout.graphs(vec![
        timeseries("Follower lag (entries, as the leader sees it)", "short", &[(lag, "node {{follower}}")]),
        timeseries("Quorum acknowledgement age (leader)", "s", &[(&ack_age, node)]),
    ]);
    layout.graphs(vec![table("Nodes", "short", &columns)]);
}

fn payments(layout: &mut Layout) {
    let q: Vec<String> =
        ["0.5", "0.9", "0.99", "0.999"].map(|q| quantile(q, "switch_payment_duration_seconds", "", "")).to_vec();
    let throughput = [
        (PAYMENT_RATE, "payments/s"),
        (COMPLETED_RATE, "completed/s"),
        ("sum(rate(switch_grpc_requests_total[$__rate_interval]))", "gRPC requests/s"),
    ];
    let latency = [(q[0].as_str(), "p50"), (&q[1], "p90"), (&q[2], "p99"), (&q[3], "p99.9")];
    let outcomes = "sum by (state, reason) (increase(switch_payments_total[$__range]))";
    layout.row("Payments");
    layout.graphs(vec![
        timeseries("Throughput", "reqps", &throughput),
        timeseries("Success ratio", "percentunit", &[(SUCCESS_RATIO, "completed / answered")]),
        timeseries("Payment latency (admission to answer)", "s", &latency),
    ]);
    layout.graphs(vec![
        timeseries("Declines by reason", "reqps", &[(DECLINE_RATE, "{{state}} {{reason}}")]),
        table("Outcomes over the time range", "short", &[(outcomes, "Payments")]),
    ]);
}

fn grpc(layout: &mut Layout) {
    let rate = "sum by (method) (rate(switch_grpc_requests_total[$__rate_interval]))";
    let errors = "sum by (method, code) (rate(switch_grpc_requests_total{code!=\"OK\"}[$__rate_interval]))";
    let p99 = quantile("0.99", "switch_grpc_request_duration_seconds", "", "method");
    layout.row("gRPC (rate, errors, duration per method)");
    layout.graphs(vec![
        timeseries("Requests/s by method", "reqps", &[(rate, "{{method}}")]),
        timeseries("Errors/s by method (code != OK)", "reqps", &[(errors, "{{method}} {{code}}")]),
        timeseries("Latency p99 by method", "s", &[(&p99, "{{method}}")]),
    ]);
}

fn psps(layout: &mut Layout) {
    let rate = format!("sum by (psp) (rate(switch_psp_grpc_requests_total{PSP}[$__rate_interval]))");
    let errors = "sum by (psp, code) (rate(switch_psp_grpc_requests_total{psp=~\"$psp\", code!=\"OK\"}\
                  [$__rate_interval]))";
    let p99 = quantile("0.99", "switch_psp_grpc_request_duration_seconds", PSP, "psp");
    let sent = format!("sum by (psp) (rate(switch_psp_payments_sent_total{PSP}[$__rate_interval]))");
    let received = format!("sum by (psp) (rate(switch_psp_payments_received_total{PSP}[$__rate_interval]))");
    let flows = [(sent.as_str(), "{{psp}} sent"), (&received, "{{psp}} received")];
    let used = format!("max by (psp) (switch_psp_liquidity_used_ratio{PSP})");
    let used_thresholds = thresholds("green", &[(0.75, "orange"), (0.9, "red")]);
    let position = |metric: &str| format!("max by (psp, currency) ({metric}{PSP})");
    let [balance, reserved, cap, available] = ["balance", "reserved", "net_debit_cap", "available"]
        .map(|position_name| position(&format!("switch_psp_{position_name}_minor")));
    let columns =
        [(balance.as_str(), "Balance"), (&reserved, "Reserved"), (&cap, "Net debit cap"), (&available, "Available")];
    let lines = [(balance.as_str(), "{{psp}} balance {{currency}}"), (&available, "{{psp}} available {{currency}}")];
    let per_psp = |metric: &str| format!("max by (psp) ({metric}{PSP})");
    let awaiting = per_psp("switch_psp_events_awaiting_ack");
    let stream = [(0, "DISCONNECTED", "red"), (1, "CONNECTED", "green")];
    let active = [(0, "SUSPENDED", "orange"), (1, "ACTIVE", "green")];
    layout.row("PSPs");
    layout.graphs(vec![
        timeseries("PSP requests/s", "reqps", &[(&rate, "{{psp}}")]),
        timeseries("PSP errors/s (code != OK)", "reqps", &[(errors, "{{psp}} {{code}}")]),
        timeseries("PSP latency p99", "s", &[(&p99, "{{psp}}")]),
    ]);
    layout.graphs(vec![
        timeseries("Completed payments/s sent and received", "reqps", &flows),
        bargauge("Liquidity used vs cap", "percentunit", (&used, "{{psp}}"), 1.0, used_thresholds),
    ]);
    layout.graphs(vec![
        table("Positions (minor units)", "short", &columns),
        timeseries("Balance and available (minor units)", "short", &lines),
    ]);
    let collects = per_psp("switch_psp_collects_awaiting_approval");
    layout.graphs(vec![
        timeseries("Events awaiting ack", "short", &[(&awaiting, "{{psp}}")]),
        timeseries("Collects awaiting approval", "short", &[(&collects, "{{psp}}")]),
        flag("Event stream", (&per_psp("switch_psp_event_stream_connected"), "{{psp}}"), stream),
        flag("Participant", (&per_psp("switch_psp_active"), "{{psp}}"), active),
    ]);
}

fn pipeline(layout: &mut Layout) {
    let in_flight =
        [("sum(switch_ledger_events_in_flight)", "in flight"), ("max(switch_ledger_events_in_flight_max)", "max")];
    let batch_p50 = quantile("0.5", "switch_ledger_batch_events", "", "");
    let batch_p99 = quantile("0.99", "switch_ledger_batch_events", "", "");
    let batch_mean = "sum(rate(switch_ledger_batch_events_sum[$__rate_interval])) \
                      / sum(rate(switch_ledger_batch_events_count[$__rate_interval]))";
    let batch = [(batch_p50.as_str(), "p50"), (&batch_p99, "p99"), (batch_mean, "mean")];
    let commit = quantile("0.99", "switch_ledger_commit_duration_seconds", "", "");
    let wal_sync = quantile("0.99", "switch_ledger_wal_sync_duration_seconds", "", "");
    let durations = [(commit.as_str(), "commit p99"), (&wal_sync, "WAL sync p99")];
    let committed = [
        ("sum(rate(switch_ledger_batches_total[$__rate_interval]))", "batches/s"),
        ("sum(rate(switch_ledger_events_total[$__rate_interval]))", "events/s"),
    ];
    layout.row("Ledger pipeline");
    layout.graphs(vec![
        timeseries("Events in flight vs max", "short", &in_flight),
        timeseries("Batch size (events)", "short", &batch),
        timeseries("Commit and WAL sync p99", "s", &durations),
        timeseries("Batches and events committed/s", "ops", &committed),
    ]);
}

fn storage(layout: &mut Layout) {
    let stopped = [(0, "OK", "green"), (1, "STOPPED", "red")];
    let free_ratio = "min(switch_disk_free_bytes / switch_disk_total_bytes)";
    let disk_thresholds = thresholds("red", &[(0.05, "orange"), (0.1, "green")]);
    let stalls = "sum(rate(switch_rocksdb_write_stalls_total[$__rate_interval]))";
    let delayed = "max(switch_rocksdb_delayed_write_rate_bytes)";
    let compaction = [("max(switch_rocksdb_pending_compaction_bytes)", "pending compaction")];
    let sizes = [("max(switch_rocksdb_sst_bytes)", "SST files"), ("max(switch_rocksdb_memtable_bytes)", "memtables")];
    let disk = [("min(switch_disk_free_bytes)", "free"), ("max(switch_disk_total_bytes)", "total")];
    let sums = "max by (currency) (switch_ledger_balance_sum_minor)";
    layout.row("RocksDB and disk");
    layout.graphs(vec![
        flag("RocksDB writes", ("max(switch_rocksdb_write_stopped)", ""), stopped),
        stat("Disk free", "percentunit", (free_ratio, ""), disk_thresholds),
        timeseries("Write stalls/s (stops + delays)", "short", &[(stalls, "stalls/s")]),
        timeseries("Delayed write rate (0 = no slowdown)", "Bps", &[(delayed, "rate")]),
    ]);
    layout.graphs(vec![
        timeseries("Pending compaction", "bytes", &compaction),
        timeseries("SST and memtable size", "bytes", &sizes),
        timeseries("Disk of the data dir", "bytes", &disk),
    ]);
    layout.row("Invariant and settlement");
    layout.graphs(vec![
        timeseries("Balance sum per currency (must be 0)", "short", &[(sums, "{{currency}}")]),
        timeseries("Settlement window", "short", &[("max(switch_settlement_window)", "open window")]),
    ]);
}

/// The whole dashboard; serialize it with `serde_json::to_string_pretty` and commit the result.
pub fn dashboard() -> Value {
    let mut layout = Layout::default();
    overview(&mut layout);
    cluster(&mut layout);
    payments(&mut layout);
    grpc(&mut layout);
    psps(&mut layout);
    pipeline(&mut layout);
    storage(&mut layout);
    let psp_query = "label_values(switch_psp_active, psp)";
    json!({
        "uid": "payment-switch", "title": "Payment switch", "schemaVersion": 39, "version": 1,
        "description": "Generated by switch/src/observability/grafana.rs: do not edit by hand.",
        "tags": ["payment-switch"], "editable": false, "graphTooltip": 1, "timezone": "browser",
        "refresh": "5s", "time": { "from": "now-30m", "to": "now" },
        "annotations": { "list": [{
            "builtIn": 1, "datasource": { "type": "grafana", "uid": "-- Grafana --" }, "enable": true,
            "hide": true, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }] },
        "templating": { "list": [
            { "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
              "current": {}, "hide": 0, "refresh": 1, "regex": "", "multi": false, "includeAll": false },
            { "name": "psp", "label": "PSP", "type": "query", "datasource": datasource(),
              "query": { "query": psp_query, "refId": "psp" }, "definition": psp_query,
              "current": {}, "hide": 0, "refresh": 2, "regex": "", "sort": 1,
              "multi": true, "includeAll": true, "allValue": ".*" },
        ] },
        "panels": layout.panels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_are_numbered_in_order_with_a_unit_and_the_datasource_variable() {
        let dashboard = dashboard();
        let panels = dashboard["panels"].as_array().expect("panels");
        for (index, panel) in panels.iter().enumerate() {
            assert_eq!(panel["id"], json!(index + 1));
            assert!(panel["gridPos"]["x"].as_u64().unwrap() + panel["gridPos"]["w"].as_u64().unwrap() <= GRID_WIDTH);
            if panel["type"] != "row" {
                assert!(panel["fieldConfig"]["defaults"]["unit"].is_string(), "{}", panel["title"]);
                for target in panel["targets"].as_array().unwrap() {
                    assert_eq!(target["datasource"]["uid"], "${datasource}");
                }
            }
        }
    }
}
