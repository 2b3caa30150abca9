//! loadgen against a real switch (in-process, ephemeral port, real mutual TLS): every load model
//! and submission mode runs, verifies, and survives a restart of the switch; bad setups end with a
//! clear error instead of a hang.

use std::time::{Duration, Instant};

use clap::Parser;
use loadgen::cli::Args;
use loadgen::run::{run, Ending};
use switch::config::Config;
use switch::proto::operator_service_client::OperatorServiceClient;
use switch::server::Background;

async fn start(data: &std::path::Path) -> Background {
    let config = Config { data_dir: data.to_path_buf(), ..Config::default() }.on_ephemeral_ports();
    Background::start(config).await.expect("start switch")
}

fn args(running: &Background, data: &std::path::Path, report: &std::path::Path, extra: &[&str]) -> Args {
    let server = format!("https://{}", running.address);
    let certs = data.join("certs");
    let base = [
        "loadgen",
        "--server",
        &server,
        "--certs",
        certs.to_str().expect("utf-8 path"),
        "--report-dir",
        report.to_str().expect("utf-8 path"),
        "--psps",
        "4",
        "--users",
        "2000",
        "--duration",
        "1.5",
        "--quiet",
    ];
    Args::try_parse_from(base.iter().copied().chain(extra.iter().copied())).expect("valid flags")
}

async fn load(args: Args) -> (Ending, serde_json::Value) {
    let checked = args.check().expect("valid settings");
    let dir = args.report_dir.clone();
    let ending = run(args, checked).await.expect("the run completes");
    let json = std::fs::read(dir.join("report.json")).expect("report.json written");
    (ending, serde_json::from_slice(&json).expect("valid JSON"))
}

