//! PaymentService: Pay, PayBatch, PayStream, GetPaymentStatus, RequestCollect, Refund,
//! GetPosition (payments.proto, common.proto).
//!
//! One test per group of refusals (each case asserts status, reason and `switch-field`, and that
//! nothing was committed), one per recorded refusal, and the field promises of `PaymentResult`
//! and `Payment` for each kind and final state.

use std::time::Duration;

use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::{self, PaymentKind, PaymentState, Reason};
use tonic::transport::Channel;
use tonic::Status;

use crate::common::{collect_request, id, pay, subscribe, Endpoint, Psp, TestSwitch, WAIT};
use crate::support::{assert_refusal, assert_refused, Unchanged};

/// The switch clock in Unix milliseconds, as deadlines are given.
pub fn now_ms() -> u64 {
    switch::core::now_unix_ns() / 1_000_000
}

/// A `PaymentService` client for any certificate the development CA issued.
pub async fn payments_as(test: &Endpoint, pair: &switch::tls::PemPair) -> PaymentServiceClient<Channel> {
    PaymentServiceClient::new(test.channel(Some(pair)).await.expect("connects"))
}

/// Expects `call` to be refused as the catalogue says and to change nothing.
#[track_caller]
pub fn refused_unchanged<T: std::fmt::Debug>(
    test: &TestSwitch,
    before: &Unchanged,
    result: Result<T, Status>,
    reason: Reason,
    field: Option<&str>,
) {
    assert_refusal(result, reason, field);
    before.assert_still(test, reason.as_str_name());
}

/// A refund of `amount` of `original` by bank-b.
pub fn refund_request(refund: u128, original: u128, amount: u64) -> proto::RefundRequest {
    proto::RefundRequest {
        refund_id: id(refund),
        original_payment_id: id(original),
        amount_minor: amount,
        currency: "INR".into(),
        note: "refund".into(),
    }
}

/// The record of a payment between `ana@bank-a` and `bo@bank-b` (`ana_pays`: in that direction)
/// with the INR currency; times and the rest as in `proto::Payment::default()`.
fn payment_record(
    payment: u128,
    kind: PaymentKind,
    (state, reason): (PaymentState, Reason),
    amount_minor: u64,
    note: &str,
    ana_pays: bool,
) -> proto::Payment {
    let (ana, bo) = (("ana@bank-a", "bank-a"), ("bo@bank-b", "bank-b"));
    let (payer, payee) = if ana_pays { (ana, bo) } else { (bo, ana) };
    proto::Payment {
        payment_id: id(payment),
        kind: kind as i32,
        state: state as i32,
        reason: reason as i32,
        payer_alias: payer.0.into(),
        payer_psp_id: payer.1.into(),
        payee_alias: payee.0.into(),
        payee_psp_id: payee.1.into(),
        amount_minor,
        currency: "INR".into(),
        note: note.into(),
        ..proto::Payment::default()
    }
}

/// A switch that also settles BRL, which no participant of these tests holds (CURRENCY_MISMATCH).
async fn with_a_second_currency() -> TestSwitch {
    TestSwitch::start_with(|config| {
        let brl = switch::config::Currency { code: "BRL".into(), ledger: 986, amount_minor_max: 1_000_000 };
        config.currencies.push(brl)
    })
    .await
}

/// `bank-a` paying `bo@bank-b`, each request spoiled one way; the reason and field it must get.
fn invalid_pay_requests() -> Vec<(proto::PayRequest, Reason, Option<&'static str>)> {
    let good = || pay(7, "ana@bank-a", "bo@bank-b", 100);
    let with = |change: &dyn Fn(&mut proto::PayRequest)| {
        let mut request = good();
        change(&mut request);
        request
    };
    let long_alias = format!("{}@bank-a", "a".repeat(58));
    vec![
        (with(&|r| r.payer_alias = String::new()), Reason::FieldRequired, Some("payer_alias")),
        (with(&|r| r.payee_alias = String::new()), Reason::FieldRequired, Some("payee_alias")),
        (with(&|r| r.note = "n".repeat(141)), Reason::FieldTooLong, Some("note")),
        (with(&|r| r.payer_alias = long_alias.clone()), Reason::FieldTooLong, Some("payer_alias")),
        (with(&|r| r.note = "line\nbreak".into()), Reason::TextInvalid, Some("note")),
        (with(&|r| r.note = "c1 \u{85}".into()), Reason::TextInvalid, Some("note")),
        (with(&|r| r.payment_id = vec![1; 15]), Reason::IdMalformed, Some("payment_id")),
        (with(&|r| r.payment_id = Vec::new()), Reason::IdMalformed, Some("payment_id")),
        (with(&|r| r.payment_id = vec![0; 16]), Reason::IdReserved, Some("payment_id")),
        (with(&|r| r.payment_id = vec![0xff; 16]), Reason::IdReserved, Some("payment_id")),
        (with(&|r| r.payer_alias = "Ana@bank-a".into()), Reason::AliasMalformed, Some("payer_alias")),
        (with(&|r| r.payee_alias = "bo".into()), Reason::AliasMalformed, Some("payee_alias")),
        (with(&|r| r.payee_alias = "bo@B".into()), Reason::AliasMalformed, Some("payee_alias")),
        (with(&|r| r.amount_minor = 0), Reason::AmountZero, Some("amount_minor")),
        (with(&|r| r.amount_minor = 1_000_000_001), Reason::AmountOverLimit, Some("amount_minor")),
        (with(&|r| r.amount_minor = u64::MAX), Reason::AmountOverLimit, Some("amount_minor")),
        (with(&|r| r.currency = "inr".into()), Reason::UnknownCurrency, Some("currency")),
        (with(&|r| r.currency = "USD".into()), Reason::UnknownCurrency, Some("currency")),
        (with(&|r| r.currency = String::new()), Reason::UnknownCurrency, Some("currency")),
        (with(&|r| r.deadline_unix_ms = 1), Reason::DeadlinePassed, Some("deadline_unix_ms")),
        (with(&|r| r.deadline_unix_ms = now_ms() + 120_000), Reason::DeadlineTooFar, Some("deadline_unix_ms")),
    ]
}

