//! OperatorService: participants, funding, caps, suspension, listings (operator.proto).

use switch::proto::operator_service_client::OperatorServiceClient;
use switch::proto::subscribe_request::Message as Incoming;
use switch::proto::subscribe_response::Message as Outgoing;
use switch::proto::{self, ConfirmationMode, ParticipantStatus, Reason};

use crate::common::{id, next, pay, subscribe, TestSwitch};
use crate::support::{assert_refusal, Unchanged};

/// A registration of `psp` in INR, automatic mode, with `cap`.
pub fn registration(psp: &str, cap: u64) -> proto::RegisterParticipantRequest {
    proto::RegisterParticipantRequest {
        psp_id: psp.into(),
        name: format!("{psp} bank"),
        currency: "INR".into(),
        net_debit_cap_minor: cap,
        confirmation_mode: ConfirmationMode::Automatic as i32,
    }
}

/// A funding request of `amount` INR to or from `psp`.
pub fn funding(psp: &str, transfer: u128, amount: u64) -> proto::FundRequest {
    proto::FundRequest {
        psp_id: psp.into(),
        transfer_id: id(transfer),
        amount_minor: amount,
        currency: "INR".into(),
        note: "settlement bank ref 1".into(),
    }
}

/// The operator's view of `psp`.
pub async fn participant(
    operator: &mut OperatorServiceClient<tonic::transport::Channel>,
    psp: &str,
) -> proto::Participant {
    let request = proto::GetParticipantRequest { psp_id: psp.into() };
    operator.get_participant(request).await.expect("participant").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_calling_the_operator_service_is_not_authorized() {
    let test = TestSwitch::start().await;
    test.onboard("bank-a", 0, 100).await;
    let pair = test.ca.psp("bank-a");
    let mut as_psp = OperatorServiceClient::new(test.channel(Some(&pair)).await.expect("connects"));
    let unchanged = Unchanged::take(&test);
    assert_refusal(as_psp.register_participant(registration("bank-z", 0)).await, Reason::NotAuthorized, None);
    assert_refusal(as_psp.fund_in(funding("bank-a", 7, 10)).await, Reason::NotAuthorized, None);
    let request = proto::GetParticipantRequest { psp_id: "bank-a".into() };
    assert_refusal(as_psp.get_participant(request).await, Reason::NotAuthorized, None);
    unchanged.assert_still(&test, "a PSP calling OperatorService");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_id_is_checked_before_it_is_looked_up() {
    let test = TestSwitch::start().await;
    test.onboard("bank-a", 0, 100).await;
    let mut operator = test.operator().await;
    let unchanged = Unchanged::take(&test);
    for (psp_id, reason) in
        [("Bank-A", Reason::PspIdMalformed), ("-bank", Reason::PspIdMalformed), ("", Reason::FieldRequired)]
    {
        let get = proto::GetParticipantRequest { psp_id: psp_id.into() };
        assert_refusal(operator.get_participant(get).await, reason, Some("psp_id"));
        let cap = proto::SetNetDebitCapRequest { psp_id: psp_id.into(), net_debit_cap_minor: 5 };
        assert_refusal(operator.set_net_debit_cap(cap).await, reason, Some("psp_id"));
        let suspend = proto::SuspendParticipantRequest { psp_id: psp_id.into(), note: String::new() };
        assert_refusal(operator.suspend_participant(suspend).await, reason, Some("psp_id"));
        let reactivate = proto::ReactivateParticipantRequest { psp_id: psp_id.into(), note: String::new() };
        assert_refusal(operator.reactivate_participant(reactivate).await, reason, Some("psp_id"));
        assert_refusal(operator.fund_in(funding(psp_id, 8, 10)).await, reason, Some("psp_id"));
        assert_refusal(operator.fund_out(funding(psp_id, 9, 10)).await, reason, Some("psp_id"));
        assert_refusal(operator.register_participant(registration(psp_id, 0)).await, reason, Some("psp_id"));
    }
    // Well-formed but not registered: only now NOT_FOUND.
    let get = proto::GetParticipantRequest { psp_id: "bank-q".into() };
    assert_refusal(operator.get_participant(get).await, Reason::ParticipantNotFound, Some("psp_id"));
    let suspend = proto::SuspendParticipantRequest { psp_id: "bank-q".into(), note: String::new() };
    assert_refusal(operator.suspend_participant(suspend).await, Reason::ParticipantNotFound, Some("psp_id"));
    let cap = proto::SetNetDebitCapRequest { psp_id: "bank-q".into(), net_debit_cap_minor: 5 };
    assert_refusal(operator.set_net_debit_cap(cap).await, Reason::ParticipantNotFound, Some("psp_id"));
    assert_refusal(operator.fund_in(funding("bank-q", 10, 10)).await, Reason::ParticipantNotFound, Some("psp_id"));
    unchanged.assert_still(&test, "requests naming a malformed or unknown PSP id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_checked_field_by_field() {
    let test = TestSwitch::start().await;
    let mut operator = test.operator().await;
    let unchanged = Unchanged::take(&test);
    let base = registration("bank-a", 0);
    let cases = [
        (proto::RegisterParticipantRequest { name: String::new(), ..base.clone() }, Reason::FieldRequired, "name"),
        (proto::RegisterParticipantRequest { name: "n".repeat(101), ..base.clone() }, Reason::FieldTooLong, "name"),
        (proto::RegisterParticipantRequest { name: "Bank\u{7}A".into(), ..base.clone() }, Reason::TextInvalid, "name"),
        (
            proto::RegisterParticipantRequest { currency: "XXX".into(), ..base.clone() },
            Reason::UnknownCurrency,
            "currency",
        ),
        (
            proto::RegisterParticipantRequest { confirmation_mode: 0, ..base.clone() },
            Reason::FieldRequired,
            "confirmation_mode",
        ),
        (
            proto::RegisterParticipantRequest { confirmation_mode: 9, ..base.clone() },
            Reason::FieldRequired,
            "confirmation_mode",
        ),
        (
            proto::RegisterParticipantRequest { net_debit_cap_minor: 1 << 63, ..base.clone() },
            Reason::AmountOverLimit,
            "net_debit_cap_minor",
        ),
    ];
    for (request, reason, field) in cases {
        assert_refusal(operator.register_participant(request).await, reason, Some(field));
    }
    unchanged.assert_still(&test, "refused registrations");
    // The bounds themselves are accepted: a name of exactly PARTICIPANT_NAME_BYTES_MAX bytes.
    let longest = proto::RegisterParticipantRequest { name: "é".repeat(50), ..base };
    let registered = operator.register_participant(longest).await.expect("100 bytes").into_inner();
    assert_eq!(registered.name.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_registration_returns_the_participant_as_it_is_now_whatever_the_cap() {
    let test = TestSwitch::start().await;
    let mut operator = test.operator().await;
    let first = operator.register_participant(registration("bank-a", 100)).await.expect("register").into_inner();
    let cap = proto::SetNetDebitCapRequest { psp_id: "bank-a".into(), net_debit_cap_minor: 700 };
    operator.set_net_debit_cap(cap).await.expect("cap raised");
    // The cap is not compared: the original request retried, and one with yet another cap.
    for retry_cap in [100, 5] {
        let again = operator.register_participant(registration("bank-a", retry_cap)).await.expect("idempotent");
        let again = again.into_inner();
        assert_eq!(again.net_debit_cap_minor, 700, "as it is now");
        assert_eq!(again.registered_at_unix_ns, first.registered_at_unix_ns);
    }
    let unchanged = Unchanged::take(&test);
    let base = registration("bank-a", 100);
    for other in [
        proto::RegisterParticipantRequest { name: "Another".into(), ..base.clone() },
        proto::RegisterParticipantRequest { confirmation_mode: ConfirmationMode::Confirmed as i32, ..base.clone() },
    ] {
        let refused = operator.register_participant(other).await;
        assert_refusal(refused, Reason::ParticipantAlreadyRegistered, Some("psp_id"));
    }
    unchanged.assert_still(&test, "a registration with other details");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_participants_limit_refuses_one_more() {
    let test = TestSwitch::start_with(|config| config.limits.participants_max = 2).await;
    let mut operator = test.operator().await;
    operator.register_participant(registration("bank-a", 0)).await.expect("first");
    operator.register_participant(registration("bank-b", 0)).await.expect("second");
    let unchanged = Unchanged::take(&test);
    assert_refusal(operator.register_participant(registration("bank-c", 0)).await, Reason::ParticipantsLimit, None);
    unchanged.assert_still(&test, "a registration beyond PARTICIPANTS_MAX");
    // A registered participant's retry is still answered.
    operator.register_participant(registration("bank-a", 0)).await.expect("retry at the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_are_bounded_and_plain_text() {
    let test = TestSwitch::start().await;
    test.onboard("bank-a", 0, 100).await;
    let mut operator = test.operator().await;
    let unchanged = Unchanged::take(&test);
    let long = "n".repeat(141);
    let suspend = proto::SuspendParticipantRequest { psp_id: "bank-a".into(), note: long.clone() };
    assert_refusal(operator.suspend_participant(suspend).await, Reason::FieldTooLong, Some("note"));
    let suspend = proto::SuspendParticipantRequest { psp_id: "bank-a".into(), note: "fraud\ncase".into() };
    assert_refusal(operator.suspend_participant(suspend).await, Reason::TextInvalid, Some("note"));
    let reactivate = proto::ReactivateParticipantRequest { psp_id: "bank-a".into(), note: long.clone() };
    assert_refusal(operator.reactivate_participant(reactivate).await, Reason::FieldTooLong, Some("note"));
    let fund = proto::FundRequest { note: long, ..funding("bank-a", 20, 5) };
    assert_refusal(operator.fund_in(fund).await, Reason::FieldTooLong, Some("note"));
    let fund = proto::FundRequest { note: "ref\u{85}".into(), ..funding("bank-a", 20, 5) };
    assert_refusal(operator.fund_in(fund).await, Reason::TextInvalid, Some("note"));
    unchanged.assert_still(&test, "requests with a bad note");
    assert_eq!(participant(&mut operator, "bank-a").await.status, ParticipantStatus::Active as i32);
    // NOTE_BYTES_MAX bytes exactly is a valid note.
    let suspend = proto::SuspendParticipantRequest { psp_id: "bank-a".into(), note: "é".repeat(70) };
    let suspended = operator.suspend_participant(suspend).await.expect("140 bytes").into_inner();
    assert_eq!(suspended.status, ParticipantStatus::Suspended as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_ordered_and_paginated_with_tokens_of_the_switch() {
    let test = TestSwitch::start().await;
    let mut operator = test.operator().await;
    // 101 participants: one more than the default page.
    let mut ids: Vec<String> = (0..101).map(|number| format!("psp-{number:03}")).collect();
    ids.reverse();
    for psp in &ids {
        operator.register_participant(registration(psp, 0)).await.expect("register");
    }
    ids.sort();
    let list = |page_size: u32, page_token: &str| proto::ListParticipantsRequest {
        page_size,
        page_token: page_token.to_string(),
    };
    let first = operator.list_participants(list(0, "")).await.expect("first page").into_inner();
    let listed: Vec<String> = first.participants.iter().map(|participant| participant.psp_id.clone()).collect();
    assert_eq!(listed, ids[..100], "page size 0 means 100, ordered by psp_id");
    assert!(!first.next_page_token.is_empty(), "more to come");
    let second = operator.list_participants(list(0, &first.next_page_token)).await.expect("second").into_inner();
    let listed: Vec<String> = second.participants.iter().map(|participant| participant.psp_id.clone()).collect();
    assert_eq!(listed, ids[100..]);
    assert_eq!(second.next_page_token, "", "the last page");
    let whole = operator.list_participants(list(1_000, "")).await.expect("PAGE_SIZE_MAX").into_inner();
    assert_eq!((whole.participants.len(), whole.next_page_token.as_str()), (101, ""));
    // Each record is the participant's full view.
    assert_eq!(
        whole.participants[7],
        participant(&mut operator, &ids[7]).await.with_as_of(whole.participants[7].as_of_unix_ns)
    );

    let unchanged = Unchanged::take(&test);
    assert_refusal(operator.list_participants(list(1_001, "")).await, Reason::PageInvalid, Some("page_size"));
    for token in ["psp-050", "garbage!", "after:", "after:Bank"] {
        assert_refusal(operator.list_participants(list(10, token)).await, Reason::PageInvalid, Some("page_token"));
    }
    unchanged.assert_still(&test, "refused listings");
}

/// Comparing views taken at different instants: everything but the snapshot time.
trait AsOf {
    fn with_as_of(self, as_of_unix_ns: u64) -> Self;
}

impl AsOf for proto::Participant {
    fn with_as_of(self, as_of_unix_ns: u64) -> Self {
        proto::Participant { as_of_unix_ns, ..self }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_is_bounded_by_int64_not_by_the_payment_maximum() {
    let test = TestSwitch::start().await;
    let mut operator = test.operator().await;
    operator.register_participant(registration("bank-a", 0)).await.expect("register");
    let maximum = test.switch.config.currencies[0].amount_minor_max;
    // Above PAYMENT_AMOUNT_MINOR_MAX: funding has no such maximum.
    let large = maximum * 1_000;
    let funded = operator.fund_in(funding("bank-a", 1, large)).await.expect("large funding").into_inner();
    assert_eq!(funded.participant.expect("participant").balance_minor, large as i64);
    let unchanged = Unchanged::take(&test);
    assert_refusal(
        operator.fund_in(funding("bank-a", 2, 1 << 63)).await,
        Reason::AmountOverLimit,
        Some("amount_minor"),
    );
    assert_refusal(
        operator.fund_out(funding("bank-a", 2, 1 << 63)).await,
        Reason::AmountOverLimit,
        Some("amount_minor"),
    );
    assert_refusal(operator.fund_in(funding("bank-a", 2, 0)).await, Reason::AmountZero, Some("amount_minor"));
    let short = proto::FundRequest { transfer_id: vec![7; 15], ..funding("bank-a", 2, 5) };
    assert_refusal(operator.fund_in(short).await, Reason::IdMalformed, Some("transfer_id"));
    for reserved in [0, u128::MAX] {
        let request = funding("bank-a", reserved, 5);
        assert_refusal(operator.fund_out(request).await, Reason::IdReserved, Some("transfer_id"));
    }
    assert_refusal(operator.fund_out(funding("bank-a", 2, 0)).await, Reason::AmountZero, Some("amount_minor"));
    // Beyond the balance, whatever the amount.
    let refused = operator.fund_out(funding("bank-a", 2, large + 1)).await;
    assert_refusal(refused, Reason::FundOutExceedsAvailable, None);
    unchanged.assert_still(&test, "refused funding");
    let withdrawn = operator.fund_out(funding("bank-a", 3, large)).await.expect("all of it").into_inner();
    assert_eq!(withdrawn.participant.expect("participant").balance_minor, 0);
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_takes_neither_the_cap_nor_unsettled_receipts() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(500, 1_000).await;
    let mut operator = test.operator().await;
    operator.fund_in(funding("bank-b", 40, 100)).await.expect("bank-b funds 100");
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 300)).await.expect("pay");
    // bank-b: balance 400, of which 300 received in the open window and not settled yet.
    let unchanged = Unchanged::take(&test);
    assert_refusal(operator.fund_out(funding("bank-b", 41, 101)).await, Reason::FundOutExceedsAvailable, None);
    // bank-a: balance 700 and a cap of 500; only its own 700 may leave.
    assert_refusal(operator.fund_out(funding("bank-a", 42, 701)).await, Reason::FundOutExceedsAvailable, None);
    unchanged.assert_still(&test, "withdrawals beyond what may leave");
    operator.fund_out(funding("bank-b", 41, 100)).await.expect("its settled funds");
    let result = operator.fund_out(funding("bank-a", 42, 700)).await.expect("own funds").into_inner();
    // A retry answers the original, even though nothing is left to withdraw now.
    let retry = operator.fund_out(funding("bank-a", 42, 700)).await.expect("retry").into_inner();
    assert_eq!(retry.recorded_at_unix_ns, result.recorded_at_unix_ns);
    let conflict = proto::FundRequest { note: "another ref".into(), ..funding("bank-a", 42, 700) };
    assert_refusal(operator.fund_out(conflict).await, Reason::PaymentIdConflict, Some("transfer_id"));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_in_another_currency_is_a_currency_mismatch() {
    let test = TestSwitch::start_with(|config| {
        let brl = switch::config::Currency { code: "BRL".into(), ledger: 986, amount_minor_max: 1_000_000 };
        config.currencies.push(brl);
    })
    .await;
    test.onboard("bank-a", 0, 100).await;
    let mut operator = test.operator().await;
    let unchanged = Unchanged::take(&test);
    let brl = proto::FundRequest { currency: "BRL".into(), ..funding("bank-a", 50, 10) };
    assert_refusal(operator.fund_in(brl.clone()).await, Reason::CurrencyMismatch, Some("currency"));
    assert_refusal(operator.fund_out(brl).await, Reason::CurrencyMismatch, Some("currency"));
    let unknown = proto::FundRequest { currency: "XXX".into(), ..funding("bank-a", 50, 10) };
    assert_refusal(operator.fund_in(unknown).await, Reason::UnknownCurrency, Some("currency"));
    unchanged.assert_still(&test, "funding in the wrong currency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_below_what_is_used_is_refused_and_changes_nothing() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(500, 100).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 400)).await.expect("uses 300 of the cap");
    let mut operator = test.operator().await;
    let unchanged = Unchanged::take(&test);
    let cap = proto::SetNetDebitCapRequest { psp_id: "bank-a".into(), net_debit_cap_minor: 299 };
    assert_refusal(operator.set_net_debit_cap(cap).await, Reason::NetDebitCapBelowUsage, None);
    let cap = proto::SetNetDebitCapRequest { psp_id: "bank-a".into(), net_debit_cap_minor: 1 << 63 };
    assert_refusal(operator.set_net_debit_cap(cap).await, Reason::AmountOverLimit, Some("net_debit_cap_minor"));
    unchanged.assert_still(&test, "a cap below usage");
    assert_eq!(participant(&mut operator, "bank-a").await.net_debit_cap_minor, 500);
    let cap = proto::SetNetDebitCapRequest { psp_id: "bank-a".into(), net_debit_cap_minor: 300 };
    let lowered = operator.set_net_debit_cap(cap).await.expect("exactly the usage").into_inner();
    assert_eq!((lowered.net_debit_cap_minor, lowered.available_minor), (300, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_reports_every_field_as_common_proto_defines_it() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_c) = test.payer_and_confirming_payee(1_000).await;
    let mut operator = test.operator().await;
    let cap = proto::SetNetDebitCapRequest { psp_id: "bank-a".into(), net_debit_cap_minor: 250 };
    operator.set_net_debit_cap(cap).await.expect("cap");
    let mut events = subscribe(&test, "bank-c", 0).await;
    let mut payer = bank_a.payments.clone();
    let pending = tokio::spawn(async move { payer.pay(pay(1, "ana@bank-a", "cy@bank-c", 300)).await });
    match next(&mut events.responses).await {
        Some(Outgoing::Event(proto::Event { kind: Some(proto::event::Kind::CreditRequest(_)), .. })) => {}
        other => panic!("expected the credit request, got {other:?}"),
    }
    // Reserved, not posted: the payer's reservation and the payee's incoming pending.
    let payer_view = participant(&mut operator, "bank-a").await;
    let account = test.switch.participants.get("bank-a").expect("registered").account_id;
    let ledger_account = test.switch.ledger.lookup_accounts(&[account]).expect("lookup")[0].expect("account");
    assert_eq!(payer_view.psp_id, "bank-a");
    assert_eq!(payer_view.name, "bank-a bank");
    assert_eq!(payer_view.currency, "INR");
    assert_eq!(payer_view.confirmation_mode, ConfirmationMode::Automatic as i32);
    assert_eq!(payer_view.status, ParticipantStatus::Active as i32);
    assert_eq!(payer_view.net_debit_cap_minor, 250);
    assert_eq!(payer_view.balance_minor, 1_000, "funding only: nothing posted yet");
    assert_eq!(payer_view.reserved_minor, 300);
    assert_eq!(payer_view.incoming_pending_minor, 0);
    assert_eq!(payer_view.available_minor, 1_000 - 300 + 250);
    assert_eq!(payer_view.window_net_position_minor, 0, "funding is outside every window");
    assert_eq!(payer_view.registered_at_unix_ns, ledger_account.timestamp, "the ledger time of the registration");
    assert!(payer_view.as_of_unix_ns >= payer_view.registered_at_unix_ns);
    let payee_view = bank_c.position().await;
    assert_eq!(payee_view.confirmation_mode, ConfirmationMode::Confirmed as i32);
    assert_eq!((payee_view.incoming_pending_minor, payee_view.reserved_minor, payee_view.balance_minor), (300, 0, 0));

    let accept = Incoming::CreditDecision(proto::CreditDecision {
        payment_id: id(1),
        decision: proto::Decision::Accept as i32,
        decline_reason: 0,
    });
    events.requests.send(proto::SubscribeRequest { message: Some(accept) }).await.expect("decide");
    pending.await.expect("task").expect("completed");
    let payer_view = participant(&mut operator, "bank-a").await;
    assert_eq!((payer_view.balance_minor, payer_view.reserved_minor, payer_view.available_minor), (700, 0, 950));
    assert_eq!(payer_view.window_net_position_minor, -300, "received - sent in the open window");
    let payee_view = bank_c.position().await;
    assert_eq!((payee_view.balance_minor, payee_view.incoming_pending_minor), (300, 0));
    assert_eq!(payee_view.window_net_position_minor, 300);
    // A second funding moves the balance, never the window's net.
    operator.fund_in(funding("bank-a", 77, 50)).await.expect("fund");
    assert_eq!(participant(&mut operator, "bank-a").await.window_net_position_minor, -300);
    // Closing the window settles it: the next window starts at zero.
    let open = operator.get_settlement_report(proto::GetSettlementReportRequest { window_id: 0 }).await;
    let window_id = open.expect("open window").into_inner().window_id;
    operator.close_settlement_window(proto::CloseSettlementWindowRequest { window_id }).await.expect("close");
    let payer_view = participant(&mut operator, "bank-a").await;
    assert_eq!((payer_view.window_net_position_minor, payer_view.balance_minor), (0, 1_050));
    test.assert_money_conserved();
}
