//! The replicated state machine: committed Raft entries applied to the ledger, on every node, in
//! log order, and snapshots of the ledger as RocksDB checkpoints.
//!
//! An entry of events is applied by the ledger's `Applier` (the same deterministic state machine
//! as the single node) and written without an fsync: the Raft log already holds it on a quorum of
//! disks. The entry's log id (and, for a membership entry, the membership) goes into the same
//! atomic write, so after a crash the state and the position it reflects agree, and openraft
//! replays the log from that position: nothing applied twice, nothing skipped.
//!
//! The work runs on a thread of its own that owns the ledger, never on the async runtime's
//! workers: applying a batch of thousands of payments takes milliseconds of CPU and a RocksDB
//! write, and the ledger's write buffers hold RocksDB's per-thread performance counters.
//!
//! A snapshot is a checkpoint of the ledger's store taken while no entry is being applied, so
//! its metadata (last log id, membership) is exactly what it contains. Installing one replaces the
//! ledger's store with it and reopens the ledger.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use ledger::codec::{Reader, Writer};
use ledger::{Applier, LedgerConfig};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{OptionalSend, SnapshotMeta, StoredMembership};

use crate::codec;
use crate::types::{Applied, EntryPayload, LeaderId, LogId, SwitchNode, TypeConfig};

/// Keys of the replicated log's bookkeeping in the ledger's store (`Durability::Replicated`).
const APPLIED_KEY: &[u8] = b"applied";
const MEMBERSHIP_KEY: &[u8] = b"membership";
/// Inside a snapshot's directory: the checkpoint and its metadata.
const CHECKPOINT_DIRECTORY: &str = "checkpoint";
const META_FILE: &str = "meta";
/// How long a snapshot install waits for readers to let go of the store it replaces.
const STORE_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub type Meta = SnapshotMeta<LeaderId, u64, SwitchNode>;
pub type Membership = StoredMembership<LeaderId, u64, SwitchNode>;
/// A snapshot's data: the directory of a checkpoint on this node's disk. The peer network sends
/// its files and the receiver hands its own copy to `install_snapshot`.
pub type LedgerSnapshot = Snapshot<LeaderId, u64, SwitchNode, PathBuf>;

/// The ledger as openraft's state machine. Cheap to clone (the snapshot builder is a clone).
#[derive(Clone)]
pub struct LedgerMachine {
    inner: Arc<Inner>,
}

/// Work for the apply thread, on the ledger it owns (`None` only after a snapshot install
/// failed to reopen it).
type Job = Box<dyn FnOnce(&mut Option<Applier>) + Send>;

/// Told when a snapshot install closes the store (`None`: readers must let go of it) and of the
/// store it opened instead.
pub type StoreReplaced = Box<dyn Fn(Option<ledger::Store>) + Send + Sync>;

struct Inner {
    config: LedgerConfig,
    on_store_replaced: Mutex<Option<StoreReplaced>>,
    /// Where snapshots are kept: `<directory>/<term>-<node>-<index>/{checkpoint,meta}`.
    snapshots: PathBuf,
    /// `None` only while dropping (closing the queue ends the apply thread).
    jobs: Option<crossbeam_channel::Sender<Job>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    current: Mutex<Option<(Meta, PathBuf)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The apply thread owns the ledger's store: wait for it to close, so the directory can
        // be opened again at once (RocksDB allows one handle per directory in a process).
        drop(self.jobs.take());
        let thread = self.thread.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn failed(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("ledger state machine: {error}"))
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("ledger state machine: {what} does not decode: {error}"))
}

fn closed() -> io::Error {
    failed("the ledger is closed (a snapshot install failed to reopen it)")
}

impl LedgerMachine {
    /// Opens the ledger at `config.path` on an apply thread of its own, and finds the newest
    /// snapshot under `snapshots`.
    pub fn open(config: LedgerConfig, snapshots: &Path) -> io::Result<LedgerMachine> {
        LedgerMachine::start(config, snapshots, None)
    }

    /// As `open`, applying to `store` (already open, shared with the ledger's readers).
    pub fn open_shared(config: LedgerConfig, snapshots: &Path, store: ledger::Store) -> io::Result<LedgerMachine> {
        LedgerMachine::start(config, snapshots, Some(store))
    }

