//! `EventService.Subscribe`: one bidirectional stream per PSP carrying its outbox.
//!
//! Protocol (events.proto): `Hello` first; the switch answers `Welcome` and then every event after
//! the acknowledged position, in order, at most `EVENT_WINDOW_MAX` beyond it; `Ack`s are recorded
//! durably and acknowledged events never re-sent; a newer stream of the same PSP ends the older
//! with ABORTED. Credit and collect decisions are applied on tasks of their own, up to
//! `DECISIONS_IN_FLIGHT_MAX` at once, each answered with a receipt when durable. `Ack`s are
//! written by a task of their own too, coalesced: the stream never waits for one.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::confirm::Resolution;
use crate::core::Switch;
use crate::events::{self, Outbox, EVENT_WINDOW_MAX};
use crate::proto::event_service_server::EventService;
use crate::proto::subscribe_request::Message as Incoming;
use crate::proto::subscribe_response::Message as Outgoing;
use crate::proto::{self, Reason};
use crate::reason::Refusal;

/// Responses buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 256;
/// Events read from storage per round.
const READ_CHUNK: usize = 512;
/// Credit and collect decisions of one stream applied at once (`DECISIONS_IN_FLIGHT_MAX`). Each
/// waits for its ledger commit on a task of its own, so the decisions a PSP sends back to back
/// share group commits; applied one after another, each took a whole commit round trip, and a
/// confirming PSP could not decide faster than ~550 payments/s. At the bound the stream stops
/// reading.
pub const DECISIONS_IN_FLIGHT_MAX: usize = 4_096;

pub struct Events {
    pub switch: Arc<Switch>,
}

type Responses = mpsc::Sender<Result<proto::SubscribeResponse, Status>>;

