#!/usr/bin/env bash
# The main job (README, first command): set up a fresh machine, build, start a switch on its
# embedded defaults, drive it with loadgen at population scale for a minute, verify every payment
# against the ledger, compare with a PostgreSQL ledger on the same machine, stop the switch and
# audit its ledger file by file. Extra arguments go to loadgen (see `loadgen --help`), e.g.
# `bash scripts/run.sh --rate 25000 --submit single`.
#
# Everything lives in target/main-job/ (recreated on each run): the switch's data, its log, the
# report (report.html, report.json).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
bash scripts/setup.sh
# The whole workspace, as the tests build it: building one package alone can unify dependency
# features differently and recompile RocksDB.
cargo build --release --workspace
bin="$(pwd)/target/release"
job=target/main-job
rm -rf "$job"
mkdir -p "$job"
cd "$job"

# `switch serve` with no arguments: data in ./data, a development CA on first start, port 50051.
source "$root/scripts/start-switch.sh"
start_switch "$bin"
# Its addresses: the PSP port, the live dashboard (watch the load while it runs), the health port.
grep -E "^(switch listening|dashboard|health)" switch.log

status=0
"$bin/loadgen" --duration 60 --report-dir report --baseline postgres --switch-pid "$switch_pid" "$@" || status=$?

echo
echo "run: stopping the switch (graceful: in-flight batches are committed) and auditing its ledger"
kill -TERM "$switch_pid"
wait "$switch_pid" || true
trap - EXIT
"$bin/ledger" verify --data data/ledger || status=$?
echo
echo "report: $(pwd)/report/report.html"
exit "$status"