    fn tell_store_replaced(&self, store: Option<ledger::Store>) {
        if let Some(hook) =
            self.inner.on_store_replaced.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref()
        {
            hook(store);
        }
    }

    /// Calls `hook` when a snapshot install closes the store and with the store it opens.
    pub fn on_store_replaced(&self, hook: StoreReplaced) {
        *self.inner.on_store_replaced.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(hook);
    }

    fn start(config: LedgerConfig, snapshots: &Path, store: Option<ledger::Store>) -> io::Result<LedgerMachine> {
        std::fs::create_dir_all(snapshots)?;
        // What the last snapshot install replaced (kept while readers might use it).
        let replaced = config.path.with_extension("replaced");
        if replaced.exists() {
            std::fs::remove_dir_all(&replaced)?;
        }
        let current = newest_snapshot(snapshots)?;
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let (opened, opening) = oneshot::channel();
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-apply".into())
            .spawn(move || {
                let opened_applier = match store {
                    Some(store) => Applier::from_store(store, &thread_config),
                    None => Applier::open(&thread_config),
                };
                let mut applier = match opened_applier {
                    Ok(applier) => {
                        let _ = opened.send(Ok(()));
                        Some(applier)
                    }
                    Err(error) => {
                        let _ = opened.send(Err(failed(error)));
                        return;
                    }
                };
                // Ends when every handle is dropped.
                for job in queue {
                    job(&mut applier);
                }
            })
            .map_err(failed)?;
        opening.recv().map_err(|_| failed("the apply thread stopped while opening"))??;
        let machine = LedgerMachine {
            inner: Arc::new(Inner {
                config,
                on_store_replaced: Mutex::new(None),
                snapshots: snapshots.to_path_buf(),
                jobs: Some(jobs),
                thread: Mutex::new(Some(thread)),
                current: Mutex::new(current),
            }),
        };
        // Refuse to start on bookkeeping that does not decode.
        machine.read(read_applied)??;
        Ok(machine)
    }

    fn current(&self) -> MutexGuard<'_, Option<(Meta, PathBuf)>> {
        self.inner.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Option<Applier>) -> io::Result<T> + Send + 'static,
    ) -> io::Result<oneshot::Receiver<io::Result<T>>> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |applier| {
            let _ = answer.send(work(applier));
        });
        let jobs = self.inner.jobs.as_ref().ok_or_else(|| failed("the apply thread has stopped"))?;
        jobs.send(job).map_err(|_| failed("the apply thread has stopped"))?;
        Ok(answered)
    }

    /// Runs `work` on the ledger on the apply thread and waits for it without blocking the runtime.
    async fn with_applier<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Applier) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let answered = self.submit(move |applier| work(applier.as_mut().ok_or_else(closed)?))?;
        answered.await.map_err(|_| failed("the apply thread has stopped"))?
    }

    /// Runs `read` on the ledger (balances, records, its head) on the apply thread, between two
    /// entries, and waits for it (blocking: not for the async runtime's hot paths).
    pub fn read<T: Send + 'static>(&self, read: impl FnOnce(&Applier) -> T + Send + 'static) -> io::Result<T> {
        let answered = self.submit(move |applier| Ok(read(applier.as_ref().ok_or_else(closed)?)))?;
        answered.recv().map_err(|_| failed("the apply thread has stopped"))?
    }

    /// The head of the ledger (sequence and hash of the last batch): equal on nodes that applied
    /// the same entries.
    pub fn head(&self) -> io::Result<ledger::Head> {
        self.read(|applier| applier.head().map_err(failed))?
    }
}

fn read_applied(applier: &Applier) -> io::Result<(Option<LogId>, Membership)> {
    let store = applier.store();
    let applied = match store.replicated_meta(APPLIED_KEY).map_err(failed)? {
        None => None,
        Some(bytes) => Some(codec::decode_log_id(&bytes).map_err(|error| corrupt("the applied log id", error))?),
    };
    let membership = match store.replicated_meta(MEMBERSHIP_KEY).map_err(failed)? {
        None => Membership::default(),
        Some(bytes) => {
            let (log_id, membership) =
                codec::decode_stored_membership(&bytes).map_err(|error| corrupt("the membership", error))?;
            StoredMembership::new(log_id, membership)
        }
    };
    Ok((applied, membership))
}

