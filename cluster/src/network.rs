//! The client side of node-to-node traffic: openraft's `RaftNetworkFactory` over gRPC. One tonic
//! channel per peer, made once and reused by every RPC to it (heartbeats included), so a node pays
//! one TLS handshake per peer, not one per call.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::proto::raft_client::RaftClient;
use crate::proto::Frame;
use crate::state_machine::{encode_meta, LedgerSnapshot};
use crate::types::{SwitchNode, TypeConfig, Vote};
use crate::wire::{self, SnapshotFrame};

/// Bytes of a snapshot file per frame.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// A frame may carry a whole batch of entries; gRPC's default 4 MiB bound is too small for
/// openraft's appends of many full batches.
pub const FRAME_BYTES_MAX: usize = 256 << 20;

/// An append's bound, whatever its size: a follower's write and sync, on a busy shared machine.
const APPEND_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// The slowest a healthy follower takes in an append's bytes (sent, written, synced); what an
/// append's bound allows for its size on top of `APPEND_TIMEOUT_MIN`.
const APPEND_BYTES_PER_SECOND_MIN: f64 = 8.0 * 1024.0 * 1024.0;

/// Makes the clients openraft uses to reach each peer.
#[derive(Clone)]
pub struct PeerNetwork {
    tls: Option<ClientTlsConfig>,
    /// The local address connections to peers leave from; `None`: the system's choice.
    source_address: Option<IpAddr>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerNetwork {
    /// `tls`: the node's client identity and the cluster's CA (mutual TLS); `None` only for
    /// tests on loopback. `source_address`: the address of this host that connections to peers
    /// are bound to (`cluster.peer_source_address`), `None` to let the routing table choose.
    pub fn new(tls: Option<ClientTlsConfig>, source_address: Option<IpAddr>) -> PeerNetwork {
        PeerNetwork { tls, source_address, channels: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|error| format!("peer address {address}: {error}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(self.source_address);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|error| format!("peer TLS: {error}"))?;
        }
        // Lazy: a peer that is down now is reached once it is up, without rebuilding anything.
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &SwitchNode) -> Peer {
        let client = self.channel(&node.peer_address).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(FRAME_BYTES_MAX)
                .max_encoding_message_size(FRAME_BYTES_MAX)
        });
        Peer { target, client }
    }
}

/// The connection to one peer.
pub struct Peer {
    target: u64,
    client: Result<RaftClient<Channel>, String>,
}

/// How a failed call is reported to openraft: a peer that cannot be reached makes it back off,
/// a deadline is a timeout, anything else is retried.
fn rpc_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        // FAILED_PRECONDITION: another node answers at the address (the peer service's check):
        // the node meant is not there.
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::FailedPrecondition => {
            RPCError::Unreachable(Unreachable::from_string(format!("peer: {status}")))
        }
        _ => RPCError::Network(NetworkError::from_string(format!("peer: {status}"))),
    }
}

fn undecodable(what: &str, error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!("peer's {what} does not decode: {error}")))
}

