//! # loadgen: population-scale load for the payment switch
//!
//! Acts as N PSPs (each with its own mTLS certificate) and a population of customers, drives
//! payments open loop (`--rate`, latency from each operation's intended send time, so nothing is
//! hidden by coordinated omission) or closed loop, over unary RPCs, batches or streams, with
//! simulated payee back offices, then verifies every payment it sent against the switch's ledger
//! and reports (terminal, JSON, HTML with throughput and latency over time). `--baseline postgres`
//! runs the same workload shape against a PostgreSQL ledger and prints the ratio.
//!
//! Modules: `cli` (flags), `workload` (population, skew, mix, ids), `connect` and `setup`
//! (certificates, participants, aliases), `leader` (following a replicated switch's leader,
//! resending in-doubt operations, failovers), `submit` (single/batch/stream), `payee` (simulated
//! PSPs answering events), `drive` (load models), `stats` (histograms, outcomes, timeline), `verify`,
//! `baseline` (PostgreSQL), `report` (text, JSON, HTML), `run` (one whole run), `sweep` (open loop at
//! multiples of capacity: the overload curves).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod baseline;
pub mod cli;
pub mod connect;
pub mod cpu;
pub mod drive;
pub mod leader;
pub mod payee;
pub mod report;
pub mod run;
pub mod setup;
pub mod stats;
pub mod submit;
pub mod sweep;
pub mod verify;
pub mod workload;
