//! Binary encoding of records and log entries: fixed-width, big-endian, versioned.
//!
//! Big-endian so that encoded ids and timestamps sort in RocksDB in numeric order (keys are
//! compared bytewise). Every decoder checks lengths and tags and returns [`CodecError`]: what comes
//! back from disk is never trusted, and a corrupt byte is an error, never a panic.

use crate::event::{Batch, Event};
use crate::result::ResultCode;
use crate::types::{Account, AccountFlags, PendingStatus, Transfer, TransferFlags};

/// Encoded size of an [`Account`].
pub const ACCOUNT_SIZE: usize = 16 * 7 + 8 + 4 + 4 + 2 + 2 + 8;
/// Encoded size of a [`Transfer`].
pub const TRANSFER_SIZE: usize = 16 * 6 + 8 + 4 + 4 + 4 + 2 + 2 + 8;
/// Encoded size of a stored transfer: the transfer and its recorded result code.
pub const STORED_TRANSFER_SIZE: usize = TRANSFER_SIZE + 1;
/// The log entry format version written by this release.
pub const LOG_VERSION: u8 = 1;
/// Size of a blake3 hash in the batch log.
pub const HASH_SIZE: usize = 32;
/// The hash that precedes batch 1.
pub const GENESIS_HASH: [u8; HASH_SIZE] = [0; HASH_SIZE];

const TAG_CREATE_ACCOUNT: u8 = 1;
const TAG_CREATE_TRANSFER: u8 = 2;
const TAG_SET_DEBIT_LIMIT: u8 = 3;
const TAG_RECORD: u8 = 4;
/// The smallest encoded event (a record with an empty key and value), for bounds checks.
pub const EVENT_SIZE_MIN: usize = 1 + 1 + 1 + 2 + 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record too short: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u64 },
    #[error("log entry hash does not match its contents")]
    HashMismatch,
}

/// Appends fixed-width fields to a buffer.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    pub fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    pub fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    pub fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    pub fn u128(&mut self, value: u128) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    pub fn bytes(&mut self, value: &[u8]) {
        self.0.extend_from_slice(value);
    }
}

/// Reads fixed-width fields, failing on truncation instead of panicking.
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, offset: 0 }
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn take(&mut self, length: usize) -> Result<&'a [u8], CodecError> {
        let remaining = self.bytes.len() - self.offset;
        if remaining < length {
            return Err(CodecError::Truncated { offset: self.offset, needed: length - remaining });
        }
        let slice = &self.bytes[self.offset..self.offset + length];
        self.offset += length;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn u128(&mut self) -> Result<u128, CodecError> {
        Ok(u128::from_be_bytes(self.array()?))
    }
    pub fn hash(&mut self) -> Result<[u8; HASH_SIZE], CodecError> {
        self.array()
    }
    /// Fails unless every byte was consumed: a record with trailing bytes is not the record we wrote.
    pub fn finish(self) -> Result<(), CodecError> {
        match self.bytes.len() - self.offset {
            0 => Ok(()),
            trailing => Err(CodecError::Trailing(trailing)),
        }
    }
}

pub fn put_account(writer: &mut Writer<'_>, account: &Account) {
    writer.u128(account.id);
    writer.u128(account.debits_pending);
    writer.u128(account.debits_posted);
    writer.u128(account.credits_pending);
    writer.u128(account.credits_posted);
    writer.u128(account.debit_limit);
    writer.u128(account.user_data_128);
    writer.u64(account.user_data_64);
    writer.u32(account.user_data_32);
    writer.u32(account.ledger);
    writer.u16(account.code);
    writer.u16(account.flags.0);
    writer.u64(account.timestamp);
}

pub fn get_account(reader: &mut Reader<'_>) -> Result<Account, CodecError> {
    Ok(Account {
        id: reader.u128()?,
        debits_pending: reader.u128()?,
        debits_posted: reader.u128()?,
        credits_pending: reader.u128()?,
        credits_posted: reader.u128()?,
        debit_limit: reader.u128()?,
        user_data_128: reader.u128()?,
        user_data_64: reader.u64()?,
        user_data_32: reader.u32()?,
        ledger: reader.u32()?,
        code: reader.u16()?,
        flags: AccountFlags(reader.u16()?),
        timestamp: reader.u64()?,
    })
}

