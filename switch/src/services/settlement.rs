//! Settlement windows: the operator closes the open window; the switch reports each participant's
//! multilateral net position and the bilateral positions for the window, and records settlement
//! transfers that settle those net positions against the settlement account.
//!
//! A window covers ledger timestamps `opened_at..=closed_at`; closing reads the head of the ledger,
//! so everything committed before the close is in the window and nothing after it. Only final
//! participant-to-participant money counts (payments, posted confirmed payments, collects,
//! refunds), so the net positions always sum to zero. The report, the next window and the
//! settlement transfers are one linked ledger submission: a window closes completely or not at all.
//!
//! Window 1 opened when the switch first started: the ledger time its settlement accounts were
//! created (the ledger's first batch), so it needs no record of its own until it closes. Each
//! close also writes a boundary record, `closed-at/<closed_at>` → window id, so that the window of
//! any ledger time (`Payment.settlement_window_id`) is one seek, whatever the number of windows.

use std::collections::BTreeMap;

use ledger::{Event, ResultCode, Transfer, TransferFlags};
use prost::Message;

use crate::core::{codes, ledger_refusal, record, tables, Switch};
use crate::participants::accounts;
use crate::proto::{self, Reason, SettlementWindowState};
use crate::reason::Refusal;
use crate::records::Sequence;

const OPEN_KEY: &[u8] = b"open";
/// Prefix of the boundary records: the big-endian `closed_at` follows, so keys sort by time.
const CLOSED_AT_PREFIX: &[u8] = b"closed-at/";

/// The open window (ledger record).
#[derive(Clone, PartialEq, Message)]
pub struct OpenWindow {
    #[prost(uint64, tag = "1")]
    pub window_id: u64,
    #[prost(uint64, tag = "2")]
    pub opened_at_unix_ns: u64,
}

/// The window currently open (window 1 from the start until the first close).
pub fn open_window(switch: &Switch) -> Result<OpenWindow, Refusal> {
    match switch.read(tables::SETTLEMENT, OPEN_KEY)? {
        Some(open) => Ok(open),
        None => Ok(OpenWindow { window_id: 1, opened_at_unix_ns: first_started_at(switch)? }),
    }
}

/// When the switch first started: the ledger time of its oldest settlement account, created in
/// the ledger's first batch (a currency configured later has a later one).
fn first_started_at(switch: &Switch) -> Result<u64, Refusal> {
    let ids: Vec<u128> =
        switch.config.currencies.iter().map(|currency| accounts::settlement(currency.ledger)).collect();
    let found = switch.ledger.lookup_accounts(&ids).map_err(ledger_refusal)?;
    let first = found.into_iter().flatten().map(|account| account.timestamp).min();
    first.ok_or_else(|| Refusal::new(Reason::Internal, "no settlement account: the switch did not open its ledger"))
}

fn closed_at_key(closed_at: u64) -> Vec<u8> {
    [CLOSED_AT_PREFIX, &closed_at.to_be_bytes()].concat()
}

/// The settlement window holding ledger time `at`: the open window from its opening on, otherwise
/// the first closed window that closed at or after `at` (windows tile time without gaps).
pub fn window_of(switch: &Switch, at: u64) -> Result<u64, Refusal> {
    let open = open_window(switch)?;
    if at >= open.opened_at_unix_ns {
        return Ok(open.window_id);
    }
    let after = closed_at_key(at.saturating_sub(1));
    let found =
        switch.ledger.records_after(tables::SETTLEMENT, CLOSED_AT_PREFIX, Some(&after), 1).map_err(ledger_refusal)?;
    let Some((key, value)) = found.into_iter().next() else {
        return Err(Refusal::new(Reason::Internal, format!("no settlement window holds ledger time {at}")));
    };
    let Sequence(window) = crate::records::decode(tables::SETTLEMENT, &key, &value)
        .map_err(|record| switch.read_refusal(record.into()))?;
    Ok(window)
}

fn closed_report(switch: &Switch, window_id: u64) -> Result<Option<proto::SettlementReport>, Refusal> {
    switch.read(tables::SETTLEMENT, &window_id.to_be_bytes())
}

/// The settlement transfer id of a participant in a window.
fn settlement_id(window_id: u64, psp: &str) -> u128 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"settlement");
    hasher.update(&window_id.to_be_bytes());
    hasher.update(psp.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    u128::from_be_bytes(bytes).clamp(1, u128::MAX - 1)
}

/// Whether a transfer is final participant-to-participant money.
fn counts(transfer: &Transfer) -> bool {
    let kind_counts = transfer.code == codes::PAYMENT || transfer.code == codes::REFUND;
    kind_counts && !transfer.flags.pending() && !transfer.flags.void_pending()
}

