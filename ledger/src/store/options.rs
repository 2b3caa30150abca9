//! RocksDB options, each set explicitly with the reason for its value.

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Env, MemtableFactory, Options,
    SliceTransform,
};

use super::{
    CF_ACCOUNTS, CF_ACCOUNT_TRANSFERS, CF_LOG, CF_META, CF_PENDING_OPEN, CF_PENDING_STATUS, CF_RECORDS, CF_TRANSFERS,
};

/// Storage tuning a deployment may change. Defaults suit the 2-core, 24 GiB reference machine.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Shared block cache for all column families.
    pub block_cache_bytes: usize,
    /// Memtable size for the write-heavy column families (log, transfers, index, accounts,
    /// records).
    pub write_buffer_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { block_cache_bytes: 512 << 20, write_buffer_bytes: 128 << 20 }
    }
}

pub(super) fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // A torn final WAL record can only belong to a write that never returned (so was never
    // acknowledged): point-in-time recovery drops it. Anything our own hash chain then finds
    // wrong is reported at open, never accepted.
    options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // Durability is the synced write of each batch (WriteOptions::sync); fdatasync suffices for
    // the WAL, fsync of metadata is RocksDB's own business on file creation.
    options.set_use_fsync(false);
    // Two cores: one for the sequencer, one shared by the committer and RocksDB's background work.
    options.increase_parallelism(2);
    options.set_max_background_jobs(2);
    // Smooth SST and WAL writeback instead of a burst of dirty pages at each file close.
    options.set_bytes_per_sync(1 << 20);
    options.set_wal_bytes_per_sync(1 << 20);
    // Reuse finished WAL files instead of deleting them and creating new ones. `perf trace` at
    // 25,000 payments/s saw RocksDB's unlinks (WALs and obsolete SSTs alike) take 20-36 ms each,
    // and a commit's fdatasync beside them take 19 ms instead of ~0.3 ms; recycling takes the WAL
    // files out of that, and an overwrite of an allocated file needs no block allocation at each
    // sync. No p99 gain was measured from this alone (BENCHMARKS.md). Compatible with the
    // point-in-time recovery above (records carry their log number, so a recycled file's old
    // tail is not replayed).
    options.set_recycle_log_file_num(4);
    // The small meta column family would otherwise pin old WAL files until it fills a memtable.
    options.set_max_total_wal_size(512 << 20);
    // Checksums are verified on every read; a corrupt block is an error, not wrong money.
    options.set_paranoid_checks(true);
    // One writer thread (the committer) by design; the hash memtable of the index needs this off.
    options.set_allow_concurrent_memtable_write(false);
    lower_background_priority(&mut options);
    options
}

/// Flushes and compactions run at the lowest CPU and I/O priority. On two cores a memtable
/// flush or an L0 compaction takes one core for hundreds of milliseconds, and at normal priority
/// it halves the CPU of the threads that answer payments: at 25,000 payments/s open loop that
/// showed as seconds whose p99 was 100-200 ms, and this change is the one that made them rarer
/// (p99 11.5-26 ms over three runs, from 60-75 ms; BENCHMARKS.md). At the lowest
/// priority they run on the CPU the payment path leaves idle; when there is none for long,
/// RocksDB's own write slowdown (L0 file count, pending compaction bytes) throttles the writers,
/// which is the back-pressure we want rather than latency spikes.
fn lower_background_priority(options: &mut Options) {
    match Env::new() {
        Ok(mut env) => {
            env.lower_thread_pool_cpu_priority();
            env.lower_high_priority_thread_pool_cpu_priority();
            env.lower_thread_pool_io_priority();
            env.lower_high_priority_thread_pool_io_priority();
            options.set_env(&env);
        }
        // A tuning, not a guarantee: without it the store is correct, only its tail is longer.
        Err(error) => tracing::warn!(%error, "RocksDB environment not available; background work at normal priority"),
    }
}

fn table_options(cache: &Cache, bloom: bool) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_block_size(16 << 10);
    // Index and filter blocks live in the bounded cache, so memory stays bounded as data grows;
    // L0's are pinned because every lookup consults them.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if bloom {
        // ~1% false positives: an idempotency check for a new id (the common case) is answered
        // by the filters without reading a data block.
        table.set_bloom_filter(10.0, false);
    }
    table
}

fn cf_options(cache: &Cache, bloom: bool, write_buffer_bytes: usize) -> Options {
    let mut options = Options::default();
    options.set_block_based_table_factory(&table_options(cache, bloom));
    // LZ4: cheap on CPU, which is the scarce resource here. Ids and amounts compress little; the
    // log's repeated account ids and ledgers compress well.
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_bottommost_compression_type(DBCompressionType::Lz4);
    options.set_write_buffer_size(write_buffer_bytes);
    options.set_max_write_buffer_number(4);
    options.set_level_compaction_dynamic_level_bytes(true);
    options
}

/// Account keys are the account id, 16 bytes big-endian.
const ACCOUNT_KEY_BYTES: usize = 16;

