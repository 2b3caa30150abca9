#!/usr/bin/env bash
# The cluster's main job: three switch nodes on loopback, one replicated switch (a shared
# development CA, a node certificate and a configuration per node, under cluster-data/), then
#   1. a payment through the leader, and a status asked at a follower (the client follows
#      NOT_LEADER to the leader);
#   2. loadgen at population scale against all three nodes (it finds and follows the leader),
#      with the leader SIGKILLed in the middle of the load: loadgen resends what the failover
#      left in doubt (same ids), marks the failover on its report's chart, and verifies every
#      payment against the new leader's ledger at the end;
#   3. the killed node restarted: it catches up; every node stopped and its ledger audited
#      (`ledger verify`), and the three ledgers' hash-chain heads compared.
#   bash scripts/run-cluster.sh [loadgen options, e.g. --rate 20000 --duration 40]
# Ports: node N has PSP 5005N, operator HTTP 946N, health 5015N, peer 5006N (N = 1..3).
# The kill comes at KILL_AFTER seconds into the load (default: a third of --duration, 60 s).
set -euo pipefail
cd "$(dirname "$0")/.."
# The whole workspace, as the tests build it (one package alone can unify features differently
# and recompile RocksDB).
cargo build --release --workspace
S=./target/release/switch
dir=cluster-data
source scripts/cluster-nodes.sh
cluster_configure "$dir" 3
trap cluster_stop_all EXIT
for n in 1 2 3; do cluster_start "$n"; done
nodes=(--node 127.0.0.1:9461 --node 127.0.0.1:9462 --node 127.0.0.1:9463)
leader() { cluster_leader || exit 1; }
L=$(leader)
$S cluster status "${nodes[@]}"
echo "node $L leads"
client() { local n=$1; shift; $S client --server "https://127.0.0.1:5005$n" --data "$dir/ca" "$@"; }
$S certs issue --data "$dir/ca" --psp bank-a >/dev/null && $S certs issue --data "$dir/ca" --psp bank-b >/dev/null
client "$L" --as admin register-participant --psp bank-a --name "Bank A" --cap 50000 >/dev/null
client "$L" --as admin register-participant --psp bank-b --name "Bank B" >/dev/null
client "$L" --as admin fund-in --psp bank-a --amount 100000 >/dev/null
client "$L" --as bank-a alias --alias ana@bank-a --name Ana >/dev/null
client "$L" --as bank-b alias --alias bo@bank-b --name Bo >/dev/null
client "$L" --as bank-a pay --from ana@bank-a --to bo@bank-b --amount 2500 --note rent --id 42
follower=$(( L % 3 + 1 ))
echo "--- asked at a follower (node $follower), the client follows NOT_LEADER to the leader:"
client "$follower" --as bank-b status --id 42 | head -3

echo "--- loadgen against all three nodes; the leader (node $L) is SIGKILLed during the load"
duration=60
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--duration" ] && duration=${args[$((i + 1))]}; done
kill_after=${KILL_AFTER:-$(( duration / 3 ))}
servers=https://127.0.0.1:50051,https://127.0.0.1:50052,https://127.0.0.1:50053
( # Waits for the load to start (loadgen prints its load line once set up), then kills the leader.
  until grep -q "^  load:" "$dir/loadgen.err" 2>/dev/null; do sleep 0.2; done
  sleep "$kill_after"
  echo "--- SIGKILL node $L (the leader), ${kill_after} s into the load" >&2
  kill -9 "${pid[$L]}"
) &
killer=$!
status=0
./target/release/loadgen --server "$servers" --certs "$dir/ca/certs" --psps 8 --users 100000 \
  --duration "$duration" --report-dir "$dir/report" "$@" 2> >(tee "$dir/loadgen.err" >&2) || status=$?
wait "$killer" 2>/dev/null || true
wait "${pid[$L]}" 2>/dev/null || true
unset "pid[$L]"
old=$L

echo "--- node $old restarted: it catches up"
cluster_start "$old"
nodes=(--node 127.0.0.1:9461 --node 127.0.0.1:9462 --node 127.0.0.1:9463)
caught_up=no
cluster_caught_up 0 60 && caught_up=yes
$S cluster status "${nodes[@]}" || true
[ "$caught_up" = yes ] || { echo "run-cluster: node $old did not catch up" >&2; status=1; }

echo "--- every node stopped (SIGTERM) and its ledger audited"
cluster_stop_all
heads=""
for n in 1 2 3; do
  echo "node $n:"
  ./target/release/ledger verify --data "$dir/node-$n/ledger" | tee "$dir/verify-$n.txt" || status=1
  heads+="$(grep "^head:" "$dir/verify-$n.txt" || echo "node $n: no head")"$'\n'
done
if [ "$(printf "%s" "$heads" | sort -u | wc -l)" != 1 ]; then
  echo "run-cluster: the nodes' ledgers differ:" >&2; printf "%s" "$heads" >&2; status=1
fi
echo "run-cluster: report $dir/report/report.html, logs $dir/node-N.log; $([ "$status" = 0 ] && echo PASSED || echo FAILED)"
exit "$status"
