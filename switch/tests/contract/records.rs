//! Stored records that fail to decode: an error to the caller and a failed switch, never a
//! default (`switch::records`).
//!
//! Each test writes bytes no record type decodes over one stored record, straight into the
//! in-process switch's ledger, then walks the read path that needs it: the call answers INTERNAL
//! with `REASON_INTERNAL`; the gRPC health checks turn NOT_SERVING; `/metrics` counts the corrupt
//! read; every write is refused with `REASON_LEDGER_UNAVAILABLE` and changes nothing; and nothing
//! was read as a default (no second full refund, no "window 1 opened at 0"). At start-up a corrupt
//! record stops the switch from starting.

use ledger::{Record, ResultCode};
use switch::core::tables;
use switch::proto::{self, Reason};
use tonic::Status;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::common::{self, collect_request, http_get, id, pay, series, subscribe, Psp, TestSwitch};
use crate::support::{assert_refusal, assert_refused, Unchanged};

/// Bytes no record of the switch decodes: a truncated protobuf tag, and not 8 bytes long.
pub const GARBAGE: &[u8] = &[0xff, 0xff];

/// Overwrites the record under `key` in `table` with `GARBAGE`, as a bad disk or a bug would.
pub fn corrupt(test: &TestSwitch, table: u8, key: impl Into<Vec<u8>>) {
    let results = test.switch.ledger.execute(vec![Record::put(table, key, GARBAGE.to_vec(), false)]).expect("write");
    assert_eq!(results[0], ResultCode::Ok, "the corrupt record is written");
}

/// The health of `service` on the plain health port.
async fn health(test: &TestSwitch, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", test.health_address))
        .expect("uri")
        .connect()
        .await
        .expect("plain connection");
    let request = HealthCheckRequest { service: service.into() };
    HealthClient::new(channel).check(request).await.expect("health check").into_inner().status
}

