//! Per-PSP event outboxes: durable, gap-free, ordered, kept until acknowledged.
//!
//! An event is a ledger record appended to the PSP's sequence (`tables::EVENTS`, key
//! `psp ++ 0x00`), in the same linked submission as the change that causes it: if the payment
//! commits, its event exists, numbered by the ledger's sequencer in commit order with no gaps and
//! no coordination between the tasks that append. The PSP's acknowledged position is a record
//! too (`tables::EVENT_ACKS`). Subscribers are woken by a per-PSP `Notify` after each commit
//! that appended to it. The payment path also hands each committed event to the outbox's
//! delivery cache, so the stream sends it from memory instead of reading it back; whatever is
//! not in the cache (other kinds of event, a reconnecting PSP, a PSP far behind) is read from
//! storage, which stays the only source of truth.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use ledger::{Event, Ledger, LedgerError, Record, RECORD_TABLE_RESERVED};
use prost::Message;
use tokio::sync::Notify;

use crate::core::{tables, PaymentRecord};
use crate::directory::alias_owner;
use crate::proto;
use crate::records::{self, ReadError, Sequence};

/// Most events sent beyond the last acknowledged one (`EVENT_WINDOW_MAX`).
pub const EVENT_WINDOW_MAX: u64 = 8_192;
/// Most unacknowledged events per PSP by default (`EVENT_BACKLOG_MAX`; `limits.event_backlog_max`
/// configures it); beyond it new work for the PSP is
/// refused rather than growing storage without bound.
pub const EVENT_BACKLOG_MAX: u64 = 10_000_000;
/// Most committed events an outbox holds in memory for delivery: two windows' worth, so a PSP
/// that keeps up is always served from memory, and one that is away costs bounded memory (its
/// stream reads the rest from storage). A credit notification is ~250 B in memory, so this is
/// ~4 MB per PSP at most, reached only while the PSP is away or far behind.
pub const DELIVERY_CACHE_MAX: usize = 2 * EVENT_WINDOW_MAX as usize;

/// The outbox key of a PSP: its id and a separator no id contains, so that one id is never a
/// prefix of another's sequence.
pub fn outbox_key(psp: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(psp.len() + 1);
    key.extend_from_slice(psp.as_bytes());
    key.push(0);
    key
}

/// The ledger event appending `event` to `psp`'s outbox.
pub fn append(psp: &str, event: &proto::Event, linked: bool) -> Event {
    Record::append(tables::EVENTS, outbox_key(psp), event.encode_to_vec(), linked)
}

/// The ledger event appending a push payment's credit notification (or, for a confirming payee,
/// its credit request) to the payee's outbox, in its stored form: the payment id alone.
/// Everything else the payee is told is in the payment's metadata record and its transfer,
/// committed in the same linked chain; storing it a second time cost ~75 bytes per payment in
/// the log and again in the records, and in every flush and compaction of both. `read` builds
/// the full event back; the payment path hands the full event to the delivery cache.
pub fn append_credit(psp: &str, payment_id: &[u8], confirmed: bool) -> Event {
    let kind = if confirmed {
        proto::event::Kind::CreditRequest(proto::CreditRequest {
            payment_id: payment_id.to_vec(),
            ..Default::default()
        })
    } else {
        proto::event::Kind::CreditNotification(proto::CreditNotification {
            payment_id: payment_id.to_vec(),
            ..Default::default()
        })
    };
    append(psp, &proto::Event { kind: Some(kind), ..proto::Event::default() }, false)
}

/// One PSP's outbox state in memory.
#[derive(Default)]
pub struct Outbox {
    /// Woken after every commit that appended to this outbox, and on acknowledgements.
    pub notify: Notify,
    /// Raised by each new subscription; an older stream that sees a newer epoch ends.
    pub epoch: AtomicU64,
    /// Highest sequence known committed (maintained by the switch after each commit).
    pub appended: AtomicU64,
    /// Highest sequence the PSP acknowledged durably.
    pub acknowledged: AtomicU64,
    /// Highest sequence any stream of the PSP received an `Ack` for: recorded by the stream's
    /// acknowledging task, and honoured by a stream that replaces it even before that.
    pub ack_requested: AtomicU64,
    /// Held while an acknowledgement is written, so that writes go one at a time and the stored
    /// position only rises (two streams of one PSP may both be writing).
    pub ack_writes: tokio::sync::Mutex<()>,
    /// Event streams of the PSP being served (the newest one delivers; older ones are ending).
    pub streams: AtomicU64,
    /// Committed events not yet delivered, by sequence, exactly as `read` would return them.
    fresh: papaya::HashMap<u64, proto::Event, ahash::RandomState>,
    /// Highest sequence a stream has taken for delivery, from memory or storage: an event at or
    /// below it is never cached, or it would stay in memory with no one to take it.
    passed: AtomicU64,
}

