//! Confirmed mode: a payment to a CONFIRMED-mode payee reserves the amount (a pending ledger
//! transfer) and asks the payee PSP on its event stream; the payee's accept posts it, its decline
//! voids it, and its silence past the deadline voids it. Exactly one resolution can win: the
//! ledger resolves a pending transfer at most once, so a late accept after a timeout is refused.
//!
//! Each resolution is a deterministic ledger transfer id derived from the payment id and its
//! kind, so a repeated decision (or a timer firing after a restart) is idempotent, and the kind
//! of a void (declined or timed out) can be read back from the ledger. The resolution and the
//! payee's `PaymentOutcome` event commit together.
//!
//! The payer's call waits for the outcome on a watch channel registered *before* the payment is
//! submitted (a fast payee cannot decide before anyone listens); waiting is bounded by the
//! deadline. After a restart, deadline timers are re-armed from the ledger's open pending
//! transfers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger::{Event, PendingStatus, ResultCode, Transfer, TransferFlags, TransferRecord};
use tokio::sync::watch;

use crate::core::{ledger_refusal, now_unix_ns, Switch};
use crate::proto::{self, DeclineReason, PaymentKind, PaymentState, Reason};
use crate::reason::Refusal;

/// Most confirmed-mode payments awaiting their payee at once.
pub const AWAITING_MAX: usize = 100_000;
/// How long after the deadline a payer's call keeps waiting for the timeout to commit.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// How a pending payment ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Accept,
    Decline,
    Timeout,
}

impl Resolution {
    fn tag(self) -> &'static [u8] {
        match self {
            Resolution::Accept => b"accept",
            Resolution::Decline => b"decline",
            Resolution::Timeout => b"timeout",
        }
    }
}

/// The ledger transfer id of a payment's resolution.
pub fn resolution_id(payment: u128, resolution: Resolution) -> u128 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&payment.to_be_bytes());
    hasher.update(resolution.tag());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    // Never a reserved id (0 or all ones).
    u128::from_be_bytes(bytes).clamp(1, u128::MAX - 1)
}

/// A payment's final state as the ledger records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub state: PaymentState,
    pub reason: Reason,
    pub finalized_at_unix_ns: u64,
    /// For DECLINED: the payee's reason (see [`with_decline_reason`]).
    pub decline_reason: DeclineReason,
}

impl Outcome {
    fn new(state: PaymentState, reason: Reason, finalized_at_unix_ns: u64) -> Outcome {
        Outcome { state, reason, finalized_at_unix_ns, decline_reason: DeclineReason::Unspecified }
    }
}

/// The payee's decline reason is stored in the declining void's `user_data_32`; reading it back
/// takes a second lookup, which only a declined payment needs.
pub fn with_decline_reason(switch: &Switch, payment: u128, outcome: Outcome) -> Result<Outcome, Refusal> {
    if outcome.state != PaymentState::Declined || outcome.reason != Reason::PayeeDeclined {
        return Ok(outcome);
    }
    let decline = resolution_id(payment, Resolution::Decline);
    let stored = switch.ledger.lookup_transfers(&[decline]).map_err(ledger_refusal)?.into_iter().next().flatten();
    let sent = stored.map_or(0, |record| record.stored.transfer.user_data_32);
    let decline_reason = DeclineReason::try_from(i32::try_from(sent).unwrap_or(-1)).unwrap_or(DeclineReason::Other);
    Ok(Outcome { decline_reason, ..outcome })
}

/// Reads a payment's state from its ledger record: completed, failed, pending, declined, expired.
/// A declined payment's `decline_reason` is left UNSPECIFIED here ([`with_decline_reason`]).
pub fn state_of(payment: u128, record: &TransferRecord) -> Outcome {
    let transfer = &record.stored.transfer;
    if record.stored.result != ResultCode::Ok {
        let reason = match record.stored.result {
            ResultCode::ExceedsCredits => Reason::InsufficientLiquidity,
            code if code.name().starts_with("overflows") => Reason::BalanceOverflow,
            _ => Reason::Internal,
        };
        return Outcome::new(PaymentState::Failed, reason, transfer.timestamp);
    }
    if !transfer.flags.pending() {
        return Outcome::new(PaymentState::Completed, Reason::Unspecified, transfer.timestamp);
    }
    match record.resolution {
        None => Outcome::new(PaymentState::Pending, Reason::Unspecified, 0),
        Some(resolution) => {
            let at = resolution.timestamp;
            match resolution.status {
                PendingStatus::Posted => Outcome::new(PaymentState::Completed, Reason::Unspecified, at),
                PendingStatus::Voided if resolution.resolved_by == resolution_id(payment, Resolution::Decline) => {
                    Outcome::new(PaymentState::Declined, Reason::PayeeDeclined, at)
                }
                PendingStatus::Voided | PendingStatus::Expired => {
                    Outcome::new(PaymentState::Expired, Reason::PayeeTimeout, at)
                }
                PendingStatus::Pending => Outcome::new(PaymentState::Pending, Reason::Unspecified, 0),
            }
        }
    }
}

