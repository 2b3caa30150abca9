//! The levels operators watch, read from the switch on demand (once per scrape or dashboard
//! tick), never tracked on the payment path: positions against caps, event backlogs, the ledger
//! pipeline, RocksDB health, disk space, the zero-sum invariant and the settlement window.
//!
//! Balances come from one RocksDB iterator over the accounts column family, which reads a
//! consistent point in time: a batch's account updates are one atomic write, so the sums are of
//! whole batches and a non-zero sum is a real breach, never a torn read.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ledger::{Account, HistogramSnapshot};

use crate::core::Switch;

/// One participant's position and event backlog.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    pub psp: Arc<str>,
    pub name: String,
    pub currency: String,
    pub active: bool,
    /// Posted credits minus posted debits (negative: the PSP owes the system).
    pub balance_minor: i128,
    /// Debits reserved by payments awaiting their payee.
    pub reserved_minor: u128,
    pub net_debit_cap_minor: u64,
    /// balance - reserved + cap: what the PSP can still send.
    pub available_minor: i128,
    /// Share of the PSP's liquidity (prefunded balance plus cap) in use, 0..=1.
    pub liquidity_used_ratio: f64,
    pub events_awaiting_ack: u64,
    pub stream_connected: bool,
    /// The PSP's collect requests awaiting the payer's decision (at most `limits.collects_pending_max`).
    pub collects_awaiting_approval: u64,
}

/// RocksDB's own health figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RocksDb {
    pub write_stopped: bool,
    pub delayed_write_rate_bytes: u64,
    pub write_stalls_total: u64,
    pub pending_compaction_bytes: u64,
    pub running_compactions: u64,
    pub sst_bytes: u64,
    pub memtable_bytes: u64,
}

/// The ledger pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub events_in_flight: u64,
    pub events_in_flight_max: u64,
    pub batches_total: u64,
    pub events_total: u64,
    pub batch_events: HistogramSnapshot,
    pub commit_nanoseconds: HistogramSnapshot,
    pub wal_sync_nanoseconds: HistogramSnapshot,
    pub committed_sequence: u64,
    pub failed: bool,
    pub payments_awaiting_payee: u64,
}

/// Sums of every account's balances in one currency: both are zero unless money was created or
/// lost.
#[derive(Clone, Debug, PartialEq)]
pub struct CurrencySum {
    pub currency: String,
    pub posted_minor: i128,
    pub pending_minor: i128,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub positions: Vec<Position>,
    pub aliases: u64,
    pub pipeline: Pipeline,
    pub rocksdb: RocksDb,
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    pub sums: Vec<CurrencySum>,
    pub settlement_window: u64,
    pub settlement_opened_unix_ns: u64,
    /// The configured bound on one PSP's collects awaiting approval (`limits.collects_pending_max`).
    pub collects_pending_max: usize,
}

impl Reading {
    /// Reads everything. Errors reading storage show up as missing figures (and the ledger's
    /// own `failed` flag), never as a failed scrape: an operator needs the rest most then.
    pub fn take(switch: &Switch) -> Reading {
        let accounts = switch.ledger.store().and_then(|store| Ok(store.all_accounts()?)).unwrap_or_else(|error| {
            tracing::warn!(%error, "metrics: reading accounts failed");
            Vec::new()
        });
        let (free, total) = disk_space(&switch.config.data_dir);
        let window = crate::services::settlement::open_window(switch).ok();
        Reading {
            positions: positions(switch, &accounts),
            aliases: switch.directory.len() as u64,
            pipeline: pipeline(switch),
            rocksdb: rocksdb(switch),
            disk_free_bytes: free,
            disk_total_bytes: total,
            sums: sums(switch, &accounts),
            settlement_window: window.as_ref().map_or(0, |window| window.window_id),
            settlement_opened_unix_ns: window.map_or(0, |window| window.opened_at_unix_ns),
            collects_pending_max: switch.config.limits.collects_pending_max,
        }
    }

    /// True when every currency's posted and pending balances sum to zero.
    pub fn zero_sum(&self) -> bool {
        self.sums.iter().all(|sum| sum.posted_minor == 0 && sum.pending_minor == 0)
    }
}

fn signed(value: u128) -> i128 {
    i128::try_from(value).unwrap_or(i128::MAX)
}

