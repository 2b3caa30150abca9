//! The replicated log under the ledger (issue 22): the ledger's batches become entries of a Raft
//! log run by openraft, so that every node applies the same batches in the same order and an
//! acknowledged payment is on a quorum of disks.
//!
//! This crate holds what the nodes agree on and how it is kept:
//! - `types`: openraft's type configuration (what an entry carries, what a node is);
//! - `codec`: the bytes of entries, votes and log ids on disk and on the wire;
//! - `wire`: openraft's requests and replies as frames; `network` (client) and `service`
//!   (server) carry them between nodes over gRPC;
//! - `identity`: a node's identity in its certificate (the peer service serves nodes only);
//! - `log_store`: the Raft log on RocksDB, durable before it is acknowledged;
//! - `node`: one node running (its log, its ledger, openraft and the peer service);
//! - `proposer`: the ledger's batches proposed through openraft (the ledger's write door);
//! - `purge`: when the log may be purged (never past what a follower still needs);
//! - `state_machine`: committed entries applied to the ledger, and snapshots as checkpoints.
//!
//! Why openraft 0.10 (an exact alpha) and not 0.9: ARCHITECTURE.md, "The replicated log".

pub mod codec;
pub mod identity;
pub mod log_store;
pub mod network;
pub mod node;
pub mod proposer;
pub mod purge;
pub mod service;
pub mod state_machine;
pub mod types;
pub mod wire;

/// The generated node-to-node protocol (`proto/paymentswitch/cluster/v1/raft.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("paymentswitch.cluster.v1");
}

pub use log_store::RaftLog;
pub use state_machine::LedgerMachine;
pub use types::{Entry, LogId, Membership, Proposal, SwitchNode, TypeConfig, Vote};
