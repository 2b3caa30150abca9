//! Overload: admission at the edge, refusals with a reason and a retry-after trailer, no
//! connection torn down, fairness between PSPs.
//!
//! Budgets are configured small and filled deterministically: a payment to a confirming payee
//! that has not decided holds its payer's room until it is answered, so "the budget is full" is
//! a state the test sets up (waiting for the payee's credit request), never a race.

use switch::proto::subscribe_response::Message as Outgoing;
use switch::proto::{self, PaymentState, Reason};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use crate::common::{next, pay, subscribe, Psp, Subscription, TestSwitch};
use crate::support::{assert_refusal, assert_refused, retry_after_ms, Unchanged};

/// A switch admitting at most `global` payments in flight, and `per_psp` per payer PSP.
pub async fn with_budgets(global: u64, per_psp: u64) -> TestSwitch {
    TestSwitch::start_with(|config| {
        config.limits.payments_in_flight_max = global;
        config.limits.payments_in_flight_max_per_psp = per_psp;
    })
    .await
}

/// `ana@bank-a` pays the confirming `cy@bank-c`, which does not decide: the call stays open and
/// holds one of bank-a's (and the switch's) payments in flight. Returns once bank-c has been
/// asked, so the payment is admitted and committed as a reservation.
pub async fn hold_one(bank_a: &Psp, payment: u128, bank_c: &mut Subscription) -> JoinHandle<Result<(), Status>> {
    let mut client = bank_a.payments.clone();
    let call = tokio::spawn(async move { client.pay(pay(payment, "ana@bank-a", "cy@bank-c", 1)).await.map(|_| ()) });
    loop {
        match next(&mut bank_c.responses).await {
            Some(Outgoing::Event(proto::Event { kind: Some(proto::event::Kind::CreditRequest(request)), .. }))
                if request.payment_id == crate::common::id(payment) =>
            {
                return call;
            }
            Some(_) => continue,
            None => panic!("bank-c's event stream ended"),
        }
    }
}

/// A funded automatic payer `bank-d` with alias `dee@bank-d`, and `bank-b` (`bo@bank-b`) to pay.
async fn second_payer_and_payee(test: &TestSwitch) -> (Psp, Psp) {
    let mut bank_d = test.onboard("bank-d", 0, 1_000_000).await;
    bank_d.alias("dee@bank-d", "Dee").await;
    let mut bank_b = test.onboard("bank-b", 0, 0).await;
    bank_b.alias("bo@bank-b", "Bo").await;
    (bank_d, bank_b)
}

/// One PayStream item, answered: the stream carries refusals in-band.
async fn stream_one(psp: &Psp, request: proto::PayRequest) -> proto::PaymentResult {
    let mut client = psp.payments.clone();
    let item = proto::PayStreamRequest { correlation_id: 7, payment: Some(request) };
    let mut answers = client.pay_stream(tokio_stream::iter([item])).await.expect("stream opens").into_inner();
    let answer = answers.message().await.expect("stream ok").expect("one answer");
    assert_eq!(answer.correlation_id, 7);
    answer.result.expect("a result")
}

#[track_caller]
fn assert_refused_in_band(result: &proto::PaymentResult, reason: Reason) {
    assert_eq!(
        (result.state, result.reason, result.status_code),
        (PaymentState::Rejected as i32, reason as i32, Code::ResourceExhausted as i32),
        "{result:?}"
    );
}

