//! `PaymentService`: push payments by alias (single and batch), status, positions.
//!
//! A payment is one linked chain of three ledger events: the payment's metadata record (aliases,
//! note), the transfer from the payer PSP's position to the payee PSP's, and the payee's event.
//! They commit together or not at all, in one group-committed batch. The payment id is the
//! transfer id, so the ledger's idempotency is the payment's: a retry gets the original outcome,
//! and the content hash in `user_data_128` turns "same id, other content" into a conflict.
//!
//! Per payment the path reads two aliases from the lock-free directory and two participants from
//! the atomically swapped registry and builds the three events. Payments are committed in groups
//! (`pay_together`: `Pay` is a group of one, `PayStream` groups what has arrived, `PayBatch` its
//! batch): one ledger submission and one completion per group, and each payee is told once per
//! submission.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ledger::{Event, ResultCode, Transfer, TransferFlags, TransferRecord};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{check_amount, parse_id, participant_view, status_code, BATCH_SIZE_MAX};
use crate::admission::{Admission, Permit};
use crate::auth;
use crate::core::{codes, ledger_refusal, now_unix_ns, record, tables, PaymentRecord, Switch};
use crate::directory::{alias_owner, check_text};
use crate::participants::Participant;
use crate::proto::payment_service_server::PaymentService;
use crate::proto::{self, ConfirmationMode, PaymentKind, PaymentState, Reason};
use crate::reason::Refusal;

/// Longest note, in UTF-8 bytes (`NOTE_BYTES_MAX`).
const NOTE_BYTES_MAX: usize = 140;

pub struct Payments {
    pub switch: Arc<Switch>,
    status_limiter: RateLimiter,
    /// The edge's decision on every payment (per-second rate, then in-flight budgets).
    gate: Arc<Gate>,
}

impl Payments {
    pub fn new(switch: Arc<Switch>) -> Self {
        let limits = &switch.config.limits;
        let status_limiter = RateLimiter::new(limits.status_queries_per_second);
        let gate = Arc::new(Gate {
            rate: RateLimiter::new(limits.payments_per_second_per_psp),
            in_flight: Admission::new(limits.payments_in_flight_max, limits.payments_in_flight_max_per_psp),
        });
        Payments { switch, status_limiter, gate }
    }
}

/// Admission of payments at the edge, before any work on them: the in-flight budgets
/// (`admission`), then the payer PSP's payments per second. Microseconds: a few atomic operations.
pub struct Gate {
    rate: RateLimiter,
    in_flight: Admission,
}

impl Gate {
    /// Admits `count` payments of `psp` together, all or none. A refusal by the in-flight budgets
    /// takes nothing of the second's rate; one by the rate gives the in-flight room back.
    pub fn admit(&self, psp: &str, count: u64) -> Result<Permit, Refusal> {
        let permit = self.in_flight.admit(psp, count)?;
        if !self.rate.allow_many(psp, count) {
            return Err(RateLimiter::refusal("this PSP's payments per second are at their limit; back off"));
        }
        Ok(permit)
    }
}

/// Ledger events per payment: metadata record, transfer, the payee's credit notification.
const EVENTS_PER_PAYMENT: usize = 3;
/// Where the transfer's result sits among a payment's events.
const TRANSFER_INDEX: usize = 1;

/// The ledger's own expiry of a reservation comes this long after the switch's deadline timer,
/// as a backstop only: the switch's timer voids first and tells the payee.
const LEDGER_EXPIRY_MARGIN_SECONDS: u64 = 60;

/// A payment checked and ready to submit.
struct Prepared {
    id: u128,
    payee: Arc<str>,
    amount_minor: u64,
    /// The payee confirms (pending transfer, credit request) rather than being credited at once.
    confirmed: bool,
    deadline_unix_ms: u64,
    /// `EVENTS_PER_PAYMENT` events; moved into the ledger submission.
    events: Vec<Event>,
    /// The payee's event, handed to its stream once committed (`commit_prepared`).
    notification: proto::Event,
}

