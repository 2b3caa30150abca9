//! `FundIn` and `FundOut`: money between a participant's position and its currency's settlement
//! account, outside every settlement window.
//!
//! Each participant's funding total (funds in − funds out, since registration) is a ledger record
//! written in the same linked chain as the funding transfer, so that it can never disagree with
//! the transfers. It is what separates a position into its funding and its payments:
//! settlement transfers reverse each closed window's payments exactly, so
//! `balance − funding total` is the net of the open window's payments
//! (`Participant.window_net_position_minor`) without reading a single payment. Funding is rare
//! and serialised by the operator lock, which makes the read-modify-write of the total safe.
//!
//! Fund-out is `[set limit 0, total, transfer out, set limit back]`: the ledger refuses it as a
//! whole when the participant's own funds (not its cap) do not cover it. Receipts of the open
//! window are not yet settled and may not leave either; that part is checked against the position
//! just before the submission (payments running meanwhile can only be covered by the ledger's
//! own-funds check, which still holds).

use ledger::{Event, ResultCode, StoredTransfer, Transfer, TransferFlags};

use super::{parse_id, participant_view, NOTE_BYTES_MAX};
use crate::core::{codes, ledger_refusal, record, tables, Switch};
use crate::directory::check_text;
use crate::participants::{accounts, Participant};
use crate::proto::{self, Reason};
use crate::reason::Refusal;

/// Prefix of the funding-total records (settlement table), followed by the PSP id.
const FUNDING_PREFIX: &[u8] = b"funding/";

fn funding_key(psp_id: &str) -> Vec<u8> {
    [FUNDING_PREFIX, psp_id.as_bytes()].concat()
}

/// A participant's funds in minus funds out since registration (0 before its first funding).
pub fn funded_minor(switch: &Switch, psp_id: &str) -> Result<i128, Refusal> {
    let stored = switch.read::<crate::records::FundingTotal>(tables::SETTLEMENT, &funding_key(psp_id))?;
    Ok(stored.map_or(0, |total| total.0))
}

/// What a participant may withdraw: balance − reserved − its unsettled receipts (a positive open
/// window net). Never its net debit cap.
fn withdrawable_minor(switch: &Switch, participant: &Participant) -> Result<i128, Refusal> {
    let view = participant_view(switch, participant)?;
    let reserved = i128::from(view.reserved_minor);
    Ok(i128::from(view.balance_minor) - reserved - i128::from(view.window_net_position_minor.max(0)))
}

/// A funding amount: at least 1, at most 2^63-1 (every position fits the API's int64 fields);
/// funding has no per-payment maximum.
fn check_funding_amount(amount_minor: u64) -> Result<(), Refusal> {
    if amount_minor == 0 {
        return Err(Refusal::field(Reason::AmountZero, "amount_minor", "amount must be positive"));
    }
    if i64::try_from(amount_minor).is_err() {
        return Err(Refusal::field(Reason::AmountOverLimit, "amount_minor", "a funding amount is at most 2^63-1"));
    }
    Ok(())
}

/// `FundIn` (`inbound`) or `FundOut`. The caller holds the operator lock.
pub async fn fund(switch: &Switch, request: proto::FundRequest, inbound: bool) -> Result<proto::FundResult, Refusal> {
    super::operator::check_psp_id(&request.psp_id)?;
    let transfer_id = parse_id(&request.transfer_id, "transfer_id")?;
    check_funding_amount(request.amount_minor)?;
    let currency = switch.config.currency(&request.currency).ok_or_else(|| {
        Refusal::field(
            Reason::UnknownCurrency,
            "currency",
            format!("currency {:?} is not settled here", request.currency),
        )
    })?;
    check_text(&request.note, "note", NOTE_BYTES_MAX, false)?;
    let participant = super::operator::participant(switch, &request.psp_id)?;
    if currency.code != participant.currency {
        return Err(Refusal::field(Reason::CurrencyMismatch, "currency", "the participant holds another currency"));
    }
    let settlement = accounts::settlement(currency.ledger);
    let (debit, credit, code) = if inbound {
        (settlement, participant.account_id, codes::FUND_IN)
    } else {
        (participant.account_id, settlement, codes::FUND_OUT)
    };
    let transfer = Transfer {
        id: transfer_id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: u128::from(request.amount_minor),
        ledger: currency.ledger,
        code,
        // The note is part of the content a retry must repeat; the ledger keeps its hash.
        user_data_128: note_hash(&request.note),
        ..Transfer::default()
    };
    let stored = switch.ledger.lookup_transfers(&[transfer_id]).map_err(ledger_refusal)?.first().copied().flatten();
    let recorded_at = match stored {
        // A retry is answered from what was recorded, never from today's position.
        Some(original) => retried(&original.stored, &transfer)?,
        None => record_new(switch, &participant, transfer, inbound).await?,
    };
    Ok(proto::FundResult {
        transfer_id: request.transfer_id,
        recorded_at_unix_ns: recorded_at,
        participant: Some(participant_view(switch, &participant)?),
    })
}

