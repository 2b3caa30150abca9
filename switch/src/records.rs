//! The one way the switch reads its own records back from the ledger: typed, and never a default.
//!
//! Every table of `core::tables` holds values of one type (`Stored`). A value that does not decode
//! is not "empty": a refund total read as 0 would allow a second full refund, a settlement record
//! read as "window 1" would re-settle. So a record that does not decode is a `CorruptRecord`, and
//! a read through the switch (`Switch::read`, `Switch::decoded`) turns it into:
//!
//! * INTERNAL with `REASON_INTERNAL` for the call that needed it (the catalogue's "switch bug":
//!   the switch cannot tell what it stored);
//! * a failed switch (`Switch::fail`): an error log line naming the table and key, the counter
//!   `switch_store_corrupt_records_total`, and the `failed` flag, which turns the gRPC health
//!   checks NOT_SERVING (`serve_health`) and makes every write answer UNAVAILABLE with
//!   `REASON_LEDGER_UNAVAILABLE` (`Switch::writable`) until an operator has repaired the data and
//!   restarted the switch. Writing on top of state it cannot read could move money on a wrong
//!   basis (the refund total again); reads of other records go on, so operators and PSPs can
//!   still see where things stand.
//!
//! At start-up (`Switch::open`) a record that does not decode stops the switch from starting
//! (`OpenError`). The ledger's own records (transfers, accounts, batches) are checked by the
//! ledger's codec and store, which already answer corrupt bytes with an error.

use ledger::{Ledger, LedgerError};
use prost::Message;

use crate::core::{ledger_refusal, Switch};
use crate::proto::Reason;
use crate::reason::Refusal;

/// A value type of one of the switch's tables.
pub trait Stored: Sized {
    /// What the record is, for the error and the log line.
    const WHAT: &'static str;

    /// The value, or `None` if the bytes are not one this release wrote.
    fn from_stored(bytes: &[u8]) -> Option<Self>;
}

/// Tables whose values are protobuf messages.
macro_rules! stored_messages {
    ($($type:ty => $what:literal),* $(,)?) => {
        $(impl Stored for $type {
            const WHAT: &'static str = $what;

            fn from_stored(bytes: &[u8]) -> Option<Self> {
                <$type as Message>::decode(bytes).ok()
            }
        })*
    };
}

stored_messages! {
    crate::core::AliasRecord => "alias",
    crate::core::PaymentRecord => "payment",
    crate::services::refund::RefundsRecord => "refunds",
    crate::services::collect::CollectRecord => "collect",
    crate::services::settlement::OpenWindow => "open settlement window",
    crate::proto::SettlementReport => "settlement report",
    crate::proto::Event => "event",
    crate::services::membership::RemovedNode => "removed node",
}

impl Stored for crate::participants::Participant {
    const WHAT: &'static str = "participant";

    fn from_stored(bytes: &[u8]) -> Option<Self> {
        crate::participants::Participant::from_bytes(bytes)
    }
}

/// A counter or number, stored as 8 big-endian bytes (event outbox counters and
/// acknowledgements, the sequence part of event keys, the window of a settlement boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequence(pub u64);

impl Stored for Sequence {
    const WHAT: &'static str = "sequence number";

    fn from_stored(bytes: &[u8]) -> Option<Self> {
        Some(Sequence(u64::from_be_bytes(bytes.try_into().ok()?)))
    }
}

/// A participant's funding total (funds in − funds out, `services::funding`), stored as 16
/// big-endian bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FundingTotal(pub i128);

impl Stored for FundingTotal {
    const WHAT: &'static str = "funding total";

    fn from_stored(bytes: &[u8]) -> Option<Self> {
        Some(FundingTotal(i128::from_be_bytes(bytes.try_into().ok()?)))
    }
}

/// A stored record that does not decode as its table's type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the stored {what} record in table {table} under key {key} does not decode")]
pub struct CorruptRecord {
    pub what: &'static str,
    pub table: u8,
    /// The key, as text if it is printable, else in hex.
    pub key: String,
}