/// The content a payment id stands for, hashed into `user_data_128`. The deadline is left out:
/// a retry may carry a fresh one.
fn content_hash(request: &proto::PayRequest) -> u128 {
    let mut hasher = blake3::Hasher::new();
    for part in [&request.payer_alias, &request.payee_alias, &request.note, &request.currency] {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    u128::from_be_bytes(bytes)
}

fn prepare(switch: &Switch, payer: &Participant, request: &proto::PayRequest) -> Result<Prepared, Refusal> {
    let id = parse_id(&request.payment_id, "payment_id")?;
    let currency = check_amount(switch, request.amount_minor, &request.currency)?;
    check_text(&request.note, "note", NOTE_BYTES_MAX, false)?;
    if alias_owner(&request.payer_alias, "payer_alias")? != &*payer.psp_id {
        return Err(Refusal::field(Reason::AliasOwnedByOtherPsp, "payer_alias", "the payer alias is not the caller's"));
    }
    alias_owner(&request.payee_alias, "payee_alias")?;
    let now_ms = now_unix_ns() / 1_000_000;
    let limits = &switch.config.limits;
    if request.deadline_unix_ms != 0 && request.deadline_unix_ms <= now_ms {
        return Err(Refusal::field(Reason::DeadlinePassed, "deadline_unix_ms", "the deadline has passed"));
    }
    if request.deadline_unix_ms > now_ms + limits.payment_deadline_ms_max {
        return Err(Refusal::field(Reason::DeadlineTooFar, "deadline_unix_ms", "the deadline is too far ahead"));
    }
    // Both entries are read in place: only the display name is copied out.
    let Some(payer_display_name) =
        switch.directory.with_entry(&request.payer_alias, |entry| entry.display_name.to_string())
    else {
        return Err(Refusal::field(Reason::OwnAliasNotRegistered, "payer_alias", "the payer alias is not registered"));
    };
    let payee = switch
        .directory
        .with_entry(&request.payee_alias, |entry| {
            if entry.psp == payer.psp_id {
                return Err(Refusal::new(Reason::OnUsNotSupported, "payer and payee are at the same PSP"));
            }
            switch
                .participants
                .get(&entry.psp)
                .ok_or_else(|| Refusal::new(Reason::Internal, "alias of an unregistered PSP"))
        })
        .ok_or_else(|| Refusal::field(Reason::UnknownAlias, "payee_alias", "no such alias"))??;
    if !payee.is_active() {
        return Err(Refusal::new(Reason::CounterpartySuspended, "the payee's PSP is suspended"));
    }
    if payer.currency != currency.code || payee.currency != currency.code {
        return Err(Refusal::field(Reason::CurrencyMismatch, "currency", "a participant holds another currency"));
    }
    let confirmed = payee.confirmation_mode == ConfirmationMode::Confirmed;
    let outbox = switch.events.outbox(&switch.ledger, &payee.psp_id).map_err(ledger_refusal)?;
    if outbox.backlog() >= switch.config.limits.event_backlog_max {
        return Err(Refusal::new(Reason::EventBacklogFull, "the payee PSP has too many unacknowledged events"));
    }
    let deadline_unix_ms = if request.deadline_unix_ms == 0 {
        now_ms + limits.payment_deadline_ms_default
    } else {
        request.deadline_unix_ms
    };
    let metadata = PaymentRecord {
        payer_alias: request.payer_alias.clone(),
        payee_alias: request.payee_alias.clone(),
        note: request.note.clone(),
        deadline_unix_ms,
        currency: currency.code.clone(),
        kind: PaymentKind::Push as i32,
        original_payment_id: Vec::new(),
        payer_display_name: payer_display_name.clone(),
    };
    let transfer = Transfer {
        id,
        debit_account_id: payer.account_id,
        credit_account_id: payee.account_id,
        amount: u128::from(request.amount_minor),
        user_data_128: content_hash(request),
        ledger: currency.ledger,
        code: codes::PAYMENT,
        flags: TransferFlags::default(),
        ..Transfer::default()
    };
    let kind = if confirmed {
        proto::event::Kind::CreditRequest(proto::CreditRequest {
            payment_id: request.payment_id.clone(),
            payer_alias: request.payer_alias.clone(),
            payer_psp_id: payer.psp_id.to_string(),
            payer_display_name,
            payee_alias: request.payee_alias.clone(),
            amount_minor: request.amount_minor,
            currency: currency.code.clone(),
            note: request.note.clone(),
            deadline_unix_ms,
        })
    } else {
        proto::event::Kind::CreditNotification(proto::CreditNotification {
            payment_id: request.payment_id.clone(),
            payer_alias: request.payer_alias.clone(),
            payer_psp_id: payer.psp_id.to_string(),
            payer_display_name,
            payee_alias: request.payee_alias.clone(),
            amount_minor: request.amount_minor,
            currency: currency.code.clone(),
            note: request.note.clone(),
            completed_at_unix_ns: 0,
        })
    };
    let notification = proto::Event { kind: Some(kind), ..proto::Event::default() };
    let transfer = if confirmed {
        // Reserve now (counts against the payer's cap), post or void on the payee's answer.
        let seconds = deadline_unix_ms.saturating_sub(now_ms).div_ceil(1_000) + LEDGER_EXPIRY_MARGIN_SECONDS;
        let timeout = u32::try_from(seconds).unwrap_or(u32::MAX);
        Transfer { flags: TransferFlags(TransferFlags::PENDING), timeout, ..transfer }
    } else {
        transfer
    };
    // One linked chain: the metadata, the transfer, and the payee's notification commit
    // together or not at all (a refused transfer, or a retry, records neither).
    let events = vec![
        record(tables::PAYMENTS, id.to_be_bytes(), metadata.encode_to_vec(), true),
        Event::CreateTransfer(Transfer { flags: TransferFlags(transfer.flags.0 | TransferFlags::LINKED), ..transfer }),
        crate::events::append_credit(&payee.psp_id, &request.payment_id, confirmed),
    ];
    let amount_minor = request.amount_minor;
    Ok(Prepared { id, payee: payee.psp_id.clone(), amount_minor, confirmed, deadline_unix_ms, events, notification })
}

/// What the ledger made of one prepared payment.
struct Committed {
    code: ResultCode,
    /// The batch time of the payment's transfer (its commit time when `code` is `Ok`).
    timestamp: u64,
}

/// A ledger submission of `commit_prepared`: queued, or already awaited.
enum Submitted {
    Queued(<ledger::Completion as std::future::IntoFuture>::IntoFuture),
    Done(Result<ledger::Results, Refusal>),
}

/// How long a later part of an admitted group waits before asking the ledger for room again.
const LEDGER_ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// Submits prepared payments in as few ledger submissions as fit, all queued before any is
/// awaited so that they are group-committed back to back. Then tells each payee of what
/// committed, arms the deadlines of reservations, and counts completed payments (the payer's
/// side once). One answer per payment, in order. `Err` when the first submission is refused:
/// then nothing was submitted.
///
/// A group is admitted whole or not at all (payments.proto, PayBatch): once its first part is
/// in the ledger, a later part the ledger finds no room for (its in-flight bound, `Busy`)
/// waits for room, first for the group's own earlier parts to commit, instead of being
/// refused while the rest of the group goes through.
async fn commit_prepared(
    switch: &Arc<Switch>,
    payer: &Participant,
    prepared: &mut [Prepared],
) -> Result<Vec<Result<Committed, Refusal>>, Refusal> {
    let per_submission = (switch.config.ledger.batch_size_max / EVENTS_PER_PAYMENT).max(1);
    let mut submitted: Vec<Submitted> = Vec::with_capacity(prepared.len().div_ceil(per_submission));
    for (index, chunk) in prepared.chunks_mut(per_submission).enumerate() {
        let mut events = Vec::with_capacity(chunk.len() * EVENTS_PER_PAYMENT);
        for ready in chunk.iter_mut() {
            events.append(&mut ready.events);
        }
        // A failed switch takes nothing more (the record layer's verdict), first part or later.
        if let Err(refusal) = switch.writable() {
            if index == 0 {
                return Err(refusal);
            }
            submitted.push(Submitted::Done(Err(refusal)));
            continue;
        }
        // Only a later part may have to be submitted again: keep its events for that.
        let again = (index > 0).then(|| events.clone());
        match (switch.ledger.submit(events), again) {
            (Ok(completion), _) => submitted.push(Submitted::Queued(completion.into_future())),
            (Err(error), None) => return Err(ledger_refusal(error)),
            (Err(ledger::LedgerError::Busy { .. }), Some(events)) => {
                let later = submit_when_room(switch, &mut submitted, events).await;
                submitted.push(later);
            }
            (Err(error), Some(_)) => submitted.push(Submitted::Done(Err(ledger_refusal(error)))),
        }
    }
    let mut answers = Vec::with_capacity(prepared.len());
    let (mut sent, mut sent_minor) = (0u64, 0u64);
    for (chunk, submission) in prepared.chunks_mut(per_submission).zip(submitted) {
        let results = match submission {
            Submitted::Queued(completion) => completion.await.map_err(ledger_refusal),
            Submitted::Done(results) => results,
        };
        let results = match results {
            Ok(results) => results,
            Err(refusal) => {
                answers.extend(chunk.iter().map(|_| Err(refusal.clone())));
                continue;
            }
        };
        // One number per committed payment's event, in payment order.
        let mut appended = results.appended().iter().copied();
        // Keyed by payee: a group may pay hundreds of PSPs, and a scan per payment would grow with them.
        let mut credited: std::collections::HashMap<Arc<str>, Credited, ahash::RandomState> = Default::default();
        for (index, ready) in chunk.iter_mut().enumerate() {
            let event_index = index * EVENTS_PER_PAYMENT + TRANSFER_INDEX;
            let code = results[event_index];
            let timestamp = results.timestamp + event_index as u64;
            if code == ResultCode::Ok {
                let payee = credited.entry(Arc::clone(&ready.payee)).or_default();
                let notification = std::mem::take(&mut ready.notification);
                match appended.next() {
                    Some(sequence) => payee.events.push(crate::events::stamped(notification, sequence, timestamp)),
                    // Not expected (a committed payment's event is numbered); storage has it.
                    None => payee.unnumbered += 1,
                }
                if ready.confirmed {
                    crate::confirm::arm_deadline(Arc::clone(switch), ready.id, ready.deadline_unix_ms);
                } else {
                    sent += 1;
                    sent_minor += ready.amount_minor;
                    payee.received += 1;
                    payee.received_minor += ready.amount_minor;
                }
            }
            answers.push(Ok(Committed { code, timestamp }));
        }
        // Each payee's stream is told once per submission, not once per payment.
        for (payee, credited) in credited {
            let told = switch.events.committed_events(&switch.ledger, &payee, credited.events, credited.unnumbered);
            if let Err(error) = told {
                // The payments and their events are durable; only this wake-up of the payee's
                // stream is lost, and the next commit for that payee makes up for it.
                tracing::error!(%payee, %error, "could not tell a payee's event stream of committed events");
            }
            switch.metrics.received_many(&payee, credited.received, credited.received_minor);
        }
    }
    switch.metrics.completed_many(&payer.psp_id, sent, sent_minor);
    Ok(answers)
}

/// Submits a later part of an admitted group once the ledger has room: after the group's own
/// earlier parts have committed (their events leave the ledger's in-flight count), and then as
/// soon as other submitters' commits make room. Errors other than `Busy` are that part's answer.
async fn submit_when_room(switch: &Switch, earlier: &mut [Submitted], events: Vec<ledger::Event>) -> Submitted {
    for submission in earlier.iter_mut() {
        if let Submitted::Queued(completion) = submission {
            *submission = Submitted::Done(completion.await.map_err(ledger_refusal));
        }
    }
    loop {
        match switch.ledger.submit(events.clone()) {
            Ok(completion) => return Submitted::Queued(completion.into_future()),
            Err(ledger::LedgerError::Busy { .. }) => tokio::time::sleep(LEDGER_ROOM_POLL).await,
            Err(error) => return Submitted::Done(Err(ledger_refusal(error))),
        }
    }
}

/// What one submission committed for one payee.
#[derive(Default)]
struct Credited {
    /// Its events, numbered and stamped as storage would give them.
    events: Vec<proto::Event>,
    /// Events committed without a number handed back (read from storage instead).
    unnumbered: u64,
    /// Payments completed to it (automatic acceptance), and their total.
    received: u64,
    received_minor: u64,
}

/// What a transfer's result code means for the payment.
fn outcome(code: ResultCode) -> Result<PaymentState, Refusal> {
    match code {
        ResultCode::Ok | ResultCode::Exists => Ok(PaymentState::Completed),
        ResultCode::ExceedsCredits => {
            Err(Refusal::new(Reason::InsufficientLiquidity, "the payer PSP's net debit cap does not cover the payment"))
        }
        ResultCode::OverflowsDebitsPosted
        | ResultCode::OverflowsCreditsPosted
        | ResultCode::OverflowsDebits
        | ResultCode::OverflowsCredits => Err(Refusal::new(Reason::BalanceOverflow, "a position would overflow")),
        code if code.is_id_conflict() => {
            Err(Refusal::field(Reason::PaymentIdConflict, "payment_id", "payment id already used with other content"))
        }
        code => Err(Refusal::new(Reason::Internal, format!("ledger answered {code}"))),
    }
}

pub(super) fn result_message(payment_id: &[u8], outcome: Result<(PaymentState, u64), Refusal>) -> proto::PaymentResult {
    match outcome {
        Ok((state, timestamp)) => proto::PaymentResult {
            payment_id: payment_id.to_vec(),
            state: state as i32,
            accepted_at_unix_ns: timestamp,
            finalized_at_unix_ns: timestamp,
            ..proto::PaymentResult::default()
        },
        Err(refusal) => {
            let failed = matches!(refusal.reason, Reason::InsufficientLiquidity | Reason::BalanceOverflow);
            proto::PaymentResult {
                payment_id: payment_id.to_vec(),
                state: if failed { PaymentState::Failed } else { PaymentState::Rejected } as i32,
                reason: refusal.reason as i32,
                status_code: status_code(&refusal),
                ..proto::PaymentResult::default()
            }
        }
    }
}

/// The commit time of a payment: from the batch that committed it, or from storage on a retry.
fn committed_at(switch: &Switch, id: u128, code: ResultCode, batch_timestamp: u64) -> u64 {
    if code == ResultCode::Ok {
        return batch_timestamp;
    }
    switch
        .ledger
        .lookup_transfers(&[id])
        .ok()
        .and_then(|records| records.into_iter().next().flatten())
        .map_or(0, |record| record.stored.transfer.timestamp)
}

/// The definitive state of a payment. With a viewer, only the payer's or payee's PSP sees it;
/// anyone else gets the same answer as for an id that does not exist.
pub fn payment_status(switch: &Switch, id: u128, viewer: Option<&Participant>) -> Result<proto::Payment, Refusal> {
    let stored = lookup_payments(switch, &[id])?.pop().unwrap_or_default();
    status_of(switch, id, stored, viewer)
}

/// What a payment's status is read from: its transfer (`None`: not a transfer), and its metadata
/// and refunds records.
#[derive(Default)]
pub struct StoredPayment {
    pub transfer: Option<TransferRecord>,
    pub metadata: Option<Vec<u8>>,
    pub refunds: Option<Vec<u8>>,
}

/// The stored parts of many payments, in the order asked: three batched ledger reads whatever
/// the number of ids (`OperatorService.GetPayments` asks for thousands at a time).
pub fn lookup_payments(switch: &Switch, ids: &[u128]) -> Result<Vec<StoredPayment>, Refusal> {
    let transfers = switch.ledger.lookup_transfers(ids).map_err(ledger_refusal)?;
    let keys: Vec<[u8; 16]> = ids.iter().map(|id| id.to_be_bytes()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(|key| key.as_slice()).collect();
    let metadata = switch.ledger.records_many(tables::PAYMENTS, &keys).map_err(ledger_refusal)?;
    let refunds = switch.ledger.records_many(tables::REFUNDS, &keys).map_err(ledger_refusal)?;
    Ok(transfers
        .into_iter()
        .zip(metadata)
        .zip(refunds)
        .map(|((transfer, metadata), refunds)| StoredPayment { transfer, metadata, refunds })
        .collect())
}

/// `payment_status` of a payment already looked up ([`lookup_payments`]).
pub fn status_of(
    switch: &Switch,
    id: u128,
    stored: StoredPayment,
    viewer: Option<&Participant>,
) -> Result<proto::Payment, Refusal> {
    let not_found = || Refusal::field(Reason::PaymentNotFound, "payment_id", "no such payment");
    let StoredPayment { transfer: stored, metadata, refunds } = stored;
    let Some(stored) = stored else {
        // Not a transfer: perhaps a collect that did not (or not yet) execute.
        let collect = super::collect::collect_of(switch, id)?.ok_or_else(not_found)?;
        let party = |psp: &str| viewer.is_none_or(|viewer| &*viewer.psp_id == psp);
        if !party(&collect.payer_psp_id) && !party(&collect.payee_psp_id) {
            return Err(not_found());
        }
        return Ok(proto::Payment {
            payment_id: id.to_be_bytes().to_vec(),
            kind: PaymentKind::Collect as i32,
            state: collect.state,
            reason: collect.reason,
            payer_alias: collect.payer_alias,
            payer_psp_id: collect.payer_psp_id,
            payee_alias: collect.payee_alias,
            payee_psp_id: collect.payee_psp_id,
            amount_minor: collect.amount_minor,
            currency: collect.currency,
            note: collect.note,
            deadline_unix_ms: collect.expiry_unix_ms,
            accepted_at_unix_ns: collect.requested_at_unix_ns,
            finalized_at_unix_ns: collect.finalized_at_unix_ns,
            decline_reason: collect.decline_reason,
            ..proto::Payment::default()
        });
    };
    let transfer = stored.stored.transfer;
    if viewer.is_some_and(|viewer| {
        viewer.account_id != transfer.debit_account_id && viewer.account_id != transfer.credit_account_id
    }) {
        return Err(not_found());
    }
    let psp_of = |account: u128| switch.participants.by_account(account).map(|p| p.psp_id.to_string());
    let metadata = decode_metadata(switch, id, metadata)?;
    let refunds = super::refund::decode_refunds(switch, id, refunds)?;
    let kind = match PaymentKind::try_from(metadata.kind) {
        Ok(PaymentKind::Unspecified) | Err(_) => PaymentKind::Push,
        Ok(kind) => kind,
    };
    let state = crate::confirm::with_decline_reason(switch, id, crate::confirm::state_of(id, &stored))?;
    // The money moved when the payment completed: its single-phase commit or the post.
    let settlement_window_id = match state.state {
        PaymentState::Completed => super::settlement::window_of(switch, state.finalized_at_unix_ns)?,
        _ => 0,
    };
    // A collect was recorded when it was requested, not when its payment executed (common.proto,
    // PaymentResult.accepted_at_unix_ns); only its record knows when.
    let accepted_at_unix_ns = match kind {
        PaymentKind::Collect => {
            super::collect::collect_of(switch, id)?.map_or(transfer.timestamp, |collect| collect.requested_at_unix_ns)
        }
        _ => transfer.timestamp,
    };
    Ok(proto::Payment {
        payment_id: id.to_be_bytes().to_vec(),
        kind: kind as i32,
        state: state.state as i32,
        reason: state.reason as i32,
        decline_reason: state.decline_reason as i32,
        payer_alias: metadata.payer_alias,
        payer_psp_id: psp_of(transfer.debit_account_id).unwrap_or_default(),
        payee_alias: metadata.payee_alias,
        payee_psp_id: psp_of(transfer.credit_account_id).unwrap_or_default(),
        amount_minor: u64::try_from(transfer.amount).unwrap_or(u64::MAX),
        currency: metadata.currency,
        note: metadata.note,
        deadline_unix_ms: metadata.deadline_unix_ms,
        accepted_at_unix_ns,
        finalized_at_unix_ns: state.finalized_at_unix_ns,
        original_payment_id: metadata.original_payment_id,
        refunded_amount_minor: refunds.refunded_minor,
        refund_ids: refunds.refund_ids,
        settlement_window_id,
    })
}

/// A payment's metadata record (empty fields if it has none, e.g. a recorded failure).
pub fn payment_metadata(switch: &Switch, id: u128) -> Result<PaymentRecord, Refusal> {
    Ok(switch.read(tables::PAYMENTS, &id.to_be_bytes())?.unwrap_or_default())
}

/// Metadata read in a batch: none is empty, one that does not decode an error (`crate::records`).
fn decode_metadata(switch: &Switch, id: u128, bytes: Option<Vec<u8>>) -> Result<PaymentRecord, Refusal> {
    Ok(switch.decoded(tables::PAYMENTS, &id.to_be_bytes(), bytes)?.unwrap_or_default())
}

/// A payment's current state from the ledger, if the payment exists.
fn current_outcome(switch: &Switch, id: u128) -> Result<Option<crate::confirm::Outcome>, Refusal> {
    let record = switch.ledger.lookup_transfers(&[id]).map_err(ledger_refusal)?.into_iter().next().flatten();
    match record {
        Some(record) => {
            Ok(Some(crate::confirm::with_decline_reason(switch, id, crate::confirm::state_of(id, &record))?))
        }
        None => Ok(None),
    }
}

/// A payment's deadline, from its metadata record.
pub fn deadline_of(switch: &Switch, id: u128) -> Result<Option<u64>, Refusal> {
    Ok(switch.read::<PaymentRecord>(tables::PAYMENTS, &id.to_be_bytes())?.map(|record| record.deadline_unix_ms))
}

/// A payment's answer, as far as it is known once its group has committed.
pub(super) enum Answer {
    /// Final, or a refusal.
    Now(Result<proto::PaymentResult, Refusal>),
    /// Reserved (at `accepted_at`, ledger time) for a confirming payee that has yet to decide:
    /// `final_answer` waits for it.
    AwaitPayee { id: u128, deadline: u64, accepted_at: u64, waiter: crate::confirm::Waiter },
}

/// Pays requests of one payer as `Pay` does, together: each checked and prepared, then all
/// committed in as few ledger submissions as fit (`commit_prepared`). `Pay` is a group of one;
/// `PayStream` groups what has arrived. Each request comes with its admission: `Err` is its
/// refusal (answered as such, nothing done). One answer per request, in order.
pub(super) async fn pay_together(
    switch: &Arc<Switch>,
    payer: &Participant,
    requests: &[(&proto::PayRequest, Result<(), Refusal>)],
) -> Vec<Answer> {
    pay_group(switch, payer, requests).await.0
}

/// `pay_together`, also saying whether the ledger refused the group's first submission, in
/// which case nothing was submitted (`PayBatch` then refuses the whole call, payments.proto).
async fn pay_group(
    switch: &Arc<Switch>,
    payer: &Participant,
    requests: &[(&proto::PayRequest, Result<(), Refusal>)],
) -> (Vec<Answer>, Option<Refusal>) {
    let mut answers: Vec<Option<Answer>> = requests.iter().map(|_| None).collect();
    let (mut prepared, mut positions, mut waiters) = (Vec::new(), Vec::new(), Vec::new());
    for (position, (request, admitted)) in requests.iter().enumerate() {
        let ready = admitted.clone().and_then(|()| prepare(switch, payer, request));
        // Listen before submitting: a fast payee must not decide before anyone waits.
        let ready = ready.and_then(|ready| {
            let waiter = if ready.confirmed { Some(switch.confirmations.register(ready.id)?) } else { None };
            Ok((ready, waiter))
        });
        match ready {
            Ok((ready, waiter)) => {
                prepared.push(ready);
                positions.push(position);
                waiters.push(waiter);
            }
            Err(refusal) => answers[position] = Some(Answer::Now(Err(refusal))),
        }
    }
    let (committed, refused_whole) = match commit_prepared(switch, payer, &mut prepared).await {
        Ok(committed) => (committed, None),
        Err(refusal) => (prepared.iter().map(|_| Err(refusal.clone())).collect(), Some(refusal)),
    };
    let mut failed = Vec::new();
    for (((position, ready), waiter), committed) in positions.into_iter().zip(prepared).zip(waiters).zip(committed) {
        let payment_id = &requests[position].0.payment_id;
        let state = committed.and_then(|Committed { code, timestamp }| Ok((outcome(code)?, code, timestamp)));
        if state.as_ref().is_err_and(|refusal| recorded_failure(refusal.reason)) {
            failed.push((ready.id, requests[position].0, ready.deadline_unix_ms));
        }
        answers[position] = Some(match (state, waiter) {
            (Ok((state, code, timestamp)), None) => {
                let timestamp = committed_at(switch, ready.id, code, timestamp);
                Answer::Now(Ok(result_message(payment_id, Ok((state, timestamp)))))
            }
            // Confirmed mode, a first attempt or a retry: the payee's decision makes the answer.
            (Ok((_, code, timestamp)), Some(waiter)) => Answer::AwaitPayee {
                id: ready.id,
                deadline: ready.deadline_unix_ms,
                accepted_at: committed_at(switch, ready.id, code, timestamp),
                waiter,
            },
            (Err(refusal), waiter) => {
                if waiter.is_some() {
                    switch.confirmations.finish(ready.id, None);
                }
                Answer::Now(Err(refusal))
            }
        });
    }
    if !failed.is_empty() {
        record_failures(switch, &failed).await;
    }
    let answers = answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| Answer::Now(Err(Refusal::new(Reason::Internal, "payment lost its answer"))))
        })
        .collect();
    (answers, refused_whole)
}

