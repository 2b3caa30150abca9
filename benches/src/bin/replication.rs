//! `replication`: what replicating the ledger costs. Runs one node or three nodes of the
//! replicated ledger (`cluster`) in this process, on loopback gRPC, each with its own Raft log
//! and ledger on disk, and writes batches of transfers through the leader for `--duration`:
//! transfers per second, commit latency per batch (proposed → committed on a quorum → applied on
//! the leader), and the CPU time of the whole process per transfer (all nodes share the machine's
//! cores, as three nodes on one small machine would).
//!
//!   cargo run --release -p benches --bin replication -- --nodes 3 --duration 20
//!   cargo run --release -p benches --bin replication -- --nodes 1 --duration 20

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cluster::node::{self, Node, NodeOptions};
use cluster::types::Applied;
use cluster::{Proposal, SwitchNode};
use hdrhistogram::Histogram;
use ledger::{Account, Event, ResultCode, Transfer};
use openraft::async_runtime::watch::WatchReceiver;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Throughput and latency of the replicated ledger, one node or three, on this machine")]
struct Args {
    /// 1 (a cluster of one) or 3.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Transfers per proposal (one Raft entry, one ledger batch).
    #[arg(long, default_value_t = 1_024)]
    batch: usize,
    /// Proposals in flight at once.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    #[arg(long, default_value_t = 10_000)]
    accounts: u128,
    /// Where the nodes' data goes (a temporary directory inside it); the disk is part of the
    /// measurement.
    #[arg(long, default_value = "target")]
    data: std::path::PathBuf,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_nanos() as u64)
}

/// utime + stime of this process, seconds.
fn cpu_seconds() -> f64 {
    loadgen::cpu::seconds(std::process::id()).unwrap_or(0.0)
}

async fn write(leader: &Node, proposal: Proposal) -> anyhow::Result<Applied> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match leader.raft.client_write(proposal.clone()).await {
            Ok(response) => return Ok(response.data),
            // No lease yet (just elected): refused before appending, so safe to retry.
            Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(_)))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => anyhow::bail!("write: {error}"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes == 1 || args.nodes == 3, "--nodes is 1 or 3");
    anyhow::ensure!(args.accounts >= 2 && args.batch >= 1 && args.in_flight >= 1, "bad sizes");
    std::fs::create_dir_all(&args.data)?;
    let root = tempfile::tempdir_in(&args.data)?;
    let config = node::raft_config(100_000)?;
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=args.nodes {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut options = NodeOptions::new(id, &root.path().join(format!("node-{id}")), config.clone());
        options.ledger.batch_size_max = args.batch.max(1_024);
        let node = Node::start(options, listener).await.context("start a node")?;
        members.insert(id, SwitchNode { peer_address: node.address.clone(), psp_address: String::new() });
        nodes.push(node);
    }
    nodes[0].raft.initialize(members).await.context("initialize")?;
    let metrics = nodes[0]
        .raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(|metrics| metrics.current_leader.is_some(), "a leader")
        .await
        .context("no leader")?;
    let leader_id = metrics.current_leader.context("no leader")?;
    let nodes = Arc::new(nodes);
    let leader_index = nodes.iter().position(|node| node.id == leader_id).context("leader")?;
    let node = |index: usize| &nodes[index];
    for first in (1..=args.accounts).step_by(1_024) {
        let events = (first..=(first + 1_023).min(args.accounts))
            .map(|id| Event::CreateAccount(Account { id, ledger: 1, code: 10, ..Account::default() }))
            .collect();
        write(node(leader_index), Proposal { timestamp: now_ns(), events }).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let next_id = Arc::new(AtomicU64::new(1));
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let mut workers = Vec::new();
    for worker in 0..args.in_flight {
        let (nodes, stop, transfers, latencies, next_id) =
            (nodes.clone(), stop.clone(), transfers.clone(), latencies.clone(), next_id.clone());
        let (batch, accounts) = (args.batch, args.accounts);
        workers.push(tokio::spawn(async move {
            let mut state = worker as u128 * 7_919 + 1;
            while !stop.load(Ordering::Relaxed) {
                let first = u128::from(next_id.fetch_add(batch as u64, Ordering::Relaxed));
                let events = (0..batch as u128)
                    .map(|offset| {
                        // A cheap deterministic spread of payers and payees.
                        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        let from = 1 + (state >> 64) % accounts;
                        let to = 1 + (from % accounts);
                        Event::CreateTransfer(Transfer {
                            id: first + offset,
                            debit_account_id: from,
                            credit_account_id: to,
                            amount: 1 + (state >> 96) % 1_000,
                            ledger: 1,
                            code: 1,
                            ..Transfer::default()
                        })
                    })
                    .collect();
                let sent = Instant::now();
                let applied = write(&nodes[leader_index], Proposal { timestamp: now_ns(), events }).await?;
                let Applied(Some(applied)) = applied else { anyhow::bail!("a proposal of events applied as no batch") };
                anyhow::ensure!(applied.results.iter().all(|result| *result == ResultCode::Ok), "a transfer failed");
                let micros = sent.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                let _ = latencies.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).record(micros);
                transfers.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    let (elapsed, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    let total = transfers.load(Ordering::Relaxed);
    let latencies = latencies.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    println!(
        "nodes {}  batch {}  in flight {}  transfers {}  {:.0}/s  commit p50 {:.1} ms p99 {:.1} ms  CPU {:.1} s = {:.2} µs/transfer",
        args.nodes,
        args.batch,
        args.in_flight,
        total,
        total as f64 / elapsed,
        latencies.value_at_quantile(0.5) as f64 / 1_000.0,
        latencies.value_at_quantile(0.99) as f64 / 1_000.0,
        cpu,
        cpu * 1e6 / total.max(1) as f64
    );
    // Every node holds the same ledger at the end.
    let last = node(leader_index).raft.metrics().borrow_watched().last_applied;
    for node in nodes.iter() {
        node.raft
            .wait(Some(Duration::from_secs(60)))
            .applied_index_at_least(last.map(|log_id| log_id.index), "caught up")
            .await
            .context("a node did not catch up")?;
    }
    let heads: Vec<_> = nodes.iter().map(|node| node.machine.head()).collect::<Result<_, _>>()?;
    anyhow::ensure!(heads.windows(2).all(|pair| pair[0] == pair[1]), "the nodes' ledgers differ: {heads:?}");
    println!("every node's ledger head: sequence {} (equal)", heads[0].sequence);
    let nodes = Arc::try_unwrap(nodes).map_err(|_| anyhow::anyhow!("nodes still shared"))?;
    for node in nodes {
        node.stop().await;
    }
    Ok(())
}