impl CorruptRecord {
    pub fn new<T: Stored>(table: u8, key: &[u8]) -> CorruptRecord {
        CorruptRecord { what: T::WHAT, table, key: printable(key) }
    }
}

/// Reading a record failed: the ledger could not read, or the record does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
}

/// Decodes the value stored under `key` in `table`.
pub fn decode<T: Stored>(table: u8, key: &[u8], bytes: &[u8]) -> Result<T, CorruptRecord> {
    T::from_stored(bytes).ok_or_else(|| CorruptRecord::new::<T>(table, key))
}

/// Decodes a value read from the ledger, if there was one.
pub fn decode_found<T: Stored>(table: u8, key: &[u8], bytes: Option<Vec<u8>>) -> Result<Option<T>, CorruptRecord> {
    bytes.map(|bytes| decode(table, key, &bytes)).transpose()
}

/// The record under `key`, if any. For readers without a switch (start-up, event delivery).
pub fn get<T: Stored>(ledger: &Ledger, table: u8, key: &[u8]) -> Result<Option<T>, ReadError> {
    Ok(decode_found(table, key, ledger.record(table, key)?)?)
}

/// The records under `keys`, in their order, in one batched read.
pub fn get_many<T: Stored>(ledger: &Ledger, table: u8, keys: &[&[u8]]) -> Result<Vec<Option<T>>, ReadError> {
    let found = if keys.is_empty() { Vec::new() } else { ledger.records_many(table, keys)? };
    Ok(keys.iter().zip(found).map(|(key, bytes)| decode_found(table, key, bytes)).collect::<Result<_, _>>()?)
}

/// Every record of a table, with its key.
pub fn all<T: Stored>(ledger: &Ledger, table: u8) -> Result<Vec<(Vec<u8>, T)>, ReadError> {
    let mut records = Vec::new();
    for (key, value) in ledger.records(table)? {
        let record = decode(table, &key, &value)?;
        records.push((key, record));
    }
    Ok(records)
}

impl Switch {
    /// The record under `key` in `table`, if any; one that does not decode fails the switch.
    pub fn read<T: Stored>(&self, table: u8, key: &[u8]) -> Result<Option<T>, Refusal> {
        get(&self.ledger, table, key).map_err(|error| self.read_refusal(error))
    }

    /// Decodes a value already read from `table` (e.g. by a batched read).
    pub fn decoded<T: Stored>(&self, table: u8, key: &[u8], bytes: Option<Vec<u8>>) -> Result<Option<T>, Refusal> {
        decode_found(table, key, bytes).map_err(|record| self.read_refusal(ReadError::Corrupt(record)))
    }

    /// What a caller is told when a read failed; a corrupt record fails the switch.
    pub fn read_refusal(&self, error: ReadError) -> Refusal {
        match error {
            ReadError::Ledger(error) => ledger_refusal(error),
            ReadError::Corrupt(record) => {
                self.fail(&record);
                Refusal::new(Reason::Internal, record.to_string())
            }
        }
    }

    /// Marks the switch failed after reading a corrupt record (see the module header).
    pub fn fail(&self, record: &CorruptRecord) {
        tracing::error!(
            table = record.table,
            key = %record.key,
            what = record.what,
            "a stored record does not decode: the switch is failed and refuses writes until repaired and restarted"
        );
        self.metrics.store_corrupt_records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.failed.send_replace(true);
    }

    /// Whether the switch may write: not once it has failed.
    pub fn writable(&self) -> Result<(), Refusal> {
        if *self.failed.borrow() {
            return Err(Refusal::new(
                Reason::LedgerUnavailable,
                "the switch read a stored record it cannot decode and writes nothing until repaired and restarted",
            ));
        }
        Ok(())
    }
}

/// Turns the switch's health checks NOT_SERVING (the whole server, "", and each service) once it
/// has failed. Holds only a receiver, so it never keeps a stopped switch alive: it ends when the
/// switch is dropped.
pub async fn serve_health(
    mut failed: tokio::sync::watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
) {
    use crate::proto::{
        directory_service_server, event_service_server, operator_service_server, payment_service_server,
    };
    if failed.wait_for(|failed| *failed).await.is_err() {
        return;
    }
    let services = [
        "",
        payment_service_server::SERVICE_NAME,
        directory_service_server::SERVICE_NAME,
        operator_service_server::SERVICE_NAME,
        event_service_server::SERVICE_NAME,
    ];
    for service in services {
        reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
    }
}

