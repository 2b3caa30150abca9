//! Integration tests against a real switch: in-process server on an ephemeral port, real mutual
//! TLS with certificates from the development CA, several PSPs, real gRPC clients. Every test
//! that moves money checks that the ledger still nets to zero.

mod common;

use common::*;
use switch::proto::{self, PaymentState, Reason};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_payment_moves_positions_and_retries_are_idempotent() {
    let test = TestSwitch::start().await;
    let (mut bank_a, bank_b) = test.payer_and_payee(0, 10_000).await;

    let result = bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 2_500)).await.expect("pay").into_inner();
    assert_eq!(result.state, PaymentState::Completed as i32);
    assert!(result.finalized_at_unix_ns > 0);
    assert_eq!(bank_a.position().await.balance_minor, 7_500);
    assert_eq!(bank_b.position().await.balance_minor, 2_500);

    // The same payment again: the original outcome, no second debit.
    let retry = bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 2_500)).await.expect("retry").into_inner();
    assert_eq!(retry.state, PaymentState::Completed as i32);
    assert_eq!(retry.finalized_at_unix_ns, result.finalized_at_unix_ns);
    assert_eq!(bank_a.position().await.balance_minor, 7_500);

    // Same id, other content.
    let mut changed = pay(1, "ana@bank-a", "bo@bank-b", 2_500);
    changed.note = "other".into();
    let status = bank_a.payments.pay(changed).await.expect_err("conflict");
    assert_eq!((status.code(), reason(&status)), (Code::AlreadyExists, Some(Reason::PaymentIdConflict)));
    let status = bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 2_600)).await.expect_err("conflict");
    assert_eq!(reason(&status), Some(Reason::PaymentIdConflict));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_debit_cap_limits_payments_and_failures_are_recorded() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(1_000, 500).await;
    // 500 own funds + 1,000 cap: 1,500 may go out.
    bank_a.payments.pay(pay(10, "ana@bank-a", "bo@bank-b", 1_400)).await.expect("within cap");
    let status = bank_a.payments.pay(pay(11, "ana@bank-a", "bo@bank-b", 101)).await.expect_err("over cap");
    assert_eq!((status.code(), reason(&status)), (Code::FailedPrecondition, Some(Reason::InsufficientLiquidity)));
    // Recorded against the id: more liquidity does not flip it.
    let mut operator = test.operator().await;
    operator
        .fund_in(proto::FundRequest {
            psp_id: "bank-a".into(),
            transfer_id: id(777),
            amount_minor: 10_000,
            currency: "INR".into(),
            note: String::new(),
        })
        .await
        .expect("fund in");
    let status = bank_a.payments.pay(pay(11, "ana@bank-a", "bo@bank-b", 101)).await.expect_err("still refused");
    assert_eq!(reason(&status), Some(Reason::InsufficientLiquidity));
    let payment = bank_a.status(11).await;
    assert_eq!((payment.state, payment.reason), (PaymentState::Failed as i32, Reason::InsufficientLiquidity as i32));
    bank_a.payments.pay(pay(12, "ana@bank-a", "bo@bank-b", 101)).await.expect("new id goes through");
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_visible_to_the_two_psps_only() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 0, 1_000).await;
    let mut bank_b = test.onboard("bank-b", 0, 0).await;
    let mut bank_c = test.onboard("bank-c", 0, 0).await;
    bank_a.alias("ana@bank-a", "Ana").await;
    bank_b.alias("bo@bank-b", "Bo").await;
    bank_a.payments.pay(pay(5, "ana@bank-a", "bo@bank-b", 10)).await.expect("pay");
    for psp in [&mut bank_a, &mut bank_b] {
        let payment = psp.status(5).await;
        assert_eq!(payment.state, PaymentState::Completed as i32);
        assert_eq!((payment.payer_alias.as_str(), payment.payee_alias.as_str()), ("ana@bank-a", "bo@bank-b"));
        assert_eq!((payment.payer_psp_id.as_str(), payment.payee_psp_id.as_str()), ("bank-a", "bank-b"));
        assert_eq!(payment.amount_minor, 10);
    }
    let status = bank_c
        .payments
        .get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(5) })
        .await
        .expect_err("a third PSP sees nothing");
    assert_eq!((status.code(), reason(&status)), (Code::NotFound, Some(Reason::PaymentNotFound)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_looks_up_payments_in_batches() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.pay(pay(7, "ana@bank-a", "bo@bank-b", 40)).await.expect("pay");
    let mut operator = test.operator().await;
    let lookup = |ids: Vec<Vec<u8>>| proto::GetPaymentsRequest { payment_ids: ids };
    let answer = operator.get_payments(lookup(vec![id(8), id(7)])).await.expect("lookup").into_inner();
    assert_eq!(answer.payments.len(), 2, "one answer per id");
    assert_eq!((answer.payments[0].payment_id.clone(), answer.payments[0].found), (id(8), false));
    let found = &answer.payments[1];
    let payment = found.payment.as_ref().expect("payment 7");
    assert!(found.found);
    assert_eq!((payment.amount_minor, payment.state), (40, PaymentState::Completed as i32));
    assert_eq!((payment.payer_psp_id.as_str(), payment.payee_psp_id.as_str()), ("bank-a", "bank-b"));

    let status = operator.get_payments(lookup(vec![id(7), vec![1, 2, 3]])).await.expect_err("malformed id");
    assert_eq!((status.code(), reason(&status)), (Code::InvalidArgument, Some(Reason::IdMalformed)));
    let status = operator.get_payments(lookup(vec![])).await.expect_err("empty");
    assert_eq!(reason(&status), Some(Reason::BatchSizeOutOfRange));
    let status = operator.get_payments(lookup(vec![id(7); 8_191])).await.expect_err("too many");
    assert_eq!(reason(&status), Some(Reason::BatchSizeOutOfRange));
    let channel = test.channel(Some(&test.ca.psp("bank-a"))).await.expect("PSP connects");
    let mut as_psp = switch::proto::operator_service_client::OperatorServiceClient::new(channel);
    let status = as_psp.get_payments(lookup(vec![id(7)])).await.expect_err("operator only");
    assert_eq!(status.code(), Code::PermissionDenied);
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_certificate_are_refused() {
    let test = TestSwitch::start().await;
    // The handshake itself fails, or the first call does (TLS 1.3 reports the refusal late).
    match test.channel(None).await {
        Err(_) => {}
        Ok(channel) => {
            let mut client = switch::proto::directory_service_client::DirectoryServiceClient::new(channel);
            let request = proto::ResolveAliasRequest { alias: "ana@bank-a".into() };
            let status = client.resolve_alias(request).await.expect_err("refused without a certificate");
            assert!(reason(&status).is_none(), "refused by TLS, not by the switch's logic: {status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_cannot_use_another_psps_aliases_or_the_operator_api() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 0, 1_000).await;
    let mut bank_b = test.onboard("bank-b", 0, 1_000).await;
    bank_a.alias("ana@bank-a", "Ana").await;
    bank_b.alias("bo@bank-b", "Bo").await;
    let status = bank_b.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 10)).await.expect_err("not its alias");
    assert_eq!((status.code(), reason(&status)), (Code::PermissionDenied, Some(Reason::AliasOwnedByOtherPsp)));
    let request = proto::RegisterAliasRequest { alias: "eve@bank-a".into(), display_name: "Eve".into() };
    let status = bank_b.directory.register_alias(request).await.expect_err("not its suffix");
    assert_eq!(reason(&status), Some(Reason::AliasOwnedByOtherPsp));
    let status = bank_b
        .directory
        .remove_alias(proto::RemoveAliasRequest { alias: "ana@bank-a".into() })
        .await
        .expect_err("not its alias");
    assert_eq!(reason(&status), Some(Reason::AliasOwnedByOtherPsp));

    let pair = test.ca.psp("bank-b");
    let channel = test.channel(Some(&pair)).await.expect("connects");
    let mut as_operator = switch::proto::operator_service_client::OperatorServiceClient::new(channel);
    let status = as_operator
        .suspend_participant(proto::SuspendParticipantRequest { psp_id: "bank-a".into(), note: String::new() })
        .await
        .expect_err("PSP is no operator");
    assert_eq!((status.code(), reason(&status)), (Code::PermissionDenied, Some(Reason::NotAuthorized)));
    let unknown = bank_a.payments.pay(pay(2, "ana@bank-a", "nobody@bank-b", 10)).await.expect_err("unknown payee");
    assert_eq!((unknown.code(), reason(&unknown)), (Code::NotFound, Some(Reason::UnknownAlias)));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_reason_and_changes_nothing() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let base = pay(1, "ana@bank-a", "bo@bank-b", 10);
    let cases = [
        (proto::PayRequest { payment_id: vec![1, 2, 3], ..base.clone() }, Reason::IdMalformed),
        (proto::PayRequest { payment_id: id(0), ..base.clone() }, Reason::IdReserved),
        (proto::PayRequest { payment_id: id(u128::MAX), ..base.clone() }, Reason::IdReserved),
        (proto::PayRequest { amount_minor: 0, ..base.clone() }, Reason::AmountZero),
        (proto::PayRequest { amount_minor: u64::MAX, ..base.clone() }, Reason::AmountOverLimit),
        (proto::PayRequest { currency: "XXX".into(), ..base.clone() }, Reason::UnknownCurrency),
        (proto::PayRequest { note: "n".repeat(141), ..base.clone() }, Reason::FieldTooLong),
        (proto::PayRequest { note: "a\u{7}b".into(), ..base.clone() }, Reason::TextInvalid),
        (proto::PayRequest { payee_alias: "Bo@bank-b".into(), ..base.clone() }, Reason::AliasMalformed),
        (proto::PayRequest { deadline_unix_ms: 1, ..base.clone() }, Reason::DeadlinePassed),
        (proto::PayRequest { deadline_unix_ms: u64::MAX, ..base.clone() }, Reason::DeadlineTooFar),
        (proto::PayRequest { payer_alias: "zed@bank-a".into(), ..base.clone() }, Reason::OwnAliasNotRegistered),
    ];
    for (request, expected) in cases {
        let status = bank_a.payments.pay(request.clone()).await.expect_err("refused");
        assert_eq!(reason(&status), Some(expected), "{request:?}: {status:?}");
        assert_eq!(status.code(), switch::reason::code_of(expected));
    }
    let position = bank_a.position().await;
    assert_eq!(position.balance_minor, 1_000, "refused payments moved nothing");
    // The id was never used by a refusal that records nothing.
    bank_a.payments.pay(base).await.expect("the same id now succeeds");
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_each_payment_in_order() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let payments = vec![
        pay(1, "ana@bank-a", "bo@bank-b", 300),
        pay(2, "ana@bank-a", "nobody@bank-b", 300),
        pay(3, "ana@bank-a", "bo@bank-b", 600),
        pay(4, "ana@bank-a", "bo@bank-b", 200),
    ];
    let results =
        bank_a.payments.pay_batch(proto::PayBatchRequest { payments }).await.expect("batch").into_inner().results;
    let states: Vec<(i32, i32)> = results.iter().map(|result| (result.state, result.reason)).collect();
    assert_eq!(
        states,
        vec![
            (PaymentState::Completed as i32, 0),
            (PaymentState::Rejected as i32, Reason::UnknownAlias as i32),
            (PaymentState::Completed as i32, 0),
            (PaymentState::Failed as i32, Reason::InsufficientLiquidity as i32),
        ]
    );
    let status = bank_a.payments.pay_batch(proto::PayBatchRequest { payments: Vec::new() }).await.expect_err("empty");
    assert_eq!(reason(&status), Some(Reason::BatchSizeOutOfRange));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_controls_funding_caps_and_suspension() {
    let test = TestSwitch::start().await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(500, 1_000).await;
    let mut operator = test.operator().await;
    let fund_out = |transfer: u128, amount: u64| proto::FundRequest {
        psp_id: "bank-a".into(),
        transfer_id: id(transfer),
        amount_minor: amount,
        currency: "INR".into(),
        note: String::new(),
    };
    // Own funds may leave; the cap may not.
    let status = operator.fund_out(fund_out(50, 1_001)).await.expect_err("more than own funds");
    assert_eq!(reason(&status), Some(Reason::FundOutExceedsAvailable));
    let result = operator.fund_out(fund_out(51, 400)).await.expect("own funds").into_inner();
    assert_eq!(result.participant.expect("participant").balance_minor, 600);
    operator.fund_out(fund_out(51, 400)).await.expect("retry is idempotent");
    let participant = operator
        .get_participant(proto::GetParticipantRequest { psp_id: "bank-a".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!((participant.balance_minor, participant.net_debit_cap_minor), (600, 500));

    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 1_000)).await.expect("uses 400 of the cap");
    let status = operator
        .set_net_debit_cap(proto::SetNetDebitCapRequest { psp_id: "bank-a".into(), net_debit_cap_minor: 399 })
        .await
        .expect_err("below usage");
    assert_eq!(reason(&status), Some(Reason::NetDebitCapBelowUsage));
    operator
        .set_net_debit_cap(proto::SetNetDebitCapRequest { psp_id: "bank-a".into(), net_debit_cap_minor: 450 })
        .await
        .expect("cap lowered to what is left");
    let status = bank_a.payments.pay(pay(2, "ana@bank-a", "bo@bank-b", 51)).await.expect_err("cap");
    assert_eq!(reason(&status), Some(Reason::InsufficientLiquidity));

    operator
        .suspend_participant(proto::SuspendParticipantRequest { psp_id: "bank-b".into(), note: String::new() })
        .await
        .expect("suspend");
    let status = bank_a.payments.pay(pay(3, "ana@bank-a", "bo@bank-b", 1)).await.expect_err("payee suspended");
    assert_eq!(reason(&status), Some(Reason::CounterpartySuspended));
    // A suspended PSP keeps its directory (directory.proto): it moves no money.
    bank_b
        .directory
        .register_alias(proto::RegisterAliasRequest { alias: "cy@bank-b".into(), display_name: "Cy".into() })
        .await
        .expect("suspended PSPs register aliases");
    operator
        .reactivate_participant(proto::ReactivateParticipantRequest { psp_id: "bank-b".into(), note: String::new() })
        .await
        .expect("reactivate");
    bank_a.payments.pay(pay(3, "ana@bank-a", "bo@bank-b", 1)).await.expect("active again");
    let listed = operator
        .list_participants(proto::ListParticipantsRequest { page_size: 1, page_token: String::new() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.participants.len(), 1);
    // The token is opaque: passed back unchanged, it continues after bank-a.
    let rest = operator
        .list_participants(proto::ListParticipantsRequest { page_size: 1, page_token: listed.next_page_token })
        .await
        .expect("next page")
        .into_inner();
    assert_eq!(rest.participants[0].psp_id, "bank-b");
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_participants_aliases_payments_and_positions() {
    let test = TestSwitch::start().await;
    let (mut bank_a, bank_b) = test.payer_and_payee(100, 1_000).await;
    bank_a.alias("gone@bank-a", "Gone").await;
    bank_a.directory.remove_alias(proto::RemoveAliasRequest { alias: "gone@bank-a".into() }).await.expect("remove");
    let mut acknowledged = Vec::new();
    for payment in 1..=20u128 {
        bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 7)).await.expect("pay");
        acknowledged.push(payment);
    }
    drop((bank_a, bank_b));
    let dir = test.stop().await;

    let test = TestSwitch::start_in(dir).await;
    let mut bank_a = test.psp("bank-a").await;
    let mut bank_b = test.psp("bank-b").await;
    let position = bank_a.position().await;
    assert_eq!((position.balance_minor, position.net_debit_cap_minor), (1_000 - 140, 100));
    for payment in acknowledged {
        let status = bank_b
            .payments
            .get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(payment) })
            .await
            .expect("every acknowledged payment survives")
            .into_inner();
        assert_eq!((status.state, status.amount_minor), (PaymentState::Completed as i32, 7));
    }
    let resolved = bank_a
        .directory
        .resolve_alias(proto::ResolveAliasRequest { alias: "bo@bank-b".into() })
        .await
        .expect("alias survives")
        .into_inner();
    assert_eq!((resolved.psp_id.as_str(), resolved.display_name.as_str()), ("bank-b", "Bo"));
    let gone = bank_a
        .directory
        .resolve_alias(proto::ResolveAliasRequest { alias: "gone@bank-a".into() })
        .await
        .expect_err("removal survives");
    assert_eq!(reason(&gone), Some(Reason::UnknownAlias));
    // Retrying an old payment after the restart still returns its outcome, not a second debit.
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 7)).await.expect("retry");
    let position = bank_a.position().await;
    assert_eq!(position.balance_minor, 860);
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_payments_get_one_answer_each() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let requests: Vec<proto::PayStreamRequest> = (1..=50u64)
        .map(|number| proto::PayStreamRequest {
            correlation_id: 1_000 + number,
            // 50 × 30 = 1,500 asked of 1,000 funds: some must fail, none may overdraw.
            payment: Some(pay(u128::from(number), "ana@bank-a", "bo@bank-b", 30)),
        })
        .chain(std::iter::once(proto::PayStreamRequest {
            correlation_id: 9_999,
            payment: Some(pay(77, "ana@bank-a", "nobody@bank-b", 1)),
        }))
        .collect();
    let mut responses = bank_a.payments.pay_stream(tokio_stream::iter(requests)).await.expect("stream").into_inner();
    let mut answers = std::collections::BTreeMap::new();
    while let Some(response) = responses.message().await.expect("stream ok") {
        let result = response.result.expect("result");
        assert!(answers.insert(response.correlation_id, result).is_none(), "one answer per request");
    }
    assert_eq!(answers.len(), 51);
    let completed = answers.values().filter(|result| result.state == PaymentState::Completed as i32).count();
    let failed = answers.values().filter(|result| result.reason == Reason::InsufficientLiquidity as i32).count();
    assert_eq!((completed, failed), (33, 17), "1,000 funds cover exactly 33 payments of 30");
    assert_eq!(answers[&9_999].reason, Reason::UnknownAlias as i32);
    let position = bank_a.position().await;
    assert_eq!(position.balance_minor, 1_000 - 33 * 30);
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_reports_sum_to_zero_and_settle_the_window() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 500, 1_000).await;
    let mut bank_b = test.onboard("bank-b", 500, 1_000).await;
    let mut bank_c = test.onboard("bank-c", 500, 1_000).await;
    bank_a.alias("ana@bank-a", "Ana").await;
    bank_b.alias("bo@bank-b", "Bo").await;
    bank_c.alias("cy@bank-c", "Cy").await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 300)).await.expect("pay");
    bank_b.payments.pay(pay(2, "bo@bank-b", "cy@bank-c", 100)).await.expect("pay");
    bank_c.payments.pay(pay(3, "cy@bank-c", "ana@bank-a", 50)).await.expect("pay");
    bank_a.payments.pay(pay(4, "ana@bank-a", "cy@bank-c", 1_200)).await.expect("uses the cap");
    let mut operator = test.operator().await;
    let provisional = operator
        .get_settlement_report(proto::GetSettlementReportRequest { window_id: 1 })
        .await
        .expect("provisional report")
        .into_inner();
    assert_eq!(provisional.state, proto::SettlementWindowState::Open as i32);

    let report = operator
        .close_settlement_window(proto::CloseSettlementWindowRequest { window_id: 1 })
        .await
        .expect("close")
        .into_inner();
    assert_eq!(report.state, proto::SettlementWindowState::Closed as i32);
    let net: std::collections::BTreeMap<String, i64> =
        report.positions.iter().map(|position| (position.psp_id.clone(), position.net_position_minor)).collect();
    assert_eq!(net.values().sum::<i64>(), 0, "a report's positions sum to zero");
    assert_eq!(net["bank-a"], 50 - 300 - 1_200);
    assert_eq!(net["bank-b"], 300 - 100);
    assert_eq!(net["bank-c"], 100 + 1_200 - 50);
    // Bilateral positions net each pair and agree with the multilateral ones.
    let mut from_bilateral: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for pair in &report.bilateral {
        *from_bilateral.entry(pair.debtor_psp_id.clone()).or_default() -= pair.amount_minor as i64;
        *from_bilateral.entry(pair.creditor_psp_id.clone()).or_default() += pair.amount_minor as i64;
    }
    assert_eq!(from_bilateral, net);
    // Settlement transfers bring every position back to its prefunding.
    for psp in [&bank_a, &bank_b, &bank_c] {
        let position = psp.position().await;
        assert_eq!(position.balance_minor, 1_000, "{}", position.psp_id);
    }
    // Closing again returns the same report and closes nothing; the next window is empty.
    let again = operator
        .close_settlement_window(proto::CloseSettlementWindowRequest { window_id: 1 })
        .await
        .expect("idempotent")
        .into_inner();
    assert_eq!(again, report);
    let status = operator
        .close_settlement_window(proto::CloseSettlementWindowRequest { window_id: 3 })
        .await
        .expect_err("not open");
    assert_eq!(reason(&status), Some(Reason::SettlementWindowNotFound));
    bank_b.payments.pay(pay(5, "bo@bank-b", "ana@bank-a", 10)).await.expect("pay in window 2");
    let second = operator
        .close_settlement_window(proto::CloseSettlementWindowRequest { window_id: 2 })
        .await
        .expect("close 2")
        .into_inner();
    let net: Vec<i64> = second.positions.iter().map(|position| position.net_position_minor).collect();
    assert_eq!(net, vec![10, -10, 0], "only window 2's payment");
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_over_its_payment_rate_is_told_to_back_off() {
    let test = TestSwitch::start_with(|config| config.limits.payments_per_second_per_psp = 5).await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(0, 1_000).await;
    // A batch above the whole budget is refused as a whole, moving nothing.
    let payments = (1..=6u128).map(|payment| pay(payment, "ana@bank-a", "bo@bank-b", 1)).collect();
    let status = bank_a.payments.pay_batch(proto::PayBatchRequest { payments }).await.expect_err("over the rate");
    assert_eq!((status.code(), reason(&status)), (Code::ResourceExhausted, Some(Reason::RateLimited)));
    let mut limited = 0;
    for payment in 10..30u128 {
        match bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 1)).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(reason(&status), Some(Reason::RateLimited));
                limited += 1;
            }
        }
    }
    assert!(limited > 0, "20 payments at once never hit a 5-per-second limit");
    // Another PSP has its own budget: its request reaches validation (checked after the rate).
    let status = bank_b.payments.pay(pay(99, "bo@bank-b", "ana@bank-a", 0)).await.expect_err("zero amount");
    assert_eq!(reason(&status), Some(Reason::AmountZero));
    test.assert_money_conserved();
}

