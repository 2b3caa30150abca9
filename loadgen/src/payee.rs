//! Simulated PSP back offices: each PSP keeps its event stream open like a real one, answers credit
//! requests (confirmed mode) and collect requests with a configurable decline rate and think time,
//! acknowledges every event in batches, and remembers collect outcomes for the verification.
//! Across reconnections (a restart, a failover to a new leader) each PSP resumes from what it
//! acknowledged, processes each event once, and checks the stream's promises (events.proto): no
//! gap in the sequence, nothing it acknowledged sent again; what broke them is for the verification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switch::proto::event_service_client::EventServiceClient;
use switch::proto::subscribe_request::Message as Outgoing;
use switch::proto::subscribe_response::Message as Incoming;
use switch::proto::{self, event, Decision, DeclineReason, PaymentKind, PaymentState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::setup::Psp;

/// Acknowledge after `Behaviour::ack_every` events or after this long without an
/// acknowledgement, so a quiet stream is acknowledged too.
const ACK_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Share of credit and collect requests declined, 0..=1.
    pub decline_rate: f64,
    /// How long the simulated back office takes to decide.
    pub think_time: Duration,
    /// Acknowledge after this many events (the switch sends at most EVENT_WINDOW_MAX = 8,192
    /// beyond the last acknowledgement): 1,024 by default; 1 is a PSP acknowledging each event.
    pub ack_every: u64,
}

/// What the simulators saw, shared with the verification.
#[derive(Default)]
pub struct PayeeStats {
    pub events: AtomicU64,
    pub credit_requests: AtomicU64,
    pub collect_requests: AtomicU64,
    pub declined: AtomicU64,
    /// Decisions the switch refused (e.g. after the deadline).
    pub late_decisions: AtomicU64,
    pub reconnects: AtomicU64,
    /// Events sent again after a reconnection that this PSP had received but not acknowledged
    /// (allowed: processed once, skipped the second time).
    pub redelivered: AtomicU64,
    /// Broken promises of the event streams, e.g. "lg-03: event 1,205 after 1,198 (a gap)".
    pub stream_problems: Mutex<Vec<String>>,
    /// Why the last event stream ended, for the report.
    pub last_disconnect: Mutex<Option<String>>,
    /// Final states of collects, from PaymentOutcome events to the requesting PSP.
    pub collect_outcomes: Mutex<HashMap<u128, PaymentState>>,
    stop: AtomicBool,
}

