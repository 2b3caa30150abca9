//! Settlement windows: the open window, close, reports (operator.proto, common.proto).

use switch::proto::{self, PaymentState, Reason, SettlementWindowState};

use crate::common::{id, pay, TestSwitch};
use crate::support::{assert_refusal, Unchanged};

fn report_of(window_id: u64) -> proto::GetSettlementReportRequest {
    proto::GetSettlementReportRequest { window_id }
}

fn close(window_id: u64) -> proto::CloseSettlementWindowRequest {
    proto::CloseSettlementWindowRequest { window_id }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_zero_is_the_open_window_which_opened_when_the_switch_first_started() {
    let test = TestSwitch::start().await;
    let mut operator = test.operator().await;
    test.onboard("bank-a", 0, 10).await;
    let open = operator.get_settlement_report(report_of(0)).await.expect("the open window").into_inner();
    assert_eq!((open.window_id, open.state), (1, SettlementWindowState::Open as i32));
    assert_eq!(open.closed_at_unix_ns, 0, "0 while open");
    // It opened with the ledger: before anything else the switch recorded.
    let registered = operator.get_participant(proto::GetParticipantRequest { psp_id: "bank-a".into() }).await;
    let registered_at = registered.expect("participant").into_inner().registered_at_unix_ns;
    assert!(open.opened_at_unix_ns > 0 && open.opened_at_unix_ns < registered_at, "{open:?}");
    let by_id = operator.get_settlement_report(report_of(1)).await.expect("by its id").into_inner();
    assert_eq!(by_id.opened_at_unix_ns, open.opened_at_unix_ns);
    assert_eq!(by_id.positions, open.positions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_beyond_the_open_one_are_not_found_and_closing_needs_an_id() {
    let test = TestSwitch::start().await;
    let mut operator = test.operator().await;
    let unchanged = Unchanged::take(&test);
    let missing = operator.get_settlement_report(report_of(2)).await;
    assert_refusal(missing, Reason::SettlementWindowNotFound, Some("window_id"));
    assert_refusal(
        operator.close_settlement_window(close(2)).await,
        Reason::SettlementWindowNotFound,
        Some("window_id"),
    );
    assert_refusal(operator.close_settlement_window(close(0)).await, Reason::FieldRequired, Some("window_id"));
    unchanged.assert_still(&test, "unknown windows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_report_holds_every_field_its_message_promises() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 500, 1_000).await;
    let mut bank_b = test.onboard("bank-b", 0, 1_000).await;
    test.onboard("bank-c", 0, 0).await; // registered, no payments: all zeros
    bank_a.alias("ana@bank-a", "Ana").await;
    bank_b.alias("bo@bank-b", "Bo").await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 300)).await.expect("pay");
    bank_a.payments.pay(pay(2, "ana@bank-a", "bo@bank-b", 200)).await.expect("pay");
    bank_b.payments.pay(pay(3, "bo@bank-b", "ana@bank-a", 50)).await.expect("pay");
    let last = bank_b.status(3).await.finalized_at_unix_ns;
    let mut operator = test.operator().await;
    let opened_at = operator.get_settlement_report(report_of(0)).await.expect("open").into_inner().opened_at_unix_ns;
    let report = operator.close_settlement_window(close(1)).await.expect("close").into_inner();

    assert_eq!((report.window_id, report.state), (1, SettlementWindowState::Closed as i32));
    assert_eq!(report.opened_at_unix_ns, opened_at);
    assert!(report.opened_at_unix_ns > 0, "window 1 opened when the switch first started");
    assert!(report.closed_at_unix_ns >= last, "the window holds every payment made before the close");
    let psps: Vec<&str> = report.positions.iter().map(|position| position.psp_id.as_str()).collect();
    assert_eq!(psps, ["bank-a", "bank-b", "bank-c"], "every participant, ordered by psp_id");
    let summary = |position: &proto::ParticipantNetPosition| {
        (
            position.currency.clone(),
            position.sent_minor,
            position.received_minor,
            position.net_position_minor,
            position.sent_count,
            position.received_count,
        )
    };
    assert_eq!(summary(&report.positions[0]), ("INR".to_string(), 500, 50, -450, 2, 1));
    assert_eq!(summary(&report.positions[1]), ("INR".to_string(), 50, 500, 450, 1, 2));
    assert_eq!(summary(&report.positions[2]), ("INR".to_string(), 0, 0, 0, 0, 0));
    assert_eq!(report.positions[0].settlement_transfer_id.len(), 16);
    assert_eq!(report.positions[1].settlement_transfer_id.len(), 16);
    assert!(report.positions[2].settlement_transfer_id.is_empty(), "no transfer for a zero net");
    let bilateral: Vec<_> = report
        .bilateral
        .iter()
        .map(|pair| {
            (pair.debtor_psp_id.as_str(), pair.creditor_psp_id.as_str(), pair.currency.as_str(), pair.amount_minor)
        })
        .collect();
    assert_eq!(bilateral, [("bank-a", "bank-b", "INR", 450)]);
    // The settlement transfers are in the ledger, reversing each net.
    for position in &report.positions[..2] {
        let transfer_id = u128::from_be_bytes(position.settlement_transfer_id.as_slice().try_into().expect("16 bytes"));
        let found = test.switch.ledger.lookup_transfers(&[transfer_id]).expect("lookup")[0].expect("recorded");
        assert_eq!(found.stored.transfer.amount, u128::from(position.net_position_minor.unsigned_abs()));
    }
    // The closed report is final; the next window opens the instant after the close.
    assert_eq!(operator.get_settlement_report(report_of(1)).await.expect("closed").into_inner(), report);
    let next = operator.get_settlement_report(report_of(0)).await.expect("open").into_inner();
    assert_eq!((next.window_id, next.state), (2, SettlementWindowState::Open as i32));
    assert_eq!(next.opened_at_unix_ns, report.closed_at_unix_ns + 1);
    assert!(next.positions.iter().all(|position| position.sent_count + position.received_count == 0));
    assert!(next.positions.iter().all(|position| position.settlement_transfer_id.is_empty()));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_payment_names_the_window_in_which_its_money_moved() {
    let test = TestSwitch::start().await;
    let (mut bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("pay in window 1");
    let failed = bank_a.payments.pay(pay(2, "ana@bank-a", "bo@bank-b", 5_000)).await;
    assert_refusal(failed, Reason::InsufficientLiquidity, None);
    assert_eq!(bank_a.status(1).await.settlement_window_id, 1);
    let mut operator = test.operator().await;
    operator.close_settlement_window(close(1)).await.expect("close 1");
    bank_a.payments.pay(pay(3, "ana@bank-a", "bo@bank-b", 100)).await.expect("pay in window 2");
    operator.close_settlement_window(close(2)).await.expect("close 2");
    bank_a.payments.pay(pay(4, "ana@bank-a", "bo@bank-b", 100)).await.expect("pay in window 3");
    for (payment, window) in [(1, 1), (3, 2), (4, 3)] {
        let status = bank_b.status(payment).await;
        assert_eq!((status.state, status.settlement_window_id), (PaymentState::Completed as i32, window), "{payment}");
        let request = proto::GetPaymentRequest { payment_id: id(payment) };
        let seen = operator.get_payment(request).await.expect("operator view").into_inner();
        assert_eq!(seen.settlement_window_id, window, "the operator's view of {payment}");
    }
    let lookup = proto::GetPaymentsRequest { payment_ids: vec![id(1), id(3), id(4), id(2)] };
    let found = operator.get_payments(lookup).await.expect("lookup").into_inner().payments;
    let windows: Vec<u64> =
        found.iter().map(|lookup| lookup.payment.as_ref().expect("found").settlement_window_id).collect();
    assert_eq!(windows, [1, 2, 3, 0], "a failed payment moved no money: 0");
    test.assert_money_conserved();
}