/// The newest snapshot in `directory` (by its last log id), if any.
fn newest_snapshot(directory: &Path) -> io::Result<Option<(Meta, PathBuf)>> {
    let mut newest: Option<(Meta, PathBuf)> = None;
    for entry in std::fs::read_dir(directory)? {
        let path = entry?.path();
        let meta_path = path.join(META_FILE);
        if !meta_path.exists() {
            // A snapshot whose metadata was never written is one that was being built or
            // received when the node stopped: not a snapshot.
            continue;
        }
        let meta = decode_meta(&std::fs::read(&meta_path)?)?;
        if newest.as_ref().is_none_or(|(best, _)| meta.last_log_id > best.last_log_id) {
            newest = Some((meta, path.join(CHECKPOINT_DIRECTORY)));
        }
    }
    Ok(newest)
}

/// A snapshot's metadata: its last log id, then the membership it holds.
pub fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = Writer(&mut out);
    codec::put_optional_log_id(&mut writer, meta.last_log_id.as_ref());
    out.extend(codec::encode_stored_membership(
        meta.last_membership.log_id().as_ref(),
        meta.last_membership.membership(),
    ));
    out
}

pub fn decode_meta(bytes: &[u8]) -> io::Result<Meta> {
    let mut reader = Reader::new(bytes);
    let last_log_id = codec::get_optional_log_id(&mut reader).map_err(|error| corrupt("a snapshot's log id", error))?;
    let rest = bytes.get(reader.offset()..).unwrap_or_default();
    let (log_id, membership) =
        codec::decode_stored_membership(rest).map_err(|error| corrupt("a snapshot's membership", error))?;
    Ok(Meta { last_log_id, last_membership: StoredMembership::new(log_id, membership) })
}