/// Payments whose payer is waiting for the payee.
#[derive(Default)]
pub struct Confirmations {
    waiting: papaya::HashMap<u128, watch::Sender<Option<Outcome>>>,
    count: AtomicUsize,
}

impl Confirmations {
    /// Registers interest in a payment's outcome before it is submitted.
    pub fn register(&self, payment: u128) -> Result<Waiter, Refusal> {
        let waiting = self.waiting.pin();
        if let Some(sender) = waiting.get(&payment) {
            return Ok(sender.subscribe());
        }
        if self.count.fetch_add(1, Ordering::AcqRel) >= AWAITING_MAX {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::new(Reason::SwitchBusy, "too many payments await their payee"));
        }
        let (sender, receiver) = watch::channel(None);
        waiting.insert(payment, sender);
        Ok(receiver)
    }

    /// Payments whose payer is waiting for the payee's answer.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells every waiter the outcome and forgets the payment.
    pub fn finish(&self, payment: u128, outcome: Option<Outcome>) {
        if let Some(sender) = self.waiting.pin().remove(&payment) {
            self.count.fetch_sub(1, Ordering::AcqRel);
            let _ = sender.send(outcome);
        }
    }
}

/// A payer's view of a payment awaiting its payee: the outcome, once there is one.
pub type Waiter = watch::Receiver<Option<Outcome>>;

/// Waits for a payment's outcome until its deadline (plus grace).
pub async fn wait(mut receiver: Waiter, deadline_unix_ms: u64) -> Option<Outcome> {
    let remaining = Duration::from_millis(deadline_unix_ms.saturating_sub(now_unix_ns() / 1_000_000)) + DEADLINE_GRACE;
    let waited = tokio::time::timeout(remaining, receiver.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(outcome)) => *outcome,
        _ => None,
    }
}

/// Resolves a pending payment (accept, decline, time out) with the payee's outcome event.
/// Returns the outcome if this call or an earlier one resolved it.
pub async fn resolve(
    switch: &Switch,
    payment: u128,
    resolution: Resolution,
    decline_reason: DeclineReason,
) -> Result<Outcome, Refusal> {
    let record = switch.ledger.lookup_transfers(&[payment]).map_err(ledger_refusal)?.into_iter().next().flatten();
    let Some(record) = record.filter(|record| record.stored.transfer.flags.pending()) else {
        return Err(Refusal::new(Reason::NoDecisionPending, "no such pending payment"));
    };
    resolve_pending(switch, record.stored.transfer, resolution, decline_reason).await
}