impl Outbox {
    pub fn backlog(&self) -> u64 {
        self.appended.load(Ordering::Acquire).saturating_sub(self.acknowledged.load(Ordering::Acquire))
    }

    /// Keeps a committed event (sequence set, stamped) for the stream to send from memory.
    fn keep(&self, event: proto::Event) {
        let sequence = event.sequence;
        if sequence <= self.passed.load(Ordering::Acquire) {
            return;
        }
        let fresh = self.fresh.pin();
        if fresh.len() >= DELIVERY_CACHE_MAX {
            return; // the stream reads it from storage
        }
        fresh.insert(sequence, event);
        // A stream may have read past this sequence from storage between the check above and
        // the insert; it then removed nothing, so the copy goes now. The fences pair with
        // `passed_through`: one side always sees the other's write.
        fence(Ordering::SeqCst);
        if sequence <= self.passed.load(Ordering::Acquire) {
            fresh.remove(&sequence);
        }
    }

    /// The event numbered `sequence`, if the payment path left it in memory; taken out.
    pub fn take(&self, sequence: u64) -> Option<proto::Event> {
        self.fresh.pin().remove(&sequence).cloned()
    }

    /// A stream is about to send the events up to `last`: drops any cached copies of `events`
    /// (read from storage) and keeps later inserts of them out.
    pub fn passed_through(&self, last: u64, events: &[proto::Event]) {
        self.passed.fetch_max(last, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        let fresh = self.fresh.pin();
        for event in events {
            fresh.remove(&event.sequence);
        }
    }

    /// A stream starts after `sequence` (the PSP's acknowledged position): nothing at or below
    /// it will be asked for again, so no copy of it may hold a place in the cache. (A PSP may
    /// acknowledge, in its `Hello`, events it never took from this switch's memory.)
    pub fn forget_through(&self, sequence: u64) {
        self.passed_through(sequence, &[]);
        let fresh = self.fresh.pin();
        let stale: Vec<u64> = fresh.keys().copied().filter(|cached| *cached <= sequence).collect();
        for cached in stale {
            fresh.remove(&cached);
        }
    }

    /// Events held in memory for delivery.
    pub fn cached(&self) -> usize {
        self.fresh.len()
    }
}

#[derive(Default)]
pub struct EventHub {
    outboxes: papaya::HashMap<String, Arc<Outbox>>,
}

impl EventHub {
    /// The outbox of a PSP, loaded from the ledger the first time it is asked for.
    pub fn outbox(&self, ledger: &Ledger, psp: &str) -> Result<Arc<Outbox>, LedgerError> {
        if let Some(outbox) = self.outboxes.pin().get(psp) {
            return Ok(Arc::clone(outbox));
        }
        let outbox = Outbox::default();
        outbox.appended.store(last_sequence(ledger, psp)?, Ordering::Release);
        outbox.acknowledged.store(stored_acknowledgement(ledger, psp)?, Ordering::Release);
        let outboxes = self.outboxes.pin();
        Ok(Arc::clone(outboxes.get_or_insert(psp.to_string(), Arc::new(outbox))))
    }

    /// Tells subscribers of `psp` that `count` more events were committed.
    pub fn committed(&self, ledger: &Ledger, psp: &str, count: u64) -> Result<(), LedgerError> {
        self.committed_events(ledger, psp, Vec::new(), count)
    }