/// A PSP with its in-flight budget full is refused RATE_LIMITED, at once and with the
/// retry-after trailer (errors.proto promises it for RESOURCE_EXHAUSTED; RATE_LIMITED answers
/// lacked it), on Pay, PayBatch (whole) and PayStream (in-band); nothing is recorded. Another
/// PSP is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_at_its_in_flight_budget_is_rate_limited() {
    let test = with_budgets(16, 1).await;
    let (bank_a, _bank_c) = test.payer_and_confirming_payee(1_000).await;
    let mut asked = subscribe(&test, "bank-c", 0).await;
    let held = hold_one(&bank_a, 1, &mut asked).await;
    let (bank_d, _bank_b) = second_payer_and_payee(&test).await;

    let unchanged = Unchanged::take(&test);
    let mut client = bank_a.payments.clone();
    let status = client.pay(pay(2, "ana@bank-a", "cy@bank-c", 1)).await.expect_err("over bank-a's budget");
    assert_refused(&status, Reason::RateLimited, None);
    assert!(retry_after_ms(&status).is_some_and(|milliseconds| milliseconds > 0), "{status:?}");
    let batch = proto::PayBatchRequest { payments: vec![pay(3, "ana@bank-a", "cy@bank-c", 1)] };
    assert_refusal(client.pay_batch(batch).await, Reason::RateLimited, None);
    assert_refused_in_band(&stream_one(&bank_a, pay(4, "ana@bank-a", "cy@bank-c", 1)).await, Reason::RateLimited);
    unchanged.assert_still(&test, "refusals at bank-a's admission budget");

    // Another PSP has its own budget.
    let mut other = bank_d.payments.clone();
    let result = other.pay(pay(5, "dee@bank-d", "bo@bank-b", 1)).await.expect("bank-d's payment").into_inner();
    assert_eq!(result.state, PaymentState::Completed as i32);
    assert!(!held.is_finished(), "bank-a's first payment still awaits its payee");
    test.assert_money_conserved();
}

/// The switch with its global budget full refuses SWITCH_BUSY with the retry-after trailer, on
/// Pay and on PayBatch as a whole (payments.proto: a batch is admitted whole or not at all), even
/// for a PSP whose own budget has room; nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_at_its_global_budget_is_busy_for_everyone() {
    let test = with_budgets(1, 1).await;
    let (bank_a, _bank_c) = test.payer_and_confirming_payee(1_000).await;
    let mut asked = subscribe(&test, "bank-c", 0).await;
    let _held = hold_one(&bank_a, 1, &mut asked).await;
    let (bank_d, bank_b) = second_payer_and_payee(&test).await;

    let unchanged = Unchanged::take(&test);
    let mut client = bank_d.payments.clone();
    let status = client.pay(pay(2, "dee@bank-d", "bo@bank-b", 1)).await.expect_err("the switch is full");
    assert_refused(&status, Reason::SwitchBusy, None);
    assert!(retry_after_ms(&status).is_some_and(|milliseconds| milliseconds > 0), "{status:?}");
    let payments = (10..20).map(|payment| pay(payment, "dee@bank-d", "bo@bank-b", 1)).collect();
    assert_refusal(client.pay_batch(proto::PayBatchRequest { payments }).await, Reason::SwitchBusy, None);
    assert_refused_in_band(&stream_one(&bank_d, pay(3, "dee@bank-d", "bo@bank-b", 1)).await, Reason::SwitchBusy);
    unchanged.assert_still(&test, "refusals at the switch's admission budget");
    assert_eq!(bank_b.position().await.balance_minor, 0);
    test.assert_money_conserved();
}

/// A batch spanning several ledger submissions, with the ledger's in-flight bound no larger than
/// one submission: every payment completes. Before, the later submissions met the ledger's
/// bound (`Busy`) while the first was committing and their payments were REJECTED SWITCH_BUSY
/// in-band while the rest of the batch went through: a batch admitted in part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_admitted_whole_when_the_ledger_is_at_its_bound() {
    const PAYMENTS: u64 = 25; // three submissions of at most 10 payments (30 events)
    let test = TestSwitch::start_with(|config| {
        config.ledger.batch_size_max = 30;
        config.ledger.events_in_flight_max = 30;
    })
    .await;
    let (mut bank_a, bank_b) = test.payer_and_payee(0, 1_000_000).await;
    let payments = (1..=u128::from(PAYMENTS)).map(|payment| pay(payment, "ana@bank-a", "bo@bank-b", 1)).collect();
    let results = bank_a.payments.pay_batch(proto::PayBatchRequest { payments }).await.expect("batch").into_inner();
    let states: Vec<(i32, i32)> = results.results.iter().map(|result| (result.state, result.reason)).collect();
    assert_eq!(states, vec![(PaymentState::Completed as i32, Reason::Unspecified as i32); PAYMENTS as usize]);
    assert_eq!(bank_b.position().await.balance_minor, PAYMENTS as i64);
    test.assert_money_conserved();
}

