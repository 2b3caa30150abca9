#!/usr/bin/env bash
# The main job (README, first command): set up a fresh machine, build, and run the durable ledger
# under load, then audit it. Extra arguments go to `ledger bench` (see `--help`).
#
# Until the switch and loadgen land (issues 3 and 4), the load runs in-process against the
# ledger's real sequencer and RocksDB: hot skew (80% of transfers from 1% of accounts), group
# commit with one synced write per batch, and a full audit of the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The whole workspace, as the tests build it: building one package alone can unify dependency
# features differently and recompile RocksDB.
cargo build --release --workspace
mkdir -p data
rm -rf data/bench-ledger
exec ./target/release/ledger bench --data data/bench-ledger --accounts 100000 --transfers 10000000 \
  --skew hot --verify "$@"
