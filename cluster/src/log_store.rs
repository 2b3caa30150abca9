//! The Raft log on RocksDB, durable before it is acknowledged.
//!
//! openraft's contract (`RaftLogStorage`): when `append`'s callback fires the entries must be on
//! disk, a vote must be on disk when `save_vote` returns, and writes must reach the disk in the
//! order they were made. Its RocksDB examples and FAQ relax the first two (unsynced writes); a
//! switch cannot: a follower that acknowledged an entry it then lost in a power cut could let a
//! leader count a quorum that does not exist, and an acknowledged payment would be gone.
//!
//! How: one writer thread owns every write, so the order is the order of the calls. An append is
//! written to RocksDB unsynced (readable at once, as `append` must be when it returns) and its
//! callback is held; when the writer's queue is empty it syncs the WAL once and fires every held
//! callback: group commit across appends, one fsync for all of them, as the ledger's own writer
//! does. A vote, a truncation and a purge are written synced (which syncs the WAL before them
//! too); the committed log id is written unsynced, as openraft allows (it is re-derived).
//!
//! Layout: its own RocksDB (`data/raft/`, apart from the ledger's state, whose checkpoints are
//! the snapshots), family `entries` (index as big-endian u64 → `codec::encode_entry`) and family
//! `meta` (`vote`, `committed`, `last_purged`). Every value read back that fails to decode is an
//! `InvalidData` error, which openraft treats as fatal: the node stops rather than apply a wrong
//! entry.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use crate::codec;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const ENTRIES: &str = "entries";
const META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log of one node. Cheap to clone; every clone writes through the same thread, which
/// stops (after syncing what it holds) when the last clone is dropped.
#[derive(Clone)]
pub struct RaftLog {
    db: Arc<DB>,
    writer: Arc<Writer>,
}

/// The writer thread's queue and handle.
struct Writer {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, command: Command) -> io::Result<()> {
        let stopped = || failed("the writer thread has stopped");
        self.commands.as_ref().ok_or_else(stopped)?.send(command).map_err(|_| stopped())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the loop once it has synced and answered what it holds; waiting
        // for it means a reopen of the same directory finds the database closed.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the log (openraft reads from several tasks at once, beside the writes).
#[derive(Clone)]
pub struct LogReader {
    db: Arc<DB>,
}

/// One change to the log's database, made by the writer thread.
enum Op {
    Put {
        family: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deletes keys in `from..to`.
    DeleteRange {
        family: &'static str,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

enum Command {
    /// Entries: written unsynced, acknowledged as written, then `flushed` once the WAL is synced.
    Append { ops: Vec<Op>, written: oneshot::Sender<Result<(), String>>, flushed: IOFlushed<TypeConfig> },
    /// Anything else: written (synced or not), then acknowledged.
    Write { ops: Vec<Op>, sync: bool, done: oneshot::Sender<Result<(), String>> },
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("raft log: {what} does not decode: {error}"))
}

fn failed(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("raft log: {error}"))
}

impl RaftLog {
    /// Opens (or creates) the log at `path` and starts its writer thread.
    pub fn open(path: &Path) -> io::Result<RaftLog> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let mut entries = Options::default();
        entries.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let families =
            vec![ColumnFamilyDescriptor::new(ENTRIES, entries), ColumnFamilyDescriptor::new(META, Options::default())];
        let db = Arc::new(DB::open_cf_descriptors(&options, path, families).map_err(failed)?);
        let (sender, commands) = mpsc::channel();
        let thread_db = Arc::clone(&db);
        let thread = thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || write_loop(&thread_db, &commands))
            .map_err(failed)?;
        let log = RaftLog { db, writer: Arc::new(Writer { commands: Some(sender), thread: Some(thread) }) };
        // Refuse to start on a log whose bookkeeping does not decode.
        log.reader().read_meta_log_id(KEY_LAST_PURGED)?;
        log.reader().read_meta_log_id(KEY_COMMITTED)?;
        log.reader().read_vote_now()?;
        Ok(log)
    }

    fn reader(&self) -> LogReader {
        LogReader { db: Arc::clone(&self.db) }
    }

    async fn write(&self, ops: Vec<Op>, sync: bool) -> io::Result<()> {
        let (done, answer) = oneshot::channel();
        self.writer.send(Command::Write { ops, sync, done })?;
        answer.await.map_err(|_| failed("the writer thread has stopped"))?.map_err(failed)
    }
}

impl LogReader {
    fn family(&self, name: &str) -> io::Result<&rocksdb::ColumnFamily> {
        // Both families are created at open, so a missing one is a damaged database.
        self.db.cf_handle(name).ok_or_else(|| failed(format!("column family {name} is missing")))
    }

    fn read_meta_log_id(&self, key: &[u8]) -> io::Result<Option<LogId>> {
        match self.db.get_cf(self.family(META)?, key).map_err(failed)? {
            None => Ok(None),
            Some(bytes) => codec::decode_log_id(&bytes).map(Some).map_err(|error| corrupt("a stored log id", error)),
        }
    }

    fn read_vote_now(&self) -> io::Result<Option<Vote>> {
        match self.db.get_cf(self.family(META)?, KEY_VOTE).map_err(failed)? {
            None => Ok(None),
            Some(bytes) => codec::decode_vote(&bytes).map(Some).map_err(|error| corrupt("the stored vote", error)),
        }
    }