pub fn put_transfer(writer: &mut Writer<'_>, transfer: &Transfer) {
    writer.u128(transfer.id);
    writer.u128(transfer.debit_account_id);
    writer.u128(transfer.credit_account_id);
    writer.u128(transfer.amount);
    writer.u128(transfer.pending_id);
    writer.u128(transfer.user_data_128);
    writer.u64(transfer.user_data_64);
    writer.u32(transfer.user_data_32);
    writer.u32(transfer.timeout);
    writer.u32(transfer.ledger);
    writer.u16(transfer.code);
    writer.u16(transfer.flags.0);
    writer.u64(transfer.timestamp);
}

pub fn get_transfer(reader: &mut Reader<'_>) -> Result<Transfer, CodecError> {
    Ok(Transfer {
        id: reader.u128()?,
        debit_account_id: reader.u128()?,
        credit_account_id: reader.u128()?,
        amount: reader.u128()?,
        pending_id: reader.u128()?,
        user_data_128: reader.u128()?,
        user_data_64: reader.u64()?,
        user_data_32: reader.u32()?,
        timeout: reader.u32()?,
        ledger: reader.u32()?,
        code: reader.u16()?,
        flags: TransferFlags(reader.u16()?),
        timestamp: reader.u64()?,
    })
}

pub fn get_result(reader: &mut Reader<'_>) -> Result<ResultCode, CodecError> {
    let code = reader.u8()?;
    ResultCode::from_code(code).ok_or(CodecError::Unknown { what: "result code", value: code.into() })
}

pub fn encode_account(account: &Account) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ACCOUNT_SIZE);
    put_account(&mut Writer(&mut bytes), account);
    bytes
}

pub fn decode_account(bytes: &[u8]) -> Result<Account, CodecError> {
    let mut reader = Reader::new(bytes);
    let account = get_account(&mut reader)?;
    reader.finish()?;
    Ok(account)
}

/// A transfer as stored under its id: the transfer and the result it was given. Only successes
/// and recorded failures (see [`ResultCode::is_recorded_failure`]) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredTransfer {
    pub transfer: Transfer,
    pub result: ResultCode,
}

pub fn encode_stored_transfer(stored: &StoredTransfer, out: &mut Vec<u8>) {
    out.clear();
    let mut writer = Writer(out);
    put_transfer(&mut writer, &stored.transfer);
    writer.u8(stored.result.code());
}

pub fn decode_stored_transfer(bytes: &[u8]) -> Result<StoredTransfer, CodecError> {
    let mut reader = Reader::new(bytes);
    let transfer = get_transfer(&mut reader)?;
    let result = get_result(&mut reader)?;
    reader.finish()?;
    Ok(StoredTransfer { transfer, result })
}

/// How a pending transfer was resolved: by which transfer (0 for expiry) and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingResolution {
    pub status: PendingStatus,
    pub timestamp: u64,
    pub resolved_by: u128,
}

pub fn encode_resolution(resolution: &PendingResolution) -> [u8; 25] {
    let mut bytes = Vec::with_capacity(25);
    let mut writer = Writer(&mut bytes);
    writer.u8(resolution.status.code());
    writer.u64(resolution.timestamp);
    writer.u128(resolution.resolved_by);
    let mut out = [0u8; 25];
    out.copy_from_slice(&bytes);
    out
}

pub fn decode_resolution(bytes: &[u8]) -> Result<PendingResolution, CodecError> {
    let mut reader = Reader::new(bytes);
    let code = reader.u8()?;
    let status =
        PendingStatus::from_code(code).ok_or(CodecError::Unknown { what: "pending status", value: code.into() })?;
    let timestamp = reader.u64()?;
    let resolved_by = reader.u128()?;
    reader.finish()?;
    Ok(PendingResolution { status, timestamp, resolved_by })
}

