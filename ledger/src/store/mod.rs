//! RocksDB storage: the column-family layout, the atomic write of one batch, and reads.
//!
//! | column family       | key                                   | value                         | kind        |
//! |---------------------|---------------------------------------|-------------------------------|-------------|
//! | `log`               | sequence (u64 BE)                     | log entry (events, results, hash chain) | append-only record |
//! | `transfers`         | transfer id (u128 BE)                 | transfer + result code        | append-only record |
//! | `pending_status`    | pending transfer id                   | resolution (posted/voided/expired, when, by whom) | written once |
//! | `accounts`          | account id                            | account with balances         | derived state |
//! | `account_transfers` | account id ++ timestamp (u64 BE)      | transfer id                   | derived index |
//! | `pending_open`      | pending transfer id                   | expires_at                    | derived index |
//! | `meta`              | `head`                                | last sequence, its hash, next timestamp | derived state |
//! | `records`           | table ++ key                          | latest value of a service record | derived state |
//!
//! Records are never updated or deleted. Derived state (balances, indexes, head) is rewritten as
//! it changes and can always be recomputed from the log; `verify` does exactly that. Everything a
//! batch changes goes into one `WriteBatch` written with `sync`, so after a crash storage holds a
//! prefix of the committed batches, never part of one.

mod lock;
mod options;

use std::path::Path;
use std::sync::Arc;

use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
use rocksdb::{ColumnFamily, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::codec::{self, CodecError, LogEntry, PendingResolution, StoredTransfer, HASH_SIZE};
use crate::event::{Batch, Event, RECORD_TABLE_RESERVED};
use crate::result::ResultCode;
use crate::state::{Effects, OpenPending};
use crate::types::Account;

pub use options::StoreOptions;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_TRANSFERS: &str = "transfers";
pub(crate) const CF_ACCOUNTS: &str = "accounts";
pub(crate) const CF_ACCOUNT_TRANSFERS: &str = "account_transfers";
pub(crate) const CF_PENDING_OPEN: &str = "pending_open";
pub(crate) const CF_PENDING_STATUS: &str = "pending_status";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_RECORDS: &str = "records";
const HEAD_KEY: &[u8] = b"head";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record in column family {family} at key {key}: {error}")]
    Corrupt { family: &'static str, key: String, error: CodecError },
    #[error("batch log does not match its head: {0}")]
    BrokenChain(String),
    #[error(
        "{path} is open in process {pid}, which is still writing it: stop that process (a graceful \
         stop commits its in-flight batches) and audit the stopped ledger"
    )]
    InUse { path: String, pid: u32 },
}

/// Where the log ends: the last committed batch, its hash, and the first timestamp the next batch
/// may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub hash: [u8; HASH_SIZE],
    pub next_timestamp: u64,
}

impl Head {
    pub const GENESIS: Head = Head { sequence: 0, hash: codec::GENESIS_HASH, next_timestamp: 1 };
}

/// A stored record: key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A page of an account's transfers, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferPage {
    pub transfers: Vec<crate::types::Transfer>,
    /// Pass as `timestamp_min` to get the next page; `None` when the range is exhausted.
    pub next_timestamp: Option<u64>,
}

/// Reusable buffers for building write batches without per-batch allocation, and the writing
/// thread's RocksDB timers. Made on the thread that writes (the timers are that thread's).
pub struct WriteScratch {
    log: Vec<u8>,
    record: Vec<u8>,
    transfers: Vec<usize>,
    index: Vec<([u8; 24], [u8; 16])>,
    counters: Vec<(Vec<u8>, u64)>,
    /// A batch's record keys, each with the position of its event in the batch.
    records: Vec<(Vec<u8>, usize)>,
    timers: PerfContext,
}