#[tonic::async_trait]
impl EventService for Events {
    type SubscribeStream = ReceiverStream<Result<proto::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<proto::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let psp = auth::psp(&request)?;
        if self.switch.participants.get(&psp).is_none() {
            return Err(
                Refusal::new(Reason::CallerNotRegistered, format!("{psp} is not a registered participant")).into()
            );
        }
        let mut incoming = request.into_inner();
        let hello = match incoming.message().await? {
            Some(proto::SubscribeRequest { message: Some(Incoming::Hello(hello)) }) => hello,
            _ => return Err(Refusal::new(Reason::StreamProtocolViolation, "the first message must be Hello").into()),
        };
        let ledger = &self.switch.ledger;
        let outbox = self.switch.events.outbox(ledger, &psp).map_err(crate::core::ledger_refusal)?;
        let last = outbox.appended.load(Ordering::Acquire);
        if hello.last_acknowledged_sequence > last {
            let message = format!("acknowledged {} but the last event is {last}", hello.last_acknowledged_sequence);
            return Err(Refusal::new(Reason::SequenceOutOfRange, message).into());
        }
        // What the PSP says it acknowledged, or what a stream it replaces was told and has not
        // recorded yet, is durable before the first event is sent.
        outbox.ack_requested.fetch_max(hello.last_acknowledged_sequence, Ordering::AcqRel);
        acknowledge(&self.switch, &psp, &outbox).await?;
        let epoch = outbox.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        // A stream this one replaces is woken to notice.
        outbox.notify.notify_waiters();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let welcome = proto::Welcome {
            psp_id: psp.clone(),
            acknowledged_sequence: outbox.acknowledged.load(Ordering::Acquire),
            last_sequence: last,
        };
        let _ = sender.send(Ok(response(Outgoing::Welcome(welcome)))).await;
        outbox.streams.fetch_add(1, Ordering::AcqRel);
        let decisions = Arc::new(Semaphore::new(DECISIONS_IN_FLIGHT_MAX));
        let acks = start_acknowledging(Arc::clone(&self.switch), psp.clone(), Arc::clone(&outbox), sender.clone());
        let stream = Stream { switch: Arc::clone(&self.switch), psp, outbox, epoch, sender, decisions, acks };
        tokio::spawn(stream.run(incoming));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

fn response(message: Outgoing) -> proto::SubscribeResponse {
    proto::SubscribeResponse { message: Some(message) }
}

/// Records durably the highest `Ack` any stream of the PSP received (`Outbox::ack_requested`),
/// unless it already is. Returns once it is durable.
async fn acknowledge(switch: &Switch, psp: &str, outbox: &Outbox) -> Result<(), Refusal> {
    if outbox.ack_requested.load(Ordering::Acquire) <= outbox.acknowledged.load(Ordering::Acquire) {
        return Ok(());
    }
    let _one_at_a_time = outbox.ack_writes.lock().await;
    // The latest by now: `Ack`s that arrived during the previous write share this one.
    let sequence = outbox.ack_requested.load(Ordering::Acquire);
    if sequence > outbox.acknowledged.load(Ordering::Acquire) {
        switch.submit(vec![events::acknowledgement(psp, sequence)]).await?;
        outbox.acknowledged.fetch_max(sequence, Ordering::AcqRel);
        outbox.notify.notify_waiters(); // the window moved: the stream may send more
    }
    Ok(())
}

/// Starts the task that records a stream's acknowledgements, woken through the returned sender:
/// it writes the latest one received, waits for that commit, then writes whatever the latest is
/// by then. Written inline, each `Ack` held up the stream for a commit round trip, so a PSP
/// acknowledging every event had its decisions read (and its events sent) one commit at a time;
/// coalesced, any rate of `Ack`s costs at most one write per commit. Ends when the stream drops
/// the sender, after writing what it last received.
fn start_acknowledging(switch: Arc<Switch>, psp: String, outbox: Arc<Outbox>, sender: Responses) -> watch::Sender<()> {
    let (wake, mut woken) = watch::channel(());
    tokio::spawn(async move {
        loop {
            // A wake-up just before the stream ended is still seen (`changed` reports it first).
            let ended = woken.changed().await.is_err();
            if let Err(refusal) = acknowledge(&switch, &psp, &outbox).await {
                let _ = sender.send(Err(refusal.into())).await;
                return;
            }
            if ended {
                return;
            }
        }
    });
    wake
}

struct Stream {
    switch: Arc<Switch>,
    psp: String,
    outbox: Arc<Outbox>,
    epoch: u64,
    sender: Responses,
    /// Permits for credit decisions being applied.
    decisions: Arc<Semaphore>,
    /// Wakes the task that records the stream's `Ack`s.
    acks: watch::Sender<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.outbox.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Stream {
    async fn run(self, mut incoming: Streaming<proto::SubscribeRequest>) {
        let mut sent = self.outbox.acknowledged.load(Ordering::Acquire);
        self.outbox.forget_through(sent);
        let mut shutting_down = self.switch.shutting_down.subscribe();
        loop {
            if *shutting_down.borrow_and_update() {
                return self.end(Refusal::new(Reason::ShuttingDown, "the switch is shutting down")).await;
            }
            // Register for wake-ups before looking, so a commit between look and wait is not missed.
            let notified = self.outbox.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.outbox.epoch.load(Ordering::Acquire) != self.epoch {
                self.end(Refusal::new(Reason::SubscriptionReplaced, "a newer stream of this PSP took over")).await;
                return;
            }
            match self.send_available(sent).await {
                Ok(Some(last_sent)) => sent = last_sent,
                Ok(None) => return, // the client went away
                Err(refusal) => return self.end(refusal).await,
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = shutting_down.changed() => {}
                message = incoming.message() => match message {
                    Ok(Some(request)) => {
                        if let Err(refusal) = self.handle(request).await {
                            return self.end(refusal).await;
                        }
                    }
                    Ok(None) => return,
                    // A message that does not decode (`crate::codec`) is answered; a broken
                    // connection has no one to answer.
                    Err(status) => {
                        let _ = self.sender.send(Err(status)).await;
                        return;
                    }
                },
            }
        }
    }

    /// Sends committed events after `sent`, within the window. `None`: the client is gone.
    async fn send_available(&self, mut sent: u64) -> Result<Option<u64>, Refusal> {
        let window_end = self.outbox.acknowledged.load(Ordering::Acquire) + EVENT_WINDOW_MAX;
        loop {
            // Never beyond `appended`: an event can be readable in the ledger before the payment
            // path counts it, and a client acknowledging what it received must never be told the
            // event does not exist yet.
            let end = window_end.min(self.outbox.appended.load(Ordering::Acquire));
            if sent >= end {
                break;
            }
            let limit = usize::try_from(end - sent).unwrap_or(READ_CHUNK).min(READ_CHUNK);
            // In order: from memory while the next one is there, else from storage.
            let mut batch = Vec::new();
            while batch.len() < limit {
                match self.outbox.take(sent + batch.len() as u64 + 1) {
                    Some(event) => batch.push(event),
                    None => break,
                }
            }
            let read = batch.is_empty();
            if read {
                batch = events::read(&self.switch.ledger, &self.psp, sent, limit)
                    .map_err(|error| self.switch.read_refusal(error))?;
            }
            let Some(last) = batch.last().map(|event| event.sequence) else { break };
            self.outbox.passed_through(last, if read { &batch } else { &[] });
            for event in batch {
                sent = event.sequence;
                if self.sender.send(Ok(response(Outgoing::Event(event)))).await.is_err() {
                    return Ok(None);
                }
            }
        }
        Ok(Some(sent))
    }

    async fn handle(&self, request: proto::SubscribeRequest) -> Result<(), Refusal> {
        match request.message {
            Some(Incoming::Ack(ack)) => {
                let last = self.outbox.appended.load(Ordering::Acquire);
                if ack.sequence > last {
                    return Err(Refusal::new(Reason::SequenceOutOfRange, format!("no event {} yet", ack.sequence)));
                }
                // Seen at once by a stream that replaces this one; written by the acknowledging task.
                if self.outbox.ack_requested.fetch_max(ack.sequence, Ordering::AcqRel) < ack.sequence {
                    self.acks.send_replace(());
                }
                Ok(())
            }
            Some(Incoming::CreditDecision(decision)) => {
                let (switch, psp) = (Arc::clone(&self.switch), self.psp.clone());
                self.apply(async move { (decide(&switch, &psp, &decision).await, decision.payment_id) }).await;
                Ok(())
            }
            Some(Incoming::CollectDecision(decision)) => {
                let (switch, psp) = (Arc::clone(&self.switch), self.psp.clone());
                self.apply(async move {
                    (crate::services::collect::decide(&switch, &psp, &decision).await, decision.collect_id)
                })
                .await;
                Ok(())
            }
            Some(Incoming::Hello(_)) | None => {
                Err(Refusal::new(Reason::StreamProtocolViolation, "Hello comes once, first; messages must be set"))
            }
        }
    }

    /// Applies one decision on a task of its own, within the stream's bound, and sends its receipt.
    /// The decision gives back its id with its outcome, so the id is moved into the receipt, not
    /// copied per decision.
    async fn apply(
        &self,
        decision: impl std::future::Future<Output = (Result<(), Refusal>, Vec<u8>)> + Send + 'static,
    ) {
        // Never closed: the stream owns it.
        let Ok(permit) = Arc::clone(&self.decisions).acquire_owned().await else { return };
        // The task holds a sender, so the response stream stays open for its receipt.
        let sender = self.sender.clone();
        tokio::spawn(async move {
            let (outcome, id) = decision.await;
            receipt(&sender, id, outcome.err()).await;
            drop(permit);
        });
    }

    async fn end(&self, refusal: Refusal) {
        let _ = self.sender.send(Err(refusal.into())).await;
    }
}

/// Applies a payee's decision on a payment it was asked to confirm. The receipt's reason follows
/// events.proto (DecisionReceipt): PAYMENT_NOT_FOUND for an id the caller is no party to,
/// NO_DECISION_PENDING when it is a party but nothing awaits its decision, PAYEE_TIMEOUT once
/// the deadline has passed, ALREADY_DECIDED when another decision took effect; the same
/// decision again gets the same (OK) receipt.
async fn decide(switch: &Switch, psp: &str, decision: &proto::CreditDecision) -> Result<(), Refusal> {
    let payment = crate::services::parse_id(&decision.payment_id, "payment_id")?;
    let (resolution, wanted) = match proto::Decision::try_from(decision.decision) {
        Ok(proto::Decision::Accept) => (Resolution::Accept, proto::PaymentState::Completed),
        Ok(proto::Decision::Decline) => (Resolution::Decline, proto::PaymentState::Declined),
        _ => return Err(Refusal::field(Reason::FieldRequired, "decision", "decision must be ACCEPT or DECLINE")),
    };
    let payee = switch
        .participants
        .get(psp)
        .ok_or_else(|| Refusal::new(Reason::CallerNotRegistered, "not a registered participant"))?;
    let Some(record) = lookup(switch, payment)? else {
        // Not a payment: perhaps a collect of the caller's, which is decided by CollectDecision.
        return Err(if crate::services::collect::is_party(switch, payment, psp)? {
            no_decision_pending()
        } else {
            payment_not_found()
        });
    };
    let transfer = &record.stored.transfer;
    if transfer.credit_account_id != payee.account_id && transfer.debit_account_id != payee.account_id {
        return Err(payment_not_found());
    }
    // A credit request is a pending transfer to this payee; anything else awaits no decision of it.
    if !transfer.flags.pending() || transfer.credit_account_id != payee.account_id {
        return Err(no_decision_pending());
    }
    let current = crate::confirm::state_of(payment, &record);
    if current.state != proto::PaymentState::Pending {
        return verdict(current.state, wanted);
    }
    // Too late: the decision had to reach the switch before the deadline, and the deadline's
    // timer voids the reservation (it may not have fired yet: a payment never completes late).
    let deadline_unix_ms = crate::services::payments::deadline_of(switch, payment)?.unwrap_or(0);
    if crate::core::now_unix_ns() / 1_000_000 >= deadline_unix_ms {
        return Err(payee_timeout());
    }
    let reason = super::collect::decline_reason(decision.decline_reason);
    let pending = record.stored.transfer;
    let state = match crate::confirm::resolve_pending(switch, pending, resolution, reason).await {
        Ok(outcome) => outcome.state,
        // Another resolution (the deadline's, or a contradicting decision) won: which one says why.
        Err(refusal) if refusal.reason == Reason::AlreadyDecided => match lookup(switch, payment)? {
            Some(record) => crate::confirm::state_of(payment, &record).state,
            None => return Err(refusal),
        },
        Err(refusal) => return Err(refusal),
    };
    verdict(state, wanted)
}

/// A payment's transfer record, if there is one.
fn lookup(switch: &Switch, payment: u128) -> Result<Option<ledger::TransferRecord>, Refusal> {
    let records = switch.ledger.lookup_transfers(&[payment]).map_err(crate::core::ledger_refusal)?;
    Ok(records.into_iter().next().flatten())
}

/// The receipt of a decision on a payment that is final: OK for the decision that took effect
/// (a repeat), PAYEE_TIMEOUT when the deadline ended it, ALREADY_DECIDED otherwise.
fn verdict(state: proto::PaymentState, wanted: proto::PaymentState) -> Result<(), Refusal> {
    if state == wanted {
        Ok(())
    } else if state == proto::PaymentState::Expired {
        Err(payee_timeout())
    } else {
        Err(Refusal::new(Reason::AlreadyDecided, "the payment is already final"))
    }
}

fn payee_timeout() -> Refusal {
    Refusal::new(Reason::PayeeTimeout, "the payment's deadline passed before the decision arrived")
}

fn no_decision_pending() -> Refusal {
    Refusal::new(Reason::NoDecisionPending, "no credit request of yours awaits a decision under this id")
}

fn payment_not_found() -> Refusal {
    Refusal::field(Reason::PaymentNotFound, "payment_id", "no such payment")
}

/// Tells the PSP how its decision ended (receipts may overtake each other: they carry the id).
async fn receipt(sender: &Responses, payment_id: Vec<u8>, refusal: Option<Refusal>) {
    let receipt = proto::DecisionReceipt {
        payment_id,
        status_code: refusal.as_ref().map_or(0, crate::services::status_code),
        reason: refusal.map_or(Reason::Unspecified, |refusal| refusal.reason) as i32,
    };
    let _ = sender.send(Ok(response(Outgoing::DecisionReceipt(receipt)))).await;
}
