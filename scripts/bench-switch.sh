#!/usr/bin/env bash
# One switch benchmark for BENCHMARKS.md: a fresh switch on its embedded defaults, loadgen with
# the given arguments (30 s, 1M users unless overridden), the report in
# target/bench-switch/NAME/report/ and its headline printed.
#   bash scripts/bench-switch.sh single-closed --submit single --concurrency 512
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
shift
bin="$(pwd)/target/release"
dir="target/bench-switch/$name"
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"
"$bin/switch" serve >switch.log 2>&1 &
switch_pid=$!
# Stop and wait for it, so the next benchmark finds the port free.
trap 'kill "$switch_pid" 2>/dev/null || true; wait "$switch_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "switch listening" switch.log && break
  kill -0 "$switch_pid" 2>/dev/null || { cat switch.log; exit 1; }
  sleep 0.1
done
"$bin/loadgen" --duration 30 --quiet --report-dir report --switch-pid "$switch_pid" "$@" >report.txt || true
grep -E "^== |achieved|latency  |CPU during|completed per|verification|switch / baseline|!!" report.txt