impl Default for WriteScratch {
    fn default() -> Self {
        // Timers on this thread only, and only for writes: a few clock reads per batch. The
        // mutex timers are left off, as RocksDB advises for production. The variant's name is
        // off by one: rust-rocksdb 0.25 numbers its levels as RocksDB did before `kEnableWait`
        // (3) was added, so its `EnableTimeExceptForMutex` (3) is RocksDB's `kEnableWait`, which
        // turns no write timer on (the WAL sync histogram read 0 for every batch), and this one
        // (4) is RocksDB 11's `kEnableTimeExceptForMutex`. CPU timers stay off at this level.
        set_perf_stats(PerfStatsLevel::EnableTimeAndCPUTimeExceptForMutex);
        WriteScratch {
            log: Vec::new(),
            record: Vec::new(),
            transfers: Vec::new(),
            index: Vec::new(),
            counters: Vec::new(),
            records: Vec::new(),
            timers: PerfContext::default(),
        }
    }
}

/// How a batch's write reaches the disk.
#[derive(Clone, Copy, Debug)]
pub enum Durability<'a> {
    /// Synced before `write_batch` returns: the single node's only durable write.
    Synced,
    /// Unsynced: a replicated log holds the batch durably already. `meta` (the log's position
    /// and anything else it must find after a crash) is written in the same atomic write, so
    /// the state and the position it reflects never disagree.
    Replicated { meta: &'a [(&'a [u8], &'a [u8])] },
}

/// The replicated log's keys live in `meta` under their own prefix, apart from the ledger's.
fn replicated_meta_key(key: &[u8]) -> Vec<u8> {
    let mut prefixed = b"replicated/".to_vec();
    prefixed.extend_from_slice(key);
    prefixed
}

/// What writing a batch produced.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    /// The batch's hash, which the next batch chains to.
    pub hash: [u8; HASH_SIZE],
    /// Time RocksDB spent appending the batch to its WAL and syncing it.
    pub wal_nanoseconds: u64,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

fn corrupt(family: &'static str, key: &[u8], error: CodecError) -> StoreError {
    StoreError::Corrupt { family, key: hex(key), error }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn u128_key(bytes: &[u8]) -> Result<u128, CodecError> {
    let mut reader = codec::Reader::new(bytes);
    let value = reader.u128()?;
    reader.finish()?;
    Ok(value)
}

/// Sums `total-stops` and `total-delays` in RocksDB's "Write Stall (count): name: value, ..." line.
fn parse_write_stalls(text: &str) -> u64 {
    let counts = text.split_once(':').map_or("", |(_, rest)| rest);
    counts
        .split(',')
        .filter_map(|item| item.split_once(':'))
        .filter(|(name, _)| matches!(name.trim(), "total-stops" | "total-delays"))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

fn record_key(table: u8, key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + key.len());
    bytes.push(table);
    bytes.extend_from_slice(key);
    bytes
}

fn index_key(account_id: u128, timestamp: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&account_id.to_be_bytes());
    key[16..].copy_from_slice(&timestamp.to_be_bytes());
    key
}