fn positions(switch: &Switch, accounts: &[Account]) -> Vec<Position> {
    let by_id: BTreeMap<u128, &Account> = accounts.iter().map(|account| (account.id, account)).collect();
    let mut positions: Vec<Position> = switch
        .participants
        .all()
        .into_iter()
        .map(|participant| {
            let account = by_id.get(&participant.account_id).copied().cloned().unwrap_or_default();
            let balance = signed(account.credits_posted) - signed(account.debits_posted);
            let reserved = account.debits_pending;
            let cap = participant.net_debit_cap_minor;
            let available = balance - signed(reserved) + i128::from(cap);
            let liquidity = balance.max(0) + i128::from(cap);
            let used = liquidity - available;
            let ratio = match liquidity {
                0 if used > 0 => 1.0,
                0 => 0.0,
                _ => (used as f64 / liquidity as f64).clamp(0.0, 1.0),
            };
            let outbox = switch.events.outbox(&switch.ledger, &participant.psp_id).ok();
            Position {
                psp: Arc::clone(&participant.psp_id),
                name: participant.name.clone(),
                currency: participant.currency.clone(),
                active: participant.is_active(),
                balance_minor: balance,
                reserved_minor: reserved,
                net_debit_cap_minor: cap,
                available_minor: available,
                liquidity_used_ratio: ratio,
                events_awaiting_ack: outbox.as_ref().map_or(0, |outbox| outbox.backlog()),
                stream_connected: outbox.is_some_and(|outbox| outbox.streams.load(Ordering::Acquire) > 0),
                collects_awaiting_approval: switch.collects_awaiting.of(&participant.psp_id) as u64,
            }
        })
        .collect();
    positions.sort_by(|left, right| left.psp.cmp(&right.psp));
    positions
}

fn sums(switch: &Switch, accounts: &[Account]) -> Vec<CurrencySum> {
    switch
        .config
        .currencies
        .iter()
        .map(|currency| {
            let mut sum = CurrencySum { currency: currency.code.clone(), posted_minor: 0, pending_minor: 0 };
            for account in accounts.iter().filter(|account| account.ledger == currency.ledger) {
                sum.posted_minor += signed(account.credits_posted) - signed(account.debits_posted);
                sum.pending_minor += signed(account.credits_pending) - signed(account.debits_pending);
            }
            sum
        })
        .collect()
}

fn pipeline(switch: &Switch) -> Pipeline {
    let ledger = &switch.ledger;
    let stats = ledger.stats();
    Pipeline {
        events_in_flight: ledger.events_in_flight() as u64,
        events_in_flight_max: ledger.config().events_in_flight_max as u64,
        batches_total: stats.batches_committed.load(Ordering::Relaxed),
        events_total: stats.events_committed.load(Ordering::Relaxed),
        batch_events: stats.batch_events.snapshot(),
        commit_nanoseconds: stats.commit_nanoseconds.snapshot(),
        wal_sync_nanoseconds: stats.wal_sync_nanoseconds.snapshot(),
        committed_sequence: ledger.committed_sequence(),
        failed: ledger.failed(),
        payments_awaiting_payee: switch.confirmations.len() as u64,
    }
}

fn rocksdb(switch: &Switch) -> RocksDb {
    let store = switch.ledger.store().ok();
    let database = |name: &str| store.as_ref().and_then(|store| store.db_property(name).ok().flatten()).unwrap_or(0);
    let families = |name: &str| store.as_ref().and_then(|store| store.property_sum(name).ok()).unwrap_or(0);
    RocksDb {
        write_stopped: database("rocksdb.is-write-stopped") > 0,
        delayed_write_rate_bytes: database("rocksdb.actual-delayed-write-rate"),
        write_stalls_total: store.as_ref().and_then(|store| store.write_stalls().ok()).unwrap_or(0),
        pending_compaction_bytes: families("rocksdb.estimate-pending-compaction-bytes"),
        running_compactions: database("rocksdb.num-running-compactions"),
        sst_bytes: families("rocksdb.total-sst-files-size"),
        memtable_bytes: families("rocksdb.cur-size-all-mem-tables"),
    }
}

/// Free (to unprivileged users) and total bytes of the data directory's filesystem; zeros if
/// it cannot be read.
fn disk_space(path: &std::path::Path) -> (u64, u64) {
    match rustix::fs::statvfs(path) {
        Ok(stats) => (stats.f_bavail.saturating_mul(stats.f_frsize), stats.f_blocks.saturating_mul(stats.f_frsize)),
        Err(_) => (0, 0),
    }
}