/// `status` is the answer to a read of a corrupt record, and the switch has failed: health
/// NOT_SERVING (the switch and each service), the corrupt read counted, `/healthz` 503, and a
/// payment refused with LEDGER_UNAVAILABLE, changing nothing.
pub async fn assert_switch_failed(test: &TestSwitch, status: &Status, payer: &mut Psp) {
    assert_refused(status, Reason::Internal, None);
    // The health reporter is told by a task watching the switch: wait for it, boundedly.
    let mut waited = 0;
    while health(test, "").await != ServingStatus::NotServing as i32 {
        waited += 1;
        assert!(waited < 500, "health never turned NOT_SERVING");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(health(test, "paymentswitch.v1.PaymentService").await, ServingStatus::NotServing as i32);
    let (_, metrics) = http_get(test.operator_address, "/metrics").await;
    let corrupt = series(&metrics, "switch_store_corrupt_records_total").expect("the corrupt-record counter");
    assert!(corrupt >= 1.0, "corrupt reads counted: {corrupt}");
    let (code, _) = http_get(test.operator_address, "/healthz").await;
    assert_eq!(code, 503, "/healthz of a failed switch");
    let unchanged = Unchanged::take(test);
    let refused = payer.payments.pay(pay(0xfa11, "ana@bank-a", "bo@bank-b", 1)).await;
    assert_refusal(refused, Reason::LedgerUnavailable, None);
    unchanged.assert_still(test, "a payment on a failed switch");
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_payment_record_answers_internal_and_fails_the_switch() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("pay");
    assert_eq!(health(&test, "").await, ServingStatus::Serving as i32, "healthy before");
    corrupt(&test, tables::PAYMENTS, id(1));
    let request = proto::GetPaymentStatusRequest { payment_id: id(1) };
    let status = bank_a.payments.get_payment_status(request).await.expect_err("corrupt metadata");
    assert_switch_failed(&test, &status, &mut bank_a).await;
    // The operator's view reads the same record: the same answer, not a payment with empty fields.
    let request = proto::GetPaymentRequest { payment_id: id(1) };
    assert_refusal(test.operator().await.get_payment(request).await, Reason::Internal, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_refund_total_never_allows_a_second_full_refund() {
    let test = TestSwitch::start().await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 1_000)).await.expect("pay");
    let refund = |refund_id: u128| proto::RefundRequest {
        refund_id: id(refund_id),
        original_payment_id: id(1),
        amount_minor: 1_000,
        currency: "INR".into(),
        note: String::new(),
    };
    bank_b.payments.refund(refund(10)).await.expect("the full refund");
    corrupt(&test, tables::REFUNDS, id(1));
    let unchanged = Unchanged::take(&test);
    let status = bank_b.payments.refund(refund(11)).await.expect_err("a total that does not decode is not 0");
    unchanged.assert_still(&test, "a refund against a corrupt total");
    assert_eq!(bank_b.position().await.balance_minor, 0, "refunded once, not twice");
    assert_switch_failed(&test, &status, &mut bank_a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_collect_record_answers_its_decision_and_its_retry_with_internal() {
    let test = TestSwitch::start().await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_b.payments.request_collect(collect_request(1, 400, 0)).await.expect("request");
    corrupt(&test, tables::COLLECTS, id(1));
    let unchanged = Unchanged::take(&test);
    let mut payer = subscribe(&test, "bank-a", 0).await;
    let decision = proto::subscribe_request::Message::CollectDecision(proto::CollectDecision {
        collect_id: id(1),
        decision: proto::Decision::Accept as i32,
        decline_reason: 0,
    });
    payer.requests.send(proto::SubscribeRequest { message: Some(decision) }).await.expect("decide");
    let receipt = loop {
        match common::next(&mut payer.responses).await {
            Some(proto::subscribe_response::Message::DecisionReceipt(receipt)) => break receipt,
            Some(proto::subscribe_response::Message::Event(_)) => continue,
            other => panic!("expected a receipt, got {other:?}"),
        }
    };
    assert_eq!((receipt.status_code, receipt.reason), (tonic::Code::Internal as i32, Reason::Internal as i32));
    unchanged.assert_still(&test, "a decision on a corrupt collect");
    let status = bank_b.payments.request_collect(collect_request(1, 400, 0)).await.expect_err("a retry reads it");
    assert_switch_failed(&test, &status, &mut bank_a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_settlement_records_answer_internal_not_window_one() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("pay");
    let mut operator = test.operator().await;
    operator.close_settlement_window(proto::CloseSettlementWindowRequest { window_id: 1 }).await.expect("close");
    corrupt(&test, tables::SETTLEMENT, 1u64.to_be_bytes().to_vec());
    let report = operator.get_settlement_report(proto::GetSettlementReportRequest { window_id: 1 }).await;
    assert_refusal(report, Reason::Internal, None);
    // The open window's record: read as "window 1, opened at 0" it would close window 1 again.
    corrupt(&test, tables::SETTLEMENT, b"open".to_vec());
    let unchanged = Unchanged::take(&test);
    let closed = operator.close_settlement_window(proto::CloseSettlementWindowRequest { window_id: 2 }).await;
    let status = closed.expect_err("the open window is unknown");
    unchanged.assert_still(&test, "closing a window whose record is corrupt");
    assert_switch_failed(&test, &status, &mut bank_a).await;
}

/// The first stream takes the events from the delivery cache; a second one, not acknowledging
/// them, reads them back from storage.
async fn read_back_from_storage(test: &TestSwitch) -> Status {
    let mut first = subscribe(test, "bank-b", 0).await;
    assert!(matches!(common::next(&mut first.responses).await, Some(proto::subscribe_response::Message::Event(_))));
    drop(first);
    let mut second = subscribe(test, "bank-b", 0).await;
    let answer = tokio::time::timeout(common::WAIT, second.responses.message()).await.expect("an answer in time");
    answer.expect_err("the stored event does not decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_event_ends_the_stream_with_internal_instead_of_an_empty_event() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("pay");
    let mut key = switch::events::outbox_key("bank-b");
    key.extend_from_slice(&1u64.to_be_bytes());
    corrupt(&test, tables::EVENTS, key);
    let status = read_back_from_storage(&test).await;
    assert_switch_failed(&test, &status, &mut bank_a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_whose_payment_record_is_corrupt_is_not_delivered_with_empty_fields() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("pay");
    // The credit notification is stored as the payment id and built back from this record.
    corrupt(&test, tables::PAYMENTS, id(1));
    let status = read_back_from_storage(&test).await;
    assert_switch_failed(&test, &status, &mut bank_a).await;
}

/// Stops `test` and starts a switch on its data: the start's outcome, and the data directory
/// (kept while that switch runs).
async fn restart(test: TestSwitch) -> (anyhow::Result<switch::server::Background>, tempfile::TempDir) {
    let dir = test.stop().await;
    let started = switch::server::Background::start(common::config(dir.path().join("data"))).await;
    (started, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_participant_or_event_counter_stops_the_switch_from_starting() {
    for (table, key) in [(tables::PARTICIPANTS, b"bank-a".to_vec()), (tables::EVENT_ACKS, b"bank-b".to_vec())] {
        let test = TestSwitch::start().await;
        let _pair = test.payer_and_payee(0, 1_000).await;
        corrupt(&test, table, key);
        let (started, _dir) = restart(test).await;
        let error = started.err().expect("no start on a corrupt record").to_string();
        assert!(error.contains("does not decode") || error.contains("not one this release"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_collect_stops_the_switch_from_serving_after_a_restart() {
    let test = TestSwitch::start().await;
    let (_bank_a, mut bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_b.payments.request_collect(collect_request(1, 400, 0)).await.expect("request");
    corrupt(&test, tables::COLLECTS, id(1));
    // Re-arming the expiry of collects awaiting approval reads them all before serving:
    // skipped, this collect would never expire.
    let (started, _dir) = restart(test).await;
    let started = started.expect("opens");
    let failed = started.switch().expect("the switch opened before it failed to serve").failed.subscribe();
    let served = started.stop().await;
    assert!(served.is_err(), "served with a corrupt collect");
    assert!(*failed.borrow(), "the switch marked itself failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_funding_total_answers_internal_not_a_position_without_funding() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    corrupt(&test, tables::SETTLEMENT, b"funding/bank-a".to_vec());
    let status = bank_a.payments.get_position(proto::GetPositionRequest {}).await.expect_err("a corrupt total");
    assert_switch_failed(&test, &status, &mut bank_a).await;
}