fn answered(report: &serde_json::Value) -> u64 {
    report["answered"].as_u64().expect("answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_model_and_mode_verifies_against_the_ledger_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    let report = dir.path().join("report");
    let running = start(&data).await;

    // Closed loop over streams with the whole mix, then open loop one payment per RPC, then batches
    // with zipf skew: each run must verify (every acknowledged payment in the ledger with its
    // amount, balance changes equal to completed payments and summing to zero, window counts).
    let completed = dir.path().join("completed.txt");
    let mix = ["--mix", "pay=80,collect=8,refund=6,status=6", "--save-completed", completed.to_str().expect("path")];
    let (ending, first) = load(args(&running, &data, &report, &mix)).await;
    assert_eq!(ending, Ending::Passed, "{first:#}");
    assert_eq!(first["verification"]["passed"], true);
    assert!(answered(&first) > 100, "some load ran: {first:#}");
    let labels: Vec<&str> =
        first["outcomes"].as_array().expect("outcomes").iter().filter_map(|o| o["label"].as_str()).collect();
    for expected in ["pay COMPLETED", "collect AWAITING_APPROVAL", "refund COMPLETED", "status found"] {
        assert!(labels.contains(&expected), "{expected} missing from {labels:?}");
    }
    assert!(std::fs::read_to_string(report.join("report.html")).expect("html").contains("<svg"));

    let open = ["--skip-aliases", "--rate", "400", "--submit", "single"];
    let (ending, second) = load(args(&running, &data, &report, &open)).await;
    assert_eq!(ending, Ending::Passed, "{second:#}");
    assert_eq!(second["offered_per_s"], 400.0);
    assert!(answered(&second) >= 400, "1.5 s at 400/s: {second:#}");

    let batch = ["--skip-aliases", "--submit", "batch", "--batch-size", "64", "--concurrency", "2", "--skew", "zipf"];
    let (ending, third) = load(args(&running, &data, &report, &batch)).await;
    assert_eq!(ending, Ending::Passed, "{third:#}");

    // A restart keeps every payment the first run was told COMPLETED, with its amount.
    running.stop().await.expect("clean stop");
    let running = start(&data).await;
    let saved = std::fs::read_to_string(&completed).expect("completed payments saved");
    let payments: Vec<(u128, u64)> = saved
        .lines()
        .map(|line| {
            let (id, amount) = line.split_once(' ').expect("two fields");
            (u128::from_str_radix(id, 16).expect("hex id"), amount.parse().expect("amount"))
        })
        .collect();
    assert!(!payments.is_empty());
    let connector =
        loadgen::connect::Connector::new(&[format!("https://{}", running.address)], &data.join("certs"), "localhost")
            .expect("connector");
    let channel = connector.connect(&connector.operator_certificate("admin").expect("cert")).await.expect("connect");
    let mut operator = OperatorServiceClient::new(channel);
    for chunk in payments.chunks(8_190) {
        let ids = chunk.iter().map(|(id, _)| id.to_be_bytes().to_vec()).collect();
        let found =
            operator.get_payments(switch::proto::GetPaymentsRequest { payment_ids: ids }).await.expect("lookup");
        for ((id, amount), lookup) in chunk.iter().zip(found.into_inner().payments) {
            let payment = lookup.payment.unwrap_or_else(|| panic!("payment {id:x} lost in the restart"));
            assert_eq!(payment.state, switch::proto::PaymentState::Completed as i32);
            assert_eq!(payment.amount_minor, *amount);
        }
    }
    // And the whole ledger's debits still equal its credits after all of it.
    let accounts =
        running.switch().expect("the node leads").ledger.store().expect("the store").all_accounts().expect("accounts");
    let debits: u128 = accounts.iter().map(|account| account.debits_posted + account.debits_pending).sum();
    let credits: u128 = accounts.iter().map(|account| account.credits_posted + account.credits_pending).sum();
    assert_eq!(debits, credits, "money created or lost");
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_payees_decline_as_told_and_the_run_still_verifies() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    let running = start(&data).await;
    let flags = ["--acceptance", "confirmed", "--decline-rate", "0.25", "--think-time-ms", "2", "--concurrency", "64"];
    let (ending, report) = load(args(&running, &data, &dir.path().join("report"), &flags)).await;
    assert_eq!(ending, Ending::Passed, "{report:#}");
    let outcomes = report["outcomes"].as_array().expect("outcomes");
    let count =
        |label: &str| outcomes.iter().find(|o| o["label"] == label).and_then(|o| o["count"].as_u64()).unwrap_or(0);
    let (completed, declined) = (count("pay COMPLETED"), count("pay DECLINED PAYEE_DECLINED"));
    assert!(completed > 0 && declined > 0, "{outcomes:?}");
    let share = declined as f64 / (completed + declined) as f64;
    assert!((0.1..0.4).contains(&share), "declined share {share} for a 25% decline rate");
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_switch_or_a_foreign_certificate_fails_fast_and_clearly() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let certs = dir.path().join("certs");
    switch::tls::DevelopmentCa::new(&certs).ensure().expect("a CA of our own");
    let report = dir.path().join("report");
    let base = |server: &str| {
        let flags =
            ["loadgen", "--server", server, "--certs", certs.to_str().expect("path"), "--quiet", "--report-dir"];
        Args::try_parse_from(flags.iter().copied().chain([report.to_str().expect("path")])).expect("flags")
    };
    // Nothing listens on port 1.
    let args = base("https://127.0.0.1:1");
    let checked = args.check().expect("valid");
    let started = Instant::now();
    let error = run(args, checked).await.expect_err("unreachable");
    assert!(format!("{error:#}").contains("cannot connect to the switch"), "{error:#}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // A switch whose CA did not issue our certificates refuses us.
    let other = tempfile::tempdir().expect("temporary directory");
    let running = start(&other.path().join("data")).await;
    let args = base(&format!("https://{}", running.address));
    let checked = args.check().expect("valid");
    let error = run(args, checked).await.expect_err("refused");
    let text = format!("{error:#}");
    // The switch's certificate is not from our CA: refused at the handshake, and said so.
    assert!(text.contains("cannot connect to the switch") && text.contains("certificate"), "{text}");
    running.stop().await.expect("clean stop");

    // Plain http is refused before anything connects.
    let args = base("http://127.0.0.1:1");
    let checked = args.check().expect("valid");
    assert!(format!("{:#}", run(args, checked).await.expect_err("plain http")).contains("https://"));
}
