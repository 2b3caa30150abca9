//! The load models. Open loop: operations are due at fixed intervals from the start (`--rate`) and
//! each one's latency is counted from when it was due, so a switch that stalls is charged for every
//! request that waited (no coordinated omission). Closed loop: a fixed number of workers each send,
//! wait and send again. Both stop at the deadline or when told to, then drain what is in flight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::{self, PaymentState, Reason};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::leader::{in_doubt, Leader, FAILOVER_WAIT};
use crate::stats::{Outcome, Recorder, Sent};
use crate::submit::{PspClients, Submission};
use crate::workload::{IdSpace, Kind, Mix, Parties, Skew, Traffic};

/// Completed payments kept for refunds and status checks (newest kept, oldest dropped).
const RECENT_MAX: usize = 65_536;

/// How the load is offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Model {
    Open { rate: f64 },
    Closed { concurrency: usize },
}

/// Everything the drivers share.
pub struct Load {
    pub traffic: Traffic,
    pub mix: Mix,
    pub ids: IdSpace,
    pub currency: String,
    pub submission: Submission,
    pub clients: Arc<Vec<PspClients>>,
    pub recorder: Recorder,
    pub call_timeout: Duration,
    /// A replicated switch's leader, followed: operations in doubt are sent again after a
    /// failover (`None`: one node, every answer is final).
    pub leader: Option<Arc<Leader>>,
    /// Open loop: most operations in flight before new ones are counted as overruns.
    pub in_flight_max: usize,
    pub seed: u64,
    sequence: AtomicU64,
    recent: Mutex<VecDeque<Recent>>,
    /// Whether the mix refunds or asks about payments: only then is `recent` kept, so a run of
    /// plain payments takes no shared lock per completed payment.
    keep_recent: bool,
    stopping: AtomicBool,
    /// The in-flight bound: one for the whole run, except in the fairness run (`Skew::Flood`),
    /// where the flooding PSP and the others each have their own, as separate banks' clients do:
    /// the flood must not use up the bystanders' bound inside loadgen and count against the switch.
    in_flight: Vec<Arc<Semaphore>>,
}

/// A completed payment that can be refunded or asked about.
#[derive(Clone, Copy)]
struct Recent {
    id: u128,
    payer_psp: u32,
    payee_psp: u32,
    amount: u64,
}

/// One operation, drawn.
enum Op {
    Pay(u128, Parties),
    Collect(u128, Parties),
    Refund(u128, Recent),
    Status(Recent),
}

impl Op {
    /// The PSP that sends the operation to the switch.
    fn sender_psp(&self) -> u32 {
        match self {
            Op::Pay(_, parties) => parties.payer_psp,
            // A collect is requested by the payee's PSP, a refund sent by the original payee's.
            Op::Collect(_, parties) => parties.payee_psp,
            Op::Refund(_, original) => original.payee_psp,
            Op::Status(recent) => recent.payer_psp,
        }
    }
}