/// [`resolve`] for a pending transfer the caller has just read (a pending transfer's record
/// never changes; its resolution is stored apart), saving the lookup.
pub async fn resolve_pending(
    switch: &Switch,
    pending: Transfer,
    resolution: Resolution,
    decline_reason: DeclineReason,
) -> Result<Outcome, Refusal> {
    let payment = pending.id;
    let flags = match resolution {
        Resolution::Accept => TransferFlags::POST_PENDING,
        Resolution::Decline | Resolution::Timeout => TransferFlags::VOID_PENDING,
    };
    let resolving = Transfer {
        id: resolution_id(payment, resolution),
        pending_id: payment,
        // The payee's reason, durable with the decision (DeclineReason values are small and
        // non-negative; prost keeps unknown ones as sent, which `decide` maps to OTHER).
        user_data_32: if resolution == Resolution::Decline {
            u32::try_from(decline_reason as i32).unwrap_or(0)
        } else {
            0
        },
        flags: TransferFlags(flags | TransferFlags::LINKED),
        ..Transfer::default()
    };
    let payee = switch
        .participants
        .by_account(pending.credit_account_id)
        .ok_or_else(|| Refusal::new(Reason::Internal, "pending payment to an unknown participant"))?;
    let (state, reason) = match resolution {
        Resolution::Accept => (PaymentState::Completed, Reason::Unspecified),
        Resolution::Decline => (PaymentState::Declined, Reason::PayeeDeclined),
        Resolution::Timeout => (PaymentState::Expired, Reason::PayeeTimeout),
    };
    // Only a decline carries the payee's reason (a reason sent with an ACCEPT means nothing).
    let decline_reason = if resolution == Resolution::Decline { decline_reason } else { DeclineReason::Unspecified };
    // Stored without the aliases, currency and time: `events::read` fills them in from the
    // payment's metadata record and the resolution, so a decision costs no extra read here.
    let event = proto::Event {
        kind: Some(proto::event::Kind::PaymentOutcome(proto::PaymentOutcome {
            payment_id: payment.to_be_bytes().to_vec(),
            kind: PaymentKind::Push as i32,
            state: state as i32,
            reason: reason as i32,
            decline_reason: decline_reason as i32,
            amount_minor: u64::try_from(pending.amount).unwrap_or(u64::MAX),
            ..proto::PaymentOutcome::default()
        })),
        ..proto::Event::default()
    };
    let events = vec![Event::CreateTransfer(resolving), crate::events::append(&payee.psp_id, &event, false)];
    let results = switch.submit(events).await?;
    if results[0] == ResultCode::Ok {
        switch.events.committed(&switch.ledger, &payee.psp_id, 1).map_err(ledger_refusal)?;
        if resolution == Resolution::Accept {
            if let Some(payer) = switch.participants.by_account(pending.debit_account_id) {
                let amount = u64::try_from(pending.amount).unwrap_or(u64::MAX);
                switch.metrics.completed(&payer.psp_id, &payee.psp_id, amount);
            }
        }
    }
    let outcome = if results[0] == ResultCode::Ok {
        // This resolution took effect, so its outcome is known without reading it back: the
        // ledger stamps a resolution with its own event's time (the submission's first), and
        // the payee's reason is the one just stored.
        Some(Outcome { state, reason, finalized_at_unix_ns: results.timestamp, decline_reason })
    } else {
        // Another resolution won, or this one is a retry: the ledger holds the final state.
        let record = switch.ledger.lookup_transfers(&[payment]).map_err(ledger_refusal)?.into_iter().next().flatten();
        match record.map(|record| state_of(payment, &record)) {
            Some(outcome) => Some(with_decline_reason(switch, payment, outcome)?),
            None => None,
        }
    };
    if let Some(outcome) = outcome.filter(|outcome| outcome.state != PaymentState::Pending) {
        switch.confirmations.finish(payment, Some(outcome));
    }
    match (results[0], outcome) {
        (ResultCode::Ok | ResultCode::Exists, Some(outcome)) => Ok(outcome),
        // The same decision again with another reason: the first one stands.
        (code, Some(outcome)) if code.is_id_conflict() => Ok(outcome),
        (ResultCode::PendingTransferAlreadyPosted | ResultCode::PendingTransferAlreadyVoided, _)
        | (ResultCode::PendingTransferExpired, _) => {
            Err(Refusal::new(Reason::AlreadyDecided, "the payment is already final"))
        }
        (code, _) => Err(Refusal::new(Reason::Internal, format!("ledger answered {code}"))),
    }
}

/// Voids a pending payment at its deadline unless the payee decided first.
pub fn arm_deadline(switch: Arc<Switch>, payment: u128, deadline_unix_ms: u64) {
    // A sleeping timer must not keep a stopped switch (and its ledger's files) alive: it holds a
    // weak reference, and a restart re-arms what is still pending.
    let switch = Arc::downgrade(&switch);
    tokio::spawn(async move {
        let remaining = Duration::from_millis(deadline_unix_ms.saturating_sub(now_unix_ns() / 1_000_000));
        tokio::time::sleep(remaining).await;
        let Some(switch) = switch.upgrade() else { return };
        match resolve(&switch, payment, Resolution::Timeout, DeclineReason::Unspecified).await {
            Ok(_) => {}
            Err(refusal) if refusal.reason == Reason::AlreadyDecided => {}
            Err(refusal) => tracing::error!(payment, reason = ?refusal.reason, "timing out a pending payment failed"),
        }
    });
}

/// Re-arms the deadline timers of payments that were pending when the switch stopped.
pub fn rearm_after_restart(switch: &Arc<Switch>) -> Result<usize, Refusal> {
    let open = switch
        .ledger
        .store()
        .and_then(|store| Ok(store.open_pending()?))
        .map_err(|error| Refusal::new(Reason::Internal, error.to_string()))?;
    let mut armed = 0;
    for pending in open {
        let payment = pending.transfer.id;
        let deadline = crate::services::payments::deadline_of(switch, payment)?.unwrap_or(0);
        arm_deadline(Arc::clone(switch), payment, deadline);
        armed += 1;
    }
    Ok(armed)
}
