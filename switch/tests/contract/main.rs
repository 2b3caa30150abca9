//! Contract tests: every promise `proto/` makes to a bank, checked against a real switch over
//! real mutual TLS. A refusal is checked for its gRPC status, its `switch-reason` trailer, its
//! `switch-field` or `switch-retry-after-ms` trailer where the catalogue promises one, and that
//! it changed nothing (`support::Unchanged`: the ledger's hash-chain head and every account).
//!
//! One test binary, one module per area of the API, so that each area's tests live beside each
//! other and the whole suite links RocksDB and tonic once. `catalogue` walks the reason
//! catalogue (errors.proto) so that the catalogue, the code and these tests cannot drift apart.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod catalogue;
mod cluster;
mod directory;
mod events;
mod fuzz;
mod membership;
mod operator;
mod overload;
mod payments;
mod records;
mod settlement;
