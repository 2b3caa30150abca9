//! EventService: Subscribe, acks, and each event's documented fields (events.proto).
//!
//! Every event kind is checked field by field as delivered live and again as redelivered from
//! storage, after a reconnection and after a restart: the two must be identical. Decisions get
//! the DecisionReceipt reasons events.proto lists; the stream ends with the documented status.

use std::time::Duration;

use switch::proto::event_service_client::EventServiceClient;
use switch::proto::subscribe_request::Message as Incoming;
use switch::proto::subscribe_response::Message as Outgoing;
use switch::proto::{self, PaymentKind, PaymentState, Reason};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::common::{collect_request, id, pay, subscribe, Endpoint, Subscription, TestSwitch, WAIT};
use crate::payments::{now_ms, refund_request};
use crate::support::{assert_refusal, assert_refused, Unchanged};

/// A PSP's Subscribe stream, keeping the events that arrive while it waits for a receipt (an
/// outcome event may overtake its decision's receipt).
pub struct Listener {
    pub subscription: Subscription,
    arrived: std::collections::VecDeque<proto::Event>,
}

/// Subscribes `psp` from `last_acknowledged`.
pub async fn listen(test: &Endpoint, psp: &str, last_acknowledged: u64) -> Listener {
    Listener { subscription: subscribe(test, psp, last_acknowledged).await, arrived: Default::default() }
}