/// The refusals the ledger records against the payment id (errors.proto, "Recorded refusals").
fn recorded_failure(reason: Reason) -> bool {
    matches!(reason, Reason::InsufficientLiquidity | Reason::BalanceOverflow)
}

/// Stores the metadata records of payments that failed in the ledger (recorded refusals), so
/// that their status shows the whole payment (common.proto, Payment): the record is linked to
/// the transfer, so a refused transfer took it back with it. Written only where none is stored
/// (a retry finds the first attempt's), after the answer's commit and before the answer: an
/// extra commit on the failure path only. Best effort: the failure itself is durable already.
async fn record_failures(switch: &Switch, failed: &[(u128, &proto::PayRequest, u64)]) {
    let keys: Vec<[u8; 16]> = failed.iter().map(|(id, _, _)| id.to_be_bytes()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(|key| key.as_slice()).collect();
    let stored = match switch.ledger.records_many(tables::PAYMENTS, &keys) {
        Ok(stored) => stored,
        Err(error) => return tracing::warn!(%error, "reading failed payments' records"),
    };
    let mut events = Vec::new();
    for ((id, request, deadline_unix_ms), stored) in failed.iter().zip(stored) {
        if stored.is_some() {
            continue;
        }
        let display_name = switch.directory.with_entry(&request.payer_alias, |entry| entry.display_name.to_string());
        let metadata = PaymentRecord {
            payer_alias: request.payer_alias.clone(),
            payee_alias: request.payee_alias.clone(),
            note: request.note.clone(),
            deadline_unix_ms: *deadline_unix_ms,
            currency: request.currency.clone(),
            kind: PaymentKind::Push as i32,
            original_payment_id: Vec::new(),
            payer_display_name: display_name.unwrap_or_default(),
        };
        events.push(record(tables::PAYMENTS, id.to_be_bytes(), metadata.encode_to_vec(), false));
    }
    if events.is_empty() {
        return;
    }
    if let Err(refusal) = switch.submit(events).await {
        tracing::warn!(reason = ?refusal.reason, "storing failed payments' records");
    }
}

/// Executes one admitted payment as `Pay` does: to an automatic payee at once, to a confirming
/// payee once it answers (or its deadline passes). Refusals come back as `Err`.
async fn execute(
    switch: &Arc<Switch>,
    payer: &Participant,
    request: &proto::PayRequest,
) -> Result<proto::PaymentResult, Refusal> {
    match pay_together(switch, payer, &[(request, Ok(()))]).await.pop() {
        Some(Answer::Now(answer)) => answer,
        Some(Answer::AwaitPayee { id, deadline, accepted_at, waiter }) => {
            final_answer(switch, &request.payment_id, id, deadline, accepted_at, waiter).await
        }
        None => Err(Refusal::new(Reason::Internal, "payment lost its answer")),
    }
}

/// A confirmed-mode payment (a first attempt or a retry) once submitted: its final state, once
/// the payee answers or the deadline passes. `accepted_at` is when its reservation committed.
pub(super) async fn final_answer(
    switch: &Switch,
    payment_id: &[u8],
    id: u128,
    deadline: u64,
    accepted_at: u64,
    waiter: crate::confirm::Waiter,
) -> Result<proto::PaymentResult, Refusal> {
    let current = current_outcome(switch, id)?;
    let final_outcome = match current {
        Some(outcome) if outcome.state != PaymentState::Pending => {
            switch.confirmations.finish(id, Some(outcome));
            Some(outcome)
        }
        _ => crate::confirm::wait(waiter, deadline).await,
    };
    // Declined and expired are answers, not errors (payments.proto: OK with the state), so
    // batch and stream items carry them as DECLINED / EXPIRED rather than REJECTED. Recorded when
    // reserved, final when resolved (common.proto, PaymentResult).
    let outcome = final_outcome.unwrap_or(crate::confirm::Outcome {
        state: PaymentState::Pending,
        reason: Reason::Unspecified,
        finalized_at_unix_ns: 0,
        decline_reason: proto::DeclineReason::Unspecified,
    });
    Ok(proto::PaymentResult {
        payment_id: payment_id.to_vec(),
        state: outcome.state as i32,
        reason: outcome.reason as i32,
        decline_reason: outcome.decline_reason as i32,
        status_code: 0,
        accepted_at_unix_ns: accepted_at,
        finalized_at_unix_ns: outcome.finalized_at_unix_ns,
    })
}

impl Payments {
    /// `Pay` up to the answer: refusals as `Err`.
    async fn pay_one(&self, request: Request<proto::PayRequest>) -> Result<proto::PaymentResult, Refusal> {
        let psp = auth::psp(&request)?;
        // A registered participant first (a lock-free read), so admission keeps counters for
        // participants only (bounded by `participants_max`).
        let payer = self.switch.active_participant(&psp)?;
        // Held until the answer, a confirming payee's decision included.
        let _permit = self.gate.admit(&psp, 1)?;
        execute(&self.switch, &payer, request.get_ref()).await
    }

    /// `PayBatch` up to the answers: one result per payment, or a refusal of the whole batch.
    async fn pay_many(&self, request: Request<proto::PayBatchRequest>) -> Result<Vec<proto::PaymentResult>, Refusal> {
        let psp = auth::psp(&request)?;
        let payer = self.switch.active_participant(&psp)?;
        let payments = request.into_inner().payments;
        if payments.is_empty() || payments.len() > BATCH_SIZE_MAX {
            let message = format!("a batch holds 1 to {BATCH_SIZE_MAX} payments");
            return Err(Refusal::field(Reason::BatchSizeOutOfRange, "payments", message));
        }
        // A whole batch is admitted or none of it, before any work on it; `commit_prepared`
        // then never refuses part of it for want of ledger room.
        let _permit = self.gate.admit(&psp, payments.len() as u64)?;
        let requests: Vec<(&proto::PayRequest, Result<(), Refusal>)> =
            payments.iter().map(|payment| (payment, Ok(()))).collect();
        let (answers, refused_whole) = pay_group(&self.switch, &payer, &requests).await;
        if let Some(refusal) = refused_whole {
            return Err(refusal);
        }
        // The call answers once every item is final (payments.proto): items to confirming payees
        // wait for their payee's decision or deadline, each on a task of its own, all at once.
        let mut waiting = Vec::new();
        let mut results: Vec<Option<proto::PaymentResult>> = Vec::with_capacity(payments.len());
        for (position, (answer, payment)) in answers.into_iter().zip(&payments).enumerate() {
            match answer {
                Answer::Now(answer) => results
                    .push(Some(answer.unwrap_or_else(|refusal| result_message(&payment.payment_id, Err(refusal))))),
                Answer::AwaitPayee { id, deadline, accepted_at, waiter } => {
                    let (switch, payment_id) = (Arc::clone(&self.switch), payment.payment_id.clone());
                    waiting.push((
                        position,
                        tokio::spawn(async move {
                            let answer = final_answer(&switch, &payment_id, id, deadline, accepted_at, waiter).await;
                            answer.unwrap_or_else(|refusal| result_message(&payment_id, Err(refusal)))
                        }),
                    ));
                    results.push(None);
                }
            }
        }
        for (position, task) in waiting {
            let answer = task.await.unwrap_or_else(|_| {
                result_message(&payments[position].payment_id, Err(Refusal::new(Reason::Internal, "answer lost")))
            });
            results[position] = Some(answer);
        }
        Ok(results
            .into_iter()
            .zip(&payments)
            .map(|(result, payment)| {
                result.unwrap_or_else(|| {
                    result_message(&payment.payment_id, Err(Refusal::new(Reason::Internal, "payment lost its outcome")))
                })
            })
            .collect())
    }
}

/// Counts a batch's answers by (state, reason), then adds each count once.
pub(super) fn answered_batch<'a>(
    switch: &Switch,
    results: impl IntoIterator<Item = &'a proto::PaymentResult>,
    started: Instant,
) {
    let mut counts: Vec<((i32, i32), u64)> = Vec::new();
    for result in results {
        let key = (result.state, result.reason);
        match counts.iter_mut().find(|(seen, _)| *seen == key) {
            Some((_, count)) => *count += 1,
            None => counts.push((key, 1)),
        }
    }
    let elapsed = started.elapsed();
    for ((state, reason), count) in counts {
        switch.metrics.answered(state, reason, count, elapsed);
    }
}

