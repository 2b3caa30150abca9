//! Participants (PSPs): who they are, their currency, ledger account, net debit cap, confirmation
//! mode and status.
//!
//! Read on every payment, written by rare operator actions: readers load an atomically swapped
//! snapshot (arc-swap) without a lock; writers (serialised by the operator service) publish a new
//! snapshot once the change is durable in the ledger. Each participant's record is stored as a
//! ledger record (table `participants`), so the switch's state and its money share one log.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prost::Message;

use crate::proto::{ConfirmationMode, ParticipantStatus};

/// The durable form of a participant (ledger record value).
#[derive(Clone, PartialEq, Message)]
pub struct ParticipantRecord {
    #[prost(string, tag = "1")]
    pub psp_id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub currency: String,
    #[prost(uint32, tag = "4")]
    pub ledger: u32,
    #[prost(bytes = "vec", tag = "5")]
    pub account_id: Vec<u8>,
    #[prost(uint64, tag = "6")]
    pub net_debit_cap_minor: u64,
    #[prost(enumeration = "ConfirmationMode", tag = "7")]
    pub confirmation_mode: i32,
    #[prost(enumeration = "ParticipantStatus", tag = "8")]
    pub status: i32,
    #[prost(uint64, tag = "9")]
    pub registered_at_unix_ns: u64,
}

/// A participant as the payment path uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    pub psp_id: Arc<str>,
    pub name: String,
    pub currency: String,
    pub ledger: u32,
    pub account_id: u128,
    pub net_debit_cap_minor: u64,
    pub confirmation_mode: ConfirmationMode,
    pub status: ParticipantStatus,
    pub registered_at_unix_ns: u64,
}

impl Participant {
    pub fn is_active(&self) -> bool {
        self.status == ParticipantStatus::Active
    }

    pub fn to_record(&self) -> ParticipantRecord {
        ParticipantRecord {
            psp_id: self.psp_id.to_string(),
            name: self.name.clone(),
            currency: self.currency.clone(),
            ledger: self.ledger,
            account_id: self.account_id.to_be_bytes().to_vec(),
            net_debit_cap_minor: self.net_debit_cap_minor,
            confirmation_mode: self.confirmation_mode as i32,
            status: self.status as i32,
            registered_at_unix_ns: self.registered_at_unix_ns,
        }
    }

    /// Decodes a stored record; `None` if it is not one this release wrote.
    pub fn from_bytes(bytes: &[u8]) -> Option<Participant> {
        let record = ParticipantRecord::decode(bytes).ok()?;
        let account_id = u128::from_be_bytes(record.account_id.as_slice().try_into().ok()?);
        Some(Participant {
            psp_id: record.psp_id.into(),
            name: record.name,
            currency: record.currency,
            ledger: record.ledger,
            account_id,
            net_debit_cap_minor: record.net_debit_cap_minor,
            confirmation_mode: ConfirmationMode::try_from(record.confirmation_mode).ok()?,
            status: ParticipantStatus::try_from(record.status).ok()?,
            registered_at_unix_ns: record.registered_at_unix_ns,
        })
    }
}

/// Ledger account ids. Participants' accounts and each currency's settlement account live in the
/// currency's ledger: `ledger << 96 | kind << 64 | n`.
pub mod accounts {
    const KIND_SETTLEMENT: u128 = 1;
    const KIND_PARTICIPANT: u128 = 2;

    /// The settlement (central bank) account of a ledger: funding in and out moves through it.
    pub fn settlement(ledger: u32) -> u128 {
        (u128::from(ledger) << 96) | (KIND_SETTLEMENT << 64) | 1
    }

    /// A participant's position account: 64 bits of blake3 of its id. Registration fails (as
    /// already registered) in the astronomically unlikely event of a collision, never merges two.
    pub fn participant(ledger: u32, psp_id: &str) -> u128 {
        let hash = blake3::hash(psp_id.as_bytes());
        let mut low = [0u8; 8];
        low.copy_from_slice(&hash.as_bytes()[..8]);
        (u128::from(ledger) << 96) | (KIND_PARTICIPANT << 64) | u128::from(u64::from_be_bytes(low))
    }
}

