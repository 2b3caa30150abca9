//! The switch killed mid-load (SIGKILL, no shutdown) twice in a row, the second time after it
//! recovered from the first, then restarted on its data, with push payments (unary, streamed, to
//! an automatic and a confirming payee), refunds and collects in flight: every request a PSP was
//! answered keeps that answer; every one in flight happened exactly once or not at all; positions
//! match the payments that happened and net to zero; refunds never exceed their payment; a
//! reservation and a collect left waiting expire; and each PSP is told of each of its payments
//! exactly once across the crashes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::served::Served;
use common::*;
use switch::proto::subscribe_request::Message as Incoming;
use switch::proto::subscribe_response::Message as Outgoing;
use switch::proto::{self, ConfirmationMode, PaymentState};
use switch::tls::DevelopmentCa;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

/// Prefunding of each PSP: far more than the run can spend, so every payment can complete and
/// a refusal for liquidity would be a bug, not the load.
const FUNDS: u64 = 1_000_000_000;
/// Requests answered in each life of the switch before it is killed.
const ANSWERED_BEFORE_KILL: usize = 20_000;
/// Most streamed payments unanswered at once: enough to pipeline, few enough that the unary
/// lanes still get their share of the switch.
const STREAM_IN_FLIGHT: usize = 64;
/// Deadline of the confirmed-mode payments and expiry of the collects: the ones left waiting at a
/// kill must be ended by the restarted switch soon after.
const DEADLINE: Duration = Duration::from_secs(4);

/// One submitted payment, and what its payer was told (None: no answer before the kill).
struct Attempt {
    payer: &'static str,
    payee: &'static str,
    payee_alias: &'static str,
    payer_alias: &'static str,
    amount: u64,
    deadline_unix_ms: u64,
    kind: Kind,
    answer: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Push,
    /// Of `original` (the refund's payer is that payment's payee).
    Refund {
        original: u128,
    },
    /// Requested by the payee; `deadline_unix_ms` is its expiry.
    Collect,
}

impl Attempt {
    fn refund(&self, refund: u128, original: u128) -> proto::RefundRequest {
        proto::RefundRequest {
            refund_id: id(refund),
            original_payment_id: id(original),
            amount_minor: self.amount,
            currency: "INR".into(),
            note: "returned".into(),
        }
    }

    fn collect(&self, collect: u128) -> proto::RequestCollectRequest {
        proto::RequestCollectRequest {
            collect_id: id(collect),
            payee_alias: self.payee_alias.into(),
            payer_alias: self.payer_alias.into(),
            amount_minor: self.amount,
            currency: "INR".into(),
            note: "invoice".into(),
            expiry_unix_ms: self.deadline_unix_ms,
        }
    }

    /// Submits a payment or a refund again as its payer: its final state.
    async fn retry(&self, payment: u128, payer: &mut Psp) -> i32 {
        let answer = match self.kind {
            Kind::Push => payer.payments.pay(self.request(payment)).await,
            Kind::Refund { original } => payer.payments.refund(self.refund(payment, original)).await,
            Kind::Collect => unreachable!("a collect past its expiry cannot be requested again"),
        };
        answer.unwrap_or_else(|status| panic!("retry of {payment:x}: {status:?}")).into_inner().state
    }

    /// Ended by its payer's counterpart or by a deadline (a confirmed push, a collect), not at
    /// once: it may still be waiting at a kill, and may end EXPIRED.
    fn waits(&self) -> bool {
        self.payee == "bank-c" || self.kind == Kind::Collect
    }

    fn request(&self, payment: u128) -> proto::PayRequest {
        proto::PayRequest {
            deadline_unix_ms: self.deadline_unix_ms,
            ..pay(payment, self.payer_alias, self.payee_alias, self.amount)
        }
    }
}

/// Every payment submitted, by id, shared by the load tasks.
#[derive(Clone, Default)]
struct Book(Arc<Mutex<BTreeMap<u128, Attempt>>>);