    /// Like `committed`, handing subscribers the committed events themselves, as `read` would
    /// return them (`stamped`), so that delivery need not read them back from storage;
    /// `unnumbered` more were committed that storage alone has. Subscribers are woken once.
    pub fn committed_events(
        &self,
        ledger: &Ledger,
        psp: &str,
        events: Vec<proto::Event>,
        unnumbered: u64,
    ) -> Result<(), LedgerError> {
        let outbox = self.outbox(ledger, psp)?;
        let count = events.len() as u64 + unnumbered;
        for event in events {
            outbox.keep(event);
        }
        outbox.appended.fetch_add(count, Ordering::AcqRel);
        outbox.notify.notify_waiters();
        Ok(())
    }
}

/// An event as delivered: its outbox sequence, and for the notice of a payment or refund the
/// commit time of its transfer (known only once committed, so not stored with the event).
pub fn stamped(mut event: proto::Event, sequence: u64, transfer_timestamp: u64) -> proto::Event {
    event.sequence = sequence;
    stamp(&mut event, transfer_timestamp);
    event
}

/// The payment of a credit notification or request stored as its payment id alone
/// (`append_credit`); a full one (every credit has a payer alias) needs nothing filled in.
fn stored_credit(event: &proto::Event) -> Option<u128> {
    let id = match &event.kind {
        Some(proto::event::Kind::CreditNotification(notification)) if notification.payer_alias.is_empty() => {
            &notification.payment_id
        }
        Some(proto::event::Kind::CreditRequest(request)) if request.payer_alias.is_empty() => &request.payment_id,
        _ => return None,
    };
    id.as_slice().try_into().ok().map(u128::from_be_bytes)
}

/// The payment of a push payment's outcome stored without the payment's aliases and currency
/// (`confirm::resolve_pending`, which decides from the pending transfer alone and so does not
/// read the payment's metadata record on every decision): they are filled in from that record.
/// A collect's outcome is stored whole.
fn stored_outcome(event: &proto::Event) -> Option<u128> {
    match &event.kind {
        Some(proto::event::Kind::PaymentOutcome(outcome)) if outcome.payer_alias.is_empty() => {
            outcome.payment_id.as_slice().try_into().ok().map(u128::from_be_bytes)
        }
        _ => None,
    }
}

/// The payment whose metadata record completes a stored event, if it needs one.
fn stored_payment(event: &proto::Event) -> Option<u128> {
    stored_credit(event).or_else(|| stored_outcome(event))
}

/// The id of the transfer whose commit (or resolution) time an event reports, if it reports one.
fn stamped_transfer(event: &proto::Event) -> Option<u128> {
    let id = match &event.kind {
        Some(proto::event::Kind::CreditNotification(notification)) => &notification.payment_id,
        Some(proto::event::Kind::CreditRequest(request)) => &request.payment_id,
        Some(proto::event::Kind::RefundNotice(notice)) => &notice.refund_id,
        Some(proto::event::Kind::PaymentOutcome(outcome)) => &outcome.payment_id,
        _ => return None,
    };
    id.as_slice().try_into().ok().map(u128::from_be_bytes)
}

/// Stamps an event recorded with its transfer (a credit, a refund notice) with the transfer's
/// commit time: the time it was recorded, and for notices the time the money moved.
fn stamp(event: &mut proto::Event, timestamp: u64) {
    match &mut event.kind {
        Some(proto::event::Kind::CreditNotification(notification)) => notification.completed_at_unix_ns = timestamp,
        Some(proto::event::Kind::RefundNotice(notice)) => notice.completed_at_unix_ns = timestamp,
        Some(proto::event::Kind::CreditRequest(_)) => {}
        _ => return,
    }
    event.recorded_at_unix_ns = timestamp;
}

/// Stamps a payment's outcome with the ledger time of its final state, which is when the outcome
/// was recorded: a push payment's resolution (post or void), or an executed collect's transfer.
/// A collect that ended without a transfer (declined, expired, failed) keeps the time stored
/// with it (`collect::finish`): a transfer under its id is then another payment's (a push may
/// take a collect's id, payments.proto), never its own.
fn stamp_outcome(event: &mut proto::Event, transfer: Option<&ledger::TransferRecord>) {
    let Some(proto::event::Kind::PaymentOutcome(outcome)) = &mut event.kind else { return };
    let executed =
        outcome.kind != proto::PaymentKind::Collect as i32 || outcome.state == proto::PaymentState::Completed as i32;
    let finalized = match transfer.filter(|_| executed) {
        Some(record) if record.stored.transfer.flags.pending() => record.resolution.map(|resolved| resolved.timestamp),
        Some(record) => Some(record.stored.transfer.timestamp),
        None => None,
    };
    if let Some(finalized) = finalized {
        outcome.finalized_at_unix_ns = finalized;
    }
    event.recorded_at_unix_ns = outcome.finalized_at_unix_ns;
}

/// The last sequence number appended to a PSP's outbox (0 if none).
pub fn last_sequence(ledger: &Ledger, psp: &str) -> Result<u64, LedgerError> {
    let mut counter = vec![tables::EVENTS];
    counter.extend_from_slice(&outbox_key(psp));
    stored_counter(ledger, RECORD_TABLE_RESERVED, &counter)
}

/// The acknowledgement recorded for a PSP (0 if none).
pub fn stored_acknowledgement(ledger: &Ledger, psp: &str) -> Result<u64, LedgerError> {
    stored_counter(ledger, tables::EVENT_ACKS, psp.as_bytes())
}

/// A stored counter, 0 if there is none yet. One that does not decode is a storage error: the
/// counters are read when an outbox is loaded, which `Switch::open` does for every participant,
/// so a corrupt one stops the switch from starting rather than renumbering a PSP's events.
fn stored_counter(ledger: &Ledger, table: u8, key: &[u8]) -> Result<u64, LedgerError> {
    match records::get::<Sequence>(ledger, table, key) {
        Ok(counter) => Ok(counter.map_or(0, |Sequence(counter)| counter)),
        Err(ReadError::Ledger(error)) => Err(error),
        Err(ReadError::Corrupt(record)) => Err(LedgerError::Store(record.to_string())),
    }
}

/// The record event that stores an acknowledgement.
pub fn acknowledgement(psp: &str, sequence: u64) -> Event {
    Record::put(tables::EVENT_ACKS, psp.as_bytes().to_vec(), sequence.to_be_bytes().to_vec(), false)
}

/// Events of `psp` after `after`, at most `limit`, with their sequence numbers filled in. An event
/// (or the metadata of a credit) that does not decode is an error (`crate::records`): delivered
/// empty or skipped, the PSP would take it as handled.
pub fn read(ledger: &Ledger, psp: &str, after: u64, limit: usize) -> Result<Vec<proto::Event>, ReadError> {
    let prefix = outbox_key(psp);
    let mut after_key = prefix.clone();
    after_key.extend_from_slice(&after.to_be_bytes());
    let entries = ledger.records_after(tables::EVENTS, &prefix, Some(&after_key), limit)?;
    let mut events = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Sequence(sequence) =
            records::decode::<Sequence>(tables::EVENTS, &key, key.get(prefix.len()..).unwrap_or_default())?;
        let mut event: proto::Event = records::decode(tables::EVENTS, &key, &value)?;
        event.sequence = sequence;
        events.push(event);
    }
    complete(ledger, &mut events)?;
    Ok(events)
}