#[tonic::async_trait]
impl PaymentService for Payments {
    async fn pay(&self, request: Request<proto::PayRequest>) -> Result<Response<proto::PaymentResult>, Status> {
        let started = Instant::now();
        let outcome = self.pay_one(request).await;
        let (state, reason) = match &outcome {
            Ok(result) => (result.state, result.reason),
            Err(refusal) => (PaymentState::Rejected as i32, refusal.reason as i32),
        };
        self.switch.metrics.answered(state, reason, 1, started.elapsed());
        Ok(Response::new(outcome?))
    }

    async fn pay_batch(
        &self,
        request: Request<proto::PayBatchRequest>,
    ) -> Result<Response<proto::PayBatchResponse>, Status> {
        let started = Instant::now();
        let count = request.get_ref().payments.len() as u64;
        match self.pay_many(request).await {
            Ok(results) => {
                answered_batch(&self.switch, &results, started);
                Ok(Response::new(proto::PayBatchResponse { results }))
            }
            Err(refusal) => {
                let metrics = &self.switch.metrics;
                metrics.answered(PaymentState::Rejected as i32, refusal.reason as i32, count, started.elapsed());
                Err(refusal.into())
            }
        }
    }

    type PayStreamStream = tokio_stream::wrappers::ReceiverStream<Result<proto::PayStreamResponse, Status>>;