/// Every INVALID_ARGUMENT of Pay names the request's own field (errors.proto: `switch-field` is
/// the field path): `payer_alias` or `payee_alias`, never a generic `alias` (the old answer for
/// both aliases; an alias over 64 bytes was ALIAS_MALFORMED instead of FIELD_TOO_LONG). In a
/// batch each item is refused in-band the same way: REJECTED with the reason and its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_refuses_invalid_requests_naming_the_field_and_changes_nothing() {
    let test = TestSwitch::start().await;
    let (bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let before = Unchanged::take(&test);
    let cases = invalid_pay_requests();
    for (request, reason, field) in cases.clone() {
        let result = bank_a.payments.clone().pay(request.clone()).await;
        assert_refusal(result, reason, field);
    }
    before.assert_still(&test, "invalid payments");

    let requests: Vec<proto::PayRequest> = cases.iter().map(|(request, _, _)| request.clone()).collect();
    let answer = bank_a.payments.clone().pay_batch(proto::PayBatchRequest { payments: requests }).await;
    let results = answer.expect("a batch of invalid items is answered in-band").into_inner().results;
    assert_eq!(results.len(), cases.len(), "one result per item");
    for (result, (request, reason, _)) in results.iter().zip(&cases) {
        assert_eq!(result.payment_id, request.payment_id, "results in request order");
        assert_eq!(result.state, PaymentState::Rejected as i32);
        assert_eq!(result.reason, *reason as i32);
        assert_eq!(result.status_code, tonic::Code::InvalidArgument as i32);
        assert_eq!((result.accepted_at_unix_ns, result.finalized_at_unix_ns), (0, 0), "never recorded");
    }
    before.assert_still(&test, "a batch of invalid payments");
}