/// Fairness: a PSP flooding the switch is refused RATE_LIMITED once its own budget is full,
/// while another PSP's payments, made meanwhile, all complete (admission per PSP, not first come
/// first served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_psp_is_refused_while_another_psps_payments_all_succeed() {
    const FLOOD: u128 = 400;
    const OTHER: u128 = 100;
    let test = with_budgets(4, 2).await;
    let (bank_a, _bank_c) = test.payer_and_confirming_payee(1_000_000).await;
    let mut asked = subscribe(&test, "bank-c", 0).await;
    let _held = [hold_one(&bank_a, 1, &mut asked).await, hold_one(&bank_a, 2, &mut asked).await];
    let (bank_d, bank_b) = second_payer_and_payee(&test).await;

    let flood: Vec<_> = (0..FLOOD)
        .map(|number| {
            let mut client = bank_a.payments.clone();
            tokio::spawn(async move { client.pay(pay(1_000 + number, "ana@bank-a", "cy@bank-c", 1)).await })
        })
        .collect();
    // bank-d pays on two lanes (its budget is 2) while the flood goes on.
    let lanes: Vec<_> = (0..2u128)
        .map(|lane| {
            let mut client = bank_d.payments.clone();
            tokio::spawn(async move {
                let mut states = Vec::new();
                for number in (0..OTHER).filter(|number| number % 2 == lane) {
                    let answer = client.pay(pay(10_000 + number, "dee@bank-d", "bo@bank-b", 1)).await;
                    states.push(answer.map(|result| result.into_inner().state).map_err(|status| status.code()));
                }
                states
            })
        })
        .collect();

    let mut refused = 0;
    for call in flood {
        match call.await.expect("flood call") {
            Ok(answer) => panic!("bank-a's budget is full, yet {answer:?}"),
            Err(status) => {
                assert_refused(&status, Reason::RateLimited, None);
                refused += 1;
            }
        }
    }
    let mut completed = 0;
    for lane in lanes {
        for state in lane.await.expect("lane") {
            assert_eq!(state, Ok(PaymentState::Completed as i32), "bank-d is not refused for bank-a's flood");
            completed += 1;
        }
    }
    assert_eq!((refused, completed), (FLOOD, OTHER));
    assert_eq!(bank_b.position().await.balance_minor, OTHER as i64);
    test.assert_money_conserved();
}

/// Many PayStreams on one connection, each pipelining small payments one per HTTP/2 DATA frame
/// (as a client sending each payment as it comes does), to a confirming payee that decides only
/// once the client has sent everything. Every payment is answered and no stream breaks: the
/// switch keeps reading each stream and refuses in-band what its budgets have no room for.
/// Before, each stream stopped being read at its in-flight bound, its unread small frames counted
/// against h2's per-connection budget (half the connection window), and past it h2 tore the
/// connection down with GOAWAY ENHANCE_YOUR_CALM (`too_many_data_frames`), breaking every stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_small_payments_on_many_streams_keep_their_connection() {
    const STREAMS: u64 = 6;
    // Past the stream's in-flight bound (4,096) by more than what fills h2's small-frame budget
    // when six streams stop being read: ~10,000 unread ~70-byte frames each, ~1.9 MB of budget.
    const PER_STREAM: u64 = 14_000;
    let test = TestSwitch::start().await;
    let (bank_a, _bank_c) = test.payer_and_confirming_payee(1_000_000_000).await;
    let payee = subscribe(&test, "bank-c", 0).await;
    let (release, released) = tokio::sync::watch::channel(false);
    let payee = tokio::spawn(decline_once_released(payee, released));

    let (mut producers, mut streams) = (Vec::new(), Vec::new());
    for stream in 0..STREAMS {
        let (requests, outgoing) = tokio::sync::mpsc::channel(1);
        producers.push(tokio::spawn(async move {
            for number in 1..=PER_STREAM {
                let payment = pay(u128::from(stream * PER_STREAM + number), "ana@bank-a", "cy@bank-c", 1);
                let request = proto::PayStreamRequest { correlation_id: number, payment: Some(payment) };
                if requests.send(request).await.is_err() {
                    return;
                }
                // Lets the body encoder take this message alone: one message, one DATA frame.
                tokio::task::yield_now().await;
            }
        }));
        let mut client = bank_a.payments.clone(); // one channel: one connection
        streams.push(tokio::spawn(async move {
            let outgoing = tokio_stream::wrappers::ReceiverStream::new(outgoing);
            let mut responses = client.pay_stream(outgoing).await?.into_inner();
            let mut answers = std::collections::BTreeMap::new();
            while let Some(response) = responses.message().await? {
                let result = response.result.expect("result");
                assert!(answers.insert(response.correlation_id, result).is_none(), "one answer per request");
            }
            Ok::<_, Status>(answers)
        }));
    }
    for producer in producers {
        producer.await.expect("producer");
    }
    release.send_replace(true);
    let mut refused_at_budget = 0;
    for stream in streams {
        let answers = stream.await.expect("stream task").expect("the stream and its connection stay up");
        assert_eq!(answers.len() as u64, PER_STREAM, "every payment answered");
        for result in answers.values() {
            if result.reason == Reason::RateLimited as i32 {
                assert_refused_in_band(result, Reason::RateLimited);
                refused_at_budget += 1;
            } else {
                assert_eq!(result.state, PaymentState::Declined as i32, "held, then declined: {result:?}");
            }
        }
    }
    payee.abort();
    assert!(refused_at_budget > 0, "the budgets were full, and said so in-band");
    assert_eq!(bank_a.position().await.balance_minor, 1_000_000_000, "every reservation voided");
    test.assert_money_conserved();
}

