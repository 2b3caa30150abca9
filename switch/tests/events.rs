//! The event stream against a real switch: durable credit notifications, in order, resumable,
//! never re-sent once acknowledged, surviving a restart; one stream per PSP.

mod common;

use std::time::Duration;

use common::*;
use switch::proto::event_service_client::EventServiceClient;
use switch::proto::subscribe_request::Message as Incoming;
use switch::proto::subscribe_response::Message as Outgoing;
use switch::proto::{self, PaymentState, Reason};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The next credit notification: (sequence, payment id as u128, amount).
async fn notification(subscription: &mut Subscription) -> (u64, u128, u64) {
    match next(&mut subscription.responses).await {
        Some(Outgoing::Event(proto::Event {
            sequence, kind: Some(proto::event::Kind::CreditNotification(n)), ..
        })) => {
            assert!(n.completed_at_unix_ns > 0, "the commit time is filled in");
            let id = id_of(&n.payment_id);
            (sequence, id, n.amount_minor)
        }
        other => panic!("expected a credit notification, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_notifications_are_durable_ordered_and_resumable() {
    let test = TestSwitch::start().await;
    let (mut bank_a, bank_b) = test.payer_and_payee(0, 10_000).await;

    let mut stream = subscribe(&test, "bank-b", 0).await;
    assert_eq!((stream.welcome.acknowledged_sequence, stream.welcome.last_sequence), (0, 0));
    for payment in 1..=3u128 {
        bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 100 * payment as u64)).await.expect("pay");
    }
    // A refused payment and a retry add no event.
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("retry");
    bank_a.payments.pay(pay(9, "ana@bank-a", "bo@bank-b", 1_000_000)).await.expect_err("over liquidity");
    assert_eq!(notification(&mut stream).await, (1, 1, 100));
    assert_eq!(notification(&mut stream).await, (2, 2, 200));
    assert_eq!(notification(&mut stream).await, (3, 3, 300));
    ack(&stream, 2).await;
    // A decision on a payment that awaits none gets a receipt saying so.
    let decision =
        proto::CreditDecision { payment_id: id(1), decision: proto::Decision::Accept as i32, ..Default::default() };
    let decision = Incoming::CreditDecision(decision);
    stream.requests.send(proto::SubscribeRequest { message: Some(decision) }).await.expect("send");
    match next(&mut stream.responses).await {
        Some(Outgoing::DecisionReceipt(receipt)) => assert_eq!(receipt.reason, Reason::NoDecisionPending as i32),
        other => panic!("expected a receipt, got {other:?}"),
    }

    // A new stream takes over; the old one ends ABORTED.
    let mut second = subscribe(&test, "bank-b", 0).await;
    assert_eq!((second.welcome.acknowledged_sequence, second.welcome.last_sequence), (2, 3));
    let ended = tokio::time::timeout(WAIT, stream.responses.message()).await.expect("old stream ends");
    let status = ended.expect_err("ended with a status");
    assert_eq!(reason(&status), Some(Reason::SubscriptionReplaced));
    // Only what was not acknowledged comes again.
    assert_eq!(notification(&mut second).await, (3, 3, 300));
    drop(second);

    // After a restart the unacknowledged event is still there, and new ones continue the count.
    drop((bank_a, bank_b));
    let dir = test.stop().await;
    let test = TestSwitch::start_in(dir).await;
    let mut bank_a = test.psp("bank-a").await;
    let mut resumed = subscribe(&test, "bank-b", 0).await;
    assert_eq!((resumed.welcome.acknowledged_sequence, resumed.welcome.last_sequence), (2, 3));
    assert_eq!(notification(&mut resumed).await, (3, 3, 300));
    bank_a.payments.pay(pay(4, "ana@bank-a", "bo@bank-b", 400)).await.expect("pay after restart");
    assert_eq!(notification(&mut resumed).await, (4, 4, 400));
    ack(&resumed, 4).await;
    // The acknowledgement is durable once recorded (there is no receipt for acks: poll for it).
    let recorded = async {
        while switch::events::stored_acknowledgement(&test.switch.ledger, "bank-b").expect("read") < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, recorded).await.expect("ack recorded");
    // Acknowledged is never sent again.
    drop(resumed);
    let last = subscribe(&test, "bank-b", 0).await;
    assert_eq!((last.welcome.acknowledged_sequence, last.welcome.last_sequence), (4, 4));
    test.assert_money_conserved();
}