fn snapshot_name(meta: &Meta) -> String {
    match &meta.last_log_id {
        None => "empty".to_string(),
        Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.leader_id.node_id, log_id.index),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerMachine {
    type SnapshotData = PathBuf;

    async fn build_snapshot(&mut self) -> Result<LedgerSnapshot, io::Error> {
        let snapshots = self.inner.snapshots.clone();
        // Under the apply lock: no entry is applied between reading the position and taking the
        // checkpoint, so the metadata describes exactly what the checkpoint holds.
        let (meta, directory) = self
            .with_applier(move |applier| {
                let (last_log_id, last_membership) = read_applied(applier)?;
                let meta = Meta { last_log_id, last_membership };
                let directory = snapshots.join(snapshot_name(&meta));
                if directory.exists() {
                    std::fs::remove_dir_all(&directory)?;
                }
                std::fs::create_dir_all(&directory)?;
                applier.store().checkpoint(&directory.join(CHECKPOINT_DIRECTORY)).map_err(failed)?;
                write_durably(&directory.join(META_FILE), &encode_meta(&meta))?;
                Ok((meta, directory))
            })
            .await?;
        let checkpoint = directory.join(CHECKPOINT_DIRECTORY);
        self.replace_current(meta.clone(), directory)?;
        Ok(Snapshot { meta, snapshot: checkpoint })
    }
}

/// Writes a file and syncs it and its directory: a snapshot's metadata marks it complete.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl LedgerMachine {
    /// Makes `directory` the current snapshot and removes the older ones.
    fn replace_current(&self, meta: Meta, directory: PathBuf) -> io::Result<()> {
        let mut current = self.current();
        if let Some((old, old_checkpoint)) = current.take() {
            if old.last_log_id != meta.last_log_id {
                if let Some(old_directory) = old_checkpoint.parent() {
                    let _ = std::fs::remove_dir_all(old_directory);
                }
            }
        }
        *current = Some((meta, directory.join(CHECKPOINT_DIRECTORY)));
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for LedgerMachine {
    type SnapshotData = PathBuf;
    type SnapshotBuilder = LedgerMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        self.with_applier(|applier| read_applied(applier)).await
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        let answers = self
            .with_applier(move |applier| {
                let mut answers = Vec::with_capacity(batch.len());
                for (entry, responder) in batch {
                    let applied = codec::encode_log_id(&entry.log_id);
                    let outcome = match entry.payload {
                        EntryPayload::Normal(proposal) => applier
                            .apply(proposal.timestamp, proposal.events, &[(APPLIED_KEY, &applied)])
                            .map_err(failed)?,
                        EntryPayload::Blank => {
                            applier.write_meta(&[(APPLIED_KEY, &applied)]).map_err(failed)?;
                            None
                        }
                        EntryPayload::Membership(membership) => {
                            let stored = codec::encode_stored_membership(Some(&entry.log_id), &membership);
                            applier
                                .write_meta(&[(APPLIED_KEY, &applied), (MEMBERSHIP_KEY, &stored)])
                                .map_err(failed)?;
                            None
                        }
                    };
                    answers.push((responder, Applied(outcome)));
                }
                Ok(answers)
            })
            .await?;
        for (responder, applied) in answers {
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> LedgerMachine {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: PathBuf) -> Result<(), io::Error> {
        let machine = self.clone();
        let meta = meta.clone();
        let answered = self.submit(move |applier| machine.install(applier, meta, &snapshot))?;
        answered.await.map_err(|_| failed("the apply thread has stopped"))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<LedgerSnapshot>, io::Error> {
        Ok(self.current().clone().map(|(meta, checkpoint)| Snapshot { meta, snapshot: checkpoint }))
    }
}

impl LedgerMachine {
    /// Replaces the ledger's store with the checkpoint in `snapshot` and reopens the ledger; the
    /// snapshot becomes this node's current one.
    fn install(&self, guard: &mut Option<Applier>, meta: Meta, snapshot: &Path) -> io::Result<()> {
        let path = self.inner.config.path.clone();
        let directory = self.inner.snapshots.join(snapshot_name(&meta));
        // Close the store before its files are replaced: readers let go of it first (RocksDB
        // allows one open handle per directory in a process, so it must really close).
        self.tell_store_replaced(None);
        if let Some(applier) = guard.take() {
            let store = applier.store().clone();
            drop(applier);
            let deadline = std::time::Instant::now() + STORE_RELEASE_TIMEOUT;
            while store.handles() > 1 {
                if std::time::Instant::now() > deadline {
                    return Err(failed("the ledger's readers did not let go of the store to replace"));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // Keep our own copy as the current snapshot (the sender's directory may be temporary).
        if directory.exists() {
            std::fs::remove_dir_all(&directory)?;
        }
        std::fs::create_dir_all(&directory)?;
        copy_directory(snapshot, &directory.join(CHECKPOINT_DIRECTORY))?;
        write_durably(&directory.join(META_FILE), &encode_meta(&meta))?;
        let replaced = path.with_extension("replaced");
        if replaced.exists() {
            std::fs::remove_dir_all(&replaced)?;
        }
        if path.exists() {
            std::fs::rename(&path, &replaced)?;
        }
        copy_directory(&directory.join(CHECKPOINT_DIRECTORY), &path)?;
        let applier = Applier::open(&self.inner.config).map_err(failed)?;
        let (applied, _) = read_applied(&applier)?;
        if applied != meta.last_log_id {
            return Err(failed(format!(
                "the installed snapshot holds log id {applied:?}, its metadata says {:?}",
                meta.last_log_id
            )));
        }
        let store = applier.store().clone();
        *guard = Some(applier);
        // Readers move to the new store.
        self.tell_store_replaced(Some(store));
        let _ = std::fs::remove_dir_all(&replaced);
        self.replace_current(meta, directory)
    }
}

/// Copies a checkpoint's files (flat: RocksDB checkpoints have no subdirectories), syncing each.
fn copy_directory(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            return Err(failed(format!("unexpected directory in a checkpoint: {}", entry.path().display())));
        }
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target)?;
        std::fs::File::open(&target)?.sync_all()?;
    }
    std::fs::File::open(to)?.sync_all()?;
    Ok(())
}
