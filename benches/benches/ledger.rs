//! Criterion benchmarks of the ledger.
//!
//! - `apply/*`: the in-memory state machine alone (CPU per transfer, no disk), per skew.
//! - `commit/*`: durable group commit through the real sequencer and RocksDB (synced write per
//!   batch), per skew and batch bound 1 / 128 / 8,190.
//!
//! Run with `cargo bench -p benches --bench ledger`. The one-command throughput run with
//! latency percentiles is `cargo run --release -p ledger --bin ledger -- bench` (see BENCHMARKS.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ledger::state::{Prefetched, StateMachine};
use ledger::workload::{Skew, Workload};
use ledger::{Batch, Event, Ledger, LedgerConfig, SystemClock};

const ACCOUNTS: u64 = 10_000;
const SKEWS: [(&str, Skew); 2] = [("uniform", Skew::Uniform), ("hot", Skew::HOT)];

fn state_with_accounts(workload: &Workload) -> StateMachine {
    let mut state = StateMachine::new(1 << 20);
    let events = workload.account_events();
    let batch = Batch { sequence: 1, timestamp: 1, events };
    let effects = state.apply(&batch, &Prefetched::default());
    assert!(effects.results.iter().all(|code| *code == ledger::ResultCode::Ok));
    state
}

fn apply(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("apply");
    let batch_size = 8_190u64;
    group.throughput(Throughput::Elements(batch_size));
    for (name, skew) in SKEWS {
        let workload = Workload::new(ACCOUNTS, skew, 7);
        let mut state = state_with_accounts(&workload);
        let mut next = 0u64;
        let prefetched = Prefetched::default();
        group.bench_function(name, |bencher| {
            bencher.iter_batched(
                || {
                    let events: Vec<Event> = (next..next + batch_size)
                        .map(|index| Event::CreateTransfer(workload.transfer(index)))
                        .collect();
                    next += batch_size;
                    events
                },
                |events| {
                    let batch =
                        Batch { sequence: state.last_sequence() + 1, timestamp: state.next_timestamp(), events };
                    // Nothing is committed here, so let the cache forget as soon as it may.
                    state.evict_recent(state.last_sequence());
                    black_box(state.apply(&batch, &prefetched))
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn commit(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("commit");
    group.sample_size(10);
    for (name, skew) in SKEWS {
        for batch_size in [1usize, 128, 8_190] {
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut config = LedgerConfig::new(dir.path().join("ledger"));
            config.batch_size_max = batch_size;
            config.recent_transfers_max = (4 * batch_size).max(1 << 16);
            let ledger = Ledger::open(config, SystemClock).expect("open ledger");
            let workload = Workload::new(ACCOUNTS, skew, 9);
            for chunk in workload.account_events().chunks(batch_size) {
                ledger.execute(chunk.to_vec()).expect("create accounts");
            }
            let mut next = 0u64;
            group.throughput(Throughput::Elements(batch_size as u64));
            group.bench_function(format!("{name}/batch_{batch_size}"), |bencher| {
                bencher.iter_batched(
                    || {
                        let events: Vec<Event> = (next..next + batch_size as u64)
                            .map(|index| Event::CreateTransfer(workload.transfer(index)))
                            .collect();
                        next += batch_size as u64;
                        events
                    },
                    |events| black_box(ledger.execute(events).expect("commit")),
                    BatchSize::LargeInput,
                )
            });
            ledger.close();
        }
    }
    group.finish();
}

criterion_group!(benches, apply, commit);
criterion_main!(benches);