impl Book {
    fn submit(&self, payment: u128, attempt: Attempt) {
        self.0.lock().expect("book").insert(payment, attempt);
    }

    fn answer(&self, payment: u128, state: i32) {
        let mut book = self.0.lock().expect("book");
        let attempt = book.get_mut(&payment).expect("answers are for submitted payments");
        assert!(attempt.answer.replace(state).is_none(), "payment {payment:x} answered twice");
    }

    /// Books a unary call's answer. False once the switch is gone (the lane stops); any error
    /// while it runs fails the test.
    fn record(
        &self,
        payment: u128,
        answer: Result<tonic::Response<proto::PaymentResult>, tonic::Status>,
        killed: &AtomicBool,
    ) -> bool {
        match answer {
            Ok(result) => self.answer(payment, result.into_inner().state),
            Err(_) if killed.load(Ordering::Acquire) => return false,
            Err(status) => panic!("{payment:x} refused while the switch ran: {status:?}"),
        }
        true
    }

    fn answered(&self) -> usize {
        self.0.lock().expect("book").values().filter(|attempt| attempt.answer.is_some()).count()
    }
}

fn unix_ms_in(after: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    u64::try_from((now + after).as_millis()).expect("milliseconds fit")
}

/// The id of the `number`th payment of a lane in a round: distinct across lanes and rounds.
fn payment_id(lane: Lane, number: u64) -> u128 {
    (u128::from(lane.id) << 64) | (u128::from(lane.round) << 32) | u128::from(number)
}

/// A payment of `number` in a lane: its id, and varied amounts.
fn attempt(lane: Lane, number: u64) -> (u128, Attempt) {
    let mut attempt = Attempt {
        payer: lane.payer,
        payee: lane.payee,
        payer_alias: lane.payer_alias,
        payee_alias: lane.payee_alias,
        amount: 1 + number % 997,
        deadline_unix_ms: 0,
        kind: if lane.id == COLLECTS { Kind::Collect } else { Kind::Push },
        answer: None,
    };
    if attempt.waits() {
        attempt.deadline_unix_ms = unix_ms_in(DEADLINE);
    }
    (payment_id(lane, number), attempt)
}

/// Who pays whom, and how; one task per lane in each round (the life of one switch process).
#[derive(Clone, Copy)]
struct Lane {
    id: u8,
    round: u32,
    payer: &'static str,
    payer_alias: &'static str,
    payee: &'static str,
    payee_alias: &'static str,
}

/// Lanes of one payment per RPC from bank-a to bank-b.
const A_TO_B: [u8; 3] = [1, 2, 3];
/// bank-a pays the confirming bank-c, one payment per RPC.
const A_TO_C: u8 = 4;
/// bank-a pays bank-b on a PayStream. bank-b, not bank-a, gets its flood of credit
/// notifications, so that bank-a's event stream keeps up with the collects it decides.
const STREAMED: u8 = 5;
/// bank-b refunds half of each payment of the first A_TO_B lane once it is answered.
const REFUNDS: u8 = 6;
/// bank-b asks ana@bank-a for money; bank-a approves each on its event stream.
const COLLECTS: u8 = 7;
/// Every lane, in the order of their ids.
const LANES: [u8; 7] = [A_TO_B[0], A_TO_B[1], A_TO_B[2], A_TO_C, STREAMED, REFUNDS, COLLECTS];

fn lane(id: u8, round: u32) -> Lane {
    let (payer, payer_alias, payee, payee_alias) = match id {
        A_TO_C => ("bank-a", "ana@bank-a", "bank-c", "cy@bank-c"),
        REFUNDS => ("bank-b", "bo@bank-b", "bank-a", "ana@bank-a"),
        _ => ("bank-a", "ana@bank-a", "bank-b", "bo@bank-b"),
    };
    Lane { id, round, payer, payer_alias, payee, payee_alias }
}