/// One published state of the registry: participants by id, and by ledger account (status,
/// confirmations, refunds and settlement go from a transfer's accounts back to its PSPs).
#[derive(Clone, Default)]
struct Snapshot {
    by_id: HashMap<Arc<str>, Arc<Participant>>,
    by_account: HashMap<u128, Arc<Participant>>,
}

impl Snapshot {
    fn insert(&mut self, participant: Participant) {
        let participant = Arc::new(participant);
        self.by_account.insert(participant.account_id, Arc::clone(&participant));
        self.by_id.insert(participant.psp_id.clone(), participant);
    }
}

#[derive(Default)]
pub struct Registry {
    snapshot: ArcSwap<Snapshot>,
}

impl Registry {
    pub fn new(participants: impl IntoIterator<Item = Participant>) -> Self {
        let mut snapshot = Snapshot::default();
        for participant in participants {
            snapshot.insert(participant);
        }
        Registry { snapshot: ArcSwap::from_pointee(snapshot) }
    }

    /// Lock-free lookup.
    pub fn get(&self, psp_id: &str) -> Option<Arc<Participant>> {
        self.snapshot.load().by_id.get(psp_id).cloned()
    }

    /// Lock-free lookup of the participant owning a ledger account.
    pub fn by_account(&self, account_id: u128) -> Option<Arc<Participant>> {
        self.snapshot.load().by_account.get(&account_id).cloned()
    }

    /// Every participant, in id order.
    pub fn all(&self) -> Vec<Arc<Participant>> {
        let mut all: Vec<_> = self.snapshot.load().by_id.values().cloned().collect();
        all.sort_by(|left, right| left.psp_id.cmp(&right.psp_id));
        all
    }

    pub fn len(&self) -> usize {
        self.snapshot.load().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes a committed change. Callers serialise writes (the operator service holds a
    /// lock), so a copy-on-write here never loses a concurrent update.
    pub fn publish(&self, participant: Participant) {
        let mut next = Snapshot::clone(&self.snapshot.load());
        next.insert(participant);
        self.snapshot.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Participant {
        Participant {
            psp_id: "bank-a".into(),
            name: "Bank A".into(),
            currency: "INR".into(),
            ledger: 356,
            account_id: accounts::participant(356, "bank-a"),
            net_debit_cap_minor: 5_000,
            confirmation_mode: ConfirmationMode::Automatic,
            status: ParticipantStatus::Active,
            registered_at_unix_ns: 9,
        }
    }

    #[test]
    fn records_round_trip() {
        let participant = sample();
        let bytes = participant.to_record().encode_to_vec();
        assert_eq!(Participant::from_bytes(&bytes), Some(participant));
        assert_eq!(Participant::from_bytes(&[0xff, 0xff]), None);
    }

    #[test]
    fn account_ids_are_distinct_per_participant_and_ledger() {
        assert_ne!(accounts::participant(356, "bank-a"), accounts::participant(356, "bank-b"));
        assert_ne!(accounts::participant(356, "bank-a"), accounts::participant(986, "bank-a"));
        assert_ne!(accounts::settlement(356), accounts::participant(356, "bank-a"));
    }

    #[test]
    fn published_changes_are_visible() {
        let registry = Registry::new([sample()]);
        assert_eq!(registry.get("bank-a").map(|p| p.net_debit_cap_minor), Some(5_000));
        registry.publish(Participant { net_debit_cap_minor: 7, ..sample() });
        assert_eq!(registry.get("bank-a").map(|p| p.net_debit_cap_minor), Some(7));
        assert!(registry.get("bank-b").is_none());
        let account = accounts::participant(356, "bank-a");
        assert_eq!(registry.by_account(account).map(|p| p.net_debit_cap_minor), Some(7));
        assert!(registry.by_account(account + 1).is_none());
        assert_eq!(registry.len(), 1);
    }
}
