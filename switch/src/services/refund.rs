//! Refunds: the payee PSP of a completed payment pays all or part of it back.
//!
//! A refund is a single-phase transfer from the refunding PSP's position to the original payer's,
//! committed in one linked chain with the payment's updated refund total, the refund's own
//! metadata and the original payer PSP's `RefundNotice`. The total lives in a record per original
//! payment; refunds of one payment take turns on its id (`Switch::refund_turns`), so the
//! read-modify-write of the total never races and their sum can never pass the original amount.
//! A refund also takes the turn of its own id, so two requests reusing one refund id for
//! different payments meet as a retry and a conflict rather than in the ledger.

use std::sync::Arc;

use ledger::{ResultCode, Transfer, TransferFlags};
use prost::Message;

use super::{check_amount, parse_id};
use crate::core::{codes, ledger_refusal, record, tables, PaymentRecord, Switch};
use crate::directory::check_text;
use crate::participants::Participant;
use crate::proto::{self, PaymentKind, PaymentState, Reason};
use crate::reason::Refusal;

/// Most completed refunds of one payment (`REFUNDS_PER_PAYMENT_MAX`).
pub const REFUNDS_PER_PAYMENT_MAX: usize = 100;
const NOTE_BYTES_MAX: usize = 140;

/// What has been refunded of one payment (ledger record keyed by the original payment id).
#[derive(Clone, PartialEq, Message)]
pub struct RefundsRecord {
    #[prost(uint64, tag = "1")]
    pub refunded_minor: u64,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub refund_ids: Vec<Vec<u8>>,
}

/// The refunds recorded against a payment.
pub fn refunds_of(switch: &Switch, original: u128) -> Result<RefundsRecord, Refusal> {
    // No record: nothing refunded yet. A record that does not decode is an error, never 0.
    Ok(switch.read(tables::REFUNDS, &original.to_be_bytes())?.unwrap_or_default())
}

/// A payment's refunds from its stored record, read in a batch (none if it has no record).
pub fn decode_refunds(switch: &Switch, original: u128, bytes: Option<Vec<u8>>) -> Result<RefundsRecord, Refusal> {
    Ok(switch.decoded(tables::REFUNDS, &original.to_be_bytes(), bytes)?.unwrap_or_default())
}

fn content_hash(request: &proto::RefundRequest) -> u128 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&request.original_payment_id);
    for part in [&request.currency, &request.note] {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    u128::from_be_bytes(bytes)
}

fn completed(request: &proto::RefundRequest, finalized_at: u64) -> proto::PaymentResult {
    proto::PaymentResult {
        payment_id: request.refund_id.clone(),
        state: PaymentState::Completed as i32,
        accepted_at_unix_ns: finalized_at,
        finalized_at_unix_ns: finalized_at,
        ..proto::PaymentResult::default()
    }
}

/// A retry of an existing refund id: the original outcome, or a conflict.
fn existing(
    request: &proto::RefundRequest,
    stored: &ledger::TransferRecord,
    caller: &Participant,
) -> Result<proto::PaymentResult, Refusal> {
    let transfer = &stored.stored.transfer;
    let same = transfer.code == codes::REFUND
        && transfer.debit_account_id == caller.account_id
        && transfer.amount == u128::from(request.amount_minor)
        && transfer.user_data_128 == content_hash(request);
    if !same {
        return Err(Refusal::field(
            Reason::PaymentIdConflict,
            "refund_id",
            "refund id already used with other content",
        ));
    }
    match stored.stored.result {
        ResultCode::Ok => Ok(completed(request, transfer.timestamp)),
        ResultCode::ExceedsCredits => {
            Err(Refusal::new(Reason::InsufficientLiquidity, "the refunding PSP lacks liquidity"))
        }
        _ => Err(Refusal::new(Reason::BalanceOverflow, "a position would overflow")),
    }
}