/// Inserts into the memtable start from where the last insert of the same key prefix went,
/// instead of a search from the skip list's top. For `accounts`, whose every batch writes a new
/// version of each account it touched, the prefix is the whole key: the new version goes just
/// before the previous one. Without it, each such put was a full search of a memtable holding
/// hundreds of thousands of older versions (RocksDB's `FindSpliceForLevel`, the committer's
/// largest symbol at 25,000 payments/s). A hint costs a few hundred bytes per account written
/// while a memtable lives, counted in the memtable's size: memory stays bounded by
/// `write_buffer_bytes`, and a ledger writing millions of distinct accounts flushes sooner. The
/// option has no setter in rust-rocksdb; RocksDB's option-string parser sets it, and a test reads
/// it back from the OPTIONS file RocksDB writes.
fn with_insert_hint_per_key(mut options: Options, key_bytes: usize) -> Options {
    let setting = format!("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{key_bytes}");
    match options.get_options_from_string(&setting) {
        Ok(hinted) => hinted,
        // A tuning, not a guarantee: without it inserts are correct, only slower.
        Err(error) => {
            tracing::warn!(%error, "memtable insert hints not available; accounts inserts search the memtable");
            options
        }
    }
}

pub(super) fn column_families(store: &StoreOptions) -> Vec<ColumnFamilyDescriptor> {
    let cache = Cache::new_lru_cache(store.block_cache_bytes);
    let big = store.write_buffer_bytes;
    let small = (store.write_buffer_bytes / 8).max(4 << 20);

    // The log is written once and read in sequence (recovery tail check, audit): no filter.
    let log = cf_options(&cache, false, big);
    // Point lookups by id; most lookups of new ids miss, which the filter answers.
    let mut transfers = cf_options(&cache, true, big);
    transfers.set_memtable_prefix_bloom_ratio(0.05);
    transfers.set_memtable_whole_key_filtering(true);
    // Every batch rewrites the accounts it touched, so this memtable fills as fast as the big
    // ones even though the column family stays small. Each memtable switch of any column family
    // starts a new WAL file (a file creation and its first syncs on the commit path) and a flush;
    // at 16 MB, this one and `records` switched 21 of the 26 times in a 30 s run at 25,000
    // payments/s.
    let accounts = with_insert_hint_per_key(cf_options(&cache, true, big), ACCOUNT_KEY_BYTES);
    // Keys are account id (16 bytes) then timestamp: a per-account prefix filter serves the
    // "transfers of account X between t1 and t2" scans.
    let mut index = cf_options(&cache, false, big);
    index.set_prefix_extractor(SliceTransform::create_fixed_prefix(16));
    index.set_memtable_prefix_bloom_ratio(0.05);
    // A batch writes index entries for thousands of accounts. In one skip list each account's
    // first entry costs a search from the top; hashed by account, each insert searches only
    // that account's short list. Index reads are always within one account (one prefix).
    index.set_memtable_factory(MemtableFactory::HashSkipList { bucket_count: 1 << 20, height: 4, branching_factor: 4 });
    let pending_open = cf_options(&cache, true, small);
    let pending_status = cf_options(&cache, true, small);
    let meta = cf_options(&cache, false, small);
    // Service records (participants, aliases, payment metadata, PSP event outboxes): point reads
    // by key and scans of an outbox. Two of a payment's three ledger events land here, so it is
    // sized as a write-heavy family (see `accounts`).
    let records = cf_options(&cache, true, big);

    vec![
        ColumnFamilyDescriptor::new(CF_LOG, log),
        ColumnFamilyDescriptor::new(CF_TRANSFERS, transfers),
        ColumnFamilyDescriptor::new(CF_ACCOUNTS, accounts),
        ColumnFamilyDescriptor::new(CF_ACCOUNT_TRANSFERS, index),
        ColumnFamilyDescriptor::new(CF_PENDING_OPEN, pending_open),
        ColumnFamilyDescriptor::new(CF_PENDING_STATUS, pending_status),
        ColumnFamilyDescriptor::new(CF_META, meta),
        ColumnFamilyDescriptor::new(CF_RECORDS, records),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The options of one column family as RocksDB itself recorded them when it opened the store.
    fn recorded_options(dir: &std::path::Path, family: &str) -> String {
        let file = std::fs::read_dir(dir)
            .expect("list the store")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("OPTIONS-")))
            .max()
            .expect("RocksDB writes an OPTIONS file at open");
        let text = std::fs::read_to_string(file).expect("read OPTIONS");
        let header = format!("[CFOptions \"{family}\"]");
        let start = text.find(&header).expect("the family's section");
        let section = &text[start + header.len()..];
        section[..section.find("\n[").unwrap_or(section.len())].to_string()
    }

    #[test]
    fn accounts_inserts_use_a_hint_per_account_and_keep_their_other_options() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("open");
        drop(store);
        let accounts = recorded_options(dir.path(), CF_ACCOUNTS);
        assert!(
            accounts.contains("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.16"),
            "accounts: {accounts}"
        );
        assert!(accounts.contains(&format!("write_buffer_size={}", StoreOptions::default().write_buffer_bytes)));
        assert!(accounts.contains("compression=kLZ4Compression"));
        let transfers = recorded_options(dir.path(), CF_TRANSFERS);
        assert!(transfers.contains("memtable_insert_with_hint_prefix_extractor=nullptr"), "transfers: {transfers}");
    }
}