impl Load {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        traffic: Traffic,
        mix: Mix,
        ids: IdSpace,
        currency: String,
        submission: Submission,
        clients: Arc<Vec<PspClients>>,
        call_timeout: Duration,
        leader: Option<Arc<Leader>>,
        in_flight_max: usize,
        seed: u64,
    ) -> Load {
        let groups = if matches!(traffic.skew(), Skew::Flood { .. }) { 2 } else { 1 };
        Load {
            traffic,
            mix,
            ids,
            currency,
            submission,
            clients,
            recorder: Recorder::new(Instant::now()),
            call_timeout,
            leader,
            in_flight_max,
            seed,
            // Low ids are the funding transfers of this run.
            sequence: AtomicU64::new(1 << 20),
            keep_recent: mix.weight(Kind::Refund) > 0 || mix.weight(Kind::Status) > 0,
            recent: Mutex::new(VecDeque::new()),
            stopping: AtomicBool::new(false),
            in_flight: (0..groups).map(|_| Arc::new(Semaphore::new(in_flight_max))).collect(),
        }
    }

    /// The in-flight bound an operation counts against: its sending PSP's group.
    fn bound(&self, psp: u32) -> &Arc<Semaphore> {
        let group = usize::from(psp != 0).min(self.in_flight.len() - 1);
        &self.in_flight[group]
    }

    /// Asks the drivers to stop sending (the run's end, Ctrl-C, or the abort rule).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().map(|bound| self.in_flight_max - bound.available_permits()).sum()
    }

    fn next_id(&self) -> u128 {
        self.ids.id(self.sequence.fetch_add(1, Ordering::Relaxed))
    }

    fn draw(&self, rng: &mut SmallRng) -> Op {
        let kind = self.mix.pick(rng);
        let mut recent = |take: bool| {
            let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if take {
                recent.pop_front()
            } else if recent.is_empty() {
                None
            } else {
                let index = rng.random_range(0..recent.len());
                recent.get(index).copied()
            }
        };
        match kind {
            Kind::Collect => Op::Collect(self.next_id(), self.traffic.draw(rng)),
            // Each payment is refunded at most once (the oldest first), by half its amount, so a
            // refund never exceeds what is left; with nothing completed yet, a payment instead.
            Kind::Refund => match recent(true) {
                Some(original) => Op::Refund(self.next_id(), original),
                None => Op::Pay(self.next_id(), self.traffic.draw(rng)),
            },
            Kind::Status => match recent(false) {
                Some(payment) => Op::Status(payment),
                None => Op::Pay(self.next_id(), self.traffic.draw(rng)),
            },
            Kind::Pay => Op::Pay(self.next_id(), self.traffic.draw(rng)),
        }
    }

    fn remember(&self, id: u128, parties: &Parties) {
        if !self.keep_recent {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if recent.len() == RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back(Recent {
            id,
            payer_psp: parties.payer_psp,
            payee_psp: parties.payee_psp,
            amount: parties.amount,
        });
    }

    fn pay_request(&self, id: u128, parties: &Parties) -> proto::PayRequest {
        let population = &self.traffic.population;
        proto::PayRequest {
            payment_id: id.to_be_bytes().to_vec(),
            payer_alias: population.alias(parties.payer),
            payee_alias: population.alias(parties.payee),
            amount_minor: parties.amount,
            currency: self.currency.clone(),
            note: String::new(),
            deadline_unix_ms: 0,
        }
    }

    fn sent(id: u128, kind: Kind, payer_psp: u32, payee_psp: u32, amount: u64, outcome: Outcome) -> Sent {
        Sent { id, kind, payer_psp: payer_psp as u16, payee_psp: payee_psp as u16, amount, outcome }
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded("loadgen's call timeout passed")),
        }
    }

    /// One unary call as PSP `psp` (any of its connections), made until it has a final answer.
    async fn unary<Q: Clone, T, Fut>(
        &self,
        psp: u32,
        request: Q,
        call: impl Fn(PaymentServiceClient<Channel>, Q) -> Fut,
    ) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let clients = &self.clients[psp as usize];
        self.answered(request, |request| self.timed(call(clients.client(), request))).await
    }

    /// Makes `call` with `request` until it has a final answer. With one node, the first answer is
    /// final and the request is sent as it is. Following a replicated switch's leader, an answer in
    /// doubt (`leader::in_doubt`: no leader, a dead connection, outcome unknown) waits for a leader
    /// to answer and a copy of the same request, with the same ids, is sent again, for up to
    /// `FAILOVER_WAIT`: the switch never executes an id twice, and the operation's latency
    /// includes the failover it sat through.
    async fn answered<Q: Clone, T, F, Fut>(&self, request: Q, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(Q) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let Some(leader) = &self.leader else { return call(request).await };
        let give_up = Instant::now() + FAILOVER_WAIT;
        loop {
            let generation = leader.generation();
            let answer = call(request.clone()).await;
            match &answer {
                Err(status) if in_doubt(status) && Instant::now() < give_up => {
                    if leader.lost(generation).await.is_err() {
                        return answer;
                    }
                    leader.resending();
                }
                _ => return answer,
            }
        }
    }

    fn result_outcome(answer: &Result<proto::PaymentResult, tonic::Status>) -> Outcome {
        match answer {
            Ok(result) => Outcome::State(
                PaymentState::try_from(result.state).unwrap_or(PaymentState::Unspecified),
                Reason::try_from(result.reason).unwrap_or(Reason::Unspecified),
            ),
            Err(status) => Outcome::from_status(status),
        }
    }

    /// Runs one operation (payments over the run's submission mode, except batches) and records it.
    async fn execute(&self, op: Op, intended: Instant) {
        match op {
            Op::Pay(id, parties) => {
                let request = self.pay_request(id, &parties);
                let clients = &self.clients[parties.payer_psp as usize];
                let answer = self
                    .answered(request, |request| async move {
                        if clients.streams() {
                            clients.pay_streamed(request, self.call_timeout).await
                        } else {
                            self.timed(clients.client().pay(request)).await
                        }
                    })
                    .await;
                let outcome = Self::result_outcome(&answer);
                if matches!(outcome, Outcome::State(PaymentState::Completed, _)) {
                    self.remember(id, &parties);
                }
                let sent = Self::sent(id, Kind::Pay, parties.payer_psp, parties.payee_psp, parties.amount, outcome);
                self.recorder.record(Kind::Pay, [(intended, outcome, Some(sent))]);
            }
            Op::Collect(id, parties) => {
                let population = &self.traffic.population;
                let request = proto::RequestCollectRequest {
                    collect_id: id.to_be_bytes().to_vec(),
                    payee_alias: population.alias(parties.payee),
                    payer_alias: population.alias(parties.payer),
                    amount_minor: parties.amount,
                    currency: self.currency.clone(),
                    note: String::new(),
                    expiry_unix_ms: 0,
                };
                let answer = self
                    .unary(parties.payee_psp, request, |mut client, request| async move {
                        client.request_collect(request).await
                    })
                    .await;
                let outcome = Self::result_outcome(&answer);
                let sent = Self::sent(id, Kind::Collect, parties.payer_psp, parties.payee_psp, parties.amount, outcome);
                self.recorder.record(Kind::Collect, [(intended, outcome, Some(sent))]);
            }
            Op::Refund(id, original) => {
                let amount = (original.amount / 2).max(1);
                let request = proto::RefundRequest {
                    refund_id: id.to_be_bytes().to_vec(),
                    original_payment_id: original.id.to_be_bytes().to_vec(),
                    amount_minor: amount,
                    currency: self.currency.clone(),
                    note: String::new(),
                };
                let answer =
                    self.unary(original.payee_psp, request, |mut client, request| async move {
                        client.refund(request).await
                    })
                    .await;
                let outcome = Self::result_outcome(&answer);
                // A refund moves money back: the original payee pays the original payer.
                let sent = Self::sent(id, Kind::Refund, original.payee_psp, original.payer_psp, amount, outcome);
                self.recorder.record(Kind::Refund, [(intended, outcome, Some(sent))]);
            }
            Op::Status(payment) => {
                let request = proto::GetPaymentStatusRequest { payment_id: payment.id.to_be_bytes().to_vec() };
                let answer = self
                    .unary(payment.payer_psp, request, |mut client, request| async move {
                        client.get_payment_status(request).await
                    })
                    .await;
                let outcome = match answer {
                    Ok(_) => Outcome::Found,
                    Err(status) => Outcome::from_status(&status),
                };
                self.recorder.record(Kind::Status, [(intended, outcome, None)]);
            }
        }
    }

    /// One PayBatch of a single payer PSP; every item keeps its own due time.
    async fn execute_batch(&self, psp: u32, items: Vec<(Instant, u128, Parties)>) {
        let payments = items.iter().map(|(_, id, parties)| self.pay_request(*id, parties)).collect();
        let answer = self
            .unary(psp, proto::PayBatchRequest { payments }, |mut client, request| async move {
                client.pay_batch(request).await
            })
            .await;
        let outcomes: Vec<Outcome> = match &answer {
            Ok(response) if response.results.len() == items.len() => response
                .results
                .iter()
                .map(|result| {
                    Outcome::State(
                        PaymentState::try_from(result.state).unwrap_or(PaymentState::Unspecified),
                        Reason::try_from(result.reason).unwrap_or(Reason::Unspecified),
                    )
                })
                .collect(),
            Ok(_) => vec![Outcome::Unanswered(tonic::Code::Internal); items.len()],
            Err(status) => vec![Outcome::from_status(status); items.len()],
        };
        let records: Vec<_> = items
            .iter()
            .zip(outcomes)
            .map(|((intended, id, parties), outcome)| {
                if matches!(outcome, Outcome::State(PaymentState::Completed, _)) {
                    self.remember(*id, parties);
                }
                let sent = Self::sent(*id, Kind::Pay, parties.payer_psp, parties.payee_psp, parties.amount, outcome);
                (*intended, outcome, Some(sent))
            })
            .collect();
        self.recorder.record(Kind::Pay, records);
    }
}