/// A confirming payee that holds every credit request until `released`, then declines them all
/// and every later one, acknowledging its events as it goes.
async fn decline_once_released(mut payee: Subscription, mut released: tokio::sync::watch::Receiver<bool>) {
    use switch::proto::subscribe_request::Message as Incoming;
    let (mut held, mut now_released) = (Vec::new(), false);
    loop {
        let message = tokio::select! {
            message = payee.responses.message() => message,
            changed = released.changed(), if !now_released => {
                now_released = changed.is_err() || *released.borrow_and_update();
                if now_released {
                    for payment_id in std::mem::take(&mut held) {
                        decline(&payee, payment_id).await;
                    }
                }
                continue;
            }
        };
        let Ok(Some(proto::SubscribeResponse { message: Some(Outgoing::Event(event)) })) = message else {
            if matches!(message, Ok(Some(_))) {
                continue; // a decision receipt
            }
            return;
        };
        let ack = Incoming::Ack(proto::Ack { sequence: event.sequence });
        let _ = payee.requests.send(proto::SubscribeRequest { message: Some(ack) }).await;
        if let Some(proto::event::Kind::CreditRequest(request)) = event.kind {
            if now_released {
                decline(&payee, request.payment_id).await;
            } else {
                held.push(request.payment_id);
            }
        }
    }
}

async fn decline(payee: &Subscription, payment_id: Vec<u8>) {
    use switch::proto::subscribe_request::Message as Incoming;
    let decision = Incoming::CreditDecision(proto::CreditDecision {
        payment_id,
        decision: proto::Decision::Decline as i32,
        decline_reason: proto::DeclineReason::AccountClosed as i32,
    });
    let _ = payee.requests.send(proto::SubscribeRequest { message: Some(decision) }).await;
}

/// A burst of unary payments from one PSP on one connection, far beyond its budget: every call
/// gets the switch's own answer (COMPLETED, or RATE_LIMITED / SWITCH_BUSY with the retry-after
/// trailer), none a transport error, and what completed is exactly what the payee received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_burst_on_one_connection_is_answered_call_by_call() {
    const CALLS: u128 = 3_000;
    let test = with_budgets(32, 16).await;
    let (bank_a, bank_b) = test.payer_and_payee(0, 1_000_000_000).await;
    let calls: Vec<_> = (1..=CALLS)
        .map(|number| {
            let mut client = bank_a.payments.clone();
            tokio::spawn(async move { client.pay(pay(number, "ana@bank-a", "bo@bank-b", 1)).await })
        })
        .collect();
    let (mut completed, mut refused) = (0i64, 0);
    for call in calls {
        match call.await.expect("call") {
            Ok(result) => {
                assert_eq!(result.into_inner().state, PaymentState::Completed as i32);
                completed += 1;
            }
            Err(status) => {
                let reason = crate::common::reason(&status);
                assert!(matches!(reason, Some(Reason::RateLimited | Reason::SwitchBusy)), "{status:?}");
                assert_refused(&status, reason.expect("a reason"), None);
                refused += 1;
            }
        }
    }
    assert!(completed > 0, "admitted payments complete");
    assert_eq!(completed + refused, CALLS as i64);
    assert_eq!(bank_b.position().await.balance_minor, completed);
    test.assert_money_conserved();
}
