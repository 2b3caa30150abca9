//! Crash tests: a child process (`ledger load`) commits under load and is killed with SIGKILL at
//! a random moment. After reopening, every transfer whose result the child had received (and
//! printed) must be present with its exact fields, the audit must replay the log to the stored
//! balances (so nothing was applied twice or half applied), and balances must net to zero.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger::workload::{Skew, Workload};
use ledger::{Ledger, LedgerConfig, ResultCode, SystemClock};

const ACCOUNTS: u64 = 50;
const ROUNDS: u64 = 6;

/// A seed for this run's kill moments, printed so a failure can be reproduced.
fn run_seed() -> u64 {
    std::env::var("CRASH_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos() as u64).unwrap_or(1)
    })
}

/// Runs `ledger load` until killed; returns the acknowledged transfer index ranges.
fn run_and_kill(data: &std::path::Path, seed: u64, kill_after: Duration) -> Vec<(u64, u64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["load", "--data"])
        .arg(data)
        .args(["--accounts", &ACCOUNTS.to_string(), "--seed", &seed.to_string()])
        .args(["--submission-size", "32", "--window", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ledger load");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for the first acknowledgement so every round kills a process under load.
    let first = received.recv_timeout(Duration::from_secs(60)).expect("the loader acknowledges within a minute");
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the loader");
    let _ = child.wait();
    let _ = reader.join();
    std::iter::once(first)
        .chain(received.try_iter())
        .map(|line| {
            let mut words = line.split_whitespace();
            assert_eq!(words.next(), Some("ack"), "unexpected output {line:?}");
            let first = words.next().and_then(|word| word.parse().ok()).expect("first index");
            let count = words.next().and_then(|word| word.parse().ok()).expect("count");
            (first, count)
        })
        .collect()
}

#[test]
fn every_acknowledged_transfer_survives_sigkill() {
    let seed = run_seed();
    eprintln!("crash test seed {seed} (set CRASH_SEED to repeat)");
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("ledger");
    let mut acknowledged_total = 0u64;
    for round in 1..=ROUNDS {
        // Kill between 0 and ~400 ms after the first acknowledgement.
        let kill_after = Duration::from_millis(seed.rotate_left(round as u32 * 7) % 400);
        let acknowledged = run_and_kill(&data, round, kill_after);
        let workload = Workload::new(ACCOUNTS, Skew::HOT, round);
        let ids: Vec<u128> = acknowledged
            .iter()
            .flat_map(|(first, count)| (*first..first + count).map(|index| workload.transfer_id(index)))
            .collect();
        assert!(!ids.is_empty());
        acknowledged_total += ids.len() as u64;

        let ledger = Ledger::open(LedgerConfig::new(&data), SystemClock).expect("reopen after SIGKILL");
        for chunk in ids.chunks(4_096) {
            let records = ledger.lookup_transfers(chunk).expect("lookup");
            for (id, record) in chunk.iter().zip(records) {
                let record = record.unwrap_or_else(|| panic!("round {round}: acknowledged transfer {id:#x} lost"));
                assert_eq!(record.stored.result, ResultCode::Ok);
                let expected = workload.transfer_for_id(*id).expect("id of this round");
                let stored = record.stored.transfer;
                assert_eq!(ledger::Transfer { timestamp: 0, ..stored }, expected, "round {round}: fields changed");
            }
        }
        ledger.close();
        drop(ledger);

        let store = ledger::Store::open(&data, &ledger::StoreOptions::default()).expect("open store");
        let report = ledger::verify(&store, 1 << 20).expect("audit runs");
        assert!(report.is_sound(), "round {round}: {:?}", report.problems);
        assert!(report.transfer_records >= acknowledged_total, "fewer records than acknowledgements");
        let totals = report.totals.get(&1).expect("ledger 1 has accounts");
        assert_eq!(totals.debits_posted, totals.credits_posted, "money created or lost");
    }
}
