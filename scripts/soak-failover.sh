#!/usr/bin/env bash
# Soak (outside CI): three nodes under loadgen load while the leader is SIGKILLed KILLS times
# (default 100), each killed node restarted once a new leader serves and left to catch up before
# the next kill. At the end loadgen verifies every payment it sent against the ledger (every
# acknowledged payment completed, nothing twice, balances sum to zero), every node's ledger is
# audited (`ledger verify`) and the three hash-chain heads compared. Results for BENCHMARKS.md:
# loadgen's report lists each failover (found after, gap, operations resent).
#   KILLS=100 bash scripts/soak-failover.sh [loadgen options, e.g. --rate 5000]
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${KILLS:-100}
cargo build --release --workspace
S=./target/release/switch
source scripts/cluster-nodes.sh
cluster_configure target/soak-failover 3
trap cluster_stop_all EXIT
for n in 1 2 3; do cluster_start "$n"; done
cluster_leader >/dev/null
# Long enough for every kill (each takes 15-30 s here: election, restart, catch-up); loadgen is
# stopped when the killer is done, its duration is only a bound.
duration=$(( kills * 60 + 300 ))
./target/release/loadgen --server https://127.0.0.1:50051,https://127.0.0.1:50052,https://127.0.0.1:50053 \
  --certs "$dir/ca/certs" --psps 8 --users 100000 --duration "$duration" --report-dir "$dir/report" "$@" \
  >"$dir/loadgen.txt" 2>"$dir/loadgen.err" &
loadgen=$!
until grep -q "^  load:" "$dir/loadgen.err" 2>/dev/null; do sleep 0.5; kill -0 "$loadgen" || exit 1; done
for k in $(seq "$kills"); do
  sleep 3
  leader=$(cluster_leader)
  kill -9 "${pid[$leader]}"; wait "${pid[$leader]}" 2>/dev/null || true; unset "pid[$leader]"
  new=$(cluster_leader)
  cluster_start "$leader"
  # Caught up before the next kill: all three answer and, as the leader sees them, no follower
  # is more than 50 entries behind. (Killing the leader while the other follower still catches
  # up leaves a quorum that cannot commit until it has: a stall Raft imposes, not a failover.)
  cluster_caught_up 50 120 || echo "kill $k: node $leader not caught up after 120 s" >&2
  echo "kill $k: node $leader killed, node $new leads, node $leader back" >&2
done
# loadgen stops the load, drains, verifies and reports (already done if its duration ran out)
kill -INT "$loadgen" 2>/dev/null || echo "soak: loadgen's duration ran out before the last kill" >&2
status=0
wait "$loadgen" || status=$?
cat "$dir/loadgen.txt"
cluster_stop_all
heads=""
for n in 1 2 3; do
  ./target/release/ledger verify --data "$dir/node-$n/ledger" >"$dir/verify-$n.txt" || status=1
  heads+="$(grep "^head:" "$dir/verify-$n.txt" || echo "node $n: no head")"$'\n'
done
printf "%s" "$heads"
[ "$(printf "%s" "$heads" | sort -u | wc -l)" = 1 ] || { echo "soak: the nodes' ledgers differ" >&2; status=1; }
echo "soak: $kills kills; $([ "$status" = 0 ] && echo PASSED || echo FAILED)"
exit "$status"