impl Lane {
    /// The PSP that calls: the payer, except for a collect, which its payee requests.
    fn caller(&self) -> &'static str {
        if self.id == COLLECTS {
            self.payee
        } else {
            self.payer
        }
    }
}

/// Payments, or collect requests on the collect lane, one per RPC until the connection is lost.
/// A collect is answered AWAITING_APPROVAL; its payer approves it on its event stream.
async fn one_by_one(mut psp: Psp, lane: Lane, book: Book, killed: Arc<AtomicBool>) {
    for number in 1.. {
        let (payment, attempt) = attempt(lane, number);
        let (kind, pay, collect) = (attempt.kind, attempt.request(payment), attempt.collect(payment));
        book.submit(payment, attempt);
        let answer = match kind {
            Kind::Collect => psp.payments.request_collect(collect).await,
            _ => psp.payments.pay(pay).await,
        };
        if !book.record(payment, answer, &killed) {
            return;
        }
    }
}

/// Refunds, one per RPC, of half of each payment of `lane(A_TO_B[0])` in order, each once its
/// payment is answered, until the connection is lost.
async fn refund_one_by_one(mut psp: Psp, lane: Lane, book: Book, killed: Arc<AtomicBool>) {
    let originals = self::lane(A_TO_B[0], lane.round);
    for number in 1.. {
        let original = payment_id(originals, number);
        let amount = loop {
            if let Some(attempt) =
                book.0.lock().expect("book").get(&original).filter(|attempt| attempt.answer.is_some())
            {
                assert_eq!(attempt.answer, Some(PaymentState::Completed as i32), "an automatic payment completes");
                break attempt.amount.div_ceil(2);
            }
            if killed.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let refund = payment_id(lane, number);
        let (_, attempt) = attempt(lane, number);
        let attempt = Attempt { amount, kind: Kind::Refund { original }, ..attempt };
        let request = attempt.refund(refund, original);
        book.submit(refund, attempt);
        if !book.record(refund, psp.payments.refund(request).await, &killed) {
            return;
        }
    }
}

/// Pipelined payments on one PayStream, at most `STREAM_IN_FLIGHT` unanswered, until the
/// connection is lost.
async fn pay_streamed(mut psp: Psp, lane: Lane, book: Book, killed: Arc<AtomicBool>) {
    let (requests, receiver) = mpsc::channel(1);
    let in_flight = Arc::new(Semaphore::new(STREAM_IN_FLIGHT));
    let submitter = {
        let (book, in_flight) = (book.clone(), Arc::clone(&in_flight));
        tokio::spawn(async move {
            for number in 1.. {
                let Ok(permit) = in_flight.acquire().await else { return };
                permit.forget(); // given back when the answer comes
                let (payment, attempt) = attempt(lane, number);
                let request =
                    proto::PayStreamRequest { correlation_id: number, payment: Some(attempt.request(payment)) };
                book.submit(payment, attempt);
                if requests.send(request).await.is_err() {
                    return;
                }
            }
        })
    };
    let answers = psp.payments.pay_stream(ReceiverStream::new(receiver)).await;
    let mut answers = match answers {
        Ok(answers) => answers.into_inner(),
        Err(_) if killed.load(Ordering::Acquire) => return,
        Err(status) => panic!("PayStream refused while the switch ran: {status:?}"),
    };
    loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let payment = payment_id(lane, answer.correlation_id);
                book.answer(payment, answer.result.expect("a result").state);
                in_flight.add_permits(1);
            }
            Ok(None) | Err(_) if killed.load(Ordering::Acquire) => break,
            other => panic!("PayStream ended while the switch ran: {other:?}"),
        }
    }
    submitter.abort();
}

/// What one event told a PSP about a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Told {
    /// An automatic payee's credit notification.
    Credited,
    /// A confirming payee's credit request.
    Asked,
    /// A collect's payer's request for approval.
    Requested,
    /// A confirming payee's or a collect's PSPs' outcome, with the final state.
    Ended(i32),
    /// An original payer's refund notice (keyed by the refund's id).
    Refunded,
}