/// One event, as the log and the replicated log carry it.
pub fn put_event(writer: &mut Writer<'_>, event: &Event) {
    match event {
        Event::CreateAccount(account) => {
            writer.u8(TAG_CREATE_ACCOUNT);
            put_account(writer, account);
        }
        Event::CreateTransfer(transfer) => {
            writer.u8(TAG_CREATE_TRANSFER);
            put_transfer(writer, transfer);
        }
        Event::SetDebitLimit { account_id, debit_limit, linked } => {
            writer.u8(TAG_SET_DEBIT_LIMIT);
            writer.u8(u8::from(*linked));
            writer.u128(*account_id);
            writer.u128(*debit_limit);
        }
        Event::Record(record) => {
            // Lengths are bounded by validation; an oversized record is still encoded whole
            // (its result is a failure) so the log holds exactly what was submitted.
            writer.u8(TAG_RECORD);
            writer.u8(record.table);
            writer.u8(u8::from(record.linked) | (u8::from(record.sequenced) << 1));
            writer.u16(u16::try_from(record.key.len()).unwrap_or(u16::MAX));
            writer.bytes(&record.key[..record.key.len().min(usize::from(u16::MAX))]);
            writer.u32(u32::try_from(record.value.len()).unwrap_or(u32::MAX));
            writer.bytes(&record.value[..record.value.len().min(u32::MAX as usize)]);
        }
    }
}

fn get_bool(reader: &mut Reader<'_>) -> Result<bool, CodecError> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(CodecError::Unknown { what: "flag byte", value: other.into() }),
    }
}

/// One event written by `put_event`; unknown tags and flags are errors, never defaults.
pub fn get_event(reader: &mut Reader<'_>) -> Result<Event, CodecError> {
    match reader.u8()? {
        TAG_CREATE_ACCOUNT => Ok(Event::CreateAccount(get_account(reader)?)),
        TAG_CREATE_TRANSFER => Ok(Event::CreateTransfer(get_transfer(reader)?)),
        TAG_SET_DEBIT_LIMIT => {
            let linked = get_bool(reader)?;
            Ok(Event::SetDebitLimit { linked, account_id: reader.u128()?, debit_limit: reader.u128()? })
        }
        TAG_RECORD => {
            let table = reader.u8()?;
            let flags = reader.u8()?;
            if flags & !0b11 != 0 {
                return Err(CodecError::Unknown { what: "record flags", value: flags.into() });
            }
            let (linked, sequenced) = (flags & 1 != 0, flags & 2 != 0);
            let key_length = usize::from(reader.u16()?);
            let key = reader.take(key_length)?.to_vec();
            let value_length = reader.u32()? as usize;
            let value = reader.take(value_length)?.to_vec();
            Ok(Event::Record(crate::event::Record { table, key, value, linked, sequenced }))
        }
        tag => Err(CodecError::Unknown { what: "event tag", value: tag.into() }),
    }
}

/// One committed batch as read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub batch: Batch,
    pub results: Vec<ResultCode>,
    pub previous_hash: [u8; HASH_SIZE],
    pub hash: [u8; HASH_SIZE],
}

/// Encodes a log entry into `out` and returns its hash. The hash covers every byte before it,
/// including the previous batch's hash: that is the chain an audit walks.
pub fn encode_log_entry(
    batch: &Batch,
    results: &[ResultCode],
    previous_hash: &[u8; HASH_SIZE],
    out: &mut Vec<u8>,
) -> [u8; HASH_SIZE] {
    assert_eq!(batch.events.len(), results.len(), "one result per event");
    out.clear();
    let mut writer = Writer(out);
    writer.u8(LOG_VERSION);
    writer.u64(batch.sequence);
    writer.u64(batch.timestamp);
    writer.bytes(previous_hash);
    writer.u32(u32::try_from(batch.events.len()).expect("batch size is bounded far below u32::MAX"));
    for event in &batch.events {
        put_event(&mut writer, event);
    }
    for result in results {
        writer.u8(result.code());
    }
    let hash: [u8; HASH_SIZE] = blake3::hash(out).into();
    out.extend_from_slice(&hash);
    hash
}