/// Who may pay, with which aliases, to whom: PERMISSION_DENIED, NOT_FOUND and
/// FAILED_PRECONDITION refusals, and UNAUTHENTICATED for a certificate that names nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_refuses_callers_and_aliases_it_must_not_serve() {
    let test = with_a_second_currency().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.alias("al@bank-a", "Al").await;
    let before = Unchanged::take(&test);
    let payments = bank_a.payments.clone();
    let attempt = |request: proto::PayRequest| {
        let mut payments = payments.clone();
        async move { payments.pay(request).await }
    };

    let result = attempt(pay(7, "bo@bank-b", "ana@bank-a", 100)).await;
    refused_unchanged(&test, &before, result, Reason::AliasOwnedByOtherPsp, Some("payer_alias"));
    let result = attempt(pay(7, "zed@bank-a", "bo@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::OwnAliasNotRegistered, Some("payer_alias"));
    let result = attempt(pay(7, "ana@bank-a", "zed@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::UnknownAlias, Some("payee_alias"));
    let result = attempt(pay(7, "ana@bank-a", "al@bank-a", 100)).await;
    refused_unchanged(&test, &before, result, Reason::OnUsNotSupported, None);
    let result = attempt(proto::PayRequest { currency: "BRL".into(), ..pay(7, "ana@bank-a", "bo@bank-b", 100) }).await;
    refused_unchanged(&test, &before, result, Reason::CurrencyMismatch, Some("currency"));

    // A certificate of a PSP that is not registered, an operator's, and one naming nobody.
    let mut stranger = test.psp("bank-z").await.payments;
    let result = stranger.pay(pay(7, "zed@bank-z", "bo@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::CallerNotRegistered, None);
    let result = stranger.get_position(proto::GetPositionRequest {}).await;
    assert_refusal(result, Reason::CallerNotRegistered, None);
    let mut operator = payments_as(&test, &test.ca.operator("admin")).await;
    let result = operator.pay(pay(7, "ana@bank-a", "bo@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::NotAuthorized, None);
    let result = operator.get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(7) }).await;
    assert_refusal(result, Reason::NotAuthorized, None);
    let nameless = test.ca.issue_nameless("nobody").expect("certificate");
    let mut nobody = payments_as(&test, &nameless).await;
    let result = nobody.pay(pay(7, "ana@bank-a", "bo@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::NotAuthenticated, None);
    let result = nobody.get_position(proto::GetPositionRequest {}).await;
    assert_refusal(result, Reason::NotAuthenticated, None);
    before.assert_still(&test, "refused callers");
}

/// A suspended payer may not pay; nobody may pay a suspended payee; a suspended PSP still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_participants_neither_pay_nor_get_paid() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut operator = test.operator().await;
    let suspend = |psp: &str| proto::SuspendParticipantRequest { psp_id: psp.into(), note: "audit".into() };
    operator.suspend_participant(suspend("bank-a")).await.expect("suspend");
    let before = Unchanged::take(&test);
    let result = bank_a.payments.clone().pay(pay(7, "ana@bank-a", "bo@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::ParticipantSuspended, None);
    let batch = proto::PayBatchRequest { payments: vec![pay(7, "ana@bank-a", "bo@bank-b", 100)] };
    let result = bank_a.payments.clone().pay_batch(batch).await;
    refused_unchanged(&test, &before, result, Reason::ParticipantSuspended, None);
    let (_requests, receiver) = tokio::sync::mpsc::channel::<proto::PayStreamRequest>(1);
    let result = bank_a.payments.clone().pay_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)).await;
    refused_unchanged(&test, &before, result.map(|_| ()), Reason::ParticipantSuspended, None);
    assert_eq!(bank_a.position().await.status, proto::ParticipantStatus::Suspended as i32, "it still reads");

    let reactivate = proto::ReactivateParticipantRequest { psp_id: "bank-a".into(), note: String::new() };
    operator.reactivate_participant(reactivate.clone()).await.expect("on");
    // Suspended while its PayStream is open: later items are refused in-band (they were paid).
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let mut answers = bank_a
        .payments
        .clone()
        .pay_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("stream opened")
        .into_inner();
    let item = |correlation_id: u64| proto::PayStreamRequest {
        correlation_id,
        payment: Some(pay(u128::from(correlation_id), "ana@bank-a", "bo@bank-b", 100)),
    };
    requests.send(item(20)).await.expect("send");
    let paid = next_answer(&mut answers).await.result.expect("a result");
    assert_eq!(paid.state, PaymentState::Completed as i32);
    operator.suspend_participant(suspend("bank-a")).await.expect("suspend");
    let before = Unchanged::take(&test);
    requests.send(item(21)).await.expect("send");
    let refused = next_answer(&mut answers).await;
    let result = refused.result.expect("a result");
    assert_eq!((refused.correlation_id, result.state), (21, PaymentState::Rejected as i32));
    let refusal = (Reason::ParticipantSuspended as i32, tonic::Code::FailedPrecondition as i32);
    assert_eq!((result.reason, result.status_code), refusal);
    before.assert_still(&test, "an item of a suspended payer's stream");
    drop(requests);

    operator.reactivate_participant(reactivate).await.expect("on");
    operator.suspend_participant(suspend("bank-b")).await.expect("suspend");
    let before = Unchanged::take(&test);
    let result = bank_a.payments.clone().pay(pay(7, "ana@bank-a", "bo@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::CounterpartySuspended, None);
    let result = bank_b.payments.clone().request_collect(collect_request(8, 100, 0)).await;
    refused_unchanged(&test, &before, result, Reason::ParticipantSuspended, None);
    let result = bank_a.payments.clone().pay(pay(7, "ana@bank-a", "bo@bank-b", 100)).await;
    assert_refusal(result, Reason::CounterpartySuspended, None);
}

/// Every account's balances, by id.
fn accounts(test: &TestSwitch) -> Vec<ledger::Account> {
    let mut accounts = test.switch.ledger.store().expect("the store").all_accounts().expect("accounts");
    accounts.sort_by_key(|account| account.id);
    accounts
}

/// Same id, other content: ALREADY_EXISTS, the original untouched; same content: the original.
/// Pay learns of a conflict from the ledger itself (a read per payment would cost every payment
/// what only conflicts need), so the attempt is a batch in the ledger's log, like any
/// submission, and `Unchanged` (which compares the log's head) cannot hold: what must not change
/// is every account and the payment's own record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_id_names_one_payment_forever() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    let first = bank_a.payments.clone().pay(pay(7, "ana@bank-a", "bo@bank-b", 100)).await.expect("paid");
    let first = first.into_inner();
    let (balances, recorded) = (accounts(&test), bank_a.status(7).await);
    for other in [
        pay(7, "ana@bank-a", "bo@bank-b", 101),
        proto::PayRequest { note: "other".into(), ..pay(7, "ana@bank-a", "bo@bank-b", 100) },
    ] {
        let result = bank_a.payments.clone().pay(other).await;
        assert_refusal(result, Reason::PaymentIdConflict, Some("payment_id"));
    }
    // A retry with a fresh deadline is the same payment.
    let retry = proto::PayRequest { deadline_unix_ms: now_ms() + 10_000, ..pay(7, "ana@bank-a", "bo@bank-b", 100) };
    let again = bank_a.payments.clone().pay(retry).await.expect("retry").into_inner();
    assert_eq!(again, first, "the original outcome");
    assert_eq!(accounts(&test), balances, "no account moved");
    assert_eq!(bank_a.status(7).await, recorded, "the original stands, deadline and all");
    // A collect or refund may not take a payment's id either; those are checked before the ledger.
    let before = Unchanged::take(&test);
    let result = bank_b.payments.clone().request_collect(collect_request(7, 100, 0)).await;
    refused_unchanged(&test, &before, result, Reason::PaymentIdConflict, Some("collect_id"));
    let result = bank_b.payments.clone().refund(refund_request(7, 7, 10)).await;
    refused_unchanged(&test, &before, result, Reason::PaymentIdConflict, Some("refund_id"));
    test.assert_money_conserved();
}

/// INSUFFICIENT_LIQUIDITY is recorded: the id is used (status FAILED with the reason), a retry
/// gets the same refusal, and no money moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_liquidity_is_recorded_against_the_id() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(50, 100).await;
    let positions = (bank_a.position().await, bank_b.position().await);
    for _ in 0..2 {
        let result = bank_a.payments.clone().pay(pay(7, "ana@bank-a", "bo@bank-b", 151)).await;
        assert_refusal(result, Reason::InsufficientLiquidity, None);
    }
    // The whole payment, as for any other state (its aliases, note and currency were empty).
    let status = bank_a.status(7).await;
    let expected = proto::Payment {
        deadline_unix_ms: status.deadline_unix_ms,
        accepted_at_unix_ns: status.accepted_at_unix_ns,
        finalized_at_unix_ns: status.accepted_at_unix_ns,
        ..payment_record(7, PaymentKind::Push, (PaymentState::Failed, Reason::InsufficientLiquidity), 151, "test", true)
    };
    assert_eq!(status, expected);
    assert!(status.accepted_at_unix_ns > 0 && status.deadline_unix_ms > now_ms(), "recorded: {status:?}");
    assert_eq!((bank_a.position().await.balance_minor, bank_b.position().await.balance_minor), (100, 0));
    assert_eq!(positions.0.available_minor, 150);
    // In a batch: FAILED in-band, with the code a unary call answers.
    let batch = proto::PayBatchRequest { payments: vec![pay(8, "ana@bank-a", "bo@bank-b", 151)] };
    let results = bank_a.payments.clone().pay_batch(batch).await.expect("answered").into_inner().results;
    assert_eq!(
        (results[0].state, results[0].reason),
        (PaymentState::Failed as i32, Reason::InsufficientLiquidity as i32)
    );
    assert_eq!(results[0].status_code, tonic::Code::FailedPrecondition as i32);
    test.assert_money_conserved();
}

/// A position is reported as int64 (common.proto), so the ledger keeps it there: a payment that
/// would take the payee's balance past 2^63 - 1 is BALANCE_OVERFLOW, recorded against the id
/// (state FAILED, nothing moved), and so is funding that would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_past_int64_is_balance_overflow_and_recorded() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 100).await;
    let mut operator = test.operator().await;
    let top_up = |transfer: u128, amount_minor: u64| proto::FundRequest {
        psp_id: "bank-b".into(),
        transfer_id: id(transfer),
        amount_minor,
        currency: "INR".into(),
        note: String::new(),
    };
    operator.fund_in(top_up(1 << 90, i64::MAX as u64)).await.expect("funding up to int64's maximum");
    for _ in 0..2 {
        let result = bank_a.payments.clone().pay(pay(7, "ana@bank-a", "bo@bank-b", 1)).await;
        assert_refusal(result, Reason::BalanceOverflow, None);
    }
    let status = bank_a.status(7).await;
    assert_eq!((status.state, status.reason), (PaymentState::Failed as i32, Reason::BalanceOverflow as i32));
    assert_refusal(operator.fund_in(top_up((1 << 90) + 1, 1)).await, Reason::BalanceOverflow, None);
    let positions = (bank_a.position().await.balance_minor, bank_b.position().await.balance_minor);
    assert_eq!(positions, (100, i64::MAX), "nothing moved");
    test.assert_money_conserved();
}

/// A batch holds 1 to BATCH_SIZE_MAX (8,190) items; otherwise the whole call is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_outside_its_size_bounds_is_refused_whole() {
    let test = TestSwitch::start().await;
    let (bank_a, _bank_b) = test.payer_and_payee(0, 1_000_000).await;
    let before = Unchanged::take(&test);
    let result = bank_a.payments.clone().pay_batch(proto::PayBatchRequest { payments: Vec::new() }).await;
    refused_unchanged(&test, &before, result, Reason::BatchSizeOutOfRange, Some("payments"));
    let payments = (1..=8_191u128).map(|payment| pay(payment, "ana@bank-a", "bo@bank-b", 1)).collect();
    let result = bank_a.payments.clone().pay_batch(proto::PayBatchRequest { payments }).await;
    refused_unchanged(&test, &before, result, Reason::BatchSizeOutOfRange, Some("payments"));
}

/// EVENT_BACKLOG_MAX (configured small here): a payee that does not read its events gets no more
/// payments, collects or refunds that would add to them; acknowledging frees room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_not_reading_its_events_receives_no_more_work() {
    let test = TestSwitch::start_with(|config| config.limits.event_backlog_max = 1).await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.clone().pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("the first event fits");
    let before = Unchanged::take(&test);
    let result = bank_a.payments.clone().pay(pay(2, "ana@bank-a", "bo@bank-b", 100)).await;
    refused_unchanged(&test, &before, result, Reason::EventBacklogFull, None);
    // bank-a's outbox is empty: a collect to it is fine, after which it is full too.
    bank_b.payments.clone().request_collect(collect_request(3, 100, 0)).await.expect("a collect request");
    let before = Unchanged::take(&test);
    let result = bank_b.payments.clone().request_collect(collect_request(4, 100, 0)).await;
    refused_unchanged(&test, &before, result, Reason::EventBacklogFull, None);
    let result = bank_b.payments.clone().refund(refund_request(5, 1, 10)).await;
    refused_unchanged(&test, &before, result, Reason::EventBacklogFull, None);
    // Acknowledged, the room is back.
    let events = subscribe(&test, "bank-b", 0).await;
    crate::common::ack(&events, 1).await;
    let paid = async {
        loop {
            match bank_a.payments.clone().pay(pay(2, "ana@bank-a", "bo@bank-b", 100)).await {
                Ok(result) => return result.into_inner(),
                Err(status) => assert_refused(&status, Reason::EventBacklogFull, None),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let paid = tokio::time::timeout(WAIT, paid).await.expect("room once acknowledged");
    assert_eq!(paid.state, PaymentState::Completed as i32);
    test.assert_money_conserved();
}

/// RequestCollect's own refusals: the two aliases' roles swapped, the expiry's bounds, and
/// COLLECTS_PENDING_MAX (configured small here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_collect_refuses_as_pay_with_the_roles_swapped() {
    let test = TestSwitch::start_with(|config| config.limits.collects_pending_max = 1).await;
    let (_bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    let before = Unchanged::take(&test);
    let with = |change: &dyn Fn(&mut proto::RequestCollectRequest)| {
        let mut request = collect_request(9, 100, 0);
        change(&mut request);
        request
    };
    let cases = [
        (with(&|r| r.payee_alias = "ana@bank-a".into()), Reason::AliasOwnedByOtherPsp, Some("payee_alias")),
        (with(&|r| r.payee_alias = "zed@bank-b".into()), Reason::OwnAliasNotRegistered, Some("payee_alias")),
        (with(&|r| r.payer_alias = "zed@bank-a".into()), Reason::UnknownAlias, Some("payer_alias")),
        (with(&|r| r.payer_alias = "zed".into()), Reason::AliasMalformed, Some("payer_alias")),
        (with(&|r| r.payee_alias = String::new()), Reason::FieldRequired, Some("payee_alias")),
        (with(&|r| r.collect_id = vec![7; 3]), Reason::IdMalformed, Some("collect_id")),
        (with(&|r| r.note = "é".repeat(71)), Reason::FieldTooLong, Some("note")),
        (with(&|r| r.amount_minor = 0), Reason::AmountZero, Some("amount_minor")),
        (with(&|r| r.expiry_unix_ms = now_ms() - 1), Reason::DeadlinePassed, Some("expiry_unix_ms")),
        (with(&|r| r.expiry_unix_ms = now_ms() + 25 * 3_600_000), Reason::DeadlineTooFar, Some("expiry_unix_ms")),
    ];
    for (request, reason, field) in cases {
        let result = bank_b.payments.clone().request_collect(request).await;
        refused_unchanged(&test, &before, result, reason, field);
    }
    bank_b.payments.clone().request_collect(collect_request(1, 100, 0)).await.expect("the first collect");
    let before = Unchanged::take(&test);
    let result = bank_b.payments.clone().request_collect(collect_request(2, 100, 0)).await;
    refused_unchanged(&test, &before, result, Reason::CollectsPendingLimit, None);
}

/// Refund's refusals: only the payee refunds, only a completed payment, never beyond it, at most
/// REFUNDS_PER_PAYMENT_MAX times, in its currency; a third PSP learns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_are_refused_as_the_contract_lists() {
    let test = with_a_second_currency().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 10_000).await;
    let mut bank_d = test.onboard("bank-d", 0, 0).await;
    bank_d.alias("di@bank-d", "Di").await;
    bank_a.payments.clone().pay(pay(1, "ana@bank-a", "bo@bank-b", 1_000)).await.expect("paid");
    let mut refunds = bank_b.payments.clone();
    refunds.refund(refund_request(2, 1, 100)).await.expect("a partial refund");
    let before = Unchanged::take(&test);
    let result = bank_a.payments.clone().refund(refund_request(3, 1, 100)).await;
    refused_unchanged(&test, &before, result, Reason::RefundNotByPayee, None);
    let result = bank_d.payments.clone().refund(refund_request(3, 1, 100)).await;
    refused_unchanged(&test, &before, result, Reason::PaymentNotFound, Some("original_payment_id"));
    let result = refunds.refund(refund_request(3, 99, 100)).await;
    refused_unchanged(&test, &before, result, Reason::PaymentNotFound, Some("original_payment_id"));
    let result = refunds.refund(refund_request(3, 1, 901)).await;
    refused_unchanged(&test, &before, result, Reason::RefundExceedsRemaining, None);
    let result = bank_a.payments.clone().refund(refund_request(3, 2, 10)).await;
    refused_unchanged(&test, &before, result, Reason::PaymentNotRefundable, None);
    let result = refunds.refund(proto::RefundRequest { currency: "BRL".into(), ..refund_request(3, 1, 10) }).await;
    refused_unchanged(&test, &before, result, Reason::CurrencyMismatch, Some("currency"));
    let result = refunds.refund(refund_request(2, 1, 101)).await;
    refused_unchanged(&test, &before, result, Reason::PaymentIdConflict, Some("refund_id"));
    let result = refunds.refund(refund_request(3, 1, 0)).await;
    refused_unchanged(&test, &before, result, Reason::AmountZero, Some("amount_minor"));
    let result =
        refunds.refund(proto::RefundRequest { original_payment_id: vec![0; 16], ..refund_request(3, 1, 1) }).await;
    refused_unchanged(&test, &before, result, Reason::IdReserved, Some("original_payment_id"));
    let result = refunds.refund(proto::RefundRequest { note: "\u{7f}".into(), ..refund_request(3, 1, 1) }).await;
    refused_unchanged(&test, &before, result, Reason::TextInvalid, Some("note"));

    // REFUNDS_PER_PAYMENT_MAX (100) completed refunds, then no more.
    for refund in 3..=101u128 {
        refunds.refund(refund_request(refund, 1, 1)).await.expect("a small refund");
    }
    let before = Unchanged::take(&test);
    let result = refunds.refund(refund_request(102, 1, 1)).await;
    refused_unchanged(&test, &before, result, Reason::RefundCountExceeded, None);
    let original = bank_b.status(1).await;
    assert_eq!((original.refund_ids.len(), original.refunded_amount_minor), (100, 199));
    test.assert_money_conserved();
}

/// GetPaymentStatus: malformed ids; NOT_FOUND alike for an unknown id and another PSPs' payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_for_the_two_parties_only() {
    let test = TestSwitch::start().await;
    let (bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let bank_d = test.onboard("bank-d", 0, 0).await;
    bank_a.payments.clone().pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("paid");
    let status = |psp: &Psp, payment_id: Vec<u8>| {
        let mut payments = psp.payments.clone();
        async move { payments.get_payment_status(proto::GetPaymentStatusRequest { payment_id }).await }
    };
    assert_refusal(status(&bank_d, id(1)).await, Reason::PaymentNotFound, Some("payment_id"));
    assert_refusal(status(&bank_a, id(2)).await, Reason::PaymentNotFound, Some("payment_id"));
    assert_refusal(status(&bank_a, vec![1; 17]).await, Reason::IdMalformed, Some("payment_id"));
    assert_refusal(status(&bank_a, vec![0xff; 16]).await, Reason::IdReserved, Some("payment_id"));
}

/// Every field of PaymentResult and Payment for a push to an automatic payee and its refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_push_and_its_refund_report_every_field() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    let asked_at = now_ms();
    let result = bank_a.payments.clone().pay(pay(1, "ana@bank-a", "bo@bank-b", 300)).await.expect("paid");
    let result = result.into_inner();
    assert_eq!(result.payment_id, id(1));
    assert_eq!((result.state, result.reason, result.status_code), (PaymentState::Completed as i32, 0, 0));
    assert_eq!(result.decline_reason, 0);
    assert!(result.accepted_at_unix_ns > 0, "recorded");
    assert_eq!(result.finalized_at_unix_ns, result.accepted_at_unix_ns, "single-phase: final when recorded");

    let refund = bank_b.payments.clone().refund(refund_request(2, 1, 100)).await.expect("refunded").into_inner();
    assert_eq!((refund.payment_id, refund.state), (id(2), PaymentState::Completed as i32));
    assert!(refund.accepted_at_unix_ns > result.finalized_at_unix_ns, "ledger times increase");
    assert_eq!(refund.finalized_at_unix_ns, refund.accepted_at_unix_ns);

    for viewer in [&bank_a, &bank_b] {
        let payment = viewer.status(1).await;
        let expected = proto::Payment {
            accepted_at_unix_ns: result.accepted_at_unix_ns,
            finalized_at_unix_ns: result.finalized_at_unix_ns,
            refunded_amount_minor: 100,
            refund_ids: vec![id(2)],
            // The operator engineer's: the window the money moved in.
            settlement_window_id: payment.settlement_window_id,
            deadline_unix_ms: payment.deadline_unix_ms,
            ..payment_record(1, PaymentKind::Push, (PaymentState::Completed, Reason::Unspecified), 300, "test", true)
        };
        assert_eq!(payment, expected);
        // Left at 0: now + PAYMENT_DEADLINE_MS_DEFAULT (30 s).
        assert!((asked_at + 30_000..=now_ms() + 30_000).contains(&payment.deadline_unix_ms), "{payment:?}");
    }
    let refunded = bank_a.status(2).await;
    let expected = proto::Payment {
        accepted_at_unix_ns: refund.accepted_at_unix_ns,
        finalized_at_unix_ns: refund.finalized_at_unix_ns,
        original_payment_id: id(1),
        settlement_window_id: refunded.settlement_window_id,
        ..payment_record(2, PaymentKind::Refund, (PaymentState::Completed, Reason::Unspecified), 100, "refund", false)
    };
    assert_eq!(refunded, expected, "a refund: payer and payee swapped, no deadline, the original named");
    test.assert_money_conserved();
}

/// A collect's PaymentResult and Payment: recorded when requested (accepted_at, which was 0),
/// then final with the reason of each ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collect_reports_when_it_was_requested_and_how_it_ended() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut payer_events = crate::events::listen(&test, "bank-a", 0).await;
    let expiry = now_ms() + 60_000;
    let asked = bank_b.payments.clone().request_collect(collect_request(1, 400, expiry)).await.expect("asked");
    let asked = asked.into_inner();
    assert_eq!((asked.payment_id.clone(), asked.state), (id(1), PaymentState::AwaitingApproval as i32));
    assert_eq!((asked.reason, asked.status_code, asked.finalized_at_unix_ns), (0, 0, 0));
    assert!(asked.accepted_at_unix_ns > 0, "a collect is recorded when requested: {asked:?}");
    let awaiting = bank_a.status(1).await;
    let expected = proto::Payment {
        deadline_unix_ms: expiry,
        accepted_at_unix_ns: asked.accepted_at_unix_ns,
        ..payment_record(
            1,
            PaymentKind::Collect,
            (PaymentState::AwaitingApproval, Reason::Unspecified),
            400,
            "invoice",
            true,
        )
    };
    assert_eq!(awaiting, expected);

    crate::events::collect_decision(&mut payer_events, 1, proto::Decision::Accept).await;
    let completed = bank_b.status(1).await;
    assert_eq!(completed.state, PaymentState::Completed as i32);
    assert_eq!(completed.accepted_at_unix_ns, asked.accepted_at_unix_ns, "still recorded when requested");
    assert!(completed.finalized_at_unix_ns > completed.accepted_at_unix_ns);
    let retry = bank_b.payments.clone().request_collect(collect_request(1, 400, 0)).await.expect("retry");
    let retry = retry.into_inner();
    assert_eq!((retry.state, retry.accepted_at_unix_ns), (PaymentState::Completed as i32, asked.accepted_at_unix_ns));

    // Declined by the payer PSP, with its reason.
    bank_b.payments.clone().request_collect(collect_request(2, 100, 0)).await.expect("asked");
    crate::events::collect_decision(&mut payer_events, 2, proto::Decision::Decline).await;
    let declined = bank_b.status(2).await;
    assert_eq!((declined.state, declined.reason), (PaymentState::Declined as i32, Reason::PayerDeclined as i32));
    assert_eq!(declined.decline_reason, proto::DeclineReason::CustomerDeclined as i32);
    assert!(declined.finalized_at_unix_ns > declined.accepted_at_unix_ns && declined.accepted_at_unix_ns > 0);
    let retry = bank_b.payments.clone().request_collect(collect_request(2, 100, 0)).await.expect("retry");
    let retry = retry.into_inner();
    assert_eq!((retry.state, retry.reason), (PaymentState::Declined as i32, Reason::PayerDeclined as i32));
    assert_eq!(retry.decline_reason, proto::DeclineReason::CustomerDeclined as i32);

    // Approved beyond the payer's liquidity: FAILED, recorded.
    bank_b.payments.clone().request_collect(collect_request(3, 900, 0)).await.expect("asked");
    let receipt = crate::events::collect_decision(&mut payer_events, 3, proto::Decision::Accept).await;
    assert_eq!(receipt.reason, Reason::InsufficientLiquidity as i32);
    let failed = bank_b.status(3).await;
    assert_eq!((failed.state, failed.reason), (PaymentState::Failed as i32, Reason::InsufficientLiquidity as i32));

    // Lapsed: EXPIRED with COLLECT_EXPIRED.
    let soon = now_ms() + 300;
    bank_b.payments.clone().request_collect(collect_request(4, 100, soon)).await.expect("asked");
    let expired = async {
        loop {
            let status = bank_b.status(4).await;
            if status.state != PaymentState::AwaitingApproval as i32 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let expired = tokio::time::timeout(WAIT, expired).await.expect("the collect expires");
    assert_eq!((expired.state, expired.reason), (PaymentState::Expired as i32, Reason::CollectExpired as i32));
    let result = bank_b.payments.clone().request_collect(collect_request(4, 100, 0)).await.expect("retry");
    let result = result.into_inner();
    assert_eq!(
        (result.state, result.reason, result.status_code),
        (PaymentState::Expired as i32, Reason::CollectExpired as i32, 0)
    );
    assert_eq!(result.finalized_at_unix_ns, expired.finalized_at_unix_ns);
    test.assert_money_conserved();
}

/// A refund beyond the refunding PSP's liquidity is recorded like a payment's: FAILED under its
/// id, shown as a refund (it showed as a push with empty aliases), no money moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_beyond_the_refunders_liquidity_is_recorded() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.clone().pay(pay(1, "ana@bank-a", "bo@bank-b", 1_000)).await.expect("paid");
    bank_b.payments.clone().pay(pay(2, "bo@bank-b", "ana@bank-a", 950)).await.expect("paid back");
    let positions = (bank_a.position().await.balance_minor, bank_b.position().await.balance_minor);
    for _ in 0..2 {
        let result = bank_b.payments.clone().refund(refund_request(3, 1, 100)).await;
        assert_refusal(result, Reason::InsufficientLiquidity, None);
    }
    let status = bank_b.status(3).await;
    let expected = proto::Payment {
        accepted_at_unix_ns: status.accepted_at_unix_ns,
        finalized_at_unix_ns: status.accepted_at_unix_ns,
        original_payment_id: id(1),
        ..payment_record(
            3,
            PaymentKind::Refund,
            (PaymentState::Failed, Reason::InsufficientLiquidity),
            100,
            "refund",
            false,
        )
    };
    assert_eq!(status, expected);
    assert_eq!((bank_a.position().await.balance_minor, bank_b.position().await.balance_minor), positions);
    assert_eq!(bank_a.status(1).await.refunded_amount_minor, 0, "nothing refunded");
    test.assert_money_conserved();
}

/// PayBatch and PayStream answer each item once it is final (payments.proto, common.proto):
/// items to a confirming payee wait for its decision (a batch answered PENDING, with a final
/// time), and every answer says when the payment was recorded (a confirmed payment's
/// accepted_at was its final time, or 0 when declined). Refusals are in-band, by correlation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_stream_items_answer_once_final() {
    let test = TestSwitch::start().await;
    let (bank_a, _bank_c) = test.payer_and_confirming_payee(10_000).await;
    let mut payee = crate::events::listen(&test, "bank-c", 0).await;

    let batch = proto::PayBatchRequest {
        payments: vec![
            pay(1, "ana@bank-a", "cy@bank-c", 100),
            pay(2, "ana@bank-a", "cy@bank-c", 200),
            pay(3, "ana@bank-a", "cy@bank-c", 0),
        ],
    };
    let paying = {
        let mut payments = bank_a.payments.clone();
        tokio::spawn(async move { payments.pay_batch(batch).await })
    };
    for _ in 0..2 {
        payee.next_event().await;
    }
    let receipt = crate::events::credit_decision(&mut payee, id(1), proto::Decision::Accept).await;
    assert_eq!(receipt.status_code, 0, "the decision took effect: {receipt:?}");
    let receipt = crate::events::credit_decision(&mut payee, id(2), proto::Decision::Decline).await;
    assert_eq!(receipt.status_code, 0, "the decision took effect: {receipt:?}");
    let results = paying.await.expect("task").expect("answered").into_inner().results;
    let (first, second) = (bank_a.status(1).await, bank_a.status(2).await);
    let expected = [
        proto::PaymentResult {
            payment_id: id(1),
            state: PaymentState::Completed as i32,
            accepted_at_unix_ns: first.accepted_at_unix_ns,
            finalized_at_unix_ns: first.finalized_at_unix_ns,
            ..proto::PaymentResult::default()
        },
        proto::PaymentResult {
            payment_id: id(2),
            state: PaymentState::Declined as i32,
            reason: Reason::PayeeDeclined as i32,
            decline_reason: proto::DeclineReason::AccountClosed as i32,
            accepted_at_unix_ns: second.accepted_at_unix_ns,
            finalized_at_unix_ns: second.finalized_at_unix_ns,
            ..proto::PaymentResult::default()
        },
        proto::PaymentResult {
            payment_id: id(3),
            state: PaymentState::Rejected as i32,
            reason: Reason::AmountZero as i32,
            status_code: tonic::Code::InvalidArgument as i32,
            ..proto::PaymentResult::default()
        },
    ];
    assert_eq!(results, expected);
    assert!(first.finalized_at_unix_ns > first.accepted_at_unix_ns && first.accepted_at_unix_ns > 0);

    // The same on a stream, answered by correlation id.
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let mut stream = bank_a.payments.clone();
    let mut answers = stream.pay_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)).await;
    let item = |correlation_id, payment| proto::PayStreamRequest { correlation_id, payment: Some(payment) };
    requests.send(item(40, pay(4, "ana@bank-a", "cy@bank-c", 100))).await.expect("send");
    requests.send(item(50, pay(5, "ana@bank-a", "cy@bank-c", 100).with_note("\u{0}"))).await.expect("send");
    let answers = answers.as_mut().expect("stream opened").get_mut();
    let refused = next_answer(answers).await;
    assert_eq!(refused.correlation_id, 50, "the refusal first: the other waits for its payee");
    let result = refused.result.expect("a result");
    assert_eq!((result.state, result.reason), (PaymentState::Rejected as i32, Reason::TextInvalid as i32));
    // The payee's events are in sequence: the batch's two outcomes, then payment 4's request.
    // Deciding before that request is recorded would decide nothing (no such pending payment).
    let payee_sees = |event: proto::Event| match event.kind {
        Some(proto::event::Kind::PaymentOutcome(outcome)) => ("outcome", outcome.payment_id),
        Some(proto::event::Kind::CreditRequest(request)) => ("request", request.payment_id),
        other => panic!("unexpected event {other:?}"),
    };
    for expected in [("outcome", id(1)), ("outcome", id(2)), ("request", id(4))] {
        assert_eq!(payee_sees(payee.next_event().await), expected);
    }
    let receipt = crate::events::credit_decision(&mut payee, id(4), proto::Decision::Accept).await;
    assert_eq!(receipt.status_code, 0, "the decision took effect: {receipt:?}");
    let answered = next_answer(answers).await;
    let status = bank_a.status(4).await;
    assert_eq!(answered.correlation_id, 40);
    let result = answered.result.expect("a result");
    assert_eq!(result.state, PaymentState::Completed as i32);
    assert_eq!(
        (result.accepted_at_unix_ns, result.finalized_at_unix_ns),
        (status.accepted_at_unix_ns, status.finalized_at_unix_ns)
    );
    assert!(status.finalized_at_unix_ns > status.accepted_at_unix_ns);
    drop(requests);

    let mut operator = payments_as(&test, &test.ca.operator("admin")).await;
    let (_requests, receiver) = tokio::sync::mpsc::channel::<proto::PayStreamRequest>(1);
    let result = operator.pay_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)).await;
    assert_refusal(result.map(|_| ()), Reason::NotAuthorized, None);
    test.assert_money_conserved();
}

/// The next answer on a PayStream.
async fn next_answer(answers: &mut tonic::Streaming<proto::PayStreamResponse>) -> proto::PayStreamResponse {
    let message = tokio::time::timeout(WAIT, answers.message()).await.expect("in time");
    message.expect("stream ok").expect("an answer")
}

/// A note set on a request (for the stream case above).
trait WithNote {
    fn with_note(self, note: &str) -> Self;
}

impl WithNote for proto::PayRequest {
    fn with_note(self, note: &str) -> Self {
        proto::PayRequest { note: note.into(), ..self }
    }
}