impl PayeeStats {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn collect_outcome(&self, id: u128) -> Option<PaymentState> {
        self.collect_outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&id).copied()
    }

    pub fn collect_outcomes_seen(&self) -> usize {
        self.collect_outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

/// Starts one simulator per PSP; they run until `stats.stop()`.
pub async fn start(psps: &[Psp], behaviour: Behaviour, seed: u64) -> anyhow::Result<Arc<PayeeStats>> {
    let stats = Arc::new(PayeeStats::default());
    for psp in psps {
        let client = EventServiceClient::new(psp.channels[psp.channels.len() - 1].clone());
        let (stats, id) = (stats.clone(), psp.id.clone());
        let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(psp.index) << 32));
        // The first connection is made here so that a refused subscription fails the run at once.
        let first = subscribe(client.clone(), 0)
            .await
            .map_err(|status| anyhow::anyhow!("subscribing to {id}'s events: {}", crate::connect::describe(&status)))?;
        tokio::spawn(async move {
            let mut connection = Some(first);
            let mut cursor =
                Cursor { psp: id, started: false, processed: 0, acknowledged: 0, acknowledged_at_hello: 0 };
            while !stats.stop.load(Ordering::Acquire) {
                let (sender, inbound) = match connection.take() {
                    Some(connection) => connection,
                    None => match subscribe(client.clone(), cursor.acknowledged).await {
                        Ok(connection) => connection,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                cursor.acknowledged_at_hello = cursor.acknowledged;
                serve(&stats, &mut rng, behaviour, &mut cursor, sender, inbound).await;
                if !stats.stop.load(Ordering::Acquire) {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    Ok(stats)
}

type Connection = (mpsc::Sender<proto::SubscribeRequest>, tonic::Streaming<proto::SubscribeResponse>);

/// Where one PSP's event stream stands, across its connections.
struct Cursor {
    psp: String,
    /// Whether an event has come yet: the first one sets where the sequence starts (a PSP of an
    /// earlier run against the same switch resumes where that run acknowledged).
    started: bool,
    /// The highest sequence processed (decided, recorded).
    processed: u64,
    /// The highest sequence acknowledged to the switch.
    acknowledged: u64,
    /// What the current connection's Hello said was acknowledged: nothing at or below it may come.
    acknowledged_at_hello: u64,
}

impl Cursor {
    /// Checks one event's sequence against the stream's promises; whether to process it (false:
    /// seen before, sent again after a reconnection).
    fn admit(&mut self, stats: &PayeeStats, sequence: u64) -> bool {
        let problem = |text: String| {
            stats.stream_problems.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(text);
        };
        if !self.started {
            self.started = true;
            self.processed = sequence.saturating_sub(1);
        }
        if sequence <= self.acknowledged_at_hello {
            problem(format!("{}: event {sequence} came again after it was acknowledged", self.psp));
            return false;
        }
        if sequence <= self.processed {
            stats.redelivered.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if sequence != self.processed + 1 {
            problem(format!("{}: event {sequence} after {} (a gap)", self.psp, self.processed));
        }
        self.processed = sequence;
        true
    }
}

/// Subscribes, resuming after `acknowledged` (0 the first time: "everything you have for me").
async fn subscribe(
    mut client: EventServiceClient<tonic::transport::Channel>,
    acknowledged: u64,
) -> Result<Connection, tonic::Status> {
    let (sender, receiver) = mpsc::channel(4_096);
    let hello = proto::Hello { last_acknowledged_sequence: acknowledged };
    let _ = sender.send(proto::SubscribeRequest { message: Some(Outgoing::Hello(hello)) }).await;
    let inbound = client.subscribe(ReceiverStream::new(receiver)).await?.into_inner();
    Ok((sender, inbound))
}

fn id_of(bytes: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(bytes.try_into().ok()?))
}

async fn serve(
    stats: &PayeeStats,
    rng: &mut SmallRng,
    behaviour: Behaviour,
    cursor: &mut Cursor,
    sender: mpsc::Sender<proto::SubscribeRequest>,
    mut inbound: tonic::Streaming<proto::SubscribeResponse>,
) {
    let mut ticker = tokio::time::interval(ACK_INTERVAL);
    loop {
        if stats.stop.load(Ordering::Acquire) {
            return;
        }
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = ticker.tick() => {
                acknowledge(cursor, &sender).await;
                continue;
            }
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => return note_end(stats, "the switch ended the event stream".into()),
            Err(status) => return note_end(stats, crate::connect::describe(&status)),
        };
        match message.message {
            Some(Incoming::Event(event)) => {
                stats.events.fetch_add(1, Ordering::Relaxed);
                if !cursor.admit(stats, event.sequence) {
                    continue;
                }
                if let Some(decision) = decide(stats, rng, behaviour, event.kind) {
                    if behaviour.think_time.is_zero() {
                        send(&sender, decision).await;
                    } else {
                        let (sender, think) = (sender.clone(), behaviour.think_time);
                        tokio::spawn(async move {
                            tokio::time::sleep(think).await;
                            send(&sender, decision).await;
                        });
                    }
                }
                if cursor.processed >= cursor.acknowledged + behaviour.ack_every {
                    acknowledge(cursor, &sender).await;
                }
            }
            Some(Incoming::DecisionReceipt(receipt)) if receipt.status_code != 0 => {
                stats.late_decisions.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Acknowledges everything processed, if anything is new since the last acknowledgement.
async fn acknowledge(cursor: &mut Cursor, sender: &mpsc::Sender<proto::SubscribeRequest>) {
    if cursor.processed > cursor.acknowledged
        && send(sender, Outgoing::Ack(proto::Ack { sequence: cursor.processed })).await
    {
        cursor.acknowledged = cursor.processed;
    }
}

fn note_end(stats: &PayeeStats, why: String) {
    *stats.last_disconnect.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(why);
}

async fn send(sender: &mpsc::Sender<proto::SubscribeRequest>, message: Outgoing) -> bool {
    sender.send(proto::SubscribeRequest { message: Some(message) }).await.is_ok()
}

/// The back office's answer to an event, if it needs one.
fn decide(stats: &PayeeStats, rng: &mut SmallRng, behaviour: Behaviour, kind: Option<event::Kind>) -> Option<Outgoing> {
    let mut verdict = || {
        if behaviour.decline_rate > 0.0 && rng.random_bool(behaviour.decline_rate.min(1.0)) {
            stats.declined.fetch_add(1, Ordering::Relaxed);
            (Decision::Decline as i32, DeclineReason::CustomerLimitExceeded as i32)
        } else {
            (Decision::Accept as i32, DeclineReason::Unspecified as i32)
        }
    };
    match kind? {
        event::Kind::CreditRequest(request) => {
            stats.credit_requests.fetch_add(1, Ordering::Relaxed);
            let (decision, decline_reason) = verdict();
            Some(Outgoing::CreditDecision(proto::CreditDecision {
                payment_id: request.payment_id,
                decision,
                decline_reason,
            }))
        }
        event::Kind::CollectRequest(request) => {
            stats.collect_requests.fetch_add(1, Ordering::Relaxed);
            let (decision, decline_reason) = verdict();
            Some(Outgoing::CollectDecision(proto::CollectDecision {
                collect_id: request.collect_id,
                decision,
                decline_reason,
            }))
        }
        event::Kind::PaymentOutcome(outcome) => {
            if outcome.kind == PaymentKind::Collect as i32 {
                if let (Some(id), Ok(state)) = (id_of(&outcome.payment_id), PaymentState::try_from(outcome.state)) {
                    stats.collect_outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id, state);
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor { psp: "lg-01".into(), started: false, processed: 0, acknowledged: 0, acknowledged_at_hello: 0 }
    }

    fn problems(stats: &PayeeStats) -> Vec<String> {
        stats.stream_problems.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    #[test]
    fn a_stream_resumed_after_a_failover_is_checked_for_gaps_and_acknowledged_repeats() {
        let stats = PayeeStats::default();
        let mut cursor = cursor();
        // An earlier run acknowledged up to 40: this one starts at 41.
        assert!(cursor.admit(&stats, 41) && cursor.admit(&stats, 42) && cursor.admit(&stats, 43));
        cursor.acknowledged = 42;
        // Reconnected (a new leader) saying 42 was acknowledged: 43 again is a redelivery, skipped.
        cursor.acknowledged_at_hello = cursor.acknowledged;
        assert!(!cursor.admit(&stats, 43));
        assert!(cursor.admit(&stats, 44));
        assert_eq!(stats.redelivered.load(Ordering::Relaxed), 1);
        assert!(problems(&stats).is_empty(), "{:?}", problems(&stats));
        // An acknowledged event again, and a gap: both are broken promises.
        assert!(!cursor.admit(&stats, 42));
        assert!(cursor.admit(&stats, 47));
        assert_eq!(
            problems(&stats),
            vec!["lg-01: event 42 came again after it was acknowledged", "lg-01: event 47 after 44 (a gap)"]
        );
    }
}