impl Listener {
    /// The next event, in sequence order.
    pub async fn next_event(&mut self) -> proto::Event {
        if let Some(event) = self.arrived.pop_front() {
            return event;
        }
        loop {
            match crate::common::next(&mut self.subscription.responses).await {
                Some(Outgoing::Event(event)) => return event,
                Some(Outgoing::DecisionReceipt(_)) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// The next `count` events.
    async fn events(&mut self, count: usize) -> Vec<proto::Event> {
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(self.next_event().await);
        }
        events
    }

    /// Sends a message and waits for the receipt about `payment`, keeping events for later.
    async fn receipt_for(&mut self, message: Incoming, payment: &[u8]) -> proto::DecisionReceipt {
        let request = proto::SubscribeRequest { message: Some(message) };
        self.subscription.requests.send(request).await.expect("send");
        loop {
            match crate::common::next(&mut self.subscription.responses).await {
                Some(Outgoing::DecisionReceipt(receipt)) if receipt.payment_id == payment => return receipt,
                Some(Outgoing::DecisionReceipt(_)) => continue,
                Some(Outgoing::Event(event)) => self.arrived.push_back(event),
                other => panic!("expected a receipt, got {other:?}"),
            }
        }
    }

    /// The status the stream ended with, skipping what comes before it.
    async fn ended(&mut self) -> Status {
        loop {
            let message = self.subscription.responses.message();
            match tokio::time::timeout(WAIT, message).await.expect("in time") {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    }

    async fn send(&self, message: Option<Incoming>) {
        self.subscription.requests.send(proto::SubscribeRequest { message }).await.expect("send");
    }
}

/// A credit decision (a decline gives ACCOUNT_CLOSED) and its receipt.
pub async fn credit_decision(
    listener: &mut Listener,
    payment_id: Vec<u8>,
    decision: proto::Decision,
) -> proto::DecisionReceipt {
    let message = Incoming::CreditDecision(proto::CreditDecision {
        payment_id: payment_id.clone(),
        decision: decision as i32,
        decline_reason: proto::DeclineReason::AccountClosed as i32,
    });
    listener.receipt_for(message, &payment_id).await
}

/// A collect decision (a decline gives CUSTOMER_DECLINED) and its receipt.
pub async fn collect_decision(
    listener: &mut Listener,
    collect: u128,
    decision: proto::Decision,
) -> proto::DecisionReceipt {
    let message = Incoming::CollectDecision(proto::CollectDecision {
        collect_id: id(collect),
        decision: decision as i32,
        decline_reason: proto::DeclineReason::CustomerDeclined as i32,
    });
    listener.receipt_for(message, &id(collect)).await
}

/// A receipt as events.proto documents it: the reason and the gRPC code it travels with.
#[track_caller]
fn assert_receipt(receipt: &proto::DecisionReceipt, reason: Reason) {
    let code = if reason == Reason::Unspecified { 0 } else { switch::reason::code_of(reason) as i32 };
    assert_eq!((receipt.reason, receipt.status_code), (reason as i32, code), "receipt {receipt:?}");
}

/// Opens a Subscribe stream with `first` as its first message, as any certificate.
async fn open(
    test: &Endpoint,
    pair: &switch::tls::PemPair,
    first: Incoming,
) -> Result<tonic::Streaming<proto::SubscribeResponse>, Status> {
    let mut client = EventServiceClient::new(test.channel(Some(pair)).await.expect("connects"));
    let (requests, receiver) = mpsc::channel(4);
    requests.send(proto::SubscribeRequest { message: Some(first) }).await.expect("first message");
    let answer = client.subscribe(ReceiverStream::new(receiver)).await;
    // Keep the request stream open while the answer is read.
    let mut responses = answer?.into_inner();
    match tokio::time::timeout(WAIT, responses.message()).await.expect("in time") {
        Ok(_) => {
            drop(requests);
            Ok(responses)
        }
        Err(status) => Err(status),
    }
}

/// The PaymentOutcome events of one test's payments: `ana@bank-a` pays `payee_alias`; a decline
/// carries the decliner's reason as `credit_decision` and `collect_decision` send it.
struct Outcome {
    kind: PaymentKind,
    payee_alias: &'static str,
    amount_minor: u64,
}

impl Outcome {
    fn event(&self, sequence: u64, payment: u128, state: PaymentState, reason: Reason, finalized: u64) -> proto::Event {
        let decline_reason = match (state, self.kind) {
            (PaymentState::Declined, PaymentKind::Push) => proto::DeclineReason::AccountClosed,
            (PaymentState::Declined, _) => proto::DeclineReason::CustomerDeclined,
            _ => proto::DeclineReason::Unspecified,
        };
        proto::Event {
            sequence,
            recorded_at_unix_ns: finalized,
            kind: Some(proto::event::Kind::PaymentOutcome(proto::PaymentOutcome {
                payment_id: id(payment),
                kind: self.kind as i32,
                state: state as i32,
                reason: reason as i32,
                decline_reason: decline_reason as i32,
                payer_alias: "ana@bank-a".into(),
                payee_alias: self.payee_alias.into(),
                amount_minor: self.amount_minor,
                currency: "INR".into(),
                finalized_at_unix_ns: finalized,
            })),
        }
    }
}

fn hello(last_acknowledged_sequence: u64) -> Incoming {
    Incoming::Hello(proto::Hello { last_acknowledged_sequence })
}

/// A payee in CONFIRMED mode gets a CreditRequest and then a PaymentOutcome whose every field is
/// set: the aliases, currency and final time were missing from the outcome, and
/// `recorded_at_unix_ns` was 0 on both. Redelivered events, after a reconnection and after a
/// restart, are the live ones exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirming_payee_is_told_every_field_live_and_again_after_a_restart() {
    let test = TestSwitch::start().await;
    let (bank_a, _bank_c) = test.payer_and_confirming_payee(1_000).await;
    let mut payee = listen(&test, "bank-c", 0).await;
    let deadline = now_ms() + 20_000;
    let paying = {
        let mut payments = bank_a.payments.clone();
        let request = proto::PayRequest { deadline_unix_ms: deadline, ..pay(1, "ana@bank-a", "cy@bank-c", 300) };
        tokio::spawn(async move { payments.pay(request).await })
    };
    let asked = payee.next_event().await;
    let status = bank_a.status(1).await;
    assert_eq!(status.state, PaymentState::Pending as i32);
    let expected = proto::Event {
        sequence: 1,
        recorded_at_unix_ns: status.accepted_at_unix_ns,
        kind: Some(proto::event::Kind::CreditRequest(proto::CreditRequest {
            payment_id: id(1),
            payer_alias: "ana@bank-a".into(),
            payer_psp_id: "bank-a".into(),
            payer_display_name: "Ana".into(),
            payee_alias: "cy@bank-c".into(),
            amount_minor: 300,
            currency: "INR".into(),
            note: "test".into(),
            deadline_unix_ms: deadline,
        })),
    };
    assert_eq!(asked, expected);
    assert!(asked.recorded_at_unix_ns > 0);

    let receipt = credit_decision(&mut payee, id(1), proto::Decision::Accept).await;
    assert_eq!(receipt.payment_id, id(1));
    assert_receipt(&receipt, Reason::Unspecified);
    let result = paying.await.expect("task").expect("paid").into_inner();
    let status = bank_a.status(1).await;
    assert_eq!(result.state, PaymentState::Completed as i32);
    assert_eq!(result.accepted_at_unix_ns, status.accepted_at_unix_ns, "recorded when reserved");
    assert_eq!(result.finalized_at_unix_ns, status.finalized_at_unix_ns);
    assert!(status.finalized_at_unix_ns > status.accepted_at_unix_ns);
    let outcome = Outcome { kind: PaymentKind::Push, payee_alias: "cy@bank-c", amount_minor: 300 };
    let completed = payee.next_event().await;
    assert_eq!(
        completed,
        outcome.event(2, 1, PaymentState::Completed, Reason::Unspecified, status.finalized_at_unix_ns)
    );

    // Declined: the payee's reason, and the payer told when it was recorded.
    let declining = {
        let mut payments = bank_a.payments.clone();
        tokio::spawn(async move { payments.pay(pay(2, "ana@bank-a", "cy@bank-c", 300)).await })
    };
    let asked_again = payee.next_event().await;
    let receipt = credit_decision(&mut payee, id(2), proto::Decision::Decline).await;
    assert_receipt(&receipt, Reason::Unspecified);
    let result = declining.await.expect("task").expect("answered").into_inner();
    let status = bank_a.status(2).await;
    assert_eq!((result.state, result.reason), (PaymentState::Declined as i32, Reason::PayeeDeclined as i32));
    assert_eq!((result.status_code, result.decline_reason), (0, proto::DeclineReason::AccountClosed as i32));
    assert_eq!(result.accepted_at_unix_ns, status.accepted_at_unix_ns, "recorded when reserved");
    assert!(result.accepted_at_unix_ns > 0);
    let declined = payee.next_event().await;
    assert_eq!(
        declined,
        outcome.event(4, 2, PaymentState::Declined, Reason::PayeeDeclined, status.finalized_at_unix_ns)
    );

    // Silence to the deadline: EXPIRED.
    let soon = now_ms() + 300;
    let request = proto::PayRequest { deadline_unix_ms: soon, ..pay(3, "ana@bank-a", "cy@bank-c", 300) };
    let result = bank_a.payments.clone().pay(request).await.expect("answered").into_inner();
    assert_eq!((result.state, result.reason), (PaymentState::Expired as i32, Reason::PayeeTimeout as i32));
    let status = bank_a.status(3).await;
    assert_eq!(result.finalized_at_unix_ns, status.finalized_at_unix_ns);
    let asked_last = payee.next_event().await;
    let expired = payee.next_event().await;
    assert_eq!(expired, outcome.event(6, 3, PaymentState::Expired, Reason::PayeeTimeout, status.finalized_at_unix_ns));
    let live = vec![asked, completed, asked_again, declined, asked_last, expired];

    // Nothing acknowledged: a new stream gets them all again, from storage, identical.
    let mut again = listen(&test, "bank-c", 0).await;
    assert_eq!(again.events(live.len()).await, live, "redelivered after a reconnection");
    drop((again, payee));
    let dir = test.stop().await;
    let test = TestSwitch::start_in(dir).await;
    let mut restarted = listen(&test, "bank-c", 0).await;
    assert_eq!(restarted.events(live.len()).await, live, "redelivered after a restart");
    test.assert_money_conserved();
}

/// Credit notifications, refund notices, collect requests and both PSPs' collect outcomes, field
/// by field, live and redelivered. A CollectRequest had `recorded_at_unix_ns` 0; a collect's
/// outcome reported a time other than its payment's (the switch clock before the commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_collects_and_their_outcomes_carry_every_field_live_and_after_a_restart() {
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut payer = listen(&test, "bank-a", 0).await;
    let mut payee = listen(&test, "bank-b", 0).await;

    let paid = bank_a.payments.clone().pay(pay(1, "ana@bank-a", "bo@bank-b", 300)).await.expect("paid");
    let paid = paid.into_inner();
    let credited = payee.next_event().await;
    let expected = proto::Event {
        sequence: 1,
        recorded_at_unix_ns: paid.finalized_at_unix_ns,
        kind: Some(proto::event::Kind::CreditNotification(proto::CreditNotification {
            payment_id: id(1),
            payer_alias: "ana@bank-a".into(),
            payer_psp_id: "bank-a".into(),
            payer_display_name: "Ana".into(),
            payee_alias: "bo@bank-b".into(),
            amount_minor: 300,
            currency: "INR".into(),
            note: "test".into(),
            completed_at_unix_ns: paid.finalized_at_unix_ns,
        })),
    };
    assert_eq!(credited, expected);
    assert!(paid.finalized_at_unix_ns > 0);

    let refund = bank_b.payments.clone().refund(refund_request(2, 1, 100)).await.expect("refunded").into_inner();
    let noticed = payer.next_event().await;
    let expected = proto::Event {
        sequence: 1,
        recorded_at_unix_ns: refund.finalized_at_unix_ns,
        kind: Some(proto::event::Kind::RefundNotice(proto::RefundNotice {
            refund_id: id(2),
            original_payment_id: id(1),
            refunding_psp_id: "bank-b".into(),
            payer_alias: "ana@bank-a".into(),
            payee_alias: "bo@bank-b".into(),
            amount_minor: 100,
            currency: "INR".into(),
            note: "refund".into(),
            original_amount_minor: 300,
            refunded_total_minor: 100,
            completed_at_unix_ns: refund.finalized_at_unix_ns,
        })),
    };
    assert_eq!(noticed, expected);

    let expiry = now_ms() + 60_000;
    let asked = bank_b.payments.clone().request_collect(collect_request(3, 200, expiry)).await.expect("asked");
    let asked = asked.into_inner();
    let collect_asked = payer.next_event().await;
    let expected = proto::Event {
        sequence: 2,
        recorded_at_unix_ns: asked.accepted_at_unix_ns,
        kind: Some(proto::event::Kind::CollectRequest(proto::CollectRequest {
            collect_id: id(3),
            payee_alias: "bo@bank-b".into(),
            payee_psp_id: "bank-b".into(),
            payee_display_name: "Bo".into(),
            payer_alias: "ana@bank-a".into(),
            amount_minor: 200,
            currency: "INR".into(),
            note: "invoice".into(),
            expiry_unix_ms: expiry,
        })),
    };
    assert_eq!(collect_asked, expected);
    assert!(collect_asked.recorded_at_unix_ns > 0, "when the collect was recorded");

    let outcome = Outcome { kind: PaymentKind::Collect, payee_alias: "bo@bank-b", amount_minor: 200 };
    let receipt = collect_decision(&mut payer, 3, proto::Decision::Accept).await;
    assert_receipt(&receipt, Reason::Unspecified);
    let status = bank_b.status(3).await;
    assert_eq!(status.state, PaymentState::Completed as i32);
    let payer_completed = payer.next_event().await;
    assert_eq!(
        payer_completed,
        outcome.event(3, 3, PaymentState::Completed, Reason::Unspecified, status.finalized_at_unix_ns)
    );
    let payee_completed = payee.next_event().await;
    assert_eq!(
        payee_completed,
        outcome.event(2, 3, PaymentState::Completed, Reason::Unspecified, status.finalized_at_unix_ns)
    );

    bank_b.payments.clone().request_collect(collect_request(4, 200, expiry)).await.expect("asked");
    let second_asked = payer.next_event().await;
    let receipt = collect_decision(&mut payer, 4, proto::Decision::Decline).await;
    assert_receipt(&receipt, Reason::Unspecified);
    let status = bank_b.status(4).await;
    assert_eq!(status.state, PaymentState::Declined as i32);
    let payer_declined = payer.next_event().await;
    assert_eq!(
        payer_declined,
        outcome.event(5, 4, PaymentState::Declined, Reason::PayerDeclined, status.finalized_at_unix_ns)
    );
    let payee_declined = payee.next_event().await;
    assert_eq!(
        payee_declined,
        outcome.event(3, 4, PaymentState::Declined, Reason::PayerDeclined, status.finalized_at_unix_ns)
    );

    let payer_live = vec![noticed, collect_asked, payer_completed, second_asked, payer_declined];
    let payee_live = vec![credited, payee_completed, payee_declined];
    drop((payer, payee));
    let mut payer = listen(&test, "bank-a", 0).await;
    assert_eq!(payer.events(payer_live.len()).await, payer_live, "payer's, after a reconnection");
    let mut payee = listen(&test, "bank-b", 0).await;
    assert_eq!(payee.events(payee_live.len()).await, payee_live, "payee's, after a reconnection");
    drop((payer, payee));
    let dir = test.stop().await;
    let test = TestSwitch::start_in(dir).await;
    let mut payer = listen(&test, "bank-a", 0).await;
    assert_eq!(payer.events(payer_live.len()).await, payer_live, "payer's, after a restart");
    let mut payee = listen(&test, "bank-b", 0).await;
    assert_eq!(payee.events(payee_live.len()).await, payee_live, "payee's, after a restart");
    test.assert_money_conserved();
}

/// DecisionReceipt reasons (events.proto): a credit decision after the deadline is PAYEE_TIMEOUT
/// and a collect decision after the expiry COLLECT_EXPIRED (both were ALREADY_DECIDED); an id
/// the caller is no party to is PAYMENT_NOT_FOUND (was NO_DECISION_PENDING); a repeated
/// collect decision gets the first one's receipt (was ALREADY_DECIDED). None changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_get_the_documented_receipts_and_refusals_change_nothing() {
    let test = TestSwitch::start().await;
    let (bank_a, mut bank_c) = test.payer_and_confirming_payee(10_000).await;
    let mut bank_b = test.onboard("bank-b", 0, 0).await;
    bank_b.alias("bo@bank-b", "Bo").await;
    bank_c.alias("cy2@bank-c", "Cy").await;
    let mut payer = listen(&test, "bank-a", 0).await;
    let mut payee = listen(&test, "bank-c", 0).await;
    let mut third = listen(&test, "bank-b", 0).await;

    // Payment 1 lapses: the deadline passed, the payment is EXPIRED.
    let soon = now_ms() + 300;
    let request = proto::PayRequest { deadline_unix_ms: soon, ..pay(1, "ana@bank-a", "cy@bank-c", 100) };
    let result = bank_a.payments.clone().pay(request).await.expect("answered").into_inner();
    assert_eq!(result.state, PaymentState::Expired as i32);
    // Payment 2 accepted; payment 3 goes to the automatic bank-b; refund 4 by bank-c of payment 2.
    let accepting = {
        let mut payments = bank_a.payments.clone();
        tokio::spawn(async move { payments.pay(pay(2, "ana@bank-a", "cy@bank-c", 100)).await })
    };
    loop {
        if let Some(proto::event::Kind::CreditRequest(request)) = payee.next_event().await.kind {
            if request.payment_id == id(2) {
                break;
            }
        }
    }
    assert_receipt(&credit_decision(&mut payee, id(2), proto::Decision::Accept).await, Reason::Unspecified);
    accepting.await.expect("task").expect("paid");
    bank_a.payments.clone().pay(pay(3, "ana@bank-a", "bo@bank-b", 100)).await.expect("paid");
    bank_c.payments.clone().refund(refund_request(4, 2, 10)).await.expect("refunded");
    // Collect 10 lapses; collect 11 is approved; bank-c asks both.
    bank_c
        .payments
        .clone()
        .request_collect(proto::RequestCollectRequest {
            payee_alias: "cy@bank-c".into(),
            ..collect_request(10, 100, now_ms() + 300)
        })
        .await
        .expect("asked");
    bank_c
        .payments
        .clone()
        .request_collect(proto::RequestCollectRequest {
            payee_alias: "cy@bank-c".into(),
            ..collect_request(11, 100, 0)
        })
        .await
        .expect("asked");
    assert_receipt(&collect_decision(&mut payer, 11, proto::Decision::Accept).await, Reason::Unspecified);
    let lapsed = async {
        while bank_a.status(10).await.state != PaymentState::Expired as i32 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, lapsed).await.expect("collect 10 expires");

    let before = Unchanged::take(&test);
    let credit = |payment_id: Vec<u8>, decision: i32| {
        Incoming::CreditDecision(proto::CreditDecision { payment_id, decision, decline_reason: 0 })
    };
    let accept = proto::Decision::Accept as i32;
    let receipt = payee.receipt_for(credit(id(1), accept), &id(1)).await;
    assert_receipt(&receipt, Reason::PayeeTimeout);
    let receipt = payee.receipt_for(credit(id(2), proto::Decision::Decline as i32), &id(2)).await;
    assert_receipt(&receipt, Reason::AlreadyDecided);
    let receipt = payee.receipt_for(credit(id(2), accept), &id(2)).await;
    assert_receipt(&receipt, Reason::Unspecified);
    let receipt = payee.receipt_for(credit(id(2), 0), &id(2)).await;
    assert_receipt(&receipt, Reason::FieldRequired);
    let receipt = payee.receipt_for(credit(id(2), 7), &id(2)).await;
    assert_receipt(&receipt, Reason::FieldRequired);
    let receipt = payee.receipt_for(credit(vec![2; 5], accept), &[2; 5]).await;
    assert_receipt(&receipt, Reason::IdMalformed);
    let receipt = payee.receipt_for(credit(vec![0; 16], accept), &[0; 16]).await;
    assert_receipt(&receipt, Reason::IdReserved);
    let receipt = payee.receipt_for(credit(id(99), accept), &id(99)).await;
    assert_receipt(&receipt, Reason::PaymentNotFound);
    // bank-c is no party to payment 3 (bank-a to bank-b): as if it did not exist.
    let receipt = payee.receipt_for(credit(id(3), accept), &id(3)).await;
    assert_receipt(&receipt, Reason::PaymentNotFound);
    // Parties asked for nothing: bank-b of its automatic payment, bank-c of its own refund, the
    // payer of payment 2, bank-c of its collect.
    let receipt = third.receipt_for(credit(id(3), accept), &id(3)).await;
    assert_receipt(&receipt, Reason::NoDecisionPending);
    let receipt = payee.receipt_for(credit(id(4), accept), &id(4)).await;
    assert_receipt(&receipt, Reason::NoDecisionPending);
    let receipt = payer.receipt_for(credit(id(2), accept), &id(2)).await;
    assert_receipt(&receipt, Reason::NoDecisionPending);
    let receipt = payee.receipt_for(credit(id(10), accept), &id(10)).await;
    assert_receipt(&receipt, Reason::NoDecisionPending);

    assert_receipt(&collect_decision(&mut payer, 10, proto::Decision::Accept).await, Reason::CollectExpired);
    assert_receipt(&collect_decision(&mut payer, 11, proto::Decision::Accept).await, Reason::Unspecified);
    assert_receipt(&collect_decision(&mut payer, 11, proto::Decision::Decline).await, Reason::AlreadyDecided);
    assert_receipt(&collect_decision(&mut payee, 11, proto::Decision::Accept).await, Reason::NoDecisionPending);
    assert_receipt(&collect_decision(&mut third, 11, proto::Decision::Accept).await, Reason::PaymentNotFound);
    assert_receipt(&collect_decision(&mut payer, 98, proto::Decision::Accept).await, Reason::PaymentNotFound);
    assert_receipt(&collect_decision(&mut payer, 2, proto::Decision::Accept).await, Reason::NoDecisionPending);
    before.assert_still(&test, "refused and repeated decisions");
    test.assert_money_conserved();
}

/// How a stream ends: protocol violations, sequences beyond what exists, a takeover, callers
/// that may not subscribe. None of them records anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_the_documented_status() {
    let test = TestSwitch::start().await;
    let (bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    bank_a.payments.clone().pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("paid");
    let before = Unchanged::take(&test);
    let bank_b_pair = test.ca.psp("bank-b");

    let ack = |sequence| Incoming::Ack(proto::Ack { sequence });
    assert_refusal(open(&test, &bank_b_pair, ack(1)).await, Reason::StreamProtocolViolation, None);
    assert_refusal(open(&test, &bank_b_pair, hello(2)).await, Reason::SequenceOutOfRange, None);
    let mut stream = listen(&test, "bank-b", 0).await;
    stream.send(Some(hello(0))).await;
    assert_refused(&stream.ended().await, Reason::StreamProtocolViolation, None);
    let mut stream = listen(&test, "bank-b", 0).await;
    stream.send(None).await;
    assert_refused(&stream.ended().await, Reason::StreamProtocolViolation, None);
    let mut stream = listen(&test, "bank-b", 0).await;
    stream.send(Some(ack(2))).await;
    assert_refused(&stream.ended().await, Reason::SequenceOutOfRange, None);
    let mut older = listen(&test, "bank-b", 0).await;
    let _newer = listen(&test, "bank-b", 0).await;
    assert_refused(&older.ended().await, Reason::SubscriptionReplaced, None);

    let operator = test.ca.operator("admin");
    assert_refusal(open(&test, &operator, hello(0)).await, Reason::NotAuthorized, None);
    let stranger = test.ca.issue_psp("bank-z").expect("certificate");
    assert_refusal(open(&test, &stranger, hello(0)).await, Reason::CallerNotRegistered, None);
    let nameless = test.ca.issue_nameless("nobody").expect("certificate");
    assert_refusal(open(&test, &nameless, hello(0)).await, Reason::NotAuthenticated, None);
    before.assert_still(&test, "refused streams");
}

/// Graceful shutdown ends an open stream UNAVAILABLE / SHUTTING_DOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_while_the_switch_stops_ends_shutting_down() {
    let test = TestSwitch::start().await;
    test.payer_and_payee(0, 0).await;
    let mut stream = listen(&test, "bank-b", 0).await;
    let stopping = tokio::spawn(test.stop());
    assert_refused(&stream.ended().await, Reason::ShuttingDown, None);
    drop(stream);
    tokio::time::timeout(WAIT, stopping).await.expect("stops in time").expect("stopped");
}