impl Told {
    /// The payment an event is about, and what it says.
    fn of(kind: &proto::event::Kind) -> (u128, Told) {
        use proto::event::Kind;
        match kind {
            Kind::CreditNotification(credit) => (id_of(&credit.payment_id), Told::Credited),
            Kind::CreditRequest(request) => (id_of(&request.payment_id), Told::Asked),
            Kind::CollectRequest(request) => (id_of(&request.collect_id), Told::Requested),
            Kind::PaymentOutcome(outcome) => (id_of(&outcome.payment_id), Told::Ended(outcome.state)),
            Kind::RefundNotice(notice) => (id_of(&notice.refund_id), Told::Refunded),
        }
    }
}

/// What a PSP's event stream delivered, by sequence, and the last sequence it acknowledged.
#[derive(Default)]
struct Delivered {
    events: BTreeMap<u64, (u128, Told)>,
    acknowledged: u64,
}

/// The kill's trigger: once armed, the confirming payee leaves the next credit request it gets
/// undecided, and the collect's payer the next collect request, and each says so. Those are
/// recorded (events go out only once committed) and waiting at the kill, so the restarted
/// switch always has a reservation to void and a collect to expire.
struct Trigger {
    armed: AtomicBool,
    /// One permit per request held.
    holds: Semaphore,
    held: Mutex<Vec<u128>>,
}

/// Requests held per round: a credit request and a collect request.
const HELD_PER_ROUND: u32 = 2;

/// Reads a PSP's events and acknowledges each; a confirming payee accepts every credit request
/// and a payer approves every collect request, except the one each holds once the trigger is
/// armed. Runs until the connection is lost.
async fn consume_events(
    endpoint: &Endpoint,
    psp: &'static str,
    delivered: Arc<Mutex<Delivered>>,
    trigger: Arc<Trigger>,
) {
    let resume = delivered.lock().expect("delivered").acknowledged;
    let mut subscription = subscribe(endpoint, psp, resume).await;
    assert_eq!(subscription.welcome.acknowledged_sequence, resume, "{psp} resumes where it acknowledged");
    let mut holding = false;
    while let Ok(Some(response)) = subscription.responses.message().await {
        let Some(Outgoing::Event(proto::Event { sequence, kind: Some(kind), .. })) = response.message else {
            continue;
        };
        let told = Told::of(&kind);
        let previous = delivered.lock().expect("delivered").events.insert(sequence, told);
        // Sent again only if not acknowledged, and then the same event.
        assert!(previous.is_none_or(|previous| previous == told), "{psp}'s event {sequence} changed");
        let decision = match kind {
            proto::event::Kind::CreditRequest(request) => Some(Incoming::CreditDecision(proto::CreditDecision {
                payment_id: request.payment_id,
                decision: proto::Decision::Accept as i32,
                decline_reason: 0,
            })),
            proto::event::Kind::CollectRequest(request) => Some(Incoming::CollectDecision(proto::CollectDecision {
                collect_id: request.collect_id,
                decision: proto::Decision::Accept as i32,
                decline_reason: 0,
            })),
            _ => None,
        };
        if let Some(decision) = decision {
            if !holding && trigger.armed.load(Ordering::Acquire) {
                holding = true;
                trigger.held.lock().expect("held").push(told.0);
                trigger.holds.add_permits(1);
                continue; // neither decided nor acknowledged
            }
            if subscription.requests.send(proto::SubscribeRequest { message: Some(decision) }).await.is_err() {
                return;
            }
        }
        let ack = Incoming::Ack(proto::Ack { sequence });
        if subscription.requests.send(proto::SubscribeRequest { message: Some(ack) }).await.is_err() {
            return;
        }
        delivered.lock().expect("delivered").acknowledged = sequence;
    }
}