    async fn pay_stream(
        &self,
        request: Request<Streaming<proto::PayStreamRequest>>,
    ) -> Result<Response<Self::PayStreamStream>, Status> {
        let psp = auth::psp(&request)?;
        let payer = self.switch.active_participant(&psp)?;
        let incoming = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(super::pay_stream::IN_FLIGHT_MAX);
        let (switch, gate) = (Arc::clone(&self.switch), Arc::clone(&self.gate));
        tokio::spawn(super::pay_stream::serve(switch, gate, payer, incoming, sender));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(receiver)))
    }

    async fn get_payment_status(
        &self,
        request: Request<proto::GetPaymentStatusRequest>,
    ) -> Result<Response<proto::Payment>, Status> {
        let psp = auth::psp(&request)?;
        let viewer = self.switch.participants.get(&psp).ok_or_else(|| {
            Refusal::new(Reason::CallerNotRegistered, format!("{psp} is not a registered participant"))
        })?;
        if !self.status_limiter.allow(&psp) {
            return Err(RateLimiter::refusal("status queries are rate limited; back off").into());
        }
        let id = parse_id(&request.get_ref().payment_id, "payment_id")?;
        self.switch.read_barrier().await?;
        Ok(Response::new(payment_status(&self.switch, id, Some(&viewer))?))
    }

    async fn request_collect(
        &self,
        request: Request<proto::RequestCollectRequest>,
    ) -> Result<Response<proto::PaymentResult>, Status> {
        let psp = auth::psp(&request)?;
        let payee = self.switch.active_participant(&psp)?;
        Ok(Response::new(super::collect::request(&self.switch, &payee, request.get_ref()).await?))
    }

    async fn refund(&self, request: Request<proto::RefundRequest>) -> Result<Response<proto::PaymentResult>, Status> {
        let psp = auth::psp(&request)?;
        let caller = self.switch.active_participant(&psp)?;
        Ok(Response::new(super::refund::refund(&self.switch, &caller, request.get_ref()).await?))
    }

    async fn get_position(
        &self,
        request: Request<proto::GetPositionRequest>,
    ) -> Result<Response<proto::Participant>, Status> {
        let psp = auth::psp(&request)?;
        let participant = self.switch.participants.get(&psp).ok_or_else(|| {
            Refusal::new(Reason::CallerNotRegistered, format!("{psp} is not a registered participant"))
        })?;
        self.switch.read_barrier().await?;
        Ok(Response::new(participant_view(&self.switch, &participant)?))
    }
}

