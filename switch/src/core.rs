//! The switch's state and its one door to the ledger.
//!
//! `Switch::open`, on the node that leads the cluster (`node`), makes sure every configured
//! currency has its settlement account and rebuilds the in-memory participant registry,
//! directory and outboxes from the ledger's records: a new leader starts exactly as a restarted
//! switch does. `Switch::submit` is how every service changes anything: one ledger submission,
//! durable (on a quorum of the cluster) when it returns.

use std::sync::Arc;

use ledger::{Account, Event, Ledger, LedgerError, Record, ResultCode, Results};
use prost::Message;

use crate::config::Config;
use crate::directory::{AliasEntry, Directory};
use crate::participants::{accounts, Participant, Registry};
use crate::proto::Reason;
use crate::reason::Refusal;

/// Ledger record tables of the switch.
pub mod tables {
    pub const PARTICIPANTS: u8 = 1;
    pub const ALIASES: u8 = 2;
    pub const PAYMENTS: u8 = 3;
    /// Per-PSP event outboxes (appended records).
    pub const EVENTS: u8 = 4;
    /// Per-PSP acknowledged event position.
    pub const EVENT_ACKS: u8 = 5;
    /// What has been refunded of each payment.
    pub const REFUNDS: u8 = 6;
    /// Collect requests and their state.
    pub const COLLECTS: u8 = 7;
    /// Settlement windows: the open one and the reports of closed ones.
    pub const SETTLEMENT: u8 = 8;
    /// Nodes removed from the cluster, by id: their ids are never accepted again.
    pub const REMOVED_NODES: u8 = 9;
}

/// Ledger account codes (chart of accounts).
pub mod codes {
    pub const SETTLEMENT_ACCOUNT: u16 = 1;
    pub const PARTICIPANT_ACCOUNT: u16 = 2;
    pub const PAYMENT: u16 = 1;
    pub const REFUND: u16 = 2;
    pub const SETTLEMENT: u16 = 3;
    pub const FUND_IN: u16 = 10;
    pub const FUND_OUT: u16 = 11;
}

/// The durable form of an alias (ledger record value, keyed by the alias).
#[derive(Clone, PartialEq, Message)]
pub struct AliasRecord {
    #[prost(string, tag = "1")]
    pub psp_id: String,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(uint64, tag = "3")]
    pub registered_at_unix_ns: u64,
}

/// The durable metadata of a payment (ledger record keyed by payment id).
#[derive(Clone, PartialEq, Message)]
pub struct PaymentRecord {
    #[prost(string, tag = "1")]
    pub payer_alias: String,
    #[prost(string, tag = "2")]
    pub payee_alias: String,
    #[prost(string, tag = "3")]
    pub note: String,
    #[prost(uint64, tag = "4")]
    pub deadline_unix_ms: u64,
    #[prost(string, tag = "5")]
    pub currency: String,
    /// `PaymentKind`; 0 (unset) reads as a push payment.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    /// For a refund, the payment it refunds.
    #[prost(bytes = "vec", tag = "7")]
    pub original_payment_id: Vec<u8>,
    /// For a push payment, the payer alias's display name when it paid: the payee's credit
    /// notification or request is stored as the payment id alone and built back from this record
    /// and the transfer (`events::read`).
    #[prost(string, tag = "8")]
    pub payer_display_name: String,
}