/// The operator's view of every id in `ids`, in batches of the switch's largest.
async fn lookup(endpoint: &Endpoint, ids: &[u128]) -> BTreeMap<u128, proto::Payment> {
    let mut operator = endpoint.operator().await;
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(switch::services::BATCH_SIZE_MAX) {
        let request = proto::GetPaymentsRequest { payment_ids: chunk.iter().map(|payment| id(*payment)).collect() };
        let answer = operator.get_payments(request).await.expect("lookup").into_inner();
        assert_eq!(answer.payments.len(), chunk.len(), "one answer per id");
        for (payment, lookup) in chunk.iter().zip(answer.payments) {
            if let Some(record) = lookup.payment.filter(|_| lookup.found) {
                found.insert(*payment, record);
            }
        }
    }
    found
}

/// Each PSP's balance is its funding plus what it received minus what it sent, counting exactly
/// the payments the switch holds as COMPLETED; nothing stays reserved.
async fn assert_positions_match(
    test: &TestSwitch,
    book: &BTreeMap<u128, Attempt>,
    stored: &BTreeMap<u128, proto::Payment>,
) {
    let mut expected: BTreeMap<&str, i128> = ["bank-a", "bank-b", "bank-c"].map(|psp| (psp, i128::from(FUNDS))).into();
    for (payment, record) in stored {
        let attempt = &book[payment];
        assert_eq!(
            (record.payer_psp_id.as_str(), record.payee_psp_id.as_str(), record.amount_minor),
            (attempt.payer, attempt.payee, attempt.amount),
            "payment {payment:x} is stored as submitted"
        );
        if record.state == PaymentState::Completed as i32 {
            *expected.get_mut(attempt.payer).expect("payer") -= i128::from(attempt.amount);
            *expected.get_mut(attempt.payee).expect("payee") += i128::from(attempt.amount);
        }
    }
    for (psp, balance) in expected {
        let position = test.psp(psp).await.position().await;
        assert_eq!(i128::from(position.balance_minor), balance, "{psp}'s balance is its completed payments");
        assert_eq!((position.reserved_minor, position.incoming_pending_minor), (0, 0), "{psp} has nothing reserved");
    }
    test.assert_money_conserved();
}