/// A per-PSP fixed-window rate limiter without locks: one atomic word per PSP holding the current
/// second and the count used in it.
pub struct RateLimiter {
    per_second: u32,
    windows: papaya::HashMap<String, AtomicU64>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        RateLimiter { per_second, windows: papaya::HashMap::new() }
    }

    pub fn allow(&self, psp: &str) -> bool {
        self.allow_many(psp, 1)
    }

    /// RATE_LIMITED by a per-second window: retry when the next window opens, not after the
    /// in-flight budgets' few milliseconds. A client told 20 ms would ask ~50 more times into a
    /// window that stays shut, each asking costing the switch a call (status-check storms are
    /// how real switches melt down).
    pub fn refusal(message: &'static str) -> Refusal {
        let into_second_ms = (now_unix_ns() / 1_000_000) % 1_000;
        Refusal::new(Reason::RateLimited, message).retry_after(1_000 - into_second_ms)
    }

    /// Takes `count` units of this second's budget, all or none.
    pub fn allow_many(&self, psp: &str, count: u64) -> bool {
        let second = (now_unix_ns() / 1_000_000_000) & 0xffff_ffff;
        let windows = self.windows.pin();
        let window = match windows.get(psp) {
            Some(window) => window,
            None => windows.get_or_insert(psp.to_string(), AtomicU64::new(0)),
        };
        let mut current = window.load(Ordering::Relaxed);
        loop {
            let (window_second, used) = (current >> 32, current & 0xffff_ffff);
            let used = if window_second == second { used } else { 0 };
            if used + count > u64::from(self.per_second) {
                return false;
            }
            let next = (second << 32) | (used + count);
            match window.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_second_refusal_says_to_retry_when_the_next_second_opens() {
        let before_ms = now_unix_ns() / 1_000_000;
        let status = Status::from(RateLimiter::refusal("rate"));
        let after_ms = now_unix_ns() / 1_000_000;
        let trailer = status.metadata().get("switch-retry-after-ms").and_then(|value| value.to_str().ok());
        let retry_ms: u64 = trailer.and_then(|value| value.parse().ok()).expect("a retry-after trailer");
        // The next second's start, as seen at some moment between the two readings.
        let earliest = (before_ms / 1_000 + 1) * 1_000 - after_ms;
        let latest = (after_ms / 1_000 + 1) * 1_000 - before_ms;
        assert!((1..=1_000).contains(&retry_ms) && (earliest..=latest).contains(&retry_ms), "{retry_ms} ms");
        // Admission's budgets keep their own figure.
        assert_eq!(crate::reason::retry_after_ms(Reason::RateLimited), Some(20));
    }

    #[test]
    fn rate_limiter_counts_per_psp() {
        let limiter = RateLimiter::new(3);
        let allowed = (0..10).filter(|_| limiter.allow("bank-a")).count();
        // A second boundary inside the loop can give one more window; never more than two.
        assert!((3..=6).contains(&allowed), "{allowed}");
        assert!(limiter.allow("bank-b"), "another PSP has its own budget");
    }

    #[test]
    fn content_hash_ignores_the_deadline_only() {
        let request = proto::PayRequest {
            payer_alias: "a@bank-a".into(),
            payee_alias: "b@bank-b".into(),
            note: "rent".into(),
            currency: "INR".into(),
            deadline_unix_ms: 5,
            ..proto::PayRequest::default()
        };
        let later = proto::PayRequest { deadline_unix_ms: 9, ..request.clone() };
        assert_eq!(content_hash(&request), content_hash(&later));
        let other = proto::PayRequest { note: "rent!".into(), ..request.clone() };
        assert_ne!(content_hash(&request), content_hash(&other));
    }
}