pub fn decode_log_entry(bytes: &[u8]) -> Result<LogEntry, CodecError> {
    if bytes.len() < HASH_SIZE {
        return Err(CodecError::Truncated { offset: 0, needed: HASH_SIZE - bytes.len() });
    }
    let (body, stored_hash) = bytes.split_at(bytes.len() - HASH_SIZE);
    let computed: [u8; HASH_SIZE] = blake3::hash(body).into();
    if computed.as_slice() != stored_hash {
        return Err(CodecError::HashMismatch);
    }
    let mut reader = Reader::new(body);
    let version = reader.u8()?;
    if version != LOG_VERSION {
        return Err(CodecError::Unknown { what: "log version", value: version.into() });
    }
    let sequence = reader.u64()?;
    let timestamp = reader.u64()?;
    let previous_hash = reader.hash()?;
    let count = reader.u32()? as usize;
    // Refuse a count the body cannot hold before allocating for it.
    if count > body.len() / EVENT_SIZE_MIN {
        return Err(CodecError::Truncated { offset: reader.offset(), needed: count.saturating_mul(EVENT_SIZE_MIN) });
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(get_event(&mut reader)?);
    }
    let mut results = Vec::with_capacity(count);
    for _ in 0..count {
        results.push(get_result(&mut reader)?);
    }
    reader.finish()?;
    Ok(LogEntry { batch: Batch { sequence, timestamp, events }, results, previous_hash, hash: computed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_transfer() -> Transfer {
        Transfer {
            id: 7,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 1_000,
            pending_id: 0,
            user_data_128: 9,
            user_data_64: 8,
            user_data_32: 6,
            timeout: 0,
            ledger: 986,
            code: 1,
            flags: TransferFlags(TransferFlags::LINKED),
            timestamp: 42,
        }
    }

    #[test]
    fn records_round_trip_at_their_declared_sizes() {
        let account = Account { id: 3, debit_limit: 5, ledger: 1, code: 2, ..Account::default() };
        let bytes = encode_account(&account);
        assert_eq!(bytes.len(), ACCOUNT_SIZE);
        assert_eq!(decode_account(&bytes), Ok(account));

        let stored = StoredTransfer { transfer: sample_transfer(), result: ResultCode::ExceedsCredits };
        let mut bytes = Vec::new();
        encode_stored_transfer(&stored, &mut bytes);
        assert_eq!(bytes.len(), STORED_TRANSFER_SIZE);
        assert_eq!(decode_stored_transfer(&bytes), Ok(stored));

        let resolution = PendingResolution { status: PendingStatus::Voided, timestamp: 5, resolved_by: 6 };
        assert_eq!(decode_resolution(&encode_resolution(&resolution)), Ok(resolution));
    }

    #[test]
    fn log_entry_round_trips_and_detects_any_flipped_bit() {
        let batch = Batch {
            sequence: 3,
            timestamp: 1_000,
            events: vec![
                Event::CreateTransfer(sample_transfer()),
                Event::SetDebitLimit { account_id: 1, debit_limit: 50, linked: true },
                crate::event::Record::append(3, vec![1, 2], vec![9; 300], false),
                Event::CreateAccount(Account { id: 4, ledger: 1, code: 1, ..Account::default() }),
            ],
        };
        let results = vec![ResultCode::Ok, ResultCode::AccountNotFound, ResultCode::Ok, ResultCode::Exists];
        let mut bytes = Vec::new();
        let hash = encode_log_entry(&batch, &results, &[5; HASH_SIZE], &mut bytes);
        let entry = decode_log_entry(&bytes).expect("decodes");
        assert_eq!(entry.batch, batch);
        assert_eq!(entry.results, results);
        assert_eq!(entry.previous_hash, [5; HASH_SIZE]);
        assert_eq!(entry.hash, hash);

        for index in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            let mut corrupt = bytes.clone();
            corrupt[index] ^= 0x10;
            assert!(decode_log_entry(&corrupt).is_err(), "flip at {index} went unnoticed");
        }
        assert!(decode_log_entry(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_log_entry(&[]).is_err());
    }

    #[test]
    fn truncated_and_trailing_records_are_errors() {
        let bytes = encode_account(&Account::default());
        assert!(matches!(decode_account(&bytes[..10]), Err(CodecError::Truncated { .. })));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_account(&long), Err(CodecError::Trailing(1)));
        assert!(decode_resolution(&[9; 25]).is_err());
    }
}
