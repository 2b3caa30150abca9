//! One node of the replicated ledger, running: its Raft log and ledger opened from its data
//! directory, openraft started on them, and the peer service listening. What `switch serve`
//! will run per node, and what the tests and the replication benchmark start several of.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger::LedgerConfig;
use openraft::{Config, Raft};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::network::PeerNetwork;
use crate::service::{PeerService, SwitchRaft};
use crate::state_machine::LedgerMachine;
use crate::RaftLog;

/// How to run a node.
pub struct NodeOptions {
    pub id: u64,
    /// Holds `raft/` (the log), the ledger at `ledger.path`, `snapshots/` and `incoming/`.
    pub directory: PathBuf,
    pub ledger: LedgerConfig,
    pub raft: Arc<Config>,
    /// Mutual TLS on the peer port and to peers (`None`: plain TCP, for loopback tests only).
    pub tls: Option<(ServerTlsConfig, ClientTlsConfig)>,
    /// The address of this host its connections to peers leave from (`None`: the system's
    /// choice by its routing table).
    pub peer_source_address: Option<IpAddr>,
    /// How often the log's purge point is checked, and the entries kept below it (`purge`).
    pub purge_interval: std::time::Duration,
    pub purge_keep: u64,
}

impl NodeOptions {
    /// A node keeping everything under `directory`, with the ledger's defaults at
    /// `directory/ledger` and `raft` as openraft's configuration.
    pub fn new(id: u64, directory: &Path, raft: Arc<Config>) -> NodeOptions {
        NodeOptions {
            id,
            directory: directory.to_path_buf(),
            ledger: LedgerConfig::new(directory.join("ledger")),
            raft,
            tls: None,
            peer_source_address: None,
            purge_interval: std::time::Duration::from_secs(1),
            purge_keep: crate::purge::KEEP_ENTRIES,
        }
    }
}

/// openraft's settings for the switch: elections in about a second on a shared machine, pre-vote
/// on (a node that was cut off does not disturb the cluster when it returns), and no automatic
/// purge (`max_in_snapshot_log_to_keep` at its maximum): the log is purged only below what every
/// follower has (ARCHITECTURE.md, "Snapshots and purging").
pub fn raft_config(snapshot_every_entries: u64) -> Result<Arc<Config>, openraft::ConfigError> {
    let config = Config {
        cluster_name: "switch".into(),
        heartbeat_interval: 100,
        election_timeout_min: 800,
        election_timeout_max: 1_600,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every_entries),
        max_in_snapshot_log_to_keep: u64::MAX,
        enable_pre_vote: Some(true),
        // Entries are whole batches (up to 8,190 payments each, hundreds of kilobytes): openraft's
        // 300 per append would make a catching-up follower's appends tens of megabytes.
        max_payload_entries: 32,
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// A running node.
pub struct Node {
    pub id: u64,
    pub directory: PathBuf,
    /// host:port its peer service listens on.
    pub address: String,
    pub raft: SwitchRaft,
    pub machine: LedgerMachine,
    /// The ledger's API on this node: submissions go through the replicated log (on the leader;
    /// elsewhere they fail `NotLeader`), reads see what this node has applied.
    pub ledger: Arc<ledger::Ledger>,
    server: tokio::task::JoinHandle<()>,
    stop_server: tokio::sync::oneshot::Sender<()>,
}

impl Node {
    /// Opens the node's data and serves peers on `listener`.
    pub async fn start(options: NodeOptions, listener: TcpListener) -> std::io::Result<Node> {
        let NodeOptions { id, directory, ledger, raft, tls, peer_source_address, purge_interval, purge_keep } = options;
        let address = listener.local_addr()?.to_string();
        if let Some(source) = peer_source_address {
            check_source_address(source)?;
        }
        let log = RaftLog::open(&directory.join("raft"))?;
        let failed = |error: ledger::LedgerError| std::io::Error::other(format!("the ledger: {error}"));
        // One open database, shared by the apply thread and the ledger's readers.
        let store = ledger::Store::open(&ledger.path, &ledger.store).map_err(|error| failed(error.into()))?;
        let machine = LedgerMachine::open_shared(ledger.clone(), &directory.join("snapshots"), store.clone())?;
        let (server_tls, client_tls) = match tls {
            Some((server, client)) => (Some(server), Some(client)),
            None => (None, None),
        };
        let raft = Raft::new(id, raft, PeerNetwork::new(client_tls, peer_source_address), log, machine.clone())
            .await
            .map_err(|error| std::io::Error::other(format!("starting raft: {error}")))?;
        let proposer = crate::proposer::RaftProposer::new(raft.clone(), tokio::runtime::Handle::current());
        let ledger = Arc::new(
            ledger::Ledger::open_replicated(ledger, ledger::SystemClock, store, Arc::new(proposer)).map_err(failed)?,
        );
        let readers = Arc::downgrade(&ledger);
        machine.on_store_replaced(Box::new(move |store| {
            if let Some(ledger) = readers.upgrade() {
                ledger.replace_store(store);
            }
        }));
        // Ends by itself once the node has shut down.
        crate::purge::spawn(raft.clone(), purge_interval, purge_keep);
        // Snapshots that were being received when the node last stopped are incomplete: gone.
        let incoming = directory.join("incoming");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)?;
        }
        let mut service = PeerService::new(raft.clone(), directory.join("incoming"));
        let mut builder = tonic::transport::Server::builder();
        if let Some(server_tls) = server_tls {
            service = service.nodes_only();
            builder =
                builder.tls_config(server_tls).map_err(|error| std::io::Error::other(format!("peer TLS: {error}")))?;
        }
        let service = service.into_server();
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let served = builder
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the peer service stopped");
            }
        });
        Ok(Node { id, directory, address, raft, machine, ledger, server, stop_server })
    }

    /// Stops the node: openraft, then the peer service. Its data stays on disk.
    pub async fn stop(self) -> (u64, PathBuf, String) {
        // The ledger first: it waits (on a blocking thread) for its proposals in flight.
        let ledger = Arc::clone(&self.ledger);
        let _ = tokio::task::spawn_blocking(move || ledger.close()).await;
        let _ = self.raft.shutdown().await;
        let _ = self.stop_server.send(());
        let _ = self.server.await;
        (self.id, self.directory, self.address)
    }
}

/// Fails at start, with the reason, when connections to peers could not leave from `source`
/// (not an address of this host): otherwise every connection would fail later, and the node
/// would only ever see its peers as unreachable.
fn check_source_address(source: IpAddr) -> std::io::Result<()> {
    match std::net::TcpListener::bind(SocketAddr::new(source, 0)) {
        Ok(_) => Ok(()),
        Err(error) => Err(std::io::Error::new(
            error.kind(),
            format!("cluster.peer_source_address {source} cannot be bound (is it an address of this host?): {error}"),
        )),
    }
}