fn note_hash(note: &str) -> u128 {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&blake3::hash(note.as_bytes()).as_bytes()[..16]);
    u128::from_be_bytes(bytes)
}

/// The answer to a retry: the original outcome when the content is the same, else a conflict.
fn retried(original: &StoredTransfer, transfer: &Transfer) -> Result<u64, Refusal> {
    let stored = &original.transfer;
    let same = (stored.debit_account_id, stored.credit_account_id, stored.amount, stored.ledger, stored.code)
        == (transfer.debit_account_id, transfer.credit_account_id, transfer.amount, transfer.ledger, transfer.code)
        && stored.user_data_128 == transfer.user_data_128;
    if !same {
        return Err(Refusal::field(Reason::PaymentIdConflict, "transfer_id", "transfer id used with other content"));
    }
    check_result(original.result, None)?;
    Ok(stored.timestamp)
}

/// Records a new funding transfer with the participant's new funding total; its ledger time.
async fn record_new(
    switch: &Switch,
    participant: &Participant,
    transfer: Transfer,
    inbound: bool,
) -> Result<u64, Refusal> {
    let amount = i128::try_from(transfer.amount).unwrap_or(i128::MAX);
    if !inbound && amount > withdrawable_minor(switch, participant)? {
        return Err(Refusal::new(
            Reason::FundOutExceedsAvailable,
            "fund-out exceeds the participant's settled own funds",
        ));
    }
    let total = funded_minor(switch, &participant.psp_id)? + if inbound { amount } else { -amount };
    let total = record(tables::SETTLEMENT, funding_key(&participant.psp_id), total.to_be_bytes().to_vec(), true);
    let (events, transfer_index) = if inbound {
        (vec![total, Event::CreateTransfer(transfer)], 1)
    } else {
        // Take the cap away for the duration of the transfer: only own funds may leave.
        let account_id = participant.account_id;
        let cap = u128::from(participant.net_debit_cap_minor);
        let linked = Transfer { flags: TransferFlags(TransferFlags::LINKED), ..transfer };
        let events = vec![
            Event::SetDebitLimit { account_id, debit_limit: 0, linked: true },
            total,
            Event::CreateTransfer(linked),
            Event::SetDebitLimit { account_id, debit_limit: cap, linked: false },
        ];
        (events, 2)
    };
    let results = switch.submit(events).await?;
    check_result(results[transfer_index], results.first().copied())?;
    let stored = switch.ledger.lookup_transfers(&[transfer.id]).map_err(ledger_refusal)?;
    stored
        .first()
        .copied()
        .flatten()
        .map(|record| record.stored.transfer.timestamp)
        .ok_or_else(|| Refusal::new(Reason::Internal, "a committed funding transfer is not found"))
}

/// The funding transfer's ledger result (and the first event's: fund-out's removal of the cap)
/// as the answer. `Exists`: a retry of the same funding, answered as the original.
fn check_result(transfer: ResultCode, first: Option<ResultCode>) -> Result<(), Refusal> {
    match (transfer, first) {
        (ResultCode::Ok | ResultCode::Exists, _) => Ok(()),
        (_, Some(ResultCode::DebitLimitBelowCurrentDebits)) | (ResultCode::ExceedsCredits, _) => {
            Err(Refusal::new(Reason::FundOutExceedsAvailable, "fund-out exceeds the participant's own funds"))
        }
        (code, _) if code.is_id_conflict() => {
            Err(Refusal::field(Reason::PaymentIdConflict, "transfer_id", "transfer id used with other content"))
        }
        (
            ResultCode::OverflowsCreditsPosted
            | ResultCode::OverflowsDebitsPosted
            | ResultCode::OverflowsCredits
            | ResultCode::OverflowsDebits,
            _,
        ) => Err(Refusal::new(Reason::BalanceOverflow, "the balance would overflow")),
        (code, _) => Err(Refusal::new(Reason::Internal, format!("ledger answered {code}"))),
    }
}