/// A stream whose payments are held by a silent confirming payee, while the client keeps sending
/// one small message per HTTP/2 DATA frame (as clients that flush each message do). h2 counts
/// unread small frames against a budget of half the connection window and closes the connection
/// past it (ENHANCE_YOUR_CALM); the switch keeps reading and refuses in-band what its budgets
/// have no room for (RATE_LIMITED), or what it read after the deadline. Every payment is
/// answered: the held ones expire at their deadline, the rest are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_held_at_its_in_flight_bound_keeps_its_connection() {
    // Past the in-flight bound (4,096) by more than the switch's stream window holds (1 MiB of
    // ~72-byte frames): the client is stopped by flow control.
    const PAYMENTS: u64 = 20_000;
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_c) = test.payer_and_confirming_payee(1_000_000).await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    let deadline = u64::try_from(now_ms).expect("ms") + 2_000;

    let (requests, outgoing) = tokio::sync::mpsc::channel(1);
    let producer = tokio::spawn(async move {
        for number in 1..=PAYMENTS {
            let payment = proto::PayRequest {
                deadline_unix_ms: deadline,
                ..pay(u128::from(number), "ana@bank-a", "cy@bank-c", 1)
            };
            let request = proto::PayStreamRequest { correlation_id: number, payment: Some(payment) };
            if requests.send(request).await.is_err() {
                return;
            }
            // Lets the body encoder take this message alone: one message, one DATA frame.
            tokio::task::yield_now().await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(outgoing);
    let mut responses = bank_a.payments.pay_stream(stream).await.expect("stream").into_inner();
    let mut answers = std::collections::BTreeMap::new();
    while let Some(response) = responses.message().await.expect("the connection stays up") {
        let result = response.result.expect("result");
        assert!(answers.insert(response.correlation_id, result).is_none(), "one answer per request");
    }
    producer.await.expect("producer");
    assert_eq!(answers.len() as u64, PAYMENTS);
    let expired = answers.values().filter(|result| result.state == PaymentState::Expired as i32).count();
    let refused = answers
        .values()
        .filter(|result| [Reason::DeadlinePassed as i32, Reason::RateLimited as i32].contains(&result.reason))
        .count();
    assert_eq!(expired + refused, PAYMENTS as usize, "each payment expired or was refused, none completed");
    // Never more held than the stream's bound; the rest was read and refused meanwhile.
    assert!(
        refused > 0 && expired <= switch::services::PAY_STREAM_IN_FLIGHT_MAX,
        "{expired} expired, {refused} refused"
    );
    let position = bank_a.position().await;
    assert_eq!(position.balance_minor, 1_000_000, "every reservation voided");
    test.assert_money_conserved();

    // Every answered payment is in the ledger after a restart, in the state it was answered with.
    let test = TestSwitch::start_in(test.stop().await).await;
    let bank_a = test.psp("bank-a").await;
    for (number, result) in answers.iter().step_by(97) {
        if result.state == PaymentState::Expired as i32 {
            assert_eq!(bank_a.status(u128::from(*number)).await.state, PaymentState::Expired as i32);
        }
    }
    assert_eq!(bank_a.position().await.balance_minor, 1_000_000);
    test.assert_money_conserved();
}
