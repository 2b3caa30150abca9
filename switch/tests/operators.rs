//! What operators see: the Prometheus exposition (checked by `promtool check metrics` and
//! scraped by a real Prometheus server, which also loads the generated alert rules), the
//! dashboard's page and live stream, and the plain health port for orchestrators. Against a real
//! switch with real payments; Prometheus' tools come from Debian's `prometheus` package, which
//! the test command installs (`scripts/setup.sh`). A missing tool fails the test: it is never
//! skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use switch::proto::{PaymentState, Reason};

/// Pays `count` payments of `amount` from ana@bank-a to bo@bank-b, ids from `first`.
async fn pay_many(bank_a: &mut Psp, first: u128, count: u128, amount: u64) {
    for payment in first..first + count {
        let result = bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", amount)).await.expect("pay");
        assert_eq!(result.into_inner().state, PaymentState::Completed as i32);
    }
}

fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(path.exists(), "{name} is missing: install Debian's `prometheus` package (scripts/setup.sh does)");
    path
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_payments_refusals_and_positions_and_pass_promtool() {
    let test = TestSwitch::start().await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(0, 100_000).await;
    pay_many(&mut bank_a, 1, 5, 1_000).await;
    let refused = bank_a.payments.pay(pay(99, "ana@bank-a", "nobody@bank-b", 10)).await.expect_err("unknown alias");
    assert_eq!(reason(&refused), Some(Reason::UnknownAlias));
    // One collect request from bank-b to bank-a, not yet decided.
    bank_b.payments.request_collect(collect_request(7_000, 10, 0)).await.expect("collect request");

    let (status, text) = http_get(test.operator_address, "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| series(&text, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
    assert_eq!(value(r#"switch_payments_total{state="COMPLETED",reason="NONE"}"#), 5.0);
    assert_eq!(value(r#"switch_payments_total{state="REJECTED",reason="UNKNOWN_ALIAS"}"#), 1.0);
    assert_eq!(value("switch_payment_duration_seconds_count"), 6.0);
    assert_eq!(value(r#"switch_grpc_requests_total{method="PaymentService/Pay",code="OK"}"#), 5.0);
    assert_eq!(value(r#"switch_grpc_requests_total{method="PaymentService/Pay",code="NOT_FOUND"}"#), 1.0);
    assert!(value(r#"switch_psp_grpc_requests_total{psp="bank-a",code="OK"}"#) >= 5.0);
    assert_eq!(value(r#"switch_psp_payments_sent_total{psp="bank-a"}"#), 5.0);
    assert_eq!(value(r#"switch_psp_payments_received_total{psp="bank-b"}"#), 5.0);
    assert_eq!(value(r#"switch_psp_sent_minor_total{psp="bank-a"}"#), 5_000.0);
    assert_eq!(value(r#"switch_psp_balance_minor{psp="bank-a",currency="INR"}"#), 95_000.0);
    assert_eq!(value(r#"switch_psp_balance_minor{psp="bank-b",currency="INR"}"#), 5_000.0);
    assert_eq!(value(r#"switch_psp_liquidity_used_ratio{psp="bank-a"}"#), 0.0);
    assert_eq!(value(r#"switch_psp_active{psp="bank-a"}"#), 1.0);
    // Five credit notifications wait for bank-b, which has no stream open.
    assert_eq!(value(r#"switch_psp_events_awaiting_ack{psp="bank-b"}"#), 5.0);
    assert_eq!(value(r#"switch_psp_event_stream_connected{psp="bank-b"}"#), 0.0);
    assert_eq!(value(r#"switch_psp_collects_awaiting_approval{psp="bank-b"}"#), 1.0);
    assert_eq!(value(r#"switch_psp_collects_awaiting_approval{psp="bank-a"}"#), 0.0);
    assert_eq!(value("switch_collects_awaiting_approval_max"), 100_000.0);
    assert_eq!(value(r#"switch_ledger_balance_sum_minor{currency="INR"}"#), 0.0);
    assert_eq!(value("switch_ledger_balanced"), 1.0);
    assert_eq!(value("switch_ledger_failed"), 0.0);
    assert_eq!(value("switch_participants"), 2.0);
    assert_eq!(value("switch_aliases"), 2.0);
    assert!(value("switch_ledger_batches_total") >= 1.0);
    assert_eq!(value("switch_ledger_batch_events_count"), value("switch_ledger_batches_total"));
    assert_eq!(value("switch_ledger_commit_duration_seconds_count"), value("switch_ledger_batches_total"));
    assert!(value("switch_disk_total_bytes") > 0.0);

    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes()).expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool finishes");
    let said = String::from_utf8_lossy(&checked.stdout).to_string() + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "promtool check metrics failed:\n{said}");
    test.assert_money_conserved();
}

/// A Prometheus server, stopped when dropped.
struct Prometheus {
    child: Child,
    address: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().expect("temporary directory");
    let rules = repository_root().join("deploy").join(switch::observability::ALERTS_FILE);
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: switch\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
    let address = free_port();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={address}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus { child, address, _dir: dir }
}

/// Asks Prometheus for an instant query until it has a sample, for up to 60 s.
async fn query(prometheus: &Prometheus, promql: &str) -> f64 {
    let encoded: String = promql
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let path = format!("/api/v1/query?query={encoded}");
    for _ in 0..120 {
        if let Some((200, body)) = try_http_get(prometheus.address, &path).await {
            let answer: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
            if let Some(value) = answer["data"]["result"][0]["value"][1].as_str() {
                return value.parse().expect("a number");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("Prometheus never had a sample for {promql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_switch_and_loads_the_alert_rules() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 100_000).await;
    pay_many(&mut bank_a, 1, 3, 700).await;
    let prometheus = start_prometheus(test.operator_address);

    assert_eq!(query(&prometheus, r#"up{job="switch"}"#).await, 1.0);
    assert_eq!(query(&prometheus, r#"switch_psp_payments_sent_total{psp="bank-a"}"#).await, 3.0);
    assert_eq!(query(&prometheus, r#"switch_psp_balance_minor{psp="bank-b"}"#).await, 2_100.0);
    assert_eq!(query(&prometheus, "switch_ledger_balanced").await, 1.0);
    let p99 = query(&prometheus, "histogram_quantile(0.99, switch_payment_duration_seconds_bucket)").await;
    assert!(p99 > 0.0, "p99 {p99}");
    // The generated rules loaded and evaluate: the rule group is there with its alerts.
    let (status, rules) = http_get(prometheus.address, "/api/v1/rules").await;
    assert_eq!(status, 200);
    let rules: serde_json::Value = serde_json::from_str(&rules).expect("rules JSON");
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "payment-switch");
    let names: Vec<&str> =
        group["rules"].as_array().expect("rules").iter().filter_map(|rule| rule["name"].as_str()).collect();
    for alert in ["SwitchPspNearCap", "SwitchZeroSumBroken", "SwitchLedgerFailed", "SwitchCommitLatencyHigh"] {
        assert!(names.contains(&alert), "{alert} not loaded: {names:?}");
    }
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_its_page_and_a_live_stream_of_snapshots() {
    let test = TestSwitch::start().await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(1_000, 50_000).await;
    bank_b.payments.request_collect(collect_request(7_000, 10, 0)).await.expect("collect request");
    let (status, page) = http_get(test.operator_address, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/dashboard/stream"), "the page reads the stream");

    // Two snapshots from one connection, with payments between them.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(test.operator_address).await.expect("connect");
    let request = format!("GET /dashboard/stream HTTP/1.1\r\nHost: {}\r\n\r\n", test.operator_address);
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut snapshots = Vec::new();
    while snapshots.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.expect("in time");
        let line = line.expect("read").expect("stream open");
        if let Some(data) = line.strip_prefix("data: ") {
            snapshots.push(serde_json::from_str::<serde_json::Value>(data).expect("snapshot JSON"));
            if snapshots.len() == 1 {
                pay_many(&mut bank_a, 1, 4, 250).await;
            }
        }
    }
    let (first, second) = (&snapshots[0], &snapshots[1]);
    assert_eq!(first["totals"]["payments"], 0);
    assert_eq!(second["totals"]["payments"], 4);
    assert_eq!(second["totals"]["completed"], 4);
    assert!(second["throughput"]["payments_per_second"].as_f64().expect("rate") > 0.0);
    assert_eq!(second["success_ratio"], 1.0);
    assert!(second["latency_seconds"]["p99"].as_f64().expect("p99") > 0.0);
    assert_eq!(second["invariant"]["zero_sum"], true);
    let bank_a_row =
        second["psps"].as_array().expect("psps").iter().find(|row| row["psp"] == "bank-a").expect("bank-a");
    assert_eq!(bank_a_row["sent_total"], 4);
    assert_eq!(bank_a_row["balance_minor"], 49_000);
    assert_eq!(bank_a_row["net_debit_cap_minor"], 1_000);
    assert_eq!(bank_a_row["available_minor"], 50_000);
    let bank_b_row =
        second["psps"].as_array().expect("psps").iter().find(|row| row["psp"] == "bank-b").expect("bank-b");
    assert_eq!(
        (bank_a_row["collects_awaiting_approval"].as_u64(), bank_b_row["collects_awaiting_approval"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(second["settlement"]["window"], 1);
    let (status, health) = http_get(test.operator_address, "/healthz").await;
    assert_eq!((status, health.trim()), (200, "ok"));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrators_probe_health_on_the_plain_port_without_a_certificate() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let test = TestSwitch::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", test.health_address))
        .expect("uri")
        .connect()
        .await
        .expect("plain connection");
    let mut health = HealthClient::new(channel);
    for service in ["", "paymentswitch.v1.PaymentService"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.expect("check").into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "service {service:?}");
    }
    // The plain port serves health only: the payment API needs the mutual-TLS port.
    let mut payments = switch::proto::payment_service_client::PaymentServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", test.health_address))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let refused = payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 1)).await.expect_err("not served here");
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
}

#[test]
fn the_committed_dashboard_and_rules_are_the_generated_ones_and_promtool_passes_them() {
    let deploy = repository_root().join("deploy");
    let committed = |file: &str| std::fs::read_to_string(deploy.join(file)).unwrap_or_default();
    assert!(
        committed(switch::observability::DASHBOARD_FILE) == switch::observability::dashboard_json()
            && committed(switch::observability::ALERTS_FILE) == switch::observability::alerts::rules(),
        "deploy/ differs from the generator: run `switch observability --deploy-dir deploy` and commit"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&committed(switch::observability::DASHBOARD_FILE)).expect("JSON");
    assert_eq!(dashboard["uid"], "payment-switch");
    assert!(dashboard["panels"].as_array().expect("panels").len() > 20);
    let prometheus_dir = deploy.join("prometheus");
    for arguments in [vec!["check", "rules", "alerts.yml"], vec!["test", "rules", "alerts_test.yml"]] {
        let output =
            Command::new(tool("promtool")).args(&arguments).current_dir(&prometheus_dir).output().expect("promtool");
        let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "promtool {arguments:?} failed:\n{said}");
    }
}
