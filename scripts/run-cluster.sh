#!/usr/bin/env bash
# Three switch nodes on loopback, one replicated switch: a shared development CA, a node
# certificate and a configuration per node (under cluster-data/), the nodes started, their
# status, a payment through the leader, a status asked at a follower (the client follows
# NOT_LEADER to the leader), the leader SIGKILLed, the payment read back from the new
# leader and another one paid there, the killed node restarted and caught up, then all stopped.
#   bash scripts/run-cluster.sh
# Ports: node N has PSP 5005N, operator HTTP 946N, health 5015N, peer 5006N (N = 1..3).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switch
S=./target/release/switch
dir=cluster-data
rm -rf "$dir" && mkdir -p "$dir"
$S certs init --data "$dir/ca" >/dev/null
members=""
for n in 1 2 3; do
  members+=$'[[cluster.members]]\n'"id = $n"$'\n'"peer_address = \"127.0.0.1:5006$n\""$'\n'"psp_address = \"127.0.0.1:5005$n\""$'\n'
done
for n in 1 2 3; do
  $S certs issue --data "$dir/ca" --node "$n" >/dev/null
  cat >"$dir/node-$n.toml" <<TOML
data_dir = "$dir/node-$n"
listen = "127.0.0.1:5005$n"
[tls]
ca_certificate = "$dir/ca/certs/ca.pem"
server_certificate = "$dir/ca/certs/server.pem"
server_key = "$dir/ca/certs/server.key"
[operator]
http_listen = "127.0.0.1:946$n"
health_listen = "127.0.0.1:5015$n"
[cluster]
node_id = $n
peer_listen = "127.0.0.1:5006$n"
node_certificate = "$dir/ca/certs/node-$n.pem"
node_key = "$dir/ca/certs/node-$n.key"
$members
TOML
done

declare -A pid
start() { $S serve --config "$dir/node-$1.toml" >"$dir/node-$1.log" 2>&1 & pid[$1]=$!; }
stop_all() { for n in "${!pid[@]}"; do kill "${pid[$n]}" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop_all EXIT
for n in 1 2 3; do start "$n"; done

nodes=(--node 127.0.0.1:9461 --node 127.0.0.1:9462 --node 127.0.0.1:9463)
# The node that leads, from `switch cluster status` (it exits non-zero until one does).
leader() {
  for _ in $(seq 100); do
    if out=$($S cluster status "${nodes[@]}" 2>/dev/null); then
      echo "$out" | awk '$3 == "leader" { print $2; exit }'
      return
    fi
    sleep 0.2
  done
  echo "no leader" >&2; exit 1
}
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

echo "--- SIGKILL the leader, node $L"
kill -9 "${pid[$L]}"; wait "${pid[$L]}" 2>/dev/null || true; unset "pid[$L]"
old=$L
nodes=(); for n in 1 2 3; do [ "$n" = "$old" ] || nodes+=(--node "127.0.0.1:946$n"); done
L=$(leader)
echo "node $L leads now"
client "$L" --as bank-b status --id 42 | head -3
client "$L" --as bank-a pay --from ana@bank-a --to bo@bank-b --amount 1000 --note "after the failover" --id 43

echo "--- node $old restarted: it catches up"
start "$old"
nodes=(--node 127.0.0.1:9461 --node 127.0.0.1:9462 --node 127.0.0.1:9463)
for _ in $(seq 100); do
  out=$($S cluster status "${nodes[@]}" 2>/dev/null || true)
  applied=$(echo "$out" | awk 'NR > 1 && $3 != "" { print $8 }' | sort -u | wc -l)
  [ "$(echo "$out" | grep -c -E 'leader|follower')" = 3 ] && [ "$applied" = 1 ] && break
  sleep 0.2
done
$S cluster status "${nodes[@]}"
client "$L" --as bank-b position | grep balance_minor
echo "run-cluster: done (logs in $dir/node-N.log)"
