#!/usr/bin/env bash
# TigerBeetle's own benchmark against a 3-replica TigerBeetle cluster on loopback, for
# BENCHMARKS.md's comparison with our three nodes (scripts/bench-cluster.sh). TigerBeetle is not
# a dependency: give its binary's path (default ../shared/tools/tigerbeetle); without it this
# says so and exits 2.
#   TIGERBEETLE=/path/to/tigerbeetle bash scripts/bench-tigerbeetle-cluster.sh [benchmark options]
# Default: 2,000,000 transfers, 80% of them on 100 hot accounts (as our loadgen's hot skew).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TIGERBEETLE:-../shared/tools/tigerbeetle}
if [ ! -x "$T" ]; then
  echo "bench-tigerbeetle-cluster: no TigerBeetle binary at $T (set TIGERBEETLE)" >&2
  exit 2
fi
T=$(realpath "$T")
dir=target/bench-tigerbeetle
rm -rf "$dir" && mkdir -p "$dir"
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT
for r in 0 1 2; do
  "$T" format --cluster=0 --replica=$r --replica-count=3 "$dir/0_$r.tigerbeetle" >"$dir/format-$r.log" 2>&1
done
for r in 0 1 2; do
  "$T" start --addresses=3000,3001,3002 "$dir/0_$r.tigerbeetle" >"$dir/replica-$r.log" 2>&1 &
  pids+=($!)
done
cpu() { local total=0 p; for p in "${pids[@]}"; do total=$(( total + $(awk '{ print $14 + $15 }' "/proc/$p/stat") )); done; echo "$total"; }
before=$(cpu)
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--transfer-count=2000000 --account-count-hot=100 --transfer-hot-percent=80)
"$T" benchmark --addresses=3000,3001,3002 "${args[@]}" 2>&1 | tee "$dir/benchmark.txt"
after=$(cpu)
echo "replicas' CPU during the benchmark: $(( (after - before) / 100 )) s (user+system, all three; clock ticks at 100/s)"
