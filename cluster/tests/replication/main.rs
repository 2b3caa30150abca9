//! The replicated ledger's tests, in one binary (each test binary links RocksDB and tonic):
//! the Raft log store, the ledger as openraft's state machine, and whole nodes talking gRPC.

mod log_store;
mod nodes;
mod source_address;
mod state_machine;
