//! # switch: the real-time payment switch
//!
//! Banks and PSPs connect over gRPC with mutual TLS (`tls`, `auth`), register their customers'
//! aliases (`directory`), and pay each other by alias (`services::payments`); operators register
//! participants and fund them (`services::operator`). Every change of money or state goes through
//! the ledger's single-writer, group-committed log (`core`), so a payment, its metadata and any
//! directory or participant change are durable in the same fsync and replayed together.
//!
//! The payment path takes no lock: aliases are read from a concurrent map, participants from an
//! atomically swapped snapshot, and payments reach the ledger's sequencer through its bounded
//! lock-free queue. Errors carry a stable reason (`reason`, `proto/paymentswitch/v1/errors.proto`).
//!
//! Status of the API (issue 3 is being built in slices): operator participants and funding,
//! the directory, push payments to automatic and confirming payees (single, batch, stream),
//! collect, refund, the durable event stream, status, positions and settlement windows are served.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admission;
pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod confirm;
pub mod core;
pub mod dashboard;
pub mod directory;
pub mod events;
pub mod leadership;
pub mod metrics;
pub mod node;
pub mod observability;
pub mod participants;
pub mod reason;
pub mod records;
pub mod serial;
pub mod server;
pub mod services;
pub mod tls;

/// The generated API (`proto/paymentswitch/v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("paymentswitch.v1");
    // The clients, generated apart so that they decode answers with tonic-prost's codec
    // (`build.rs`).
    include!(concat!(env!("OUT_DIR"), "/clients/paymentswitch.v1.rs"));

    /// The encoded descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switch_v1_descriptor");
}
