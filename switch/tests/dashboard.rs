//! The live dashboard in a real browser: headless Chromium (Debian's package) opens the page a
//! running switch serves while PSPs pay through it, and the figures on the page must move: more
//! snapshots, more payments, a throughput above zero, every PSP's row, the invariant shown OK.
//! Set `DASHBOARD_SCREENSHOT=path.png` to keep a screenshot (how docs/dashboard.png is made).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::chromium::Browser;
use common::*;
use switch::proto::PaymentState;

const PAYERS: [&str; 3] = ["bank-a", "bank-c", "bank-d"];

/// Pays from every payer to bo@bank-b until `stop`, several payments in flight per payer.
async fn keep_paying(test: &TestSwitch, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for (index, payer) in PAYERS.iter().enumerate() {
        let mut psp = test.onboard(payer, 0, 1_000_000_000).await;
        psp.alias(&format!("u@{payer}"), "User").await;
        for lane in 0..4u128 {
            let (mut client, stop, alias) = (psp.payments.clone(), Arc::clone(&stop), format!("u@{payer}"));
            let base = ((index as u128) << 64) | (lane << 48);
            tasks.push(tokio::spawn(async move {
                let mut completed = 0;
                while !stop.load(Ordering::Relaxed) {
                    let result = client.pay(pay(base + u128::from(completed) + 1, &alias, "bo@bank-b", 100)).await;
                    assert_eq!(result.expect("pay").into_inner().state, PaymentState::Completed as i32);
                    completed += 1;
                }
                completed
            }));
        }
    }
    tasks
}

async fn number(browser: &mut Browser, expression: &str) -> f64 {
    let value = browser.evaluate(expression).await;
    value.as_f64().or_else(|| value.as_str().and_then(|text| text.parse().ok())).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_shows_the_figures_moving_under_load() {
    let test = TestSwitch::start().await;
    let mut bank_b = test.onboard("bank-b", 0, 0).await;
    bank_b.alias("bo@bank-b", "Bo").await;
    let stop = Arc::new(AtomicBool::new(false));
    let payers = keep_paying(&test, Arc::clone(&stop)).await;

    let url = format!("http://{}/", test.operator_address);
    let mut browser = Browser::open(&url, 1440, 1900).await;
    // Wait for the page to have drawn a few snapshots.
    let mut snapshots = 0.0;
    for _ in 0..200 {
        snapshots = number(&mut browser, "Number(document.body.dataset.snapshots || 0)").await;
        if snapshots >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(snapshots >= 3.0, "the page received {snapshots} snapshots");
    let first_total = number(&mut browser, "Number(document.getElementById('total-payments').dataset.value)").await;
    let first_snapshots = snapshots;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later_total = number(&mut browser, "Number(document.getElementById('total-payments').dataset.value)").await;
    let later_snapshots = number(&mut browser, "Number(document.body.dataset.snapshots)").await;
    let rate = number(&mut browser, "Number(document.getElementById('payments-per-second').dataset.value)").await;

    assert!(later_snapshots > first_snapshots, "snapshots stopped at {first_snapshots}");
    assert!(first_total > 0.0 && later_total > first_total, "total payments {first_total} -> {later_total}");
    assert!(rate > 0.0, "payments per second shown: {rate}");
    assert_eq!(
        browser.evaluate("document.getElementById('connection-state').textContent.trim().toLowerCase()").await,
        "live"
    );
    assert_eq!(browser.evaluate("document.getElementById('zero-sum').dataset.value").await, "1");
    for psp in PAYERS.iter().chain(&["bank-b"]) {
        let rows = number(&mut browser, &format!("document.querySelectorAll('tr[data-psp=\"{psp}\"]').length")).await;
        assert_eq!(rows, 1.0, "one row for {psp}");
    }
    // bank-b's collect requests awaiting approval: none, drawn as 0 in its own column.
    let collects = "document.querySelector('tr[data-psp=\"bank-b\"]').children[13].textContent.trim()";
    assert_eq!(browser.evaluate(collects).await, "0");
    // At 1440 px every column stays in view: the methods card's p99 (long method names ellipsize)
    // and the PSP table's last column.
    for (table, scroller) in [("table.mt", ".xscroll"), ("#psp-table", ".tablewrap")] {
        let fits = format!(
            "(function () {{ var th = document.querySelector('{table} thead th:last-child'); \
             var box = th.closest('{scroller}').getBoundingClientRect(); \
             return th.getBoundingClientRect().right <= box.right + 0.5; }})()"
        );
        assert_eq!(browser.evaluate(&fits).await, true, "the last column of {table} is cut off at 1440 px");
    }
    let p99 = number(&mut browser, "Number(document.getElementById('p99-latency').dataset.value)").await;
    assert!(p99 > 0.0, "p99 shown: {p99}");
    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot().await).expect("write screenshot");
    }

    stop.store(true, Ordering::Relaxed);
    let mut completed = 0;
    for payer in payers {
        completed += payer.await.expect("payer task");
    }
    // What the page counted is what was paid (and the books still balance).
    let (_, metrics) = http_get(test.operator_address, "/metrics").await;
    assert_eq!(series(&metrics, r#"switch_payments_total{state="COMPLETED",reason="NONE"}"#), Some(completed as f64));
    assert!(later_total <= completed as f64);
    test.assert_money_conserved();
}