pub async fn refund(
    switch: &Arc<Switch>,
    caller: &Participant,
    request: &proto::RefundRequest,
) -> Result<proto::PaymentResult, Refusal> {
    let refund_id = parse_id(&request.refund_id, "refund_id")?;
    let original = parse_id(&request.original_payment_id, "original_payment_id")?;
    let currency = check_amount(switch, request.amount_minor, &request.currency)?;
    check_text(&request.note, "note", NOTE_BYTES_MAX, false)?;
    let _turn = switch.refund_turns.lock_two(original, refund_id).await;

    let lookups = switch.ledger.lookup_transfers(&[original, refund_id]).map_err(ledger_refusal)?;
    let not_found = || Refusal::field(Reason::PaymentNotFound, "original_payment_id", "no such payment");
    let original_record = lookups[0].ok_or_else(not_found)?;
    let paid = original_record.stored.transfer;
    if caller.account_id != paid.credit_account_id && caller.account_id != paid.debit_account_id {
        return Err(not_found());
    }
    if caller.account_id != paid.credit_account_id {
        return Err(Refusal::new(Reason::RefundNotByPayee, "only the payee's PSP refunds a payment"));
    }
    if let Some(stored) = &lookups[1] {
        return existing(request, stored, caller);
    }
    let state = crate::confirm::state_of(original, &original_record);
    if paid.code != codes::PAYMENT || state.state != PaymentState::Completed {
        return Err(Refusal::new(Reason::PaymentNotRefundable, "only a completed payment can be refunded"));
    }
    if currency.ledger != paid.ledger {
        return Err(Refusal::field(Reason::CurrencyMismatch, "currency", "not the original payment's currency"));
    }
    let payer = switch
        .participants
        .by_account(paid.debit_account_id)
        .ok_or_else(|| Refusal::new(Reason::Internal, "payment from an unknown participant"))?;
    if !payer.is_active() {
        return Err(Refusal::new(Reason::CounterpartySuspended, "the original payer's PSP is suspended"));
    }
    let mut refunds = refunds_of(switch, original)?;
    let remaining = u64::try_from(paid.amount).unwrap_or(u64::MAX).saturating_sub(refunds.refunded_minor);
    if request.amount_minor > remaining {
        return Err(Refusal::new(Reason::RefundExceedsRemaining, format!("only {remaining} remains refundable")));
    }
    if refunds.refund_ids.len() >= REFUNDS_PER_PAYMENT_MAX {
        return Err(Refusal::new(Reason::RefundCountExceeded, "this payment has its maximum of refunds"));
    }
    let outbox = switch.events.outbox(&switch.ledger, &payer.psp_id).map_err(ledger_refusal)?;
    if outbox.backlog() >= switch.config.limits.event_backlog_max {
        return Err(Refusal::new(Reason::EventBacklogFull, "the payer PSP has too many unacknowledged events"));
    }

    let metadata = super::payments::payment_metadata(switch, original)?;
    refunds.refunded_minor += request.amount_minor;
    refunds.refund_ids.push(request.refund_id.clone());
    let refund_metadata = PaymentRecord {
        payer_alias: metadata.payee_alias.clone(),
        payee_alias: metadata.payer_alias.clone(),
        note: request.note.clone(),
        deadline_unix_ms: 0,
        currency: currency.code.clone(),
        kind: PaymentKind::Refund as i32,
        original_payment_id: request.original_payment_id.clone(),
        // Only a push payment's credit is built back from its record (`events::read`).
        payer_display_name: String::new(),
    };
    let transfer = Transfer {
        id: refund_id,
        debit_account_id: caller.account_id,
        credit_account_id: payer.account_id,
        amount: u128::from(request.amount_minor),
        user_data_128: content_hash(request),
        ledger: currency.ledger,
        code: codes::REFUND,
        flags: TransferFlags(TransferFlags::LINKED),
        ..Transfer::default()
    };
    let notice = proto::Event {
        kind: Some(proto::event::Kind::RefundNotice(proto::RefundNotice {
            refund_id: request.refund_id.clone(),
            original_payment_id: request.original_payment_id.clone(),
            refunding_psp_id: caller.psp_id.to_string(),
            payer_alias: metadata.payer_alias,
            payee_alias: metadata.payee_alias,
            amount_minor: request.amount_minor,
            currency: currency.code.clone(),
            note: request.note.clone(),
            original_amount_minor: u64::try_from(paid.amount).unwrap_or(u64::MAX),
            refunded_total_minor: refunds.refunded_minor,
            completed_at_unix_ns: 0,
        })),
        ..proto::Event::default()
    };
    let events = vec![
        record(tables::REFUNDS, original.to_be_bytes(), refunds.encode_to_vec(), true),
        record(tables::PAYMENTS, refund_id.to_be_bytes(), refund_metadata.encode_to_vec(), true),
        ledger::Event::CreateTransfer(transfer),
        crate::events::append(&payer.psp_id, &notice, false),
    ];
    let results = switch.submit(events).await?;
    match results[2] {
        ResultCode::Ok => {
            switch.events.committed(&switch.ledger, &payer.psp_id, 1).map_err(ledger_refusal)?;
            Ok(completed(request, results.timestamp + 2))
        }
        ResultCode::ExceedsCredits => {
            // Recorded against the refund id; its metadata went with the refused chain, so it is
            // stored now for GetPaymentStatus to show a refund (common.proto, Payment). Best
            // effort: the failure is durable already, and a missing record only blanks fields.
            let metadata = record(tables::PAYMENTS, refund_id.to_be_bytes(), refund_metadata.encode_to_vec(), false);
            if let Err(refusal) = switch.submit(vec![metadata]).await {
                tracing::warn!(reason = ?refusal.reason, "storing a failed refund's record");
            }
            Err(Refusal::new(Reason::InsufficientLiquidity, "the refunding PSP's net debit cap does not cover it"))
        }
        code => Err(Refusal::new(Reason::Internal, format!("ledger answered {code}"))),
    }
}
