//! Collect (request to pay): the payee PSP asks the payer's PSP for money; the payer PSP approves
//! (the payment executes, single-phase, under the payer's cap), declines, or lets it expire.
//!
//! The collect's state is a ledger record (`tables::COLLECTS`) written in the same linked chain as
//! the events it causes, so a request and its CollectRequest, or a decision and its outcomes, are
//! durable together. A collect's request, decisions and expiry take turns on its id
//! (`Switch::collect_turns`), so it resolves once, while different collects go ahead together and
//! share ledger commits; expiry timers are re-armed after a restart from the awaiting records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ledger::{Event, ResultCode, Transfer, TransferFlags};
use prost::Message;

use super::{check_amount, parse_id};
use crate::core::{codes, ledger_refusal, now_unix_ns, record, tables, PaymentRecord, Switch};
use crate::directory::{alias_owner, check_text};
use crate::participants::Participant;
use crate::proto::{self, Decision, DeclineReason, PaymentKind, PaymentState, Reason};
use crate::reason::Refusal;

const NOTE_BYTES_MAX: usize = 140;
/// Expiry used when a request gives none (`COLLECT_EXPIRY_MS_DEFAULT`; `limits` configures it).
pub const EXPIRY_MS_DEFAULT: u64 = 30 * 60 * 1_000;
/// Furthest expiry (`COLLECT_EXPIRY_MS_MAX`; `limits` configures it).
pub const EXPIRY_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// Most collects awaiting approval per requesting PSP by default (`COLLECTS_PENDING_MAX`;
/// `limits.collects_pending_max` configures it): each holds a record and an expiry timer.
pub const COLLECTS_PENDING_MAX: usize = 100_000;

/// Collects awaiting approval, per requesting PSP. A request takes its place before it commits
/// and gives it back if the commit fails, so requests in flight together never pass
/// `limits.collects_pending_max`; the place is freed when the collect is final. The mutex is held for one
/// map update, never across an await.
#[derive(Default)]
pub struct AwaitingCounts(Mutex<HashMap<String, usize>>);

impl AwaitingCounts {
    fn counts(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // A panic elsewhere while holding it cannot leave a count half-written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for one more awaiting collect of `psp`; false at the bound `max`.
    fn reserve(&self, psp: &str, max: usize) -> bool {
        let mut counts = self.counts();
        match counts.get_mut(psp) {
            Some(count) if *count >= max => false,
            Some(count) => {
                *count += 1;
                true
            }
            None if max == 0 => false,
            None => {
                counts.insert(psp.to_string(), 1);
                true
            }
        }
    }

    /// Gives a place back (the collect is final, or its request was not written).
    fn release(&self, psp: &str) {
        if let Some(count) = self.counts().get_mut(psp) {
            *count = count.saturating_sub(1);
        }
    }

    /// Counts a collect found awaiting in storage after a restart.
    fn restore(&self, psp: &str) {
        *self.counts().entry(psp.to_string()).or_default() += 1;
    }

    /// How many of `psp`'s collects await approval.
    pub fn of(&self, psp: &str) -> usize {
        self.counts().get(psp).copied().unwrap_or(0)
    }
}

/// Frees the awaiting place of a collect of `payee_psp` once it is final (re-read: a refused
/// write leaves it awaiting). Only a caller that found the collect awaiting, in the collect's
/// turn, calls this, so a collect's place is freed once.
fn settle_count(switch: &Switch, id: u128, payee_psp: &str) -> Result<(), Refusal> {
    if !collect_of(switch, id)?.is_some_and(|collect| collect.awaiting()) {
        switch.collects_awaiting.release(payee_psp);
    }
    Ok(())
}

/// A collect request and its state (ledger record keyed by collect id).
#[derive(Clone, PartialEq, Message)]
pub struct CollectRecord {
    #[prost(string, tag = "1")]
    pub payee_alias: String,
    #[prost(string, tag = "2")]
    pub payer_alias: String,
    #[prost(string, tag = "3")]
    pub payee_psp_id: String,
    #[prost(string, tag = "4")]
    pub payer_psp_id: String,
    #[prost(uint64, tag = "5")]
    pub amount_minor: u64,
    #[prost(string, tag = "6")]
    pub currency: String,
    #[prost(string, tag = "7")]
    pub note: String,
    #[prost(uint64, tag = "8")]
    pub expiry_unix_ms: u64,
    /// `PaymentState`: AWAITING_APPROVAL until decided or expired.
    #[prost(int32, tag = "9")]
    pub state: i32,
    #[prost(int32, tag = "10")]
    pub reason: i32,
    #[prost(uint64, tag = "11")]
    pub finalized_at_unix_ns: u64,
    /// `DeclineReason` the payer PSP gave when it declined; 0 otherwise.
    #[prost(int32, tag = "12")]
    pub decline_reason: i32,
    /// When the request was recorded (switch clock at its commit: a record carries no ledger
    /// time of its own); 0 in records of earlier releases.
    #[prost(uint64, tag = "13")]
    pub requested_at_unix_ns: u64,
}

impl CollectRecord {
    fn same_request(&self, request: &proto::RequestCollectRequest) -> bool {
        self.payee_alias == request.payee_alias
            && self.payer_alias == request.payer_alias
            && self.amount_minor == request.amount_minor
            && self.currency == request.currency
            && self.note == request.note
    }