impl Store {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let db = DB::open_cf_descriptors(&options::db_options(), path, options::column_families(options))?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Opens for reading only, for audits: nothing in the directory is written (no lock, no new
    /// log or manifest files), so the audited copy stays byte-for-byte as it was. Writes through
    /// such a store fail.
    ///
    /// Refused while another process has the store open (`StoreError::InUse`; see `lock`).
    pub fn open_read_only(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        if let Some(pid) = lock::holder(path) {
            return Err(StoreError::InUse { path: path.display().to_string(), pid });
        }
        let mut db_options = options::db_options();
        db_options.create_if_missing(false);
        db_options.create_missing_column_families(false);
        let families = options::column_families(options);
        let db = DB::open_cf_descriptors_read_only(&db_options, path, families, false)?;
        Ok(Store { db: Arc::new(db) })
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        // Every family is created at open (create_missing_column_families), so it exists.
        self.db.cf_handle(name).expect("column families are created at open")
    }

    /// Writes one applied batch atomically and durably (synced). Returns the batch's hash.
    pub fn write_batch(
        &self,
        batch: &Batch,
        effects: &Effects,
        previous_hash: &[u8; HASH_SIZE],
        scratch: &mut WriteScratch,
    ) -> Result<Written, StoreError> {
        self.write_batch_with(batch, effects, previous_hash, scratch, Durability::Synced)
    }

    /// Writes one applied batch atomically, synced or (when a replicated log made the batch
    /// durable before it was applied) unsynced with the log's position beside it.
    pub fn write_batch_with(
        &self,
        batch: &Batch,
        effects: &Effects,
        previous_hash: &[u8; HASH_SIZE],
        scratch: &mut WriteScratch,
        durability: Durability<'_>,
    ) -> Result<Written, StoreError> {
        // Sized up front: growing a multi-megabyte buffer by doubling costs page faults per batch.
        let estimate = 256 * batch.events.len() + 160 * effects.accounts.len() + 4096;
        let mut write = WriteBatch::with_capacity_bytes(estimate);
        let hash = codec::encode_log_entry(batch, &effects.results, previous_hash, &mut scratch.log);
        write.put_cf(self.cf(CF_LOG), batch.sequence.to_be_bytes(), &scratch.log);

        // Keys go in sorted order: a memtable insert next to the previous one reuses its
        // position in the skip list instead of searching from the top (the index keys of one
        // account are consecutive; unsorted, every insert was a full search and the biggest
        // cost of a batch).
        let transfers = self.cf(CF_TRANSFERS);
        scratch.transfers.clear();
        scratch.transfers.extend(0..effects.transfers.len());
        scratch.transfers.sort_unstable_by_key(|position| effects.transfers[*position].transfer.id);
        scratch.index.clear();
        for position in &scratch.transfers {
            let stored = &effects.transfers[*position];
            let transfer = &stored.transfer;
            codec::encode_stored_transfer(stored, &mut scratch.record);
            write.put_cf(transfers, transfer.id.to_be_bytes(), &scratch.record);
            if stored.result == ResultCode::Ok {
                let id = transfer.id.to_be_bytes();
                scratch.index.push((index_key(transfer.debit_account_id, transfer.timestamp), id));
                scratch.index.push((index_key(transfer.credit_account_id, transfer.timestamp), id));
            }
        }
        scratch.index.sort_unstable_by_key(|entry| entry.0);
        let index = self.cf(CF_ACCOUNT_TRANSFERS);
        for (key, id) in &scratch.index {
            write.put_cf(index, key, id);
        }
        let accounts = self.cf(CF_ACCOUNTS);
        for account in &effects.accounts {
            write.put_cf(accounts, account.id.to_be_bytes(), codec::encode_account(account));
        }
        let (pending_open, pending_status) = (self.cf(CF_PENDING_OPEN), self.cf(CF_PENDING_STATUS));
        // Opens before closes: a pending transfer opened and resolved in one batch ends closed.
        for open in &effects.pending_opened {
            write.put_cf(pending_open, open.transfer.id.to_be_bytes(), open.expires_at.to_be_bytes());
        }
        for (id, resolution) in &effects.resolutions {
            write.delete_cf(pending_open, id.to_be_bytes());
            write.put_cf(pending_status, id.to_be_bytes(), codec::encode_resolution(resolution));
        }
        let records = self.cf(CF_RECORDS);
        scratch.counters.clear();
        scratch.records.clear();
        let mut sequences = effects.record_sequences.iter();
        for (position, (event, result)) in batch.events.iter().zip(&effects.results).enumerate() {
            let (Event::Record(record), ResultCode::Ok) = (event, result) else { continue };
            let mut key = record_key(record.table, &record.key);
            if record.sequenced {
                let Some(number) = sequences.next() else {
                    unreachable!("the state machine numbers every appended record it accepts");
                };
                scratch.counters.push((record_key(RECORD_TABLE_RESERVED, &key), *number));
                key.extend_from_slice(&number.to_be_bytes());
            }
            scratch.records.push((key, position));
        }
        // Sorted, for the same reason as the transfers: a payment writes its metadata (keyed by
        // payment id) and its payee's event (keyed by PSP and number), and in batch order the
        // inserts alternate between the tables and between PSPs, each one a search from the
        // top. The sort is stable: writes of one key keep their order, so the last still wins.
        scratch.records.sort_by(|left, right| left.0.cmp(&right.0));
        for (key, position) in &scratch.records {
            let Some(Event::Record(record)) = batch.events.get(*position) else {
                unreachable!("positions are taken from this batch's record events");
            };
            if record.value.is_empty() {
                write.delete_cf(records, key);
            } else {
                write.put_cf(records, key, &record.value);
            }
        }
        // Each sequence's counter (table 0) once per batch, at its last number: a batch appends
        // thousands of events to a few PSPs' outboxes, and one put per append was a memtable
        // insert and WAL bytes per payment for a value only the last write keeps.
        scratch.counters.sort_unstable();
        for (position, (key, number)) in scratch.counters.iter().enumerate() {
            let last_of_key = scratch.counters.get(position + 1).is_none_or(|(next, _)| next != key);
            if last_of_key {
                write.put_cf(records, key, number.to_be_bytes());
            }
        }
        let head = Head { sequence: batch.sequence, hash, next_timestamp: batch.next_timestamp() };
        write.put_cf(self.cf(CF_META), HEAD_KEY, encode_head(&head));
        let sync = match durability {
            Durability::Synced => true,
            Durability::Replicated { meta } => {
                for (key, value) in meta {
                    write.put_cf(self.cf(CF_META), replicated_meta_key(key), value);
                }
                false
            }
        };

        let mut options = WriteOptions::default();
        options.set_sync(sync);
        scratch.timers.reset();
        self.db.write_opt(write, &options)?;
        Ok(Written { hash, wal_nanoseconds: scratch.timers.metric(PerfMetric::WriteWalTime) })
    }

    /// Writes the replicated log's bookkeeping alone (for log entries that carry no batch),
    /// unsynced: the replicated log holds it durably and replays it after a crash.
    pub fn put_replicated_meta(&self, meta: &[(&[u8], &[u8])]) -> Result<(), StoreError> {
        let mut write = WriteBatch::default();
        for (key, value) in meta {
            write.put_cf(self.cf(CF_META), replicated_meta_key(key), value);
        }
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(write, &options)?;
        Ok(())
    }

    /// A value written by the replicated log beside the batches (`Durability::Replicated`).
    pub fn replicated_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), replicated_meta_key(key))?)
    }

    /// Makes every write so far durable (before the replicated log drops entries it covers).
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// A consistent copy of the whole store in `directory` (which must not exist), hard-linked
    /// where it can be: a snapshot of the ledger for a node that is behind.
    pub fn checkpoint(&self, directory: &Path) -> Result<(), StoreError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(directory)?;
        Ok(())
    }

    /// How many handles (clones) of this open database exist: one means it closes when dropped.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    pub fn head(&self) -> Result<Head, StoreError> {
        match self.db.get_pinned_cf(self.cf(CF_META), HEAD_KEY)? {
            None => Ok(Head::GENESIS),
            Some(bytes) => decode_head(&bytes).map_err(|error| corrupt(CF_META, HEAD_KEY, error)),
        }
    }

    /// The log entry of batch `sequence`, hash-checked.
    pub fn log_entry(&self, sequence: u64) -> Result<Option<LogEntry>, StoreError> {
        let key = sequence.to_be_bytes();
        match self.db.get_pinned_cf(self.cf(CF_LOG), key)? {
            None => Ok(None),
            Some(bytes) => codec::decode_log_entry(&bytes).map(Some).map_err(|error| corrupt(CF_LOG, &key, error)),
        }
    }

    /// The highest sequence present in the log (0 when empty).
    pub fn last_log_sequence(&self) -> Result<u64, StoreError> {
        let mut iterator = self.db.raw_iterator_cf(self.cf(CF_LOG));
        iterator.seek_to_last();
        iterator.status()?;
        match iterator.key() {
            None => Ok(0),
            Some(key) => {
                let mut reader = codec::Reader::new(key);
                let sequence = reader.u64().map_err(|error| corrupt(CF_LOG, key, error))?;
                Ok(sequence)
            }
        }
    }

    /// Calls `visit` with every log entry from `first_sequence` on, in order, stopping at the
    /// first error (of storage, decoding, or of `visit`).
    pub fn scan_log<E: From<StoreError>>(
        &self,
        first_sequence: u64,
        mut visit: impl FnMut(LogEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = first_sequence.to_be_bytes();
        for item in self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(StoreError::from)?;
            let entry = codec::decode_log_entry(&value).map_err(|error| corrupt(CF_LOG, &key, error))?;
            visit(entry)?;
        }
        Ok(())
    }

    /// Values under u128 keys of one column family, decoded, in the order asked: one batched
    /// read for all of them.
    fn get_many<T>(
        &self,
        family: &'static str,
        ids: &[u128],
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Vec<Option<T>>, StoreError> {
        let keys: Vec<[u8; 16]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let values = self.db.batched_multi_get_cf(self.cf(family), &keys, false);
        values
            .into_iter()
            .zip(&keys)
            .map(|(value, key)| match value? {
                None => Ok(None),
                Some(bytes) => decode(&bytes).map(Some).map_err(|error| corrupt(family, key, error)),
            })
            .collect()
    }

    /// Stored transfers by id, in the order asked.
    pub fn transfers(&self, ids: &[u128]) -> Result<Vec<Option<StoredTransfer>>, StoreError> {
        self.get_many(CF_TRANSFERS, ids, codec::decode_stored_transfer)
    }

    /// How pending transfers were resolved, by id, in the order asked.
    pub fn resolutions(&self, ids: &[u128]) -> Result<Vec<Option<PendingResolution>>, StoreError> {
        self.get_many(CF_PENDING_STATUS, ids, codec::decode_resolution)
    }

    /// Accounts by id, in the order asked.
    pub fn accounts(&self, ids: &[u128]) -> Result<Vec<Option<Account>>, StoreError> {
        self.get_many(CF_ACCOUNTS, ids, codec::decode_account)
    }

    /// Every account, in id order.
    pub fn all_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let mut accounts = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_ACCOUNTS), IteratorMode::Start) {
            let (key, value) = item?;
            let account = codec::decode_account(&value).map_err(|error| corrupt(CF_ACCOUNTS, &key, error))?;
            let id = u128_key(&key).map_err(|error| corrupt(CF_ACCOUNTS, &key, error))?;
            if id != account.id {
                return Err(corrupt(CF_ACCOUNTS, &key, CodecError::Unknown { what: "account id under key", value: 0 }));
            }
            accounts.push(account);
        }
        Ok(accounts)
    }

    /// Every open pending transfer with its expiry.
    pub fn open_pending(&self) -> Result<Vec<OpenPending>, StoreError> {
        let mut ids = Vec::new();
        let mut expiries = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_PENDING_OPEN), IteratorMode::Start) {
            let (key, value) = item?;
            ids.push(u128_key(&key).map_err(|error| corrupt(CF_PENDING_OPEN, &key, error))?);
            let mut reader = codec::Reader::new(&value);
            let expires_at = reader.u64().map_err(|error| corrupt(CF_PENDING_OPEN, &key, error))?;
            expiries.push(expires_at);
        }
        let mut open = Vec::with_capacity(ids.len());
        for ((id, expires_at), stored) in ids.iter().zip(expiries).zip(self.transfers(&ids)?) {
            let Some(stored) = stored else {
                let error = CodecError::Unknown { what: "open pending transfer without a record", value: 0 };
                return Err(corrupt(CF_PENDING_OPEN, &id.to_be_bytes(), error));
            };
            open.push(OpenPending { transfer: stored.transfer, expires_at });
        }
        Ok(open)
    }

    /// Successful transfers that debited or credited `account_id` with timestamps in
    /// `timestamp_min..=timestamp_max`, oldest first, at most `limit`.
    pub fn account_transfers(
        &self,
        account_id: u128,
        timestamp_min: u64,
        timestamp_max: u64,
        limit: usize,
    ) -> Result<TransferPage, StoreError> {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(index_key(account_id, timestamp_min).to_vec());
        // The upper bound is exclusive; u64::MAX itself is never a transfer timestamp.
        options.set_iterate_upper_bound(index_key(account_id, timestamp_max.saturating_add(1)).to_vec());
        options.set_prefix_same_as_start(true);
        let mut iterator = self.db.raw_iterator_cf_opt(self.cf(CF_ACCOUNT_TRANSFERS), options);
        iterator.seek(index_key(account_id, timestamp_min));
        let mut ids = Vec::new();
        let mut next_timestamp = None;
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            let mut reader = codec::Reader::new(key);
            let timestamp = reader
                .take(16)
                .and_then(|_| reader.u64())
                .map_err(|error| corrupt(CF_ACCOUNT_TRANSFERS, key, error))?;
            if ids.len() == limit {
                next_timestamp = Some(timestamp);
                break;
            }
            ids.push(u128_key(value).map_err(|error| corrupt(CF_ACCOUNT_TRANSFERS, key, error))?);
            iterator.next();
        }
        iterator.status()?;
        let mut transfers = Vec::with_capacity(ids.len());
        for (id, stored) in ids.iter().zip(self.transfers(&ids)?) {
            let Some(stored) = stored else {
                let error = CodecError::Unknown { what: "indexed transfer without a record", value: 0 };
                return Err(corrupt(CF_ACCOUNT_TRANSFERS, &id.to_be_bytes(), error));
            };
            transfers.push(stored.transfer);
        }
        Ok(TransferPage { transfers, next_timestamp })
    }

    /// The latest value of a service record.
    pub fn record(&self, table: u8, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_RECORDS), record_key(table, key))?)
    }

    /// The latest values of many records of one table, in the order asked: one batched read.
    pub fn records_many(&self, table: u8, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|key| record_key(table, key)).collect();
        let values = self.db.batched_multi_get_cf(self.cf(CF_RECORDS), &keys, false);
        values.into_iter().map(|value| Ok(value?.map(|bytes| bytes.to_vec()))).collect()
    }

    /// The last number of every record sequence, as (table ++ key, number).
    pub fn record_sequences(&self) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut out = Vec::new();
        for (name, value) in self.records(RECORD_TABLE_RESERVED)? {
            let mut reader = codec::Reader::new(&value);
            let number = reader.u64().map_err(|error| corrupt(CF_RECORDS, &name, error))?;
            out.push((name, number));
        }
        Ok(out)
    }

    /// Records of `table` whose key starts with `prefix` and sorts after `after` (or all, when
    /// `after` is `None`), in key order, at most `limit`.
    pub fn records_after(
        &self,
        table: u8,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let start = record_key(table, prefix);
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(start.clone());
        let mut iterator = self.db.raw_iterator_cf_opt(self.cf(CF_RECORDS), options);
        match after {
            Some(after) => {
                let after = record_key(table, after);
                iterator.seek(&after);
                if iterator.key() == Some(after.as_slice()) {
                    iterator.next();
                }
            }
            None => iterator.seek(&start),
        }
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            if out.len() == limit || !key.starts_with(&start) {
                break;
            }
            out.push((key[1..].to_vec(), value.to_vec()));
            iterator.next();
        }
        iterator.status()?;
        Ok(out)
    }

    /// Every record of a table as (key, value), in key order.
    pub fn records(&self, table: u8) -> Result<Vec<KeyValue>, StoreError> {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(vec![table]);
        if table < u8::MAX {
            options.set_iterate_upper_bound(vec![table + 1]);
        }
        let mut iterator = self.db.raw_iterator_cf_opt(self.cf(CF_RECORDS), options);
        iterator.seek(vec![table]);
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            out.push((key[1..].to_vec(), value.to_vec()));
            iterator.next();
        }
        iterator.status()?;
        Ok(out)
    }

    /// Number of stored transfer records (successes and recorded failures); an estimate from
    /// RocksDB unless `exact`.
    pub fn transfer_count(&self, exact: bool) -> Result<u64, StoreError> {
        if !exact {
            let estimate = self.db.property_int_value_cf(self.cf(CF_TRANSFERS), "rocksdb.estimate-num-keys")?;
            return Ok(estimate.unwrap_or(0));
        }
        let mut count = 0;
        let mut iterator = self.db.raw_iterator_cf(self.cf(CF_TRANSFERS));
        iterator.seek_to_first();
        while iterator.valid() {
            count += 1;
            iterator.next();
        }
        iterator.status()?;
        Ok(count)
    }

    /// Calls `visit` with every stored transfer, in id order.
    pub fn scan_transfers(&self, mut visit: impl FnMut(StoredTransfer)) -> Result<(), StoreError> {
        for item in self.db.iterator_cf(self.cf(CF_TRANSFERS), IteratorMode::Start) {
            let (key, value) = item?;
            visit(codec::decode_stored_transfer(&value).map_err(|error| corrupt(CF_TRANSFERS, &key, error))?);
        }
        Ok(())
    }

    /// A database-wide RocksDB integer property (for metrics), e.g. `rocksdb.is-write-stopped`.
    pub fn db_property(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.db.property_int_value(name)?)
    }

    /// Write stalls since open, stops and slowdowns together (`rocksdb.db-write-stall-stats`).
    pub fn write_stalls(&self) -> Result<u64, StoreError> {
        let text = self.db.property_value("rocksdb.db-write-stall-stats")?.unwrap_or_default();
        Ok(parse_write_stalls(&text))
    }

    /// A RocksDB integer property summed over the ledger's column families (for metrics).
    pub fn property_sum(&self, name: &str) -> Result<u64, StoreError> {
        let mut sum = 0u64;
        for family in [
            CF_LOG,
            CF_TRANSFERS,
            CF_ACCOUNTS,
            CF_ACCOUNT_TRANSFERS,
            CF_PENDING_OPEN,
            CF_PENDING_STATUS,
            CF_META,
            CF_RECORDS,
        ] {
            sum = sum.saturating_add(self.db.property_int_value_cf(self.cf(family), name)?.unwrap_or(0));
        }
        Ok(sum)
    }

    /// Writes raw bytes under a log key. Only for tests that simulate disk corruption.
    #[doc(hidden)]
    pub fn corrupt_log_entry_for_test(&self, sequence: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        let mut write = WriteBatch::default();
        write.put_cf(self.cf(CF_LOG), sequence.to_be_bytes(), bytes);
        self.db.write_opt(write, &options)?;
        Ok(())
    }

    /// Reads raw bytes of a log entry. Only for tests that simulate disk corruption.
    #[doc(hidden)]
    pub fn raw_log_entry_for_test(&self, sequence: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_LOG), sequence.to_be_bytes())?)
    }
}

fn encode_head(head: &Head) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + HASH_SIZE + 8);
    let mut writer = codec::Writer(&mut bytes);
    writer.u64(head.sequence);
    writer.bytes(&head.hash);
    writer.u64(head.next_timestamp);
    bytes
}

fn decode_head(bytes: &[u8]) -> Result<Head, CodecError> {
    let mut reader = codec::Reader::new(bytes);
    let head = Head { sequence: reader.u64()?, hash: reader.hash()?, next_timestamp: reader.u64()? };
    reader.finish()?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_stalls_sum_stops_and_delays_from_rocksdbs_text() {
        let text = "Write Stall (count): cf-l0-file-count-limit-delays-with-ongoing-compaction: 3, \
                    total-delays: 7, total-stops: 2, write-buffer-manager-limit-stops: 0\n";
        assert_eq!(super::parse_write_stalls(text), 9);
        assert_eq!(super::parse_write_stalls(""), 0);
    }
}