/// A key for people: as text if it is printable ASCII, else in hex.
fn printable(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|byte| byte.is_ascii_graphic()) {
        return String::from_utf8_lossy(key).into_owned();
    }
    key.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PaymentRecord;

    #[test]
    fn a_record_that_does_not_decode_is_an_error_naming_table_and_key() {
        let error = decode::<PaymentRecord>(3, &[0, 1, 0xab], &[0xff, 0xff]).expect_err("not a record");
        assert_eq!(error, CorruptRecord { what: "payment", table: 3, key: "0001ab".into() });
        let error = decode::<Sequence>(5, b"bank-a", &[1, 2, 3]).expect_err("not 8 bytes");
        assert_eq!(error.key, "bank-a");
        assert_eq!(decode::<Sequence>(5, b"bank-a", &7u64.to_be_bytes()), Ok(Sequence(7)));
    }

    #[test]
    fn an_absent_record_is_none_not_an_error() {
        assert_eq!(decode_found::<PaymentRecord>(3, b"k", None), Ok(None));
    }

    /// The record layer fuzzed: any stored bytes are the value they encode or a `CorruptRecord`
    /// naming the table's type, never a default and never a panic. Bounded so `cargo test` stays
    /// fast; to fuzz longer: `PROPTEST_CASES=100000 cargo test --release -p switch --lib records`.
    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;
        use crate::core::{AliasRecord, PaymentRecord};
        use crate::participants::Participant;
        use crate::services::collect::CollectRecord;
        use crate::services::refund::RefundsRecord;
        use crate::services::settlement::OpenWindow;

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256);
            ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
        }

        /// `bytes` read as a protobuf record: exactly what prost decodes, or an error naming it.
        fn message_holds<T: Stored + Message + Default + PartialEq + std::fmt::Debug>(
            bytes: &[u8],
        ) -> Result<(), TestCaseError> {
            match (decode::<T>(7, b"key", bytes), T::decode(bytes)) {
                (Ok(value), Ok(expected)) => prop_assert_eq!(value, expected),
                (Err(error), Err(_)) => {
                    prop_assert_eq!(error, CorruptRecord { what: T::WHAT, table: 7, key: "key".into() })
                }
                (ours, prost) => prop_assert!(false, "record layer {:?} but prost {:?}", ours, prost),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn random_bytes_are_a_record_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                message_holds::<AliasRecord>(&bytes)?;
                message_holds::<PaymentRecord>(&bytes)?;
                message_holds::<RefundsRecord>(&bytes)?;
                message_holds::<CollectRecord>(&bytes)?;
                message_holds::<OpenWindow>(&bytes)?;
                message_holds::<crate::proto::SettlementReport>(&bytes)?;
                message_holds::<crate::proto::Event>(&bytes)?;
                let sequence = decode::<Sequence>(5, b"key", &bytes);
                prop_assert_eq!(sequence.is_ok(), bytes.len() == 8);
                if let Err(error) = decode::<Participant>(1, b"key", &bytes) {
                    prop_assert_eq!(error.what, "participant");
                }
            }

            #[test]
            fn stored_records_read_back_as_written(
                refunded_minor in any::<u64>(),
                refund_ids in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 16), 0..4),
                note in ".{0,40}",
                deadline_unix_ms in any::<u64>(),
            ) {
                let refunds = RefundsRecord { refunded_minor, refund_ids };
                prop_assert_eq!(decode::<RefundsRecord>(6, b"k", &refunds.encode_to_vec()), Ok(refunds));
                let payment = PaymentRecord { note, deadline_unix_ms, ..PaymentRecord::default() };
                prop_assert_eq!(decode::<PaymentRecord>(3, b"k", &payment.encode_to_vec()), Ok(payment));
            }
        }
    }
}