/// Net and bilateral positions over `opened_at..=closed_at`.
fn positions(
    switch: &Switch,
    window_id: u64,
    opened_at: u64,
    closed_at: u64,
    state: SettlementWindowState,
) -> Result<proto::SettlementReport, Refusal> {
    let participants = switch.participants.all();
    let mut gross: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut report = proto::SettlementReport {
        window_id,
        state: state as i32,
        opened_at_unix_ns: opened_at,
        closed_at_unix_ns: if state == SettlementWindowState::Closed { closed_at } else { 0 },
        ..proto::SettlementReport::default()
    };
    let page = switch.config.ledger.batch_size_max;
    for participant in &participants {
        let mut position = proto::ParticipantNetPosition {
            psp_id: participant.psp_id.to_string(),
            currency: participant.currency.clone(),
            ..proto::ParticipantNetPosition::default()
        };
        let mut from = opened_at;
        loop {
            let found = switch
                .ledger
                .account_transfers(participant.account_id, from, closed_at, page)
                .map_err(ledger_refusal)?;
            for transfer in found.transfers.iter().filter(|transfer| counts(transfer)) {
                let amount = u64::try_from(transfer.amount).unwrap_or(u64::MAX);
                if transfer.debit_account_id == participant.account_id {
                    position.sent_minor = position.sent_minor.saturating_add(amount);
                    position.sent_count += 1;
                    let creditor = switch.participants.by_account(transfer.credit_account_id);
                    let creditor = creditor.map_or_else(|| "?".to_string(), |creditor| creditor.psp_id.to_string());
                    let key = (participant.psp_id.to_string(), creditor, participant.currency.clone());
                    *gross.entry(key).or_default() += amount;
                } else {
                    position.received_minor = position.received_minor.saturating_add(amount);
                    position.received_count += 1;
                }
            }
            match found.next_timestamp {
                Some(next) => from = next,
                None => break,
            }
        }
        let net = i128::from(position.received_minor) - i128::from(position.sent_minor);
        position.net_position_minor = i64::try_from(net).unwrap_or(if net < 0 { i64::MIN } else { i64::MAX });
        if state == SettlementWindowState::Closed && net != 0 {
            position.settlement_transfer_id = settlement_id(window_id, &participant.psp_id).to_be_bytes().to_vec();
        }
        report.positions.push(position);
    }
    // Bilateral: each pair netted, the debtor being the side that sent more.
    let mut pairs: BTreeMap<(String, String, String), i128> = BTreeMap::new();
    for ((debtor, creditor, currency), amount) in gross {
        let (key, sign) =
            if debtor < creditor { ((debtor, creditor, currency), 1) } else { ((creditor, debtor, currency), -1) };
        *pairs.entry(key).or_default() += sign * i128::from(amount);
    }
    for ((first, second, currency), net) in pairs {
        if net == 0 {
            continue;
        }
        let (debtor, creditor) = if net > 0 { (first, second) } else { (second, first) };
        let amount_minor = u64::try_from(net.unsigned_abs()).unwrap_or(u64::MAX);
        report.bilateral.push(proto::BilateralPosition {
            debtor_psp_id: debtor,
            creditor_psp_id: creditor,
            currency,
            amount_minor,
        });
    }
    Ok(report)
}

/// `GetSettlementReport`: a closed window's final report, or the open window's provisional one
/// (window id 0 names the open window).
pub fn report(switch: &Switch, window_id: u64) -> Result<proto::SettlementReport, Refusal> {
    if window_id != 0 {
        if let Some(report) = closed_report(switch, window_id)? {
            return Ok(report);
        }
    }
    let open = open_window(switch)?;
    if window_id != 0 && window_id != open.window_id {
        return Err(Refusal::field(Reason::SettlementWindowNotFound, "window_id", "no such window"));
    }
    let now = switch.ledger.head().map_err(ledger_refusal)?.next_timestamp.saturating_sub(1);
    positions(switch, open.window_id, open.opened_at_unix_ns, now, SettlementWindowState::Open)
}

/// `CloseSettlementWindow`. The caller serialises closes (operator lock).
pub async fn close(switch: &Switch, window_id: u64) -> Result<proto::SettlementReport, Refusal> {
    if window_id == 0 {
        return Err(Refusal::field(Reason::FieldRequired, "window_id", "name the window to close"));
    }
    if let Some(report) = closed_report(switch, window_id)? {
        return Ok(report);
    }
    let open = open_window(switch)?;
    if window_id != open.window_id {
        return Err(Refusal::field(Reason::SettlementWindowNotFound, "window_id", "not the open window"));
    }
    // Everything committed so far has a timestamp below the head's next one.
    let closed_at = switch.ledger.head().map_err(ledger_refusal)?.next_timestamp.saturating_sub(1);
    let report = positions(switch, window_id, open.opened_at_unix_ns, closed_at, SettlementWindowState::Closed)?;
    let next = OpenWindow { window_id: window_id + 1, opened_at_unix_ns: closed_at + 1 };
    let mut events = vec![
        record(tables::SETTLEMENT, window_id.to_be_bytes(), report.encode_to_vec(), true),
        record(tables::SETTLEMENT, closed_at_key(closed_at), window_id.to_be_bytes().to_vec(), true),
        record(tables::SETTLEMENT, OPEN_KEY, next.encode_to_vec(), false),
    ];
    for position in report.positions.iter().filter(|position| position.net_position_minor != 0) {
        let Some(participant) = switch.participants.get(&position.psp_id) else { continue };
        let settlement = accounts::settlement(participant.ledger);
        let amount = u128::from(position.net_position_minor.unsigned_abs());
        let (debit, credit) = if position.net_position_minor > 0 {
            (participant.account_id, settlement)
        } else {
            (settlement, participant.account_id)
        };
        if let Some(Event::Record(last)) = events.last_mut() {
            last.linked = true;
        } else if let Some(Event::CreateTransfer(last)) = events.last_mut() {
            last.flags = TransferFlags(last.flags.0 | TransferFlags::LINKED);
        }
        events.push(Event::CreateTransfer(Transfer {
            id: settlement_id(window_id, &position.psp_id),
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            ledger: participant.ledger,
            code: codes::SETTLEMENT,
            ..Transfer::default()
        }));
    }
    let results = switch.submit(events).await?;
    if let Some(code) = results.iter().find(|code| **code != ResultCode::Ok) {
        return Err(Refusal::new(Reason::Internal, format!("closing the window failed: {code}")));
    }
    tracing::info!(window_id, participants = report.positions.len(), "settlement window closed");
    Ok(report)
}