    /// The entries present with an index in `range`, in order (openraft's storage suite expects
    /// a range that starts below the first entry, e.g. after a purge, to give the ones present).
    fn entries(&self, range: &impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let start_key = index_key(start);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(self.family(ENTRIES)?, IteratorMode::From(&start_key, Direction::Forward)) {
            let (key, value) = item.map_err(failed)?;
            let index =
                u64::from_be_bytes(key.as_ref().try_into().map_err(|_| corrupt("an entry key", "not 8 bytes"))?);
            if !range.contains(&index) {
                break;
            }
            let entry = codec::decode_entry(&value).map_err(|error| corrupt("an entry", error))?;
            if entry.log_id.index != index {
                return Err(corrupt("an entry", format!("stored under index {index} but says {}", entry.log_id.index)));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        match self.db.iterator_cf(self.family(ENTRIES)?, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(failed)?;
                codec::decode_entry_log_id(&value).map(Some).map_err(|error| corrupt("the last entry", error))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.entries(&range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_vote_now()
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let reader = self.reader();
        let last_purged_log_id = reader.read_meta_log_id(KEY_LAST_PURGED)?;
        let last_log_id = reader.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let ops = vec![Op::Put { family: META, key: KEY_VOTE.to_vec(), value: codec::encode_vote(vote) }];
        self.write(ops, true).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Unsynced: openraft re-derives the committed index from a quorum after a crash; this is
        // only how far a restarted node may re-apply at once. WAL order keeps it behind the
        // entries it names.
        let Some(committed) = committed else { return Ok(()) };
        let ops = vec![Op::Put { family: META, key: KEY_COMMITTED.to_vec(), value: codec::encode_log_id(&committed) }];
        self.write(ops, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.reader().read_meta_log_id(KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for entry in entries {
            let mut value = Vec::new();
            codec::encode_entry(&entry, &mut value);
            ops.push(Op::Put { family: ENTRIES, key: index_key(entry.log_id.index).to_vec(), value });
        }
        let (written, answer) = oneshot::channel();
        self.writer.send(Command::Append { ops, written, flushed: callback })?;
        answer.await.map_err(|_| failed("the writer thread has stopped"))?.map_err(failed)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        // Synced: entries a new leader overwrote must not come back after a crash, beside the new
        // ones appended after this.
        let from = last_log_id.map_or(0, |log_id| log_id.index.saturating_add(1));
        let ops =
            vec![Op::DeleteRange { family: ENTRIES, from: index_key(from).to_vec(), to: index_key(u64::MAX).to_vec() }];
        // delete_range's end is exclusive: the entry at u64::MAX (never reached) would stay.
        self.write(ops, true).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The state machine has applied (and made durable) everything up to `log_id` before
        // openraft purges it: the cluster layer purges only below what its snapshot holds.
        let ops = vec![
            Op::Put { family: META, key: KEY_LAST_PURGED.to_vec(), value: codec::encode_log_id(&log_id) },
            Op::DeleteRange {
                family: ENTRIES,
                from: index_key(0).to_vec(),
                to: index_key(log_id.index.saturating_add(1)).to_vec(),
            },
        ];
        self.write(ops, true).await
    }
}

/// The writer thread: applies commands in arrival order; syncs the WAL once for every append
/// written since the last sync, when nothing else is waiting.
fn write_loop(db: &DB, commands: &mpsc::Receiver<Command>) {
    let mut unsynced: Vec<IOFlushed<TypeConfig>> = Vec::new();
    loop {
        let command = if unsynced.is_empty() {
            match commands.recv() {
                Ok(command) => command,
                Err(mpsc::RecvError) => return,
            }
        } else {
            match commands.try_recv() {
                Ok(command) => command,
                Err(empty_or_closed) => {
                    let result = db.flush_wal(true).map_err(|error| error.to_string());
                    complete(&mut unsynced, &result);
                    if matches!(empty_or_closed, mpsc::TryRecvError::Disconnected) {
                        return;
                    }
                    continue;
                }
            }
        };
        match command {
            Command::Append { ops, written, flushed } => {
                let result = apply(db, ops, false);
                match &result {
                    Ok(()) => unsynced.push(flushed),
                    Err(error) => flushed.io_completed(Err(failed(error))),
                }
                let _ = written.send(result);
            }
            Command::Write { ops, sync, done } => {
                let result = apply(db, ops, sync);
                // A synced write syncs the WAL up to it: the appends before it are on disk too.
                if sync {
                    complete(&mut unsynced, &result);
                }
                let _ = done.send(result);
            }
        }
    }
}

fn complete(unsynced: &mut Vec<IOFlushed<TypeConfig>>, result: &Result<(), String>) {
    for flushed in unsynced.drain(..) {
        flushed.io_completed(result.clone().map_err(failed));
    }
}

fn apply(db: &DB, ops: Vec<Op>, sync: bool) -> Result<(), String> {
    let mut batch = WriteBatch::default();
    for op in ops {
        match op {
            Op::Put { family, key, value } => {
                let family = db.cf_handle(family).ok_or_else(|| format!("column family {family} is missing"))?;
                batch.put_cf(family, key, value);
            }
            Op::DeleteRange { family, from, to } => {
                let family = db.cf_handle(family).ok_or_else(|| format!("column family {family} is missing"))?;
                batch.delete_range_cf(family, from, to);
            }
        }
    }
    let mut options = WriteOptions::default();
    options.set_sync(sync);
    db.write_opt(batch, &options).map_err(|error| error.to_string())
}