/// Completes events read from storage: builds stored credits (`append_credit`) and push
/// outcomes (`stored_outcome`) back into the events the switch delivers, and stamps the events
/// of payments and refunds with their transfer's commit or resolution time. Two batched ledger
/// reads per chunk of events, whatever their kinds: the transfers (one lookup serves both needs
/// of a credit notification) and the metadata of stored credits and outcomes. A credit's
/// record and transfer committed with it, and an outcome's after them, so both are there; were
/// either missing, the event would go out with those fields empty rather than be skipped; one
/// that does not decode is an error (`crate::records`).
fn complete(ledger: &Ledger, events: &mut [proto::Event]) -> Result<(), ReadError> {
    let ids: Vec<u128> = events.iter().filter_map(stamped_transfer).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut transfers = ledger.lookup_transfers(&ids)?.into_iter();
    let keys: Vec<[u8; 16]> = events.iter().filter_map(stored_payment).map(u128::to_be_bytes).collect();
    let keys: Vec<&[u8]> = keys.iter().map(|key| key.as_slice()).collect();
    let mut payments = records::get_many::<PaymentRecord>(ledger, tables::PAYMENTS, &keys)?.into_iter();
    for event in events.iter_mut() {
        if stamped_transfer(event).is_none() {
            continue;
        }
        let transfer = transfers.next().flatten();
        if stored_payment(event).is_some() {
            let payment = payments.next().flatten().unwrap_or_default();
            let amount_minor = transfer.as_ref().and_then(|record| u64::try_from(record.stored.transfer.amount).ok());
            fill_payment(event, payment, amount_minor.unwrap_or(0));
        }
        if matches!(event.kind, Some(proto::event::Kind::PaymentOutcome(_))) {
            stamp_outcome(event, transfer.as_ref());
        } else {
            stamp(event, transfer.map_or(0, |record| record.stored.transfer.timestamp));
        }
    }
    Ok(())
}

