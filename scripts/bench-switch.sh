#!/usr/bin/env bash
# One switch benchmark for BENCHMARKS.md: a fresh switch on its embedded defaults, loadgen with
# the given arguments (30 s, 1M users unless overridden), the report in
# target/bench-switch/NAME/report/ and its headline printed.
#   bash scripts/bench-switch.sh single-closed --submit single --concurrency 512
#   bash scripts/bench-switch.sh sweep-single --submit single --overload-sweep 1,2,3 (capacity
#   measured closed loop first; or --capacity N)
#   SWITCH_CPUS=0 LOADGEN_CPUS=1 bash scripts/bench-switch.sh ... (each program on a core of its own)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
name="$1"
shift
# BIN: another build's binaries, to compare two builds with the same command.
bin="${BIN:-$(pwd)/target/release}"
dir="target/bench-switch/$name"
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"
source "$root/scripts/start-switch.sh"
start_switch "$bin"
${LOADGEN_CPUS:+taskset -c "$LOADGEN_CPUS"} "$bin/loadgen" --duration 30 --quiet --report-dir report --switch-pid "$switch_pid" "$@" >report.txt || true
grep -E "^== |achieved|latency  |CPU during|completed per|verification|switch / baseline|!!|overload sweep|^     (level|[0-9.]+ x )" report.txt
