//! The server side of node-to-node traffic: the `Raft` gRPC service, handing each frame to the
//! local openraft node. A frame that does not decode is refused (INVALID_ARGUMENT) and changes
//! nothing. A snapshot is written to a directory of its own as it arrives, installed only once
//! its end frame confirms it is whole, and removed afterwards.
//!
//! Every call names the node it is meant for (`TARGET_NODE_HEADER`), and a node answers only
//! calls meant for it. A node that rejoins under a new id on the machine and address of the one
//! it replaces would otherwise answer the leader's calls to the old id too, and count twice
//! towards a quorum while the old id is still a member.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::Raft;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::raft_server::{Raft as RaftService, RaftServer};
use crate::proto::Frame;
use crate::state_machine::{decode_meta, LedgerMachine};
use crate::types::TypeConfig;
use crate::wire::{self, SnapshotFrame};

pub type SwitchRaft = Raft<TypeConfig, LedgerMachine>;

/// The request header naming the node id a call is meant for (decimal).
pub const TARGET_NODE_HEADER: &str = "switch-target-node";

/// The service of one node.
#[derive(Clone)]
pub struct PeerService {
    raft: SwitchRaft,
    /// This node's id: calls meant for another are refused.
    id: u64,
    /// Where snapshots being received are written.
    incoming: PathBuf,
    next_incoming: Arc<AtomicU64>,
    /// Whether every call must come from a node's certificate (always, outside loopback tests).
    nodes_only: bool,
}

impl PeerService {
    /// A service that answers any caller: for plain-TCP tests on loopback only.
    pub fn new(raft: SwitchRaft, incoming: PathBuf) -> PeerService {
        let id = raft.metrics().borrow_watched().id;
        PeerService { raft, id, incoming, next_incoming: Arc::new(AtomicU64::new(0)), nodes_only: false }
    }

    /// Answers only callers whose verified client certificate names a node
    /// (`identity::NODE_URI_PREFIX`): serve it behind mutual TLS with the cluster's CA.
    pub fn nodes_only(self) -> PeerService {
        PeerService { nodes_only: true, ..self }
    }

    fn check_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        // A call without the header comes from a node of an earlier release: answered as before.
        if let Some(target) = request.metadata().get(TARGET_NODE_HEADER) {
            let target = target.to_str().ok().and_then(|target| target.parse::<u64>().ok());
            if target != Some(self.id) {
                return Err(Status::failed_precondition(format!(
                    "this is node {}, not node {}",
                    self.id,
                    target.map_or_else(|| "?".to_string(), |target| target.to_string())
                )));
            }
        }
        if !self.nodes_only {
            return Ok(());
        }
        let certificates = request.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certificates.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        match crate::identity::node_of_certificate(leaf.as_ref()) {
            Some(_) => Ok(()),
            None => Err(Status::permission_denied("the certificate names no node of the cluster")),
        }
    }

    /// The tonic service, with frames up to `network::FRAME_BYTES_MAX`.
    pub fn into_server(self) -> RaftServer<PeerService> {
        RaftServer::new(self)
            .max_decoding_message_size(crate::network::FRAME_BYTES_MAX)
            .max_encoding_message_size(crate::network::FRAME_BYTES_MAX)
    }
}

fn malformed(what: &str, error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what} does not decode: {error}"))
}