/// Runs the load for `duration` (or until stopped), then waits for what is in flight, at most the
/// call timeout. Returns when the last answer arrived (or the drain gave up).
pub async fn run(load: Arc<Load>, model: Model, duration: Duration) -> Instant {
    let deadline = load.recorder.start() + duration;
    match model {
        Model::Open { rate } => open_loop(&load, rate, deadline).await,
        Model::Closed { concurrency } => closed_loop(&load, concurrency, deadline).await,
    }
    // Drain: every permit back means every operation answered or timed out.
    let permits = load.in_flight_max as u32;
    let drained = async {
        for bound in &load.in_flight {
            let _ = bound.clone().acquire_many_owned(permits).await;
        }
    };
    // Following a leader, an operation may sit through a failover before its answer.
    let resending = if load.leader.is_some() { FAILOVER_WAIT } else { Duration::ZERO };
    let _ = tokio::time::timeout(load.call_timeout + resending + Duration::from_secs(2), drained).await;
    Instant::now()
}

/// How often the open loop sends what has come due. Each tick's operations go out together: on
/// two shared cores a burst per tick is cheaper for both sides than a wake-up per operation (a
/// 100 µs tick cost loadgen a third more CPU and made the switch's p50 and p90 worse;
/// BENCHMARKS.md).
const PACING_TICK: Duration = Duration::from_millis(1);

