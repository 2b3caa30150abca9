//! Benchmarks of the switch's parts. Criterion benchmarks live in `benches/benches/`; the gRPC
//! transport ceiling (`grpc_ceiling`, what one payment per RPC can reach over the switch's mTLS
//! transport when the handler does nothing) is a binary in `src/bin/`, with its server in `echo`
//! and its client in `ceiling`.

#![forbid(unsafe_code)]

pub mod ceiling;
pub mod echo;