fn raft_failed(error: impl std::fmt::Display) -> Status {
    // The node has stopped (a storage failure, or shutting down): the caller backs off.
    Status::unavailable(format!("raft node: {error}"))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.check_caller(&request)?;
        let request = wire::decode_append_request(&request.into_inner().body)
            .map_err(|error| malformed("append request", error))?;
        let reply = self.raft.append_entries(request).await.map_err(raft_failed)?;
        Ok(Response::new(Frame { body: wire::encode_append_reply(&reply) }))
    }

    async fn vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.check_caller(&request)?;
        let request =
            wire::decode_vote_request(&request.into_inner().body).map_err(|error| malformed("vote request", error))?;
        let reply = self.raft.vote(request).await.map_err(raft_failed)?;
        Ok(Response::new(Frame { body: wire::encode_vote_reply(&reply) }))
    }

    async fn pre_vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.check_caller(&request)?;
        let request = wire::decode_vote_request(&request.into_inner().body)
            .map_err(|error| malformed("pre-vote request", error))?;
        let reply = self.raft.pre_vote(request).await.map_err(raft_failed)?;
        Ok(Response::new(Frame { body: wire::encode_vote_reply(&reply) }))
    }

    async fn snapshot(&self, request: Request<Streaming<Frame>>) -> Result<Response<Frame>, Status> {
        self.check_caller(&request)?;
        let number = self.next_incoming.fetch_add(1, Ordering::Relaxed);
        let directory = self.incoming.join(format!("snapshot-{number}"));
        let received = receive_snapshot(request.into_inner(), &directory).await;
        let installed = match received {
            Ok((vote, meta)) => {
                let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
                let snapshot = openraft::Snapshot { meta, snapshot: directory.clone() };
                let installed = self.raft.install_full_snapshot(vote, snapshot).await.map_err(raft_failed);
                if installed.is_ok() {
                    tracing::info!(index, "installed a snapshot from the leader (the ledger up to that entry)");
                }
                installed
            }
            Err(status) => Err(status),
        };
        // The state machine keeps its own copy; ours goes whatever happened.
        let _ = std::fs::remove_dir_all(&directory);
        let reply = installed?;
        Ok(Response::new(Frame { body: wire::encode_snapshot_reply(&reply) }))
    }
}

/// Writes the streamed files into `directory` and returns the header's vote and metadata once
/// the end frame arrives and agrees with what was received.
async fn receive_snapshot(
    mut frames: Streaming<Frame>,
    directory: &std::path::Path,
) -> Result<(crate::types::Vote, crate::state_machine::Meta), Status> {
    use std::io::Write;
    let io = |error: std::io::Error| Status::internal(format!("writing a received snapshot: {error}"));
    let _ = std::fs::remove_dir_all(directory);
    std::fs::create_dir_all(directory).map_err(io)?;
    let first = frames.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
    let SnapshotFrame::Header { vote, meta } =
        wire::decode_snapshot_frame(&first.body).map_err(|error| malformed("snapshot frame", error))?
    else {
        return Err(Status::invalid_argument("a snapshot stream starts with its header"));
    };
    let meta = decode_meta(&meta).map_err(|error| malformed("snapshot metadata", error))?;
    let mut files: Vec<String> = Vec::new();
    let mut current: Option<(String, std::fs::File)> = None;
    while let Some(frame) = frames.next().await {
        match wire::decode_snapshot_frame(&frame?.body).map_err(|error| malformed("snapshot frame", error))? {
            SnapshotFrame::Header { .. } => return Err(Status::invalid_argument("a second snapshot header")),
            SnapshotFrame::Chunk { file, data } => {
                if current.as_ref().is_none_or(|(name, _)| *name != file) {
                    if files.contains(&file) {
                        return Err(Status::invalid_argument(format!("snapshot file {file} sent in two parts")));
                    }
                    if let Some((_, done)) = current.take() {
                        done.sync_all().map_err(io)?;
                    }
                    let created = std::fs::File::create_new(directory.join(&file)).map_err(io)?;
                    files.push(file.clone());
                    current = Some((file, created));
                }
                if let Some((_, open)) = &mut current {
                    open.write_all(&data).map_err(io)?;
                }
            }
            SnapshotFrame::End { files: count } => {
                if let Some((_, done)) = current.take() {
                    done.sync_all().map_err(io)?;
                }
                if count as usize != files.len() {
                    return Err(Status::invalid_argument(format!(
                        "snapshot ended after {} files, its end frame says {count}",
                        files.len()
                    )));
                }
                std::fs::File::open(directory).and_then(|directory| directory.sync_all()).map_err(io)?;
                return Ok((vote, meta));
            }
        }
    }
    Err(Status::invalid_argument("the snapshot stream ended without its end frame"))
}
