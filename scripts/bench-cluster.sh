#!/usr/bin/env bash
# Three replicated nodes against one, same machine, same loadgen, alternated (1 3 1 3 ...): for
# BENCHMARKS.md. Each run is a fresh cluster (a cluster of one is the same `switch serve` path
# with itself as the only member), loadgen against every node (it follows the leader), the sum
# of the nodes' CPU per completed payment from /proc, and the report's headline.
#   bash scripts/bench-cluster.sh [ROUNDS] [loadgen options, e.g. --submit batch --duration 20]
# Reports in target/bench-cluster/<nodes>-<round>/, a summary table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
shift || true
cargo build --release --workspace
S=./target/release/switch
source scripts/cluster-nodes.sh
trap cluster_stop_all EXIT
summary=target/bench-cluster/summary.txt
mkdir -p target/bench-cluster && : >"$summary"
for round in $(seq "$rounds"); do
  for count in 1 3; do
    dir=target/bench-cluster/$count-$round
    cluster_configure "$dir" "$count"
    for n in $(seq "$count"); do cluster_start "$n"; done
    cluster_leader >/dev/null
    servers=$(for n in $(seq "$count"); do printf "https://127.0.0.1:5005%s," "$n"; done)
    pids=$(IFS=,; echo "${pid[*]}")
    ./target/release/loadgen --server "${servers%,}" --certs "$dir/ca/certs" --switch-pid "$pids" \
      --psps 8 --users 100000 --duration 20 --quiet --json --report-dir "$dir/report" "$@" >"$dir/report.json" || true
    cluster_stop_all
    python3 - "$dir/report.json" "$count" "$round" >>"$summary" <<'PY'
import json, re, sys
path, count, rnd = sys.argv[1:]
try:
    report = json.load(open(path))
except Exception as error:
    print(f"{count} node(s), round {rnd}: no report ({error})"); sys.exit()
settings = dict(report["settings"])
completed = float(settings.get("completed per second", "0/s").rstrip("/s").replace(",", ""))
cpu = re.match(r"switch ([0-9.]+) CPU-s", settings.get("CPU during the load", ""))
per_payment = float(cpu.group(1)) * 1e6 / (completed * report["duration_s"]) if cpu and completed else float("nan")
verified = (report.get("verification") or {}).get("passed")
lat = report["latency"]
print(f"{count} node(s), round {rnd}: {completed:,.0f} completed/s, p50 {lat['p50_us']/1000:.1f} ms, "
      f"p99 {lat['p99_us']/1000:.1f} ms, switch CPU {per_payment:.1f} us/payment (all nodes), verified {verified}")
PY
    tail -1 "$summary"
  done
done
echo "--- $(date -u +%F) $(nproc) cores, loadgen $*"
cat "$summary"
