//! `ledger`: operator tooling for a ledger directory.
//!
//! - `ledger verify --data DIR`: the full audit (hash chain, replay, balances, zero-sum).
//! - `ledger bench`: the one-command durable throughput run (group commit, skew, batch bounds).
//! - `ledger load`: commit a synthetic workload and print each acknowledged submission; the
//!   crash tests kill it with SIGKILL and check every printed transfer after reopening.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use ledger::workload::{Skew, Workload};
use ledger::{Completion, Event, Ledger, LedgerConfig, ResultCode, SystemClock};

/// mimalloc instead of glibc malloc: see the workspace Cargo.toml for the measured reason.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ledger", version, about = "Operator tooling for the switch's ledger")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum SkewArg {
    Uniform,
    Hot,
}

impl From<SkewArg> for Skew {
    fn from(skew: SkewArg) -> Skew {
        match skew {
            SkewArg::Uniform => Skew::Uniform,
            SkewArg::Hot => Skew::HOT,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Audit a closed ledger: replay the log and check chain, results, balances and zero-sum.
    Verify {
        #[arg(long, default_value = "data/ledger")]
        data: PathBuf,
    },
    /// Measure durable throughput and commit latency.
    Bench {
        /// Ledger directory; a fresh temporary one when omitted.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        accounts: u64,
        #[arg(long, default_value_t = 2_000_000)]
        transfers: u64,
        #[arg(long, value_enum, default_value = "hot")]
        skew: SkewArg,
        /// Most events per batch (one synced write each).
        #[arg(long, default_value_t = 8_190)]
        batch_size_max: usize,
        /// Transfers per submission.
        #[arg(long, default_value_t = 1_024)]
        submission_size: usize,
        /// Submissions each submitter keeps in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Submitting threads.
        #[arg(long, default_value_t = 1)]
        submitters: usize,
        /// Run the full audit afterwards.
        #[arg(long)]
        verify: bool,
    },
    /// Commit a synthetic workload, printing `ack FIRST COUNT` for each durable submission.
    Load {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 100)]
        accounts: u64,
        /// High 64 bits of every transfer id; use a new one per run.
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = u64::MAX)]
        transfers: u64,
        #[arg(long, default_value_t = 64)]
        submission_size: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Verify { data } => verify(data),
        Command::Bench {
            data,
            accounts,
            transfers,
            skew,
            batch_size_max,
            submission_size,
            window,
            submitters,
            verify,
        } => {
            let options = BenchOptions { accounts, transfers, skew: skew.into(), submission_size, window, submitters };
            bench(data, batch_size_max, &options, verify)
        }
        Command::Load { data, accounts, seed, transfers, submission_size, window } => {
            load(data, accounts, seed, transfers, submission_size, window)
        }
    }
}

fn verify(data: PathBuf) -> anyhow::Result<()> {
    if !data.exists() {
        bail!("no ledger at {}", data.display());
    }
    // Read-only: the audit never changes the directory it audits.
    let store = ledger::Store::open_read_only(&data, &ledger::StoreOptions::default())
        .with_context(|| format!("opening {} for reading", data.display()))?;
    let started = Instant::now();
    let report = ledger::verify(&store, 1 << 20)?;
    println!(
        "verified {} batches, {} events, {} transfer records, {} accounts, {} open pending in {:.1?}",
        report.batches,
        report.events,
        report.transfer_records,
        report.accounts,
        report.open_pending,
        started.elapsed()
    );
    // The head identifies the whole history: replicas of one switch that agree on it agree on
    // every batch (scripts/run-cluster.sh compares its nodes by this line).
    let head = store.head().context("reading the ledger's head")?;
    let hash: String = head.hash.iter().map(|byte| format!("{byte:02x}")).collect();
    println!("head: batch {} hash {hash}", head.sequence);
    for (ledger, totals) in &report.totals {
        let balanced = totals.debits_posted == totals.credits_posted && totals.debits_pending == totals.credits_pending;
        println!("ledger {ledger}: debits = credits (posted and pending): {balanced}");
    }
    if report.is_sound() {
        println!("OK: hash chain intact, replay matches, balances net to zero");
        Ok(())
    } else {
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
        bail!("{} problems found", report.problems.len())
    }
}

struct BenchOptions {
    accounts: u64,
    transfers: u64,
    skew: Skew,
    submission_size: usize,
    window: usize,
    submitters: usize,
}

fn bench(data: Option<PathBuf>, batch_size_max: usize, options: &BenchOptions, run_verify: bool) -> anyhow::Result<()> {
    if options.submission_size == 0 || options.submission_size > batch_size_max {
        bail!("--submission-size must be 1 to --batch-size-max ({batch_size_max})");
    }
    if options.submitters == 0 || options.window == 0 || options.accounts < 2 {
        bail!("--submitters and --window must be positive and --accounts at least 2");
    }
    let temporary = tempfile::TempDir::new_in(".").context("creating a temporary ledger directory")?;
    let path = data.unwrap_or_else(|| temporary.path().join("ledger"));
    let mut config = LedgerConfig::new(&path);
    config.batch_size_max = batch_size_max;
    config.events_in_flight_max = (options.submitters * options.window * options.submission_size).max(batch_size_max);
    config.recent_transfers_max = config.recent_transfers_max.max(4 * batch_size_max);
    let ledger = Ledger::open(config, SystemClock)?;
    let workload = Workload::new(options.accounts, options.skew, 1 + u64::from(std::process::id()));
    for chunk in workload.account_events().chunks(batch_size_max) {
        let results = ledger.execute(chunk.to_vec())?;
        if let Some(bad) = results.iter().find(|code| !matches!(code, ResultCode::Ok | ResultCode::Exists)) {
            bail!("creating accounts failed: {bad}");
        }
    }

    let before = ledger.stats().batches_committed.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let per_submitter = options.transfers / options.submitters as u64;
    let outcomes: Vec<anyhow::Result<(Histogram<u64>, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.submitters as u64)
            .map(|submitter| {
                let (ledger, workload) = (&ledger, &workload);
                let first = submitter * per_submitter;
                scope.spawn(move || submit_range(ledger, workload, first..first + per_submitter, options))
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap_or_else(|_| bail!("submitter panicked"))).collect()
    });
    let elapsed = started.elapsed();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut committed = 0;
    for outcome in outcomes {
        let (histogram, count) = outcome?;
        latency.add(histogram)?;
        committed += count;
    }
    let batches = ledger.stats().batches_committed.load(std::sync::atomic::Ordering::Relaxed) - before;
    report_bench(options, batch_size_max, committed, batches, elapsed, &latency);
    ledger.close();
    drop(ledger);
    if run_verify {
        verify(path)?;
    }
    Ok(())
}