/// The open loop's clock runs on a thread of its own that sleeps to each tick's absolute time.
/// tokio's timer wheel rounds a timer up to the next whole millisecond and fires from the
/// runtime's millisecond epoll timeout, so a 1 ms interval ticked 1-2 ms after the operations
/// were due, and that lateness was in every operation's latency (it is counted from the due
/// time). A thread's sleep wakes within tens of microseconds. Sending stays on the runtime.
async fn open_loop(load: &Arc<Load>, rate: f64, deadline: Instant) {
    let runtime = tokio::runtime::Handle::current();
    let load = Arc::clone(load);
    // A panic in the pacer is a loadgen bug; the run then just stops offering load.
    let _ = tokio::task::spawn_blocking(move || pace(&load, &runtime, rate, deadline)).await;
}

fn pace(load: &Arc<Load>, runtime: &tokio::runtime::Handle, rate: f64, deadline: Instant) {
    let start = load.recorder.start();
    let interval = 1.0 / rate;
    let mut rng = SmallRng::seed_from_u64(load.seed);
    let mut due: u64 = 0;
    let mut tick = Instant::now();
    loop {
        tick += PACING_TICK;
        let now = Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        } else {
            // Late (the thread was not scheduled): no catch-up burst of ticks, the next one is
            // a tick from now; what came due meanwhile goes out now, charged from its due time.
            tick = now;
        }
        let now = Instant::now();
        if now >= deadline || load.stopping() {
            break;
        }
        let target = (now.duration_since(start).as_secs_f64() / interval) as u64;
        let mut ops = Vec::with_capacity(target.saturating_sub(due) as usize);
        while due < target {
            let intended = start + Duration::from_secs_f64(due as f64 * interval);
            due += 1;
            load.recorder.sending(intended, 1);
            ops.push((intended, load.draw(&mut rng)));
        }
        if !ops.is_empty() {
            let load = Arc::clone(load);
            runtime.spawn(async move { send_due(&load, ops) });
        }
    }
}