/// One life of a switch process: every lane pays and every PSP reads its events until
/// `ANSWERED_BEFORE_KILL` more requests are answered and a credit request and a collect request
/// are held; then SIGKILL. The ids of the requests held.
async fn load_then_kill(
    served: Served,
    endpoint: Endpoint,
    round: u32,
    book: &Book,
    delivered: &BTreeMap<&'static str, Arc<Mutex<Delivered>>>,
) -> Vec<u128> {
    let endpoint = Arc::new(endpoint);
    let killed = Arc::new(AtomicBool::new(false));
    let trigger = Arc::new(Trigger { armed: AtomicBool::new(false), holds: Semaphore::new(0), held: Mutex::default() });
    // Clients first: issuing a PSP's certificate rewrites its files, which a client connecting at
    // the same moment could read half-written.
    let mut callers = Vec::new();
    for lane_id in LANES {
        let lane = lane(lane_id, round);
        callers.push((endpoint.psp(lane.caller()).await, lane));
    }
    let mut tasks = Vec::new();
    for (psp, delivered) in delivered {
        let (endpoint, psp, delivered) = (Arc::clone(&endpoint), *psp, Arc::clone(delivered));
        let trigger = Arc::clone(&trigger);
        tasks.push(tokio::spawn(async move { consume_events(&endpoint, psp, delivered, trigger).await }));
    }
    for (caller, lane) in callers {
        let (book, killed) = (book.clone(), Arc::clone(&killed));
        tasks.push(match lane.id {
            STREAMED => tokio::spawn(pay_streamed(caller, lane, book, killed)),
            REFUNDS => tokio::spawn(refund_one_by_one(caller, lane, book, killed)),
            _ => tokio::spawn(one_by_one(caller, lane, book, killed)),
        });
    }

    let (started, answered_before) = (Instant::now(), book.answered());
    while book.answered() < answered_before + ANSWERED_BEFORE_KILL {
        let answered = book.answered() - answered_before;
        assert!(started.elapsed() < Duration::from_secs(120), "the switch answered {answered} requests in 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trigger.armed.store(true, Ordering::Release);
    let holds = tokio::time::timeout(WAIT, trigger.holds.acquire_many(HELD_PER_ROUND)).await;
    holds.expect("a credit request and a collect request held").expect("semaphore open").forget();
    killed.store(true, Ordering::Release);
    served.kill();
    for task in tasks {
        tokio::time::timeout(WAIT, task).await.expect("load stops with the switch").expect("load task");
    }
    println!("round {round}: killed after {:?} of load", started.elapsed());
    let book = book.0.lock().expect("book");
    for lane_id in LANES {
        let lane = lane(lane_id, round);
        let in_lane = book.range(payment_id(lane, 0)..payment_id(lane, u64::from(u32::MAX)));
        let (submitted, answered) =
            in_lane.fold((0, 0), |(n, a), (_, attempt)| (n + 1, a + usize::from(attempt.answer.is_some())));
        println!("  lane {lane_id} {} -> {}: {submitted} submitted, {answered} answered", lane.payer, lane.payee);
    }
    let held = std::mem::take(&mut *trigger.held.lock().expect("held"));
    held
}

/// Crashes in a row: the second one hits a switch that recovered from the first.
const ROUNDS: u32 = 2;

fn state_name(state: Option<i32>) -> &'static str {
    state.and_then(|state| PaymentState::try_from(state).ok()).map_or("not recorded", |state| state.as_str_name())
}

/// What each PSP must have been told, from the payments' final records: a credit notification
/// per completed push to an automatic payee; a credit request and an outcome per push recorded
/// for a confirming payee; a request to the payer and an outcome to both per collect; a notice to
/// the original payer per completed refund.
fn expected_events(stored: &BTreeMap<u128, proto::Payment>) -> BTreeMap<&str, BTreeSet<(u128, Told)>> {
    let mut expected: BTreeMap<&str, BTreeSet<(u128, Told)>> = BTreeMap::new();
    for (payment, record) in stored {
        let (payer, payee, ended) =
            (record.payer_psp_id.as_str(), record.payee_psp_id.as_str(), Told::Ended(record.state));
        let completed = record.state == PaymentState::Completed as i32;
        let mut tell = |psp, told| expected.entry(psp).or_default().insert((*payment, told));
        match proto::PaymentKind::try_from(record.kind) {
            Ok(proto::PaymentKind::Refund) if completed => tell(payee, Told::Refunded),
            Ok(proto::PaymentKind::Collect) => tell(payer, Told::Requested) & tell(payer, ended) & tell(payee, ended),
            Ok(proto::PaymentKind::Push) if payee == "bank-c" => tell(payee, Told::Asked) & tell(payee, ended),
            Ok(proto::PaymentKind::Push) if completed => tell(payee, Told::Credited),
            _ => true,
        };
    }
    expected
}

/// Every event a PSP has been told, once each: what it acknowledged before the last kill, then,
/// resuming after that, the rest, in order and without a gap.
async fn told_across_the_crashes(test: &TestSwitch, psp: &str, before: Delivered) -> BTreeSet<(u128, Told)> {
    let mut subscription = subscribe(test, psp, before.acknowledged).await;
    assert_eq!(subscription.welcome.acknowledged_sequence, before.acknowledged, "{psp} resumes where it acked");
    let mut told = BTreeSet::new();
    for (sequence, event) in before.events.range(..=before.acknowledged) {
        assert!(told.insert(*event), "{psp} told {event:x?} twice (event {sequence})");
    }
    for sequence in before.acknowledged + 1..=subscription.welcome.last_sequence {
        let event = match next(&mut subscription.responses).await {
            Some(Outgoing::Event(event)) => event,
            other => panic!("expected event {sequence} for {psp}, got {other:?}"),
        };
        assert_eq!(event.sequence, sequence, "{psp}'s events resume in order, without a gap");
        if sequence % 1_024 == 0 {
            ack(&subscription, sequence).await; // the switch sends at most a window beyond it
        }
        if let Some(event) = event.kind.as_ref().map(Told::of) {
            assert!(told.insert(event), "{psp} told {event:x?} twice (event {sequence})");
        }
    }
    told
}

/// Waits until nothing is reserved and no collect awaits approval: the deadlines and expiries of
/// what was in flight at the kills, re-armed by the restarted switch, have fired.
async fn wait_until_final(test: &TestSwitch, book: &BTreeMap<u128, Attempt>) {
    let collects: Vec<u128> =
        book.iter().filter(|(_, attempt)| attempt.kind == Kind::Collect).map(|(id, _)| *id).collect();
    let waiting = Instant::now();
    loop {
        let reserved = test.psp("bank-a").await.position().await.reserved_minor;
        let awaiting = lookup(test, &collects).await;
        let awaiting = awaiting.values().filter(|record| record.state == PaymentState::AwaitingApproval as i32).count();
        if reserved == 0 && awaiting == 0 {
            return;
        }
        let waited = waiting.elapsed();
        assert!(
            waited < DEADLINE + Duration::from_secs(30),
            "after {waited:?}: {reserved} reserved, {awaiting} collects"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The states a request may end in: a push or refund to an automatic PSP completes (on retry if
/// need be); a confirmed push or a collect completes or expires, or, unanswered, may never have
/// been recorded.
fn may_end(attempt: &Attempt) -> &'static [Option<PaymentState>] {
    use PaymentState::{Completed, Expired};
    match (attempt.waits(), attempt.answer) {
        (false, _) => &[Some(Completed)],
        (true, Some(_)) => &[Some(Completed), Some(Expired)],
        (true, None) => &[Some(Completed), Some(Expired), None],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_payment_survives_a_sigkill_of_the_switch() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let book = Book::default();
    let delivered: BTreeMap<&'static str, Arc<Mutex<Delivered>>> =
        ["bank-a", "bank-b", "bank-c"].map(|psp| (psp, Arc::default())).into();
    let mut held = Vec::new();
    for round in 0..ROUNDS {
        let data = dir.path().join("data");
        let served = tokio::task::block_in_place(|| Served::start(&data));
        let endpoint = Endpoint { address: served.grpc, ca: DevelopmentCa::new(data.join("certs")) };
        if round == 0 {
            let mut bank_a = endpoint.onboard("bank-a", 0, FUNDS).await;
            let mut bank_b = endpoint.onboard("bank-b", 0, FUNDS).await;
            let mut bank_c = endpoint.onboard_in_mode("bank-c", 0, FUNDS, ConfirmationMode::Confirmed).await;
            bank_a.alias("ana@bank-a", "Ana").await;
            bank_b.alias("bo@bank-b", "Bo").await;
            bank_c.alias("cy@bank-c", "Cy").await;
        }
        held.push(load_then_kill(served, endpoint, round, &book, &delivered).await);
    }
    let book = std::mem::take(&mut *book.0.lock().expect("book"));
    let unanswered: Vec<u128> =
        book.iter().filter(|(_, attempt)| attempt.answer.is_none()).map(|(id, _)| *id).collect();

    // Restart on the same data, in this process this time, to read its ledger directly too.
    // Every answer stands: a final state stays, a collect awaiting approval is recorded.
    let test = TestSwitch::start_in(dir).await;
    let ids: Vec<u128> = book.keys().copied().collect();
    let stored = lookup(&test, &ids).await;
    for (payment, attempt) in &book {
        let Some(answer) = attempt.answer else { continue };
        let record = stored.get(payment).unwrap_or_else(|| panic!("answered payment {payment:x} lost in the crash"));
        if attempt.kind != Kind::Collect {
            assert_eq!(record.state, answer, "payment {payment:x} keeps the outcome its payer was told");
        }
    }

    // What was in flight ends: the last round's held requests expire (an earlier round's credit
    // request was asked again after its restart and accepted, in time or not).
    wait_until_final(&test, &book).await;
    let stored = lookup(&test, &ids).await;
    for (round, held) in held.iter().enumerate() {
        for payment in held {
            let state = stored.get(payment).map(|record| record.state);
            println!("round {round}: held {payment:x} ended {}", state_name(state));
            if round + 1 == held.len() {
                assert_eq!(state, Some(PaymentState::Expired as i32), "held {payment:x} expired");
            }
        }
    }
    let collects = book.iter().filter(|(_, attempt)| attempt.kind == Kind::Collect);
    let mut collect_states: BTreeMap<&str, usize> = BTreeMap::new();
    for (collect, _) in collects {
        *collect_states.entry(state_name(stored.get(collect).map(|record| record.state))).or_default() += 1;
    }
    println!("collects: {collect_states:?}");
    let in_flight_landed = unanswered.iter().filter(|payment| stored.contains_key(payment)).count();
    println!("of the {} unanswered, {in_flight_landed} had been recorded", unanswered.len());
    assert_positions_match(&test, &book, &stored).await;

    // Retrying every unanswered automatic payment and refund completes it exactly once, whether
    // or not it had committed before the kill; retrying an answered one changes nothing.
    let mut payers: BTreeMap<&str, Psp> = BTreeMap::new();
    for psp in ["bank-a", "bank-b"] {
        payers.insert(psp, test.psp(psp).await);
    }
    let answered_sample = book.iter().filter(|(_, attempt)| attempt.answer.is_some()).take(50).map(|(id, _)| *id);
    for payment in unanswered.iter().copied().chain(answered_sample) {
        let attempt = &book[&payment];
        if attempt.waits() {
            continue; // ended above (a collect past its expiry cannot be requested again)
        }
        // Ids in order: a refund (lane 6) is retried after the payment it refunds (lane 1).
        let payer = payers.get_mut(attempt.payer).expect("an automatic payer");
        let state = attempt.retry(payment, payer).await;
        assert_eq!(state, PaymentState::Completed as i32, "payment {payment:x} completes on retry");
    }
    let stored = lookup(&test, &ids).await;
    for (payment, attempt) in &book {
        let state = stored.get(payment).map(|record| record.state);
        let allowed = may_end(attempt);
        assert!(
            allowed.iter().any(|allowed| allowed.map(|allowed| allowed as i32) == state),
            "{payment:x} ended {} ({allowed:?} expected)",
            state_name(state)
        );
    }
    assert_positions_match(&test, &book, &stored).await;

    // Refunds: each payment's refunded amount is exactly its completed refunds, never above it.
    let mut refunded: BTreeMap<u128, u64> = BTreeMap::new();
    for attempt in book.values() {
        if let Kind::Refund { original } = attempt.kind {
            *refunded.entry(original).or_default() += attempt.amount; // every refund completed, above
        }
    }
    for (original, sum) in &refunded {
        let record = &stored[original];
        assert_eq!(record.refunded_amount_minor, *sum, "payment {original:x}'s refunds");
        assert!(record.refunded_amount_minor <= record.amount_minor, "payment {original:x} over-refunded");
    }
    assert!(!refunded.is_empty(), "refunds were made");

    // Each PSP is told exactly what happened, once, across the crashes.
    let mut expected = expected_events(&stored);
    for psp in ["bank-a", "bank-b", "bank-c"] {
        let before = std::mem::take(&mut *delivered[psp].lock().expect("delivered"));
        let told = told_across_the_crashes(&test, psp, before).await;
        assert_eq!(told, expected.remove(psp).unwrap_or_default(), "{psp} is told exactly what happened");
    }
}