/// Submits transfers `range` in submissions, keeping `window` in flight; returns the commit
/// latency of each submission (submit to durable result) and the count committed.
fn submit_range(
    ledger: &Ledger,
    workload: &Workload,
    range: std::ops::Range<u64>,
    options: &BenchOptions,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut latency = Histogram::<u64>::new(3)?;
    let mut in_flight: VecDeque<(Instant, Completion)> = VecDeque::with_capacity(options.window);
    let mut committed = 0u64;
    let mut next = range.start;
    let mut finish = |(submitted, completion): (Instant, Completion)| -> anyhow::Result<()> {
        let results = completion.wait()?;
        latency.record(u64::try_from(submitted.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        if let Some(bad) = results.iter().find(|code| **code != ResultCode::Ok) {
            bail!("transfer failed: {bad}");
        }
        committed += results.len() as u64;
        Ok(())
    };
    while next < range.end {
        let count = (options.submission_size as u64).min(range.end - next);
        let events: Vec<Event> =
            (next..next + count).map(|index| Event::CreateTransfer(workload.transfer(index))).collect();
        if in_flight.len() == options.window {
            if let Some(oldest) = in_flight.pop_front() {
                finish(oldest)?;
            }
        }
        let submitted = Instant::now();
        match ledger.submit(events) {
            Ok(completion) => in_flight.push_back((submitted, completion)),
            Err(ledger::LedgerError::Busy { .. }) => {
                // Back off: wait for our oldest, or yield if we have none in flight.
                match in_flight.pop_front() {
                    Some(oldest) => finish(oldest)?,
                    None => std::thread::sleep(Duration::from_micros(100)),
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        next += count;
    }
    while let Some(oldest) = in_flight.pop_front() {
        finish(oldest)?;
    }
    Ok((latency, committed))
}

fn report_bench(
    options: &BenchOptions,
    batch_size_max: usize,
    committed: u64,
    batches: u64,
    elapsed: Duration,
    latency: &Histogram<u64>,
) {
    let rate = committed as f64 / elapsed.as_secs_f64();
    let skew = match options.skew {
        Skew::Uniform => "uniform".to_string(),
        Skew::Hot { fraction, share } => {
            format!("hot ({:.0}% of transfers from {:.0}% of accounts)", share * 100.0, fraction * 100.0)
        }
    };
    println!("ledger bench: {committed} durable transfers over {} accounts, {skew}", options.accounts);
    println!(
        "  batch_size_max {batch_size_max}, submission size {}, window {}, submitters {}",
        options.submission_size, options.window, options.submitters
    );
    println!(
        "  {:.0} transfers/s in {:.2?}; {batches} synced batches, {:.0} transfers per batch",
        rate,
        elapsed,
        committed as f64 / batches.max(1) as f64
    );
    println!(
        "  commit latency per submission (submit to durable result): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        latency.value_at_quantile(0.50) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.value_at_quantile(0.999) as f64 / 1000.0,
        latency.max() as f64 / 1000.0
    );
}

fn load(
    data: PathBuf,
    accounts: u64,
    seed: u64,
    transfers: u64,
    submission_size: usize,
    window: usize,
) -> anyhow::Result<()> {
    if seed == 0 || seed == u64::MAX {
        bail!("--seed must not be 0 or u64::MAX");
    }
    let ledger = Ledger::open(LedgerConfig::new(&data), SystemClock)?;
    let workload = Workload::new(accounts, Skew::HOT, seed);
    for chunk in workload.account_events().chunks(ledger.config().batch_size_max) {
        let results = ledger.execute(chunk.to_vec())?;
        if let Some(bad) = results.iter().find(|code| !matches!(code, ResultCode::Ok | ResultCode::Exists)) {
            bail!("creating accounts failed: {bad}");
        }
    }
    let stdout = std::io::stdout();
    let mut in_flight: VecDeque<(u64, u64, Completion)> = VecDeque::new();
    let mut next = 0u64;
    loop {
        while in_flight.len() < window.max(1) && next < transfers {
            let count = (submission_size.max(1) as u64).min(transfers - next);
            let events = (next..next + count).map(|index| Event::CreateTransfer(workload.transfer(index))).collect();
            in_flight.push_back((next, count, ledger.submit(events)?));
            next += count;
        }
        let Some((first, count, completion)) = in_flight.pop_front() else { break };
        let results = completion.wait()?;
        if let Some(bad) = results.iter().find(|code| **code != ResultCode::Ok) {
            bail!("transfer failed: {bad}");
        }
        // Printed only once durable: the crash test holds us to every line.
        let mut out = stdout.lock();
        writeln!(out, "ack {first} {count}")?;
        out.flush()?;
    }
    ledger.close();
    Ok(())
}