/// Sends one tick's operations: each on its own task, or, for `--submit batch`, grouped per payer
/// PSP into batches of at most the batch size.
fn send_due(load: &Arc<Load>, ops: Vec<(Instant, Op)>) {
    let batch = match load.submission {
        Submission::Batch(size) => Some(size),
        _ => None,
    };
    let mut pending: Vec<Vec<(Instant, u128, Parties)>> = vec![Vec::new(); load.clients.len()];
    for (intended, op) in ops {
        match (batch, op) {
            (Some(size), Op::Pay(id, parties)) => {
                let group = &mut pending[parties.payer_psp as usize];
                group.push((intended, id, parties));
                if group.len() >= size {
                    let items = std::mem::take(group);
                    spawn_batch(load, parties.payer_psp, items);
                }
            }
            (_, op) => spawn_one(load, op, intended),
        }
    }
    for (psp, group) in pending.iter_mut().enumerate() {
        if !group.is_empty() {
            spawn_batch(load, psp as u32, std::mem::take(group));
        }
    }
}

fn spawn_one(load: &Arc<Load>, op: Op, intended: Instant) {
    let Ok(permit) = load.bound(op.sender_psp()).clone().try_acquire_owned() else {
        overrun(load, &op, intended);
        return;
    };
    let load = load.clone();
    tokio::spawn(async move {
        load.execute(op, intended).await;
        drop(permit);
    });
}

fn spawn_batch(load: &Arc<Load>, psp: u32, items: Vec<(Instant, u128, Parties)>) {
    let Ok(permit) = load.bound(psp).clone().try_acquire_many_owned(items.len() as u32) else {
        for (intended, id, parties) in items {
            overrun(load, &Op::Pay(id, parties), intended);
        }
        return;
    };
    let load = load.clone();
    tokio::spawn(async move {
        load.execute_batch(psp, items).await;
        drop(permit);
    });
}

/// An operation loadgen could not even send: recorded, never silently skipped.
fn overrun(load: &Load, op: &Op, intended: Instant) {
    let (kind, sent) = match op {
        // Never sent, so the switch must not have it: the verification checks that too.
        Op::Pay(id, parties) => (
            Kind::Pay,
            Some(Load::sent(*id, Kind::Pay, parties.payer_psp, parties.payee_psp, parties.amount, Outcome::Overrun)),
        ),
        Op::Collect(id, parties) => (
            Kind::Collect,
            Some(Load::sent(
                *id,
                Kind::Collect,
                parties.payer_psp,
                parties.payee_psp,
                parties.amount,
                Outcome::Overrun,
            )),
        ),
        Op::Refund(id, original) => (
            Kind::Refund,
            Some(Load::sent(
                *id,
                Kind::Refund,
                original.payee_psp,
                original.payer_psp,
                (original.amount / 2).max(1),
                Outcome::Overrun,
            )),
        ),
        Op::Status(_) => (Kind::Status, None),
    };
    load.recorder.record(kind, [(intended, Outcome::Overrun, sent)]);
}

async fn closed_loop(load: &Arc<Load>, concurrency: usize, deadline: Instant) {
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let load = load.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(load.seed.wrapping_add(worker as u64 + 1));
            while Instant::now() < deadline && !load.stopping() {
                let Ok(permit) = load.in_flight[0].clone().acquire_owned().await else { return };
                match load.submission {
                    Submission::Batch(size) => batch_round(&load, &mut rng, size).await,
                    _ => {
                        let now = Instant::now();
                        load.recorder.sending(now, 1);
                        let op = load.draw(&mut rng);
                        load.execute(op, now).await;
                    }
                }
                drop(permit);
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

/// One closed-loop round in batch mode: `size` operations, payments grouped by payer PSP into one
/// PayBatch each, everything sent at once and awaited together.
async fn batch_round(load: &Arc<Load>, rng: &mut SmallRng, size: usize) {
    let now = Instant::now();
    load.recorder.sending(now, size as u64);
    let mut groups: Vec<Vec<(Instant, u128, Parties)>> = vec![Vec::new(); load.clients.len()];
    let mut others = Vec::new();
    for _ in 0..size {
        match load.draw(rng) {
            Op::Pay(id, parties) => groups[parties.payer_psp as usize].push((now, id, parties)),
            op => others.push(op),
        }
    }
    let mut calls = Vec::new();
    for (psp, items) in groups.into_iter().enumerate().filter(|(_, items)| !items.is_empty()) {
        let load = load.clone();
        calls.push(tokio::spawn(async move { load.execute_batch(psp as u32, items).await }));
    }
    for op in others {
        let load = load.clone();
        calls.push(tokio::spawn(async move { load.execute(op, now).await }));
    }
    for call in calls {
        let _ = call.await;
    }
}