/// The payment path hands each committed notification to the payee's outbox, and the stream
/// sends it from memory: what arrives must be exactly what storage holds (numbers, commit
/// times, content), and nothing may stay behind in memory once it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_from_memory_are_the_stored_events() {
    let test = TestSwitch::start().await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 100_000).await;
    let outbox = test.switch.events.outbox(&test.switch.ledger, "bank-b").expect("outbox");
    // Committed while no stream is open: kept in memory for the stream to come.
    for payment in 1..=3u128 {
        bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 10 * payment as u64)).await.expect("pay");
    }
    assert_eq!(outbox.cached(), 3, "each committed notification is kept for delivery");
    let mut stream = subscribe(&test, "bank-b", 0).await;
    // And while it is open: single payments and a batch (whose events are numbered together).
    for payment in 4..=5u128 {
        bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 10 * payment as u64)).await.expect("pay");
    }
    let batch = (6..=20u128).map(|payment| pay(payment, "ana@bank-a", "bo@bank-b", 10 * payment as u64)).collect();
    let answer = bank_a.payments.pay_batch(proto::PayBatchRequest { payments: batch }).await.expect("batch");
    assert!(answer.get_ref().results.iter().all(|result| result.state == PaymentState::Completed as i32));
    let mut received = Vec::new();
    while received.len() < 20 {
        match next(&mut stream.responses).await {
            Some(Outgoing::Event(event)) => received.push(event),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    let stored = switch::events::read(&test.switch.ledger, "bank-b", 0, 100).expect("read");
    assert_eq!(received, stored, "delivered from memory exactly as stored");
    assert_eq!(received.iter().map(|event| event.sequence).collect::<Vec<_>>(), (1..=20).collect::<Vec<u64>>());
    assert!(received.iter().all(|event| event.recorded_at_unix_ns > 0), "commit times are filled in");
    assert_eq!(outbox.cached(), 0, "nothing stays in memory once sent");
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_protocol_is_enforced() {
    let test = TestSwitch::start().await;
    test.onboard("bank-b", 0, 0).await;
    let pair = test.ca.psp("bank-b");
    let mut client = EventServiceClient::new(test.channel(Some(&pair)).await.expect("connects"));
    // Ack before Hello.
    let (requests, receiver) = mpsc::channel(4);
    let ack = Incoming::Ack(proto::Ack { sequence: 1 });
    requests.send(proto::SubscribeRequest { message: Some(ack) }).await.expect("send");
    let status = client.subscribe(ReceiverStream::new(receiver)).await.expect_err("Hello must come first");
    assert_eq!(reason(&status), Some(Reason::StreamProtocolViolation));
    // Acknowledging the future.
    let (requests, receiver) = mpsc::channel(4);
    let hello = Incoming::Hello(proto::Hello { last_acknowledged_sequence: 5 });
    requests.send(proto::SubscribeRequest { message: Some(hello) }).await.expect("send");
    let status = client.subscribe(ReceiverStream::new(receiver)).await.expect_err("no event 5 yet");
    assert_eq!(reason(&status), Some(Reason::SequenceOutOfRange));
}

/// The next event of any kind.
async fn event(subscription: &mut Subscription) -> proto::event::Kind {
    match next(&mut subscription.responses).await {
        Some(Outgoing::Event(proto::Event { kind: Some(kind), .. })) => kind,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn decide(subscription: &mut Subscription, payment: u128, decision: proto::Decision) -> proto::DecisionReceipt {
    let message = Incoming::CreditDecision(proto::CreditDecision {
        payment_id: id(payment),
        decision: decision as i32,
        decline_reason: proto::DeclineReason::AccountClosed as i32,
    });
    subscription.requests.send(proto::SubscribeRequest { message: Some(message) }).await.expect("decide");
    loop {
        match next(&mut subscription.responses).await {
            Some(Outgoing::DecisionReceipt(receipt)) => return receipt,
            Some(Outgoing::Event(_)) => continue, // outcome events may come first
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
}

/// A PayStream takes what has arrived as one group. Within it, automatic payments are answered
/// as soon as they commit, while a confirming payee's payment is answered with its final state
/// once that payee decides, as `Pay` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_automatic_payments_without_waiting_for_a_confirming_payee() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 0, 1_000).await;
    let mut bank_b = test.onboard("bank-b", 0, 0).await;
    let mut bank_c = test.onboard_in_mode("bank-c", 0, 0, proto::ConfirmationMode::Confirmed).await;
    bank_a.alias("ana@bank-a", "Ana").await;
    bank_b.alias("bo@bank-b", "Bo").await;
    bank_c.alias("cy@bank-c", "Cy").await;
    let mut payee = subscribe(&test, "bank-c", 0).await;

    let (requests, receiver) = mpsc::channel(16);
    let mut answers = bank_a.payments.pay_stream(ReceiverStream::new(receiver)).await.expect("stream").into_inner();
    for (payment, alias, amount) in
        [(1, "cy@bank-c", 300), (2, "bo@bank-b", 100), (3, "bo@bank-b", 100), (4, "cy@bank-c", 50)]
    {
        let request = proto::PayStreamRequest {
            correlation_id: 10 + payment as u64,
            payment: Some(pay(payment, "ana@bank-a", alias, amount)),
        };
        requests.send(request).await.expect("send");
    }
    let mut answer = async || {
        let response = tokio::time::timeout(WAIT, answers.message()).await.expect("an answer in time");
        let response = response.expect("stream ok").expect("an answer");
        (response.correlation_id, response.result.expect("result").state)
    };
    // The automatic ones first, while bank-c has not decided anything.
    let mut first = vec![answer().await, answer().await];
    first.sort_unstable();
    assert_eq!(first, vec![(12, PaymentState::Completed as i32), (13, PaymentState::Completed as i32)]);
    for _ in 0..2 {
        assert!(matches!(event(&mut payee).await, proto::event::Kind::CreditRequest(_)));
    }
    assert_eq!(decide(&mut payee, 1, proto::Decision::Accept).await.status_code, 0);
    assert_eq!(answer().await, (11, PaymentState::Completed as i32));
    assert_eq!(decide(&mut payee, 4, proto::Decision::Decline).await.status_code, 0);
    assert_eq!(answer().await, (14, PaymentState::Declined as i32));
    let position = bank_a.position().await;
    assert_eq!((position.balance_minor, position.reserved_minor), (1_000 - 300 - 100 - 100, 0));
    assert_eq!(bank_c.position().await.balance_minor, 300);
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_payees_accept_decline_or_time_out() {
    let test = TestSwitch::start().await;
    let (mut bank_a, bank_c) = test.payer_and_confirming_payee(1_000).await;
    let mut stream = subscribe(&test, "bank-c", 0).await;

    // Accept: the payer's call waits for the payee, then completes.
    let mut payer = bank_a.payments.clone();
    let call = tokio::spawn(async move { payer.pay(pay(1, "ana@bank-a", "cy@bank-c", 300)).await });
    match event(&mut stream).await {
        proto::event::Kind::CreditRequest(request) => {
            assert_eq!((request.amount_minor, request.payer_alias.as_str()), (300, "ana@bank-a"));
            // Stored as the payment id alone and built back on reading: the same request.
            let stored = switch::events::read(&test.switch.ledger, "bank-c", 0, 1).expect("read");
            let Some(proto::event::Kind::CreditRequest(from_storage)) = stored.into_iter().next().and_then(|e| e.kind)
            else {
                panic!("the stored event is the credit request");
            };
            assert_eq!(from_storage, request, "what storage gives back is what the payee was sent");
            assert_eq!(
                (from_storage.payer_display_name.as_str(), from_storage.payer_psp_id.as_str()),
                ("Ana", "bank-a")
            );
        }
        other => panic!("expected a credit request, got {other:?}"),
    }
    assert_eq!(bank_a.position().await.reserved_minor, 300, "reserved while the payee decides");
    let receipt = decide(&mut stream, 1, proto::Decision::Accept).await;
    assert_eq!((receipt.status_code, receipt.reason), (0, 0));
    let result = call.await.expect("task").expect("completed").into_inner();
    assert_eq!(result.state, PaymentState::Completed as i32);
    assert_eq!((bank_a.position().await.balance_minor, bank_c.position().await.balance_minor), (700, 300));

    // Decline: the reservation is released and the payer told.
    let mut payer = bank_a.payments.clone();
    let call = tokio::spawn(async move { payer.pay(pay(2, "ana@bank-a", "cy@bank-c", 200)).await });
    loop {
        if let proto::event::Kind::CreditRequest(_) = event(&mut stream).await {
            break;
        }
    }
    let receipt = decide(&mut stream, 2, proto::Decision::Decline).await;
    assert_eq!(receipt.status_code, 0);
    let result = call.await.expect("task").expect("an answer, not an error").into_inner();
    assert_eq!((result.state, result.reason), (PaymentState::Declined as i32, Reason::PayeeDeclined as i32));
    // The payee's own reason reaches the payer, in the answer and from then on in the status.
    assert_eq!(result.decline_reason, proto::DeclineReason::AccountClosed as i32);
    let declined = bank_a.status(2).await;
    assert_eq!(declined.state, PaymentState::Declined as i32);
    assert_eq!(declined.decline_reason, proto::DeclineReason::AccountClosed as i32);
    let after = bank_a.position().await;
    assert_eq!((after.balance_minor, after.reserved_minor), (700, 0));
    // Deciding again is refused: one resolution only.
    let receipt = decide(&mut stream, 2, proto::Decision::Accept).await;
    assert_eq!(receipt.reason, Reason::AlreadyDecided as i32);

    // Silence past the deadline: voided, payer told, a late accept refused.
    let mut late = pay(3, "ana@bank-a", "cy@bank-c", 100);
    late.deadline_unix_ms = switch::core::now_unix_ns() / 1_000_000 + 1_500;
    let result = bank_a.payments.pay(late).await.expect("an answer, not an error").into_inner();
    assert_eq!((result.state, result.reason), (PaymentState::Expired as i32, Reason::PayeeTimeout as i32));
    let receipt = decide(&mut stream, 3, proto::Decision::Accept).await;
    assert_eq!(receipt.reason, Reason::PayeeTimeout as i32, "a decision after the deadline (events.proto)");
    let payment = bank_a.status(3).await;
    assert_eq!(payment.state, PaymentState::Expired as i32);
    assert_eq!(bank_a.position().await.reserved_minor, 0);
    // A retry of the completed payment answers its outcome without asking the payee again.
    let retry = bank_a.payments.pay(pay(1, "ana@bank-a", "cy@bank-c", 300)).await.expect("retry").into_inner();
    assert_eq!(retry.state, PaymentState::Completed as i32);
    test.assert_money_conserved();
}

/// A 16-byte id as a number.
/// Accept for even ids, decline for odd ones.
fn verdict(id: u128) -> proto::Decision {
    if id.is_multiple_of(2) {
        proto::Decision::Accept
    } else {
        proto::Decision::Decline
    }
}

/// Decisions on ids `1..=last` by `verdict`, with a contradicting decline right after id 2's
/// accept.
fn alternating(last: u128, decision: impl Fn(u128, proto::Decision) -> Incoming) -> Vec<Incoming> {
    let mut decisions: Vec<_> = (1..=last).map(|id| decision(id, verdict(id))).collect();
    decisions.insert(2, decision(2, proto::Decision::Decline));
    decisions
}

/// Sends the decisions without waiting, then gathers one receipt per decision: the reasons per id.
async fn back_to_back(
    stream: &mut Subscription,
    decisions: Vec<Incoming>,
) -> std::collections::BTreeMap<u128, Vec<i32>> {
    let sent = decisions.len();
    for decision in decisions {
        stream.requests.send(proto::SubscribeRequest { message: Some(decision) }).await.expect("decide");
    }
    let mut receipts: std::collections::BTreeMap<u128, Vec<i32>> = std::collections::BTreeMap::new();
    let mut received = 0;
    while received < sent {
        match next(&mut stream.responses).await {
            Some(Outgoing::DecisionReceipt(receipt)) => {
                receipts.entry(id_of(&receipt.payment_id)).or_default().push(receipt.reason);
                received += 1;
            }
            Some(Outgoing::Event(_)) => {} // the outcomes
            other => panic!("expected receipts, got {other:?}"),
        }
    }
    receipts
}

/// Decisions sent back to back are applied concurrently (they share ledger commits): each still
/// gets exactly one receipt, matched by its id whatever the order, and exactly one of two
/// contradicting decisions wins; what the payer is told, the positions and, after a restart, the
/// statuses all agree with the receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_sent_back_to_back_each_get_one_receipt() {
    const PAYMENTS: u128 = 100;
    let test = TestSwitch::start().await;
    let (bank_a, bank_c) = test.payer_and_confirming_payee(10_000).await;
    let mut stream = subscribe(&test, "bank-c", 0).await;
    let calls: Vec<_> = (1..=PAYMENTS)
        .map(|payment| {
            let mut payer = bank_a.payments.clone();
            tokio::spawn(async move { payer.pay(pay(payment, "ana@bank-a", "cy@bank-c", 10)).await })
        })
        .collect();
    let mut asked = std::collections::BTreeSet::new();
    while asked.len() < PAYMENTS as usize {
        match event(&mut stream).await {
            proto::event::Kind::CreditRequest(request) => {
                asked.insert(id_of(&request.payment_id));
            }
            other => panic!("expected only credit requests before any decision, got {other:?}"),
        }
    }
    assert_eq!(asked, (1..=PAYMENTS).collect());

    // Even ids accepted, odd ones declined; payment 2 also declined right after its accept; and a
    // decision on a payment nobody asked about.
    let credit = |payment: u128, decision: proto::Decision| {
        Incoming::CreditDecision(proto::CreditDecision {
            payment_id: id(payment),
            decision: decision as i32,
            decline_reason: proto::DeclineReason::AccountClosed as i32,
        })
    };
    let mut decisions = alternating(PAYMENTS, credit);
    decisions.push(credit(PAYMENTS + 1, proto::Decision::Accept));
    let mut receipts = back_to_back(&mut stream, decisions).await;
    let ok = Reason::Unspecified as i32;
    let mut two = receipts.remove(&2).expect("payment 2's receipts");
    two.sort_unstable();
    assert_eq!(two, vec![ok, Reason::AlreadyDecided as i32], "exactly one of two contradicting decisions wins");
    assert_eq!(receipts.remove(&(PAYMENTS + 1)), Some(vec![Reason::PaymentNotFound as i32]));
    assert_eq!(receipts.len(), PAYMENTS as usize - 1);
    assert!(receipts.values().all(|reasons| reasons == &vec![ok]), "one receipt each, all applied");

    let mut completed = 0;
    for (payment, call) in (1..=PAYMENTS).zip(calls) {
        let result = call.await.expect("task").expect("an answer").into_inner();
        let wanted = if payment == 2 {
            // Whichever of its two decisions won.
            let state = result.state;
            assert!(state == PaymentState::Completed as i32 || state == PaymentState::Declined as i32);
            state
        } else if verdict(payment) == proto::Decision::Accept {
            PaymentState::Completed as i32
        } else {
            PaymentState::Declined as i32
        };
        assert_eq!(result.state, wanted, "payment {payment}");
        // The payer was told what the ledger holds: the same reasons and the same final time.
        let status = bank_a.status(payment).await;
        let told = (result.state, result.reason, result.decline_reason, result.finalized_at_unix_ns);
        assert_eq!(told, (status.state, status.reason, status.decline_reason, status.finalized_at_unix_ns));
        assert!(result.finalized_at_unix_ns > 0, "payment {payment} is final");
        completed += u64::from(result.state == PaymentState::Completed as i32);
    }
    let expected = |position: proto::Participant| (position.balance_minor, position.reserved_minor);
    assert_eq!(expected(bank_a.position().await), (10_000 - 10 * completed as i64, 0));
    assert_eq!(expected(bank_c.position().await), (10 * completed as i64, 0));
    test.assert_money_conserved();

    // After a restart the ledger says the same.
    let states: Vec<i32> = {
        let mut states = Vec::new();
        for payment in 1..=PAYMENTS {
            states.push(bank_a.status(payment).await.state);
        }
        states
    };
    drop(stream);
    let test = TestSwitch::start_in(test.stop().await).await;
    let bank_a = test.psp("bank-a").await;
    for (payment, state) in (1..=PAYMENTS).zip(states) {
        assert_eq!(bank_a.status(payment).await.state, state, "payment {payment} after the restart");
    }
    assert_eq!(expected(test.psp("bank-c").await.position().await), (10 * completed as i64, 0));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_never_exceed_the_original_and_notify_the_payer() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 0, 1_000).await;
    let mut bank_b = test.onboard("bank-b", 0, 0).await;
    let mut bank_c = test.onboard("bank-c", 0, 0).await;
    bank_a.alias("ana@bank-a", "Ana").await;
    bank_b.alias("bo@bank-b", "Bo").await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 500)).await.expect("pay");
    let mut payer_events = subscribe(&test, "bank-a", 0).await;
    let refund = |refund_id: u128, amount: u64| proto::RefundRequest {
        refund_id: id(refund_id),
        original_payment_id: id(1),
        amount_minor: amount,
        currency: "INR".into(),
        note: "returned".into(),
    };
    let done = bank_b.payments.refund(refund(100, 200)).await.expect("partial refund").into_inner();
    assert_eq!(done.state, PaymentState::Completed as i32);
    match event(&mut payer_events).await {
        proto::event::Kind::RefundNotice(notice) => {
            assert_eq!(
                (notice.amount_minor, notice.refunded_total_minor, notice.original_amount_minor),
                (200, 200, 500)
            );
            assert!(notice.completed_at_unix_ns > 0);
        }
        other => panic!("expected a refund notice, got {other:?}"),
    }
    // Retry: same outcome, no second movement; other content: conflict.
    bank_b.payments.refund(refund(100, 200)).await.expect("idempotent");
    let status = bank_b.payments.refund(refund(100, 201)).await.expect_err("conflict");
    assert_eq!(reason(&status), Some(Reason::PaymentIdConflict));
    let status = bank_b.payments.refund(refund(101, 301)).await.expect_err("beyond the remaining 300");
    assert_eq!(reason(&status), Some(Reason::RefundExceedsRemaining));
    bank_b.payments.refund(refund(102, 300)).await.expect("the rest");
    let status = bank_b.payments.refund(refund(103, 1)).await.expect_err("nothing left");
    assert_eq!(reason(&status), Some(Reason::RefundExceedsRemaining));
    // Only the payee refunds; a stranger does not even see the payment; a refund is not refundable.
    let status = bank_a.payments.refund(refund(104, 1)).await.expect_err("payer cannot refund");
    assert_eq!(reason(&status), Some(Reason::RefundNotByPayee));
    let status = bank_c.payments.refund(refund(105, 1)).await.expect_err("not a party");
    assert_eq!(reason(&status), Some(Reason::PaymentNotFound));
    let mut of_refund = refund(106, 1);
    of_refund.original_payment_id = id(100);
    let status = bank_a.payments.refund(of_refund).await.expect_err("refund of a refund");
    assert_eq!(reason(&status), Some(Reason::PaymentNotRefundable));

    let original = bank_a.status(1).await;
    assert_eq!((original.refunded_amount_minor, original.refund_ids.len()), (500, 2));
    let refund_status = bank_a.status(100).await;
    assert_eq!(refund_status.kind, proto::PaymentKind::Refund as i32);
    assert_eq!(refund_status.original_payment_id, id(1));
    let positions = (bank_a.position().await.balance_minor, bank_b.position().await.balance_minor);
    assert_eq!(positions, (1_000, 0), "fully refunded");
    test.assert_money_conserved();
}

async fn collect_decision(
    subscription: &mut Subscription,
    collect: u128,
    decision: proto::Decision,
) -> proto::DecisionReceipt {
    let message = Incoming::CollectDecision(proto::CollectDecision {
        collect_id: id(collect),
        decision: decision as i32,
        decline_reason: proto::DeclineReason::CustomerDeclined as i32,
    });
    subscription.requests.send(proto::SubscribeRequest { message: Some(message) }).await.expect("decide");
    loop {
        match next(&mut subscription.responses).await {
            Some(Outgoing::DecisionReceipt(receipt)) => return receipt,
            Some(Outgoing::Event(_)) => continue,
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_requests_are_approved_declined_or_expire() {
    let test = TestSwitch::start().await;
    let (bank_a, mut bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut payer_events = subscribe(&test, "bank-a", 0).await;
    let mut payee_events = subscribe(&test, "bank-b", 0).await;

    // Approved: the payment executes and both PSPs hear the outcome.
    let asked = bank_b.payments.request_collect(collect_request(1, 400, 0)).await.expect("request").into_inner();
    assert_eq!(asked.state, PaymentState::AwaitingApproval as i32);
    match event(&mut payer_events).await {
        proto::event::Kind::CollectRequest(request) => assert_eq!(request.amount_minor, 400),
        other => panic!("expected a collect request, got {other:?}"),
    }
    assert_eq!(bank_a.status(1).await.state, PaymentState::AwaitingApproval as i32);
    let receipt = collect_decision(&mut payer_events, 1, proto::Decision::Accept).await;
    assert_eq!((receipt.status_code, receipt.reason), (0, 0));
    match event(&mut payee_events).await {
        proto::event::Kind::PaymentOutcome(outcome) => assert_eq!(outcome.state, PaymentState::Completed as i32),
        other => panic!("expected an outcome, got {other:?}"),
    }
    let paid = bank_b.status(1).await;
    assert_eq!((paid.state, paid.kind), (PaymentState::Completed as i32, proto::PaymentKind::Collect as i32));
    // Idempotent request; a second decision is refused.
    let again = bank_b.payments.request_collect(collect_request(1, 400, 0)).await.expect("retry").into_inner();
    assert_eq!(again.state, PaymentState::Completed as i32);
    let status = bank_b.payments.request_collect(collect_request(1, 401, 0)).await.expect_err("conflict");
    assert_eq!(reason(&status), Some(Reason::PaymentIdConflict));
    let receipt = collect_decision(&mut payer_events, 1, proto::Decision::Decline).await;
    assert_eq!(receipt.reason, Reason::AlreadyDecided as i32);

    // Declined.
    bank_b.payments.request_collect(collect_request(2, 100, 0)).await.expect("request");
    let receipt = collect_decision(&mut payer_events, 2, proto::Decision::Decline).await;
    assert_eq!(receipt.status_code, 0);
    let declined = bank_b.status(2).await;
    assert_eq!((declined.state, declined.reason), (PaymentState::Declined as i32, Reason::PayerDeclined as i32));
    // The payer's reason reaches the requester, on its event stream and in the status.
    assert_eq!(declined.decline_reason, proto::DeclineReason::CustomerDeclined as i32);
    loop {
        if let proto::event::Kind::PaymentOutcome(outcome) = event(&mut payee_events).await {
            if outcome.payment_id == id(2) {
                assert_eq!(outcome.state, PaymentState::Declined as i32);
                assert_eq!(outcome.decline_reason, proto::DeclineReason::CustomerDeclined as i32);
                break;
            }
        }
    }

    // Approved beyond the payer's liquidity: failed, recorded.
    bank_b.payments.request_collect(collect_request(3, 700, 0)).await.expect("request");
    let receipt = collect_decision(&mut payer_events, 3, proto::Decision::Accept).await;
    assert_eq!(receipt.reason, Reason::InsufficientLiquidity as i32);
    assert_eq!(bank_b.status(3).await.state, PaymentState::Failed as i32);

    // Expired: nobody answered in time; a late approval is refused.
    let soon = switch::core::now_unix_ns() / 1_000_000 + 700;
    bank_b.payments.request_collect(collect_request(4, 100, soon)).await.expect("request");
    let expired = async {
        loop {
            if bank_b.status(4).await.state == PaymentState::Expired as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, expired).await.expect("the collect expires");
    let receipt = collect_decision(&mut payer_events, 4, proto::Decision::Accept).await;
    assert_eq!(receipt.reason, Reason::CollectExpired as i32, "a decision after the expiry (events.proto)");

    // Only the two PSPs see a collect; only the payer decides it.
    let mut bank_c = test.onboard("bank-c", 0, 0).await;
    let status = bank_c
        .payments
        .get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(2) })
        .await
        .expect_err("stranger");
    assert_eq!(reason(&status), Some(Reason::PaymentNotFound));
    let positions = (bank_a.position().await.balance_minor, bank_b.position().await.balance_minor);
    assert_eq!(positions, (600, 400), "only the approved collect moved money");
    test.assert_money_conserved();
}

/// A push payment does not look at open collects, so a payment made after a collect was requested
/// can take the collect's id. Approving the collect then cannot execute it under that id: the
/// collect ends FAILED with PAYMENT_ID_CONFLICT (not INTERNAL, and not left open until its
/// expiry), both PSPs are told, and only the push payment moved money, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collect_whose_id_a_later_payment_took_fails_with_a_conflict() {
    let test = TestSwitch::start().await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut payer_events = subscribe(&test, "bank-a", 0).await;
    let mut payee_events = subscribe(&test, "bank-b", 0).await;

    bank_b.payments.request_collect(collect_request(7, 300, 0)).await.expect("request");
    assert_eq!(test.switch.collects_awaiting.of("bank-b"), 1);
    // The payer's PSP pays bo 100 under the collect's id.
    let paid = bank_a.payments.pay(pay(7, "ana@bank-a", "bo@bank-b", 100)).await.expect("push").into_inner();
    assert_eq!(paid.state, PaymentState::Completed as i32);

    let receipt = collect_decision(&mut payer_events, 7, proto::Decision::Accept).await;
    assert_eq!(receipt.reason, Reason::PaymentIdConflict as i32, "receipt {receipt:?}");
    assert_eq!(receipt.status_code, tonic::Code::AlreadyExists as i32);
    let outcome = loop {
        if let proto::event::Kind::PaymentOutcome(outcome) = event(&mut payee_events).await {
            break outcome;
        }
    };
    assert_eq!((outcome.payment_id, outcome.state), (id(7), PaymentState::Failed as i32));
    assert_eq!(outcome.reason, Reason::PaymentIdConflict as i32);
    assert_eq!(test.switch.collects_awaiting.of("bank-b"), 0, "the collect is final");
    // A second approval is a repeat: the same receipt (decisions are idempotent).
    let again = collect_decision(&mut payer_events, 7, proto::Decision::Accept).await;
    assert_eq!(again.reason, Reason::PaymentIdConflict as i32);

    let check = |test: &TestSwitch| {
        test.assert_money_conserved();
        let collect = switch::services::collect::collect_of(&test.switch, 7).expect("read").expect("recorded");
        assert_eq!((collect.state, collect.reason), (PaymentState::Failed as i32, Reason::PaymentIdConflict as i32));
    };
    check(&test);
    // The id is the push payment's: its status, and the positions, show that payment only.
    let status = bank_a.status(7).await;
    assert_eq!((status.kind, status.amount_minor), (proto::PaymentKind::Push as i32, 100));
    let positions = (bank_a.position().await.balance_minor, bank_b.position().await.balance_minor);
    assert_eq!(positions, (900, 100));

    let test = TestSwitch::start_in(test.stop().await).await;
    check(&test);
    assert_eq!(test.switch.collects_awaiting.of("bank-b"), 0);
    let bank_b = test.psp("bank-b").await;
    assert_eq!(bank_b.status(7).await.amount_minor, 100);
    assert_eq!(bank_b.position().await.balance_minor, 100);
}

/// Collects go ahead together: requests for different collects and decisions sent back to back
/// share ledger commits, while each collect still resolves once. Two requests of one collect id
/// with different content: one is the collect, the other a conflict. Of two contradicting
/// decisions exactly one wins; approvals beyond the payer's liquidity fail and move nothing;
/// the PSP's count of awaiting collects returns to zero; positions and statuses (also after a
/// restart) agree with the receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collects_requested_and_decided_together_each_resolve_once() {
    const COLLECTS: u128 = 60;
    const AMOUNT: u64 = 25;
    const FUNDS: u64 = 500;
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, FUNDS).await;
    let mut payer_events = subscribe(&test, "bank-a", 0).await;
    // Collect 1 is also requested with other content (a larger amount), at the same time: either
    // may come first. Collect 1 is declined below, so its amount moves no money.
    let requests: Vec<_> = (1..=COLLECTS)
        .map(|collect| (collect, AMOUNT))
        .chain([(1, AMOUNT + 1)])
        .map(|(collect, amount)| {
            let mut payee = bank_b.payments.clone();
            let request = collect_request(collect, amount, 0);
            (collect, amount, tokio::spawn(async move { payee.request_collect(request).await }))
        })
        .collect();
    let (mut awaiting, mut conflicts) = (0, 0);
    let mut amounts = std::collections::BTreeMap::new();
    for (collect, amount, request) in requests {
        match request.await.expect("task") {
            Ok(result) => {
                assert_eq!(result.into_inner().state, PaymentState::AwaitingApproval as i32);
                awaiting += 1;
                amounts.insert(collect, amount);
            }
            Err(status) => {
                assert_eq!(reason(&status), Some(Reason::PaymentIdConflict));
                conflicts += 1;
            }
        }
    }
    assert_eq!((awaiting, conflicts), (COLLECTS, 1), "one collect per id");
    assert_eq!(test.switch.collects_awaiting.of("bank-b"), COLLECTS as usize);
    let mut asked = std::collections::BTreeSet::new();
    while asked.len() < COLLECTS as usize {
        match event(&mut payer_events).await {
            proto::event::Kind::CollectRequest(request) => {
                let collect = id_of(&request.collect_id);
                assert_eq!(
                    Some(&request.amount_minor),
                    amounts.get(&collect),
                    "the request that won is the one stored"
                );
                asked.insert(collect);
            }
            other => panic!("expected only collect requests, got {other:?}"),
        }
    }
    assert_eq!(asked, (1..=COLLECTS).collect());

    // Even ids approved (more than the payer's funds cover), odd ones declined; collect 2 also
    // declined right after its approval.
    let decisions = alternating(COLLECTS, |collect, decision| {
        Incoming::CollectDecision(proto::CollectDecision {
            collect_id: id(collect),
            decision: decision as i32,
            decline_reason: proto::DeclineReason::CustomerDeclined as i32,
        })
    });
    let mut receipts = back_to_back(&mut payer_events, decisions).await;
    let (ok, short) = (Reason::Unspecified as i32, Reason::InsufficientLiquidity as i32);
    let mut two = receipts.remove(&2).expect("collect 2's receipts");
    two.sort_unstable();
    assert!(
        two.len() == 2 && two[0] != two[1] && two.contains(&(Reason::AlreadyDecided as i32)),
        "exactly one of two contradicting decisions wins: {two:?}"
    );
    assert_eq!(receipts.len(), COLLECTS as usize - 1, "a receipt for every collect");

    // Each collect's final state is what its receipt said.
    let mut states = Vec::new();
    for collect in 1..=COLLECTS {
        let status = bank_b.status(collect).await;
        let receipt = if collect == 2 {
            two.iter().copied().find(|reason| *reason != Reason::AlreadyDecided as i32).expect("the winner")
        } else {
            let reasons = &receipts[&collect];
            assert_eq!(reasons.len(), 1, "one receipt for collect {collect}");
            reasons[0]
        };
        let wanted = match (receipt, verdict(collect)) {
            (reason, proto::Decision::Accept) if reason == short => vec![PaymentState::Failed],
            // Collect 2: whichever of its decisions won.
            (reason, _) if reason == ok && collect == 2 => vec![PaymentState::Completed, PaymentState::Declined],
            (reason, proto::Decision::Accept) if reason == ok => vec![PaymentState::Completed],
            (reason, proto::Decision::Decline) if reason == ok => vec![PaymentState::Declined],
            (reason, decision) => panic!("collect {collect}: {decision:?} got reason {reason}"),
        };
        assert!(wanted.iter().any(|state| *state as i32 == status.state), "collect {collect}: {status:?}");
        states.push(status.state);
    }
    // The funds cover 20 approvals of the 29 or 30 made: exactly 20 completed, never more.
    let completed = states.iter().filter(|state| **state == PaymentState::Completed as i32).count() as u64;
    assert_eq!(completed, FUNDS / AMOUNT);
    let positions = (bank_a.position().await.balance_minor, bank_b.position().await.balance_minor);
    assert_eq!(positions, (0, FUNDS as i64));
    assert_eq!(test.switch.collects_awaiting.of("bank-b"), 0, "every collect is final");
    test.assert_money_conserved();

    // After a restart the ledger says the same, and nothing is counted as awaiting.
    drop(payer_events);
    let test = TestSwitch::start_in(test.stop().await).await;
    let bank_b = test.psp("bank-b").await;
    for (collect, state) in (1..=COLLECTS).zip(states) {
        assert_eq!(bank_b.status(collect).await.state, state, "collect {collect} after the restart");
    }
    assert_eq!(test.switch.collects_awaiting.of("bank-b"), 0);
    test.assert_money_conserved();
}

/// Refunds of one payment sent together take turns: exactly as many complete as its amount
/// covers, the rest get REFUND_EXCEEDS_REMAINING, and the payer gets back exactly the amount.
/// One refund id sent for two payments at once is one refund and one conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_sent_together_never_exceed_the_original() {
    const REFUNDS: usize = 12;
    let test = TestSwitch::start().await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut payer = bank_a.payments.clone();
    for (payment, amount) in [(1, 500), (2, 100), (3, 100)] {
        payer.pay(pay(payment, "ana@bank-a", "bo@bank-b", amount)).await.expect("pay");
    }
    let refund = |refund_id: u128, original: u128, amount: u64| proto::RefundRequest {
        refund_id: id(refund_id),
        original_payment_id: id(original),
        amount_minor: amount,
        currency: "INR".into(),
        note: "returned".into(),
    };
    // Twelve refunds of 50 against payment 1 (500); refund 200 against payments 2 and 3.
    let requests: Vec<_> = (100..100 + REFUNDS as u128)
        .map(|refund_id| refund(refund_id, 1, 50))
        .chain([refund(200, 2, 10), refund(200, 3, 10)])
        .map(|request| {
            let mut payee = bank_b.payments.clone();
            tokio::spawn(async move { payee.refund(request).await })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        let answer = request.await.expect("task");
        answers.push(answer.map(|result| result.into_inner().state).map_err(|status| reason(&status)));
    }
    let count = |answers: &[Result<i32, Option<Reason>>], wanted: Result<i32, Option<Reason>>| {
        answers.iter().filter(|answer| **answer == wanted).count()
    };
    let done = Ok(PaymentState::Completed as i32);
    let shared = answers.split_off(REFUNDS);
    assert_eq!(
        (count(&shared, done), count(&shared, Err(Some(Reason::PaymentIdConflict)))),
        (1, 1),
        "refund 200: {shared:?}"
    );
    assert_eq!(
        (count(&answers, done), count(&answers, Err(Some(Reason::RefundExceedsRemaining)))),
        (10, REFUNDS - 10),
        "{answers:?}"
    );
    assert_eq!(bank_a.status(1).await.refunded_amount_minor, 500);
    let refunded_200 = [bank_a.status(2).await.refunded_amount_minor, bank_a.status(3).await.refunded_amount_minor];
    assert!(refunded_200 == [10, 0] || refunded_200 == [0, 10], "refund 200 took one payment: {refunded_200:?}");
    let positions = (bank_a.position().await.balance_minor, bank_b.position().await.balance_minor);
    assert_eq!(positions, (300 + 510, 700 - 510));
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_instead_of_waiting_on_them() {
    let test = TestSwitch::start().await;
    test.onboard("bank-b", 0, 0).await;
    let mut stream = subscribe(&test, "bank-b", 0).await;
    // The stream is open and idle; a graceful stop must not wait for the PSP to hang up.
    let stopping = tokio::spawn(test.stop());
    let ended = tokio::time::timeout(WAIT, stream.responses.message()).await.expect("stream ends in time");
    let status = ended.expect_err("ended with a status");
    assert_eq!(reason(&status), Some(Reason::ShuttingDown));
    tokio::time::timeout(WAIT, stopping).await.expect("stop completes").expect("stop task");
}