pub struct Switch {
    pub config: Config,
    /// The node's replicated ledger: submissions go through the Raft log.
    pub ledger: Arc<Ledger>,
    /// This node's place in the cluster: the read barrier, and where the leader is when this
    /// node no longer leads.
    pub leadership: crate::leadership::Leadership,
    pub participants: Registry,
    pub directory: Directory,
    pub events: crate::events::EventHub,
    pub confirmations: crate::confirm::Confirmations,
    /// Turns per refunded payment (and refund id): the read-modify-write of a payment's refunded
    /// total must not race.
    pub refund_turns: crate::serial::KeyLocks,
    /// Turns per collect id: its request, decisions and expiry take turns, so it resolves once.
    pub collect_turns: crate::serial::KeyLocks,
    /// Collects awaiting approval, per requesting PSP (bounded by `limits.collects_pending_max`).
    pub collects_awaiting: crate::services::collect::AwaitingCounts,
    /// Set when the switch begins to shut down: long-lived event streams end (UNAVAILABLE,
    /// SHUTTING_DOWN) so that graceful shutdown does not wait on them forever.
    pub shutting_down: tokio::sync::watch::Sender<bool>,
    /// Set when a stored record did not decode (`crate::records`): health turns NOT_SERVING and
    /// every write is refused until the switch is repaired and restarted.
    pub failed: tokio::sync::watch::Sender<bool>,
    /// Serialises operator changes (rare): a read-modify-write of a participant must not race.
    pub operator_lock: tokio::sync::Mutex<()>,
    /// Serialises membership changes, apart from `operator_lock`: an AddNode may wait for a node
    /// to catch up for many seconds, which must not hold up funding or participant changes.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// Counters for operators (`crate::metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("creating the settlement account of {currency}: {code}")]
    Settlement { currency: String, code: ResultCode },
    #[error("stored {what} record {key:?} is not one this release can read")]
    Corrupt { what: &'static str, key: String },
    #[error(transparent)]
    Record(#[from] crate::records::CorruptRecord),
}

impl From<crate::records::ReadError> for OpenError {
    fn from(error: crate::records::ReadError) -> OpenError {
        match error {
            crate::records::ReadError::Ledger(error) => OpenError::Ledger(error),
            crate::records::ReadError::Corrupt(record) => OpenError::Record(record),
        }
    }
}

impl Switch {
    /// Opens the switch's state on `ledger`, which has applied everything committed (`node`).
    pub fn open(
        config: Config,
        ledger: Arc<Ledger>,
        leadership: crate::leadership::Leadership,
    ) -> Result<Arc<Switch>, OpenError> {
        for currency in &config.currencies {
            let settlement = Account {
                id: accounts::settlement(currency.ledger),
                ledger: currency.ledger,
                code: codes::SETTLEMENT_ACCOUNT,
                ..Account::default()
            };
            let code = ledger.execute(vec![Event::CreateAccount(settlement)])?[0];
            if !matches!(code, ResultCode::Ok | ResultCode::Exists) {
                return Err(OpenError::Settlement { currency: currency.code.clone(), code });
            }
        }
        let participants = load_participants(&ledger)?;
        let directory = Directory::new(config.limits.aliases_max);
        for (key, record) in crate::records::all::<AliasRecord>(&ledger, tables::ALIASES)? {
            let alias = String::from_utf8(key).map_err(|_| OpenError::Corrupt { what: "alias", key: "?".into() })?;
            let entry = AliasEntry { psp: record.psp_id.into(), display_name: record.display_name.into() };
            if !directory.insert(&alias, entry) {
                return Err(OpenError::Corrupt { what: "alias longer than the grammar admits", key: alias });
            }
        }
        // Outboxes exist before the first payment, so commit counts are exact from the start.
        let events = crate::events::EventHub::default();
        for participant in participants.all() {
            events.outbox(&ledger, &participant.psp_id)?;
        }
        tracing::info!(participants = participants.len(), aliases = directory.len(), "switch state loaded");
        let operator_lock = tokio::sync::Mutex::new(());
        let confirmations = crate::confirm::Confirmations::default();
        Ok(Arc::new(Switch {
            config,
            ledger,
            leadership,
            participants,
            directory,
            events,
            confirmations,
            refund_turns: crate::serial::KeyLocks::default(),
            collect_turns: crate::serial::KeyLocks::default(),
            collects_awaiting: crate::services::collect::AwaitingCounts::default(),
            shutting_down: tokio::sync::watch::Sender::new(false),
            failed: tokio::sync::watch::Sender::new(false),
            operator_lock,
            membership_lock: tokio::sync::Mutex::new(()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
        }))
    }

    /// Submits events to the ledger and waits until they are durable.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Results, Refusal> {
        self.writable()?;
        let completion = self.ledger.submit(events).map_err(ledger_refusal)?;
        completion.await.map_err(ledger_refusal)
    }

    /// A participant that may act: registered and active.
    pub fn active_participant(&self, psp_id: &str) -> Result<Arc<Participant>, Refusal> {
        let participant = self.participants.get(psp_id).ok_or_else(|| {
            Refusal::new(Reason::CallerNotRegistered, format!("{psp_id} is not a registered participant"))
        })?;
        if !participant.is_active() {
            return Err(Refusal::new(Reason::ParticipantSuspended, format!("{psp_id} is suspended")));
        }
        Ok(participant)
    }

    /// Returns once a read is linearizable on this node (it leads, holds its lease, and has
    /// applied everything committed): status, positions and reports read after it are current.
    pub async fn read_barrier(&self) -> Result<(), Refusal> {
        self.leadership.read_barrier().await
    }
}

fn load_participants(ledger: &Ledger) -> Result<Registry, OpenError> {
    let participants = crate::records::all::<Participant>(ledger, tables::PARTICIPANTS)?;
    Ok(Registry::new(participants.into_iter().map(|(_, participant)| participant)))
}

/// A ledger that cannot take work: busy is back-pressure, anything else is unavailability.
pub fn ledger_refusal(error: LedgerError) -> Refusal {
    match error {
        LedgerError::Busy { .. } => Refusal::new(Reason::SwitchBusy, "the ledger is at its in-flight bound; retry"),
        LedgerError::Closed => Refusal::new(Reason::ShuttingDown, "the switch is shutting down"),
        // The node lost its leadership between taking the call and proposing it: nothing was
        // proposed, so the call may go again to the leader.
        LedgerError::NotLeader { leader, address } => Refusal::not_leader(leader, address),
        other => Refusal::new(Reason::LedgerUnavailable, other.to_string()),
    }
}

/// A record event for a switch table.
pub fn record(table: u8, key: impl Into<Vec<u8>>, value: Vec<u8>, linked: bool) -> Event {
    Record::put(table, key, value, linked)
}

/// Nanoseconds since the epoch, for times the switch reports that the ledger did not stamp.
pub fn now_unix_ns() -> u64 {
    use ledger::Clock;
    ledger::SystemClock.now_nanoseconds()
}