impl Peer {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(|error| RPCError::Unreachable(Unreachable::from_string(error)))
    }

    fn request(&self, body: Vec<u8>, option: &RPCOption) -> tonic::Request<Frame> {
        let mut request = self.addressed(Frame { body });
        request.set_timeout(option.hard_ttl());
        request
    }

    /// An append's request, with time for its size. openraft gives every append the heartbeat
    /// interval (100 ms) as its bound; a follower catching up after a restart under load is sent
    /// many full batches per append (megabytes, written and synced there), which cannot arrive in
    /// that: it timed out, was sent again the same size, and the follower never caught up.
    fn append_request(&self, body: Vec<u8>, option: &RPCOption) -> tonic::Request<Frame> {
        let transfer = Duration::from_secs_f64(body.len() as f64 / APPEND_BYTES_PER_SECOND_MIN);
        let mut request = self.addressed(Frame { body });
        request.set_timeout(option.hard_ttl().max(APPEND_TIMEOUT_MIN) + transfer);
        request
    }

    /// A request naming the node it is meant for (`service::TARGET_NODE_HEADER`).
    fn addressed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(crate::service::TARGET_NODE_HEADER, self.target.into());
        request
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = std::path::PathBuf;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.append_request(wire::encode_append_request(&rpc), &option);
        let reply = self.client()?.append(request).await.map_err(|status| rpc_error(&status))?;
        wire::decode_append_reply(&reply.into_inner().body).map_err(|error| undecodable("append reply", error))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(wire::encode_vote_request(&rpc), &option);
        let reply = self.client()?.vote(request).await.map_err(|status| rpc_error(&status))?;
        wire::decode_vote_reply(&reply.into_inner().body).map_err(|error| undecodable("vote reply", error))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Implemented, not openraft's default (which grants every pre-vote).
        let request = self.request(wire::encode_vote_request(&rpc), &option);
        let reply = self.client()?.pre_vote(request).await.map_err(|status| rpc_error(&status))?;
        wire::decode_vote_reply(&reply.into_inner().body).map_err(|error| undecodable("pre-vote reply", error))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: LedgerSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let client = self.client().map_err(|error| match error {
            RPCError::Unreachable(unreachable) => StreamingError::Unreachable(unreachable),
            other => StreamingError::Network(NetworkError::from_string(other.to_string())),
        })?;
        let frames = snapshot_frames(vote, &snapshot).map_err(|error| {
            StreamingError::Network(NetworkError::from_string(format!("reading the snapshot: {error}")))
        })?;
        let target = self.target;
        let request = self.addressed(frames);
        let send = async move {
            let mut client = client;
            client.snapshot(request).await
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = send => {
                let reply = reply.map_err(|status| match status.code() {
                    tonic::Code::DeadlineExceeded => StreamingError::Timeout(Timeout {
                        action: openraft::network::RPCTypes::InstallSnapshot,
                        id: 0,
                        target,
                        timeout: Duration::ZERO,
                    }),
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                        StreamingError::Unreachable(Unreachable::from_string(status.to_string()))
                    }
                    _ => StreamingError::Network(NetworkError::from_string(status.to_string())),
                })?;
                wire::decode_snapshot_reply(&reply.into_inner().body)
                    .map_err(|error| StreamingError::Network(NetworkError::from_string(format!("snapshot reply: {error}"))))
            }
        }
    }
}

/// The frames of a snapshot, read as they are sent (a ledger's checkpoint can be gigabytes): the
/// header, every file of the checkpoint in 1 MiB chunks, then the end frame. A file that cannot
/// be read ends the stream without the end frame, which the receiver refuses as incomplete.
fn snapshot_frames(vote: Vote, snapshot: &LedgerSnapshot) -> std::io::Result<impl tokio_stream::Stream<Item = Frame>> {
    let mut names: Vec<String> = std::fs::read_dir(&snapshot.snapshot)?
        .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let header =
        Frame { body: wire::encode_snapshot_frame(&SnapshotFrame::Header { vote, meta: encode_meta(&snapshot.meta) }) };
    let state = SnapshotReader {
        directory: snapshot.snapshot.clone(),
        header: Some(header),
        files: names.len() as u32,
        names: names.into(),
        current: None,
        finished: false,
    };
    Ok(futures_util::stream::unfold(state, |mut state| async move { state.next().map(|frame| (frame, state)) }))
}

struct SnapshotReader {
    directory: std::path::PathBuf,
    header: Option<Frame>,
    files: u32,
    names: std::collections::VecDeque<String>,
    /// The file being sent, and whether a frame of it has gone (an empty file still gets one).
    current: Option<(String, std::fs::File, bool)>,
    finished: bool,
}

impl SnapshotReader {
    fn next(&mut self) -> Option<Frame> {
        use std::io::Read;
        if let Some(header) = self.header.take() {
            return Some(header);
        }
        loop {
            if self.finished {
                return None;
            }
            let Some((name, file, sent)) = &mut self.current else {
                let Some(name) = self.names.pop_front() else {
                    self.finished = true;
                    let end = SnapshotFrame::End { files: self.files };
                    return Some(Frame { body: wire::encode_snapshot_frame(&end) });
                };
                match std::fs::File::open(self.directory.join(&name)) {
                    Ok(file) => self.current = Some((name, file, false)),
                    Err(error) => {
                        tracing::warn!(%error, file = %name, "snapshot file unreadable; the stream ends incomplete");
                        self.finished = true;
                    }
                }
                continue;
            };
            let mut data = vec![0; SNAPSHOT_CHUNK_BYTES];
            match file.read(&mut data) {
                Ok(0) if *sent => self.current = None,
                Ok(read) => {
                    data.truncate(read);
                    *sent = true;
                    let frame = SnapshotFrame::Chunk { file: name.clone(), data };
                    return Some(Frame { body: wire::encode_snapshot_frame(&frame) });
                }
                Err(error) => {
                    tracing::warn!(%error, file = %name, "snapshot file unreadable; the stream ends incomplete");
                    self.finished = true;
                }
            }
        }
    }
}
