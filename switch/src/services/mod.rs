//! The gRPC services, and the request checks they share.

pub mod collect;
pub mod directory;
pub mod events;
pub mod funding;
pub mod membership;
pub mod operator;
mod pay_stream;
pub mod payments;
pub mod refund;
pub mod settlement;

pub use pay_stream::IN_FLIGHT_MAX as PAY_STREAM_IN_FLIGHT_MAX;

use crate::config::Currency;
use crate::core::Switch;
use crate::proto::{self, Reason};
use crate::reason::Refusal;

/// Most items in one batch call (`PayBatch`, `RegisterAliasBatch`, `GetPayments`): the ledger's batch
/// (`BATCH_SIZE_MAX` in common.proto), so one call never needs two ledger batches.
pub const BATCH_SIZE_MAX: usize = 8_190;

/// Longest free-text note, in UTF-8 bytes (`NOTE_BYTES_MAX` in common.proto).
pub const NOTE_BYTES_MAX: usize = 140;

/// A client-chosen id: exactly 16 bytes, a big-endian u128, neither all zeros nor all ones.
pub fn parse_id(bytes: &[u8], field: &'static str) -> Result<u128, Refusal> {
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| Refusal::field(Reason::IdMalformed, field, format!("{field} must be exactly 16 bytes")))?;
    let id = u128::from_be_bytes(array);
    if ledger::id_is_reserved(id) {
        return Err(Refusal::field(Reason::IdReserved, field, format!("{field} is reserved")));
    }
    Ok(id)
}

/// A configured currency and an amount within its bounds.
pub fn check_amount<'a>(switch: &'a Switch, amount_minor: u64, currency: &str) -> Result<&'a Currency, Refusal> {
    let currency = switch.config.currency(currency).ok_or_else(|| {
        Refusal::field(Reason::UnknownCurrency, "currency", format!("currency {currency:?} is not settled here"))
    })?;
    if amount_minor == 0 {
        return Err(Refusal::field(Reason::AmountZero, "amount_minor", "amount must be positive"));
    }
    if amount_minor > currency.amount_minor_max {
        let message = format!("amount above the {} limit of {}", currency.code, currency.amount_minor_max);
        return Err(Refusal::field(Reason::AmountOverLimit, "amount_minor", message));
    }
    Ok(currency)
}

/// A participant's public view: its record and its ledger balances.
pub fn participant_view(
    switch: &Switch,
    participant: &crate::participants::Participant,
) -> Result<proto::Participant, Refusal> {
    let account = switch
        .ledger
        .lookup_accounts(&[participant.account_id])
        .map_err(crate::core::ledger_refusal)?
        .into_iter()
        .next()
        .flatten()
        .unwrap_or_default();
    let clamp = |value: i128| i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX });
    let balance = i128::try_from(account.credits_posted).unwrap_or(i128::MAX)
        - i128::try_from(account.debits_posted).unwrap_or(i128::MAX);
    let reserved = i128::try_from(account.debits_pending).unwrap_or(i128::MAX);
    let available = balance - reserved + i128::from(participant.net_debit_cap_minor);
    // Funding is outside every window and settlement transfers reverse each closed window, so
    // what the balance holds beyond the funding is the open window's payments (`funding`).
    let window_net = balance - funding::funded_minor(switch, &participant.psp_id)?;
    Ok(proto::Participant {
        psp_id: participant.psp_id.to_string(),
        name: participant.name.clone(),
        currency: participant.currency.clone(),
        confirmation_mode: participant.confirmation_mode as i32,
        status: participant.status as i32,
        net_debit_cap_minor: participant.net_debit_cap_minor,
        balance_minor: clamp(balance),
        reserved_minor: u64::try_from(account.debits_pending).unwrap_or(u64::MAX),
        incoming_pending_minor: u64::try_from(account.credits_pending).unwrap_or(u64::MAX),
        available_minor: clamp(available),
        window_net_position_minor: clamp(window_net),
        // The ledger time of the registration: its batch created the position account.
        registered_at_unix_ns: account.timestamp,
        as_of_unix_ns: crate::core::now_unix_ns(),
    })
}

/// The gRPC code number of a refusal, for results carried in-band.
pub fn status_code(refusal: &Refusal) -> i32 {
    refusal.code() as i32
}