    fn awaiting(&self) -> bool {
        self.state == PaymentState::AwaitingApproval as i32
    }

    pub fn result(&self, collect_id: &[u8]) -> proto::PaymentResult {
        proto::PaymentResult {
            payment_id: collect_id.to_vec(),
            state: self.state,
            reason: self.reason,
            // Only FAILED carries its reason's code; DECLINED and EXPIRED are answers (common.proto).
            status_code: if self.state == PaymentState::Failed as i32 {
                crate::reason::code_of(Reason::try_from(self.reason).unwrap_or(Reason::Internal)) as i32
            } else {
                0
            },
            accepted_at_unix_ns: self.requested_at_unix_ns,
            finalized_at_unix_ns: self.finalized_at_unix_ns,
            decline_reason: self.decline_reason,
        }
    }
}

pub fn collect_of(switch: &Switch, id: u128) -> Result<Option<CollectRecord>, Refusal> {
    switch.read(tables::COLLECTS, &id.to_be_bytes())
}

/// Whether `psp` is one of the two PSPs of the collect `id` (false if there is no such collect).
pub fn is_party(switch: &Switch, id: u128, psp: &str) -> Result<bool, Refusal> {
    Ok(collect_of(switch, id)?.is_some_and(|collect| collect.payer_psp_id == psp || collect.payee_psp_id == psp))
}

fn outcome_event(id: u128, collect: &CollectRecord) -> proto::Event {
    proto::Event {
        kind: Some(proto::event::Kind::PaymentOutcome(proto::PaymentOutcome {
            payment_id: id.to_be_bytes().to_vec(),
            kind: PaymentKind::Collect as i32,
            state: collect.state,
            reason: collect.reason,
            payer_alias: collect.payer_alias.clone(),
            payee_alias: collect.payee_alias.clone(),
            amount_minor: collect.amount_minor,
            currency: collect.currency.clone(),
            finalized_at_unix_ns: collect.finalized_at_unix_ns,
            decline_reason: collect.decline_reason,
        })),
        ..proto::Event::default()
    }
}

/// `RequestCollect`, called by the payee PSP.
pub async fn request(
    switch: &Arc<Switch>,
    payee: &Participant,
    request: &proto::RequestCollectRequest,
) -> Result<proto::PaymentResult, Refusal> {
    let id = parse_id(&request.collect_id, "collect_id")?;
    let currency = check_amount(switch, request.amount_minor, &request.currency)?;
    check_text(&request.note, "note", NOTE_BYTES_MAX, false)?;
    if alias_owner(&request.payee_alias, "payee_alias")? != &*payee.psp_id {
        return Err(Refusal::field(Reason::AliasOwnedByOtherPsp, "payee_alias", "the payee alias is not the caller's"));
    }
    alias_owner(&request.payer_alias, "payer_alias")?;
    if switch.directory.resolve(&request.payee_alias).is_none() {
        return Err(Refusal::field(Reason::OwnAliasNotRegistered, "payee_alias", "the payee alias is not registered"));
    }
    let payer_entry = switch
        .directory
        .resolve(&request.payer_alias)
        .ok_or_else(|| Refusal::field(Reason::UnknownAlias, "payer_alias", "no such alias"))?;
    if payer_entry.psp == payee.psp_id {
        return Err(Refusal::new(Reason::OnUsNotSupported, "payer and payee are at the same PSP"));
    }
    let payer = switch
        .participants
        .get(&payer_entry.psp)
        .ok_or_else(|| Refusal::new(Reason::Internal, "alias of an unregistered PSP"))?;
    if !payer.is_active() {
        return Err(Refusal::new(Reason::CounterpartySuspended, "the payer's PSP is suspended"));
    }
    if payer.currency != currency.code || payee.currency != currency.code {
        return Err(Refusal::field(Reason::CurrencyMismatch, "currency", "a participant holds another currency"));
    }
    let limits = &switch.config.limits;
    let now_ms = now_unix_ns() / 1_000_000;
    if request.expiry_unix_ms != 0 && request.expiry_unix_ms <= now_ms {
        return Err(Refusal::field(Reason::DeadlinePassed, "expiry_unix_ms", "the expiry has passed"));
    }
    if request.expiry_unix_ms > now_ms + limits.collect_expiry_ms_max {
        return Err(Refusal::field(Reason::DeadlineTooFar, "expiry_unix_ms", "the expiry is too far ahead"));
    }
    let expiry_unix_ms =
        if request.expiry_unix_ms == 0 { now_ms + limits.collect_expiry_ms_default } else { request.expiry_unix_ms };
    // The CollectRequest is an event for the payer's PSP (errors.proto, EVENT_BACKLOG_FULL).
    let outbox = switch.events.outbox(&switch.ledger, &payer.psp_id).map_err(ledger_refusal)?;
    if outbox.backlog() >= limits.event_backlog_max {
        return Err(Refusal::new(Reason::EventBacklogFull, "the payer PSP has too many unacknowledged events"));
    }

    let _turn = switch.collect_turns.lock(id).await;
    if let Some(existing) = collect_of(switch, id)? {
        return if existing.same_request(request) {
            Ok(existing.result(&request.collect_id))
        } else {
            Err(Refusal::field(Reason::PaymentIdConflict, "collect_id", "collect id already used with other content"))
        };
    }
    if switch.ledger.lookup_transfers(&[id]).map_err(ledger_refusal)?[0].is_some() {
        return Err(Refusal::field(Reason::PaymentIdConflict, "collect_id", "the id belongs to a payment"));
    }
    if !switch.collects_awaiting.reserve(&payee.psp_id, limits.collects_pending_max) {
        return Err(Refusal::new(Reason::CollectsPendingLimit, "too many of this PSP's collects await approval"));
    }
    let collect = CollectRecord {
        payee_alias: request.payee_alias.clone(),
        payer_alias: request.payer_alias.clone(),
        payee_psp_id: payee.psp_id.to_string(),
        payer_psp_id: payer.psp_id.to_string(),
        amount_minor: request.amount_minor,
        currency: currency.code.clone(),
        note: request.note.clone(),
        expiry_unix_ms,
        state: PaymentState::AwaitingApproval as i32,
        reason: 0,
        finalized_at_unix_ns: 0,
        decline_reason: 0,
        requested_at_unix_ns: now_unix_ns(),
    };
    let ask = proto::Event {
        kind: Some(proto::event::Kind::CollectRequest(proto::CollectRequest {
            collect_id: request.collect_id.clone(),
            payee_alias: request.payee_alias.clone(),
            payee_psp_id: payee.psp_id.to_string(),
            payee_display_name: switch
                .directory
                .resolve(&request.payee_alias)
                .map(|e| e.display_name.to_string())
                .unwrap_or_default(),
            payer_alias: request.payer_alias.clone(),
            amount_minor: request.amount_minor,
            currency: currency.code.clone(),
            note: request.note.clone(),
            expiry_unix_ms,
        })),
        // Stored with the event: an outbox record has no ledger time of its own.
        recorded_at_unix_ns: collect.requested_at_unix_ns,
        ..proto::Event::default()
    };
    let events = vec![
        record(tables::COLLECTS, id.to_be_bytes(), collect.encode_to_vec(), true),
        crate::events::append(&payer.psp_id, &ask, false),
    ];
    let written = match switch.submit(events).await {
        Ok(results) if results.iter().all(|code| *code == ResultCode::Ok) => Ok(()),
        Ok(results) => Err(Refusal::new(Reason::Internal, format!("ledger answered {:?}", results.to_vec()))),
        Err(refusal) => Err(refusal),
    };
    if let Err(refusal) = written {
        switch.collects_awaiting.release(&payee.psp_id);
        return Err(refusal);
    }
    // Armed as soon as the collect is durable, so it expires even if what follows fails.
    arm_expiry(Arc::clone(switch), id, expiry_unix_ms);
    switch.events.committed(&switch.ledger, &payer.psp_id, 1).map_err(ledger_refusal)?;
    Ok(collect.result(&request.collect_id))
}

/// A declining PSP's reason as sent; a value this release does not know reads as OTHER, and a
/// decline without one as UNSPECIFIED.
pub fn decline_reason(sent: i32) -> DeclineReason {
    DeclineReason::try_from(sent).unwrap_or(DeclineReason::Other)
}

/// The payer PSP's decision on a collect addressed to it.
pub async fn decide(switch: &Arc<Switch>, payer_psp: &str, decision: &proto::CollectDecision) -> Result<(), Refusal> {
    let id = parse_id(&decision.collect_id, "collect_id")?;
    let accept = match Decision::try_from(decision.decision) {
        Ok(Decision::Accept) => true,
        Ok(Decision::Decline) => false,
        _ => return Err(Refusal::field(Reason::FieldRequired, "decision", "decision must be ACCEPT or DECLINE")),
    };
    let _turn = switch.collect_turns.lock(id).await;
    let no_decision_pending = || Refusal::new(Reason::NoDecisionPending, "no collect request to you has this id");
    let not_found = || Refusal::field(Reason::PaymentNotFound, "collect_id", "no such collect");
    let Some(collect) = collect_of(switch, id)? else {
        // Perhaps a payment of the caller's: a party, but not asked for this decision.
        let transfer = switch.ledger.lookup_transfers(&[id]).map_err(ledger_refusal)?.into_iter().next().flatten();
        let caller = switch.participants.get(payer_psp);
        let party = transfer.zip(caller).is_some_and(|(record, caller)| {
            let transfer = &record.stored.transfer;
            transfer.debit_account_id == caller.account_id || transfer.credit_account_id == caller.account_id
        });
        return Err(if party { no_decision_pending() } else { not_found() });
    };
    if collect.payer_psp_id != payer_psp {
        return Err(if collect.payee_psp_id == payer_psp { no_decision_pending() } else { not_found() });
    }
    if !collect.awaiting() {
        return settled(&collect, accept);
    }
    let payee_psp = collect.payee_psp_id.clone();
    let outcome = if collect.expiry_unix_ms <= now_unix_ns() / 1_000_000 {
        finish(switch, id, collect, PaymentState::Expired, Reason::CollectExpired)
            .await
            .and(Err(Refusal::new(Reason::CollectExpired, "the collect request expired")))
    } else if accept {
        execute(switch, id, collect).await
    } else {
        // The payer's reason travels with the collect's final state to the requester.
        let declined = CollectRecord { decline_reason: decline_reason(decision.decline_reason) as i32, ..collect };
        finish(switch, id, declined, PaymentState::Declined, Reason::PayerDeclined).await
    };
    settle_count(switch, id, &payee_psp)?;
    outcome
}

/// The receipt of a decision on a collect that is final (events.proto, DecisionReceipt): the
/// same decision again gets the first one's receipt (OK, or why the approved payment failed); a
/// decision after the expiry gets COLLECT_EXPIRED; another decision ALREADY_DECIDED.
fn settled(collect: &CollectRecord, accept: bool) -> Result<(), Refusal> {
    let state = PaymentState::try_from(collect.state).unwrap_or(PaymentState::Unspecified);
    match (state, accept) {
        (PaymentState::Completed, true) | (PaymentState::Declined, false) => Ok(()),
        (PaymentState::Failed, true) => {
            let reason = Reason::try_from(collect.reason).unwrap_or(Reason::Internal);
            Err(Refusal::new(reason, "the approved collect could not execute"))
        }
        (PaymentState::Expired, _) => Err(Refusal::new(Reason::CollectExpired, "the collect request expired")),
        _ => Err(Refusal::new(Reason::AlreadyDecided, "the collect is already final")),
    }
}

/// Executes an approved collect: the payment, the collect's final state, and both outcomes.
async fn execute(switch: &Arc<Switch>, id: u128, collect: CollectRecord) -> Result<(), Refusal> {
    let (payer, payee) = (participant(switch, &collect.payer_psp_id)?, participant(switch, &collect.payee_psp_id)?);
    let ledger_number = switch.config.currency(&collect.currency).map_or(payer.ledger, |currency| currency.ledger);
    let metadata = PaymentRecord {
        payer_alias: collect.payer_alias.clone(),
        payee_alias: collect.payee_alias.clone(),
        note: collect.note.clone(),
        deadline_unix_ms: collect.expiry_unix_ms,
        currency: collect.currency.clone(),
        kind: PaymentKind::Collect as i32,
        original_payment_id: Vec::new(),
        // Only a push payment's credit is built back from its record (`events::read`).
        payer_display_name: String::new(),
    };
    let transfer = Transfer {
        id,
        debit_account_id: payer.account_id,
        credit_account_id: payee.account_id,
        amount: u128::from(collect.amount_minor),
        ledger: ledger_number,
        code: codes::PAYMENT,
        flags: TransferFlags(TransferFlags::LINKED),
        ..Transfer::default()
    };
    let done =
        CollectRecord { state: PaymentState::Completed as i32, finalized_at_unix_ns: now_unix_ns(), ..collect.clone() };
    let outcome = outcome_event(id, &done);
    let events = vec![
        record(tables::COLLECTS, id.to_be_bytes(), done.encode_to_vec(), true),
        record(tables::PAYMENTS, id.to_be_bytes(), metadata.encode_to_vec(), true),
        Event::CreateTransfer(transfer),
        crate::events::append(&payee.psp_id, &outcome, true),
        crate::events::append(&payer.psp_id, &outcome, false),
    ];
    let results = switch.submit(events).await?;
    match results[2] {
        ResultCode::Ok => {
            switch.events.committed(&switch.ledger, &payee.psp_id, 1).map_err(ledger_refusal)?;
            switch.events.committed(&switch.ledger, &payer.psp_id, 1).map_err(ledger_refusal)?;
            switch.metrics.completed(&payer.psp_id, &payee.psp_id, collect.amount_minor);
            Ok(())
        }
        ResultCode::ExceedsCredits => {
            finish(switch, id, collect, PaymentState::Failed, Reason::InsufficientLiquidity).await?;
            Err(Refusal::new(Reason::InsufficientLiquidity, "the payer PSP's net debit cap does not cover it"))
        }
        // A push payment took the id after the collect was requested: the request checked that
        // no payment had it, but a payment does not read collects (that would cost every
        // payment a storage read). The collect cannot become a payment under an id that names
        // another, so it ends here, with the reason, rather than waiting for its expiry.
        code if code.is_id_conflict() => {
            finish(switch, id, collect, PaymentState::Failed, Reason::PaymentIdConflict).await?;
            Err(Refusal::field(
                Reason::PaymentIdConflict,
                "collect_id",
                "a payment made after the collect was requested has its id; the collect failed",
            ))
        }
        code => Err(Refusal::new(Reason::Internal, format!("ledger answered {code}"))),
    }
}

fn participant(switch: &Switch, psp: &str) -> Result<Arc<Participant>, Refusal> {
    switch.participants.get(psp).ok_or_else(|| Refusal::new(Reason::Internal, "collect of an unknown participant"))
}

/// Ends a collect without a payment (declined, expired, failed) and tells both PSPs.
async fn finish(
    switch: &Switch,
    id: u128,
    collect: CollectRecord,
    state: PaymentState,
    reason: Reason,
) -> Result<(), Refusal> {
    let done =
        CollectRecord { state: state as i32, reason: reason as i32, finalized_at_unix_ns: now_unix_ns(), ..collect };
    let outcome = outcome_event(id, &done);
    let events = vec![
        record(tables::COLLECTS, id.to_be_bytes(), done.encode_to_vec(), true),
        crate::events::append(&done.payee_psp_id, &outcome, true),
        crate::events::append(&done.payer_psp_id, &outcome, false),
    ];
    let results = switch.submit(events).await?;
    if results.iter().any(|code| *code != ResultCode::Ok) {
        return Err(Refusal::new(Reason::Internal, format!("ledger answered {:?}", results.to_vec())));
    }
    switch.events.committed(&switch.ledger, &done.payee_psp_id, 1).map_err(ledger_refusal)?;
    switch.events.committed(&switch.ledger, &done.payer_psp_id, 1).map_err(ledger_refusal)?;
    Ok(())
}

/// Expires a collect at its expiry unless it was decided first.
pub fn arm_expiry(switch: Arc<Switch>, id: u128, expiry_unix_ms: u64) {
    // Weak while sleeping, as the payment deadline timers (`confirm::arm_deadline`).
    let switch = Arc::downgrade(&switch);
    tokio::spawn(async move {
        let remaining = Duration::from_millis(expiry_unix_ms.saturating_sub(now_unix_ns() / 1_000_000));
        tokio::time::sleep(remaining).await;
        let Some(switch) = switch.upgrade() else { return };
        let _turn = switch.collect_turns.lock(id).await;
        match collect_of(&switch, id) {
            Ok(Some(collect)) if collect.awaiting() => {
                let payee_psp = collect.payee_psp_id.clone();
                let expired = finish(&switch, id, collect, PaymentState::Expired, Reason::CollectExpired).await;
                if let Err(refusal) = settle_count(&switch, id, &payee_psp) {
                    tracing::error!(collect = id, reason = ?refusal.reason, "reading a collect failed");
                }
                if let Err(refusal) = expired {
                    tracing::error!(collect = id, reason = ?refusal.reason, "expiring a collect failed");
                }
            }
            Ok(_) => {}
            Err(refusal) => tracing::error!(collect = id, reason = ?refusal.reason, "reading a collect failed"),
        }
    });
}

/// Re-arms the expiry timers of collects still awaiting approval, and counts them. Runs before
/// the switch serves, so no request or decision can interleave.
pub fn rearm_after_restart(switch: &Arc<Switch>) -> Result<usize, Refusal> {
    let mut armed = 0;
    let collects = crate::records::all::<CollectRecord>(&switch.ledger, tables::COLLECTS)
        .map_err(|error| switch.read_refusal(error))?;
    for (key, collect) in collects {
        let key = <[u8; 16]>::try_from(key.as_slice()).map_err(|_| {
            switch.read_refusal(crate::records::CorruptRecord::new::<CollectRecord>(tables::COLLECTS, &key).into())
        })?;
        if collect.awaiting() {
            switch.collects_awaiting.restore(&collect.payee_psp_id);
            arm_expiry(Arc::clone(switch), u128::from_be_bytes(key), collect.expiry_unix_ms);
            armed += 1;
        }
    }
    Ok(armed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awaiting_places_are_bounded_per_psp_and_given_back() {
        let counts = AwaitingCounts::default();
        let max = 3;
        for _ in 0..max {
            assert!(counts.reserve("bank-a", max));
        }
        assert!(!counts.reserve("bank-a", max), "at the bound");
        assert_eq!(counts.of("bank-a"), max);
        assert!(counts.reserve("bank-b", max), "another PSP has its own places");
        counts.release("bank-a");
        assert!(counts.reserve("bank-a", max), "a freed place can be taken again");
        assert!(!counts.reserve("bank-a", max));
        assert!(!counts.reserve("bank-d", 0), "a bound of 0 admits none");
        // Restored after a restart: counted, and releases never go below zero.
        counts.restore("bank-c");
        counts.release("bank-c");
        counts.release("bank-c");
        assert_eq!((counts.of("bank-b"), counts.of("bank-c"), counts.of("bank-z")), (1, 0, 0));
    }
}