/// Fills a stored credit's or push outcome's fields from its payment's metadata and amount.
fn fill_payment(event: &mut proto::Event, payment: PaymentRecord, amount_minor: u64) {
    // The payer's PSP is the owner its alias names; the switch checked it was the caller.
    let payer_psp_id = alias_owner(&payment.payer_alias, "payer_alias").map(str::to_string).unwrap_or_default();
    // The two messages carry the payment's fields under the same names.
    macro_rules! fill {
        ($credit:expr) => {{
            $credit.payer_alias = payment.payer_alias;
            $credit.payer_psp_id = payer_psp_id;
            $credit.payer_display_name = payment.payer_display_name;
            $credit.payee_alias = payment.payee_alias;
            $credit.amount_minor = amount_minor;
            $credit.currency = payment.currency;
            $credit.note = payment.note;
        }};
    }
    match &mut event.kind {
        Some(proto::event::Kind::CreditNotification(notification)) => fill!(notification),
        Some(proto::event::Kind::CreditRequest(request)) => {
            request.deadline_unix_ms = payment.deadline_unix_ms;
            fill!(request);
        }
        Some(proto::event::Kind::PaymentOutcome(outcome)) => {
            outcome.payer_alias = payment.payer_alias;
            outcome.payee_alias = payment.payee_alias;
            outcome.currency = payment.currency;
            outcome.amount_minor = amount_minor;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(sequence: u64) -> proto::Event {
        proto::Event { sequence, ..proto::Event::default() }
    }

    #[test]
    fn the_delivery_cache_never_keeps_what_a_stream_has_passed() {
        let outbox = Outbox::default();
        for sequence in 1..=5 {
            outbox.keep(numbered(sequence));
        }
        assert_eq!(outbox.cached(), 5);
        assert_eq!(outbox.take(1).map(|event| event.sequence), Some(1));
        assert!(outbox.take(1).is_none(), "taken once");
        // A stream read 2..=3 from storage: the cached copies go, and do not come back.
        outbox.passed_through(3, &[numbered(2), numbered(3)]);
        outbox.keep(numbered(3));
        assert_eq!(outbox.cached(), 2);
        // A new stream starts after an acknowledgement of 4: 4 goes, 5 stays for it.
        outbox.forget_through(4);
        assert_eq!(outbox.cached(), 1);
        assert_eq!(outbox.take(5).map(|event| event.sequence), Some(5));
        assert_eq!(outbox.cached(), 0);
    }

    #[test]
    fn the_delivery_cache_is_bounded() {
        let outbox = Outbox::default();
        for sequence in 1..=(DELIVERY_CACHE_MAX as u64 + 10) {
            outbox.keep(numbered(sequence));
        }
        assert_eq!(outbox.cached(), DELIVERY_CACHE_MAX);
        assert!(outbox.take(DELIVERY_CACHE_MAX as u64 + 1).is_none(), "beyond the bound: read from storage");
    }

    #[test]
    fn only_credits_stored_as_their_payment_id_are_built_back() {
        let id = 42u128.to_be_bytes().to_vec();
        let stored = |confirmed| match append_credit("bank-b", &id, confirmed) {
            Event::Record(record) => proto::Event::decode(record.value.as_slice()).expect("an event"),
            other => panic!("a credit is an appended record, got {other:?}"),
        };
        assert_eq!(stored(false).encoded_len(), 20, "the payment id and the message tags, nothing else");
        assert_eq!(stored_credit(&stored(false)), Some(42));
        assert_eq!(stored_credit(&stored(true)), Some(42));
        // An earlier release stored credits in full: those are read as they are.
        let full = proto::CreditNotification {
            payment_id: id.clone(),
            payer_alias: "ana@bank-a".into(),
            ..proto::CreditNotification::default()
        };
        let full = proto::Event { kind: Some(proto::event::Kind::CreditNotification(full)), ..proto::Event::default() };
        assert_eq!(stored_credit(&full), None);
        // Other events are not credits.
        assert_eq!(stored_credit(&numbered(1)), None);
    }

    #[test]
    fn outbox_keys_never_prefix_each_other() {
        assert!(!outbox_key("bank-ab").starts_with(&outbox_key("bank-a")));
        assert_eq!(outbox_key("b2"), b"b2\0".to_vec());
    }
}