/// Welcome's fields, and acknowledgements: a Hello counts as an Ack, the switch's record wins over
/// a lower Hello, a lower Ack is ignored, and acknowledged events never come again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_and_acknowledgements_keep_their_promises() {
    let test = TestSwitch::start().await;
    let (bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let fresh = listen(&test, "bank-b", 0).await;
    let expected = proto::Welcome { psp_id: "bank-b".into(), acknowledged_sequence: 0, last_sequence: 0 };
    assert_eq!(fresh.subscription.welcome, expected, "nothing recorded yet");
    drop(fresh);
    for payment in 1..=4u128 {
        bank_a.payments.clone().pay(pay(payment, "ana@bank-a", "bo@bank-b", 10)).await.expect("paid");
    }
    let mut stream = listen(&test, "bank-b", 1).await;
    let expected = proto::Welcome { psp_id: "bank-b".into(), acknowledged_sequence: 1, last_sequence: 4 };
    assert_eq!(stream.subscription.welcome, expected, "the Hello counts as an Ack");
    assert_eq!(stream.next_event().await.sequence, 2, "continues after the acknowledged event");
    crate::common::ack(&stream.subscription, 3).await;
    crate::common::ack(&stream.subscription, 2).await;
    // Recorded shortly after: a new stream sees it once durable (the Hello of 0 is lower).
    let recorded = async {
        loop {
            let stream = listen(&test, "bank-b", 0).await;
            if stream.subscription.welcome.acknowledged_sequence == 3 {
                return stream;
            }
            assert_eq!(stream.subscription.welcome.acknowledged_sequence, 1, "never anything else");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut resumed = tokio::time::timeout(WAIT, recorded).await.expect("the Ack is recorded");
    assert_eq!(resumed.subscription.welcome.last_sequence, 4);
    assert_eq!(resumed.next_event().await.sequence, 4, "acknowledged events never come again");
    drop(stream);
}
