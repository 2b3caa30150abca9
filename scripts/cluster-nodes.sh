# Sourced by run-cluster.sh and bench-cluster.sh: N switch nodes on loopback that form one
# replicated switch. Node n has PSP port 5005n, operator HTTP 946n, health 5015n, peer 5006n.
#   cluster_configure DIR COUNT   a development CA, a node certificate and DIR/node-n.toml each
#   cluster_start N               starts node N (its pid in pid[N], its log in DIR/node-N.log)
#   cluster_leader                waits for a leader among the running nodes and prints its id
#   cluster_caught_up LAG SECONDS waits until every running node serves and no follower is more
#                                 than LAG entries behind the leader; fails after SECONDS
#   cluster_stop_all              SIGTERM to every node started, and waits for them
# Needs S (the switch binary) and dir set by the caller.
declare -A pid

cluster_configure() {
  dir=$1
  local count=$2 n members=""
  rm -rf "$dir" && mkdir -p "$dir"
  $S certs init --data "$dir/ca" >/dev/null
  for n in $(seq "$count"); do
    members+=$'[[cluster.members]]\n'"id = $n"$'\n'"peer_address = \"127.0.0.1:5006$n\""$'\n'"psp_address = \"127.0.0.1:5005$n\""$'\n'
  done
  for n in $(seq "$count"); do
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
}

cluster_start() { $S serve --config "$dir/node-$1.toml" >>"$dir/node-$1.log" 2>&1 & pid[$1]=$!; }

cluster_stop_all() {
  local n
  for n in "${!pid[@]}"; do kill -TERM "${pid[$n]}" 2>/dev/null || true; done
  for n in "${!pid[@]}"; do wait "${pid[$n]}" 2>/dev/null || true; done
  pid=()
}

# The operator ports of the running nodes, as `switch cluster status` options.
cluster_nodes() { local n; for n in "${!pid[@]}"; do printf -- "--node 127.0.0.1:946%s " "$n"; done; }

cluster_leader() {
  local out
  for _ in $(seq 150); do
    # shellcheck disable=SC2046
    if out=$($S cluster status $(cluster_nodes) 2>/dev/null); then
      echo "$out" | awk '$3 == "leader" { print $2; exit }'
      return
    fi
    sleep 0.2
  done
  echo "no leader" >&2
  return 1
}

cluster_caught_up() {
  local max_lag=$1 seconds=$2 out serving behind
  for _ in $(seq $(( seconds * 5 ))); do
    # shellcheck disable=SC2046
    out=$($S cluster status $(cluster_nodes) 2>/dev/null || true)
    serving=$(echo "$out" | awk 'NR > 1 && ($3 == "leader" || $3 == "follower")' | wc -l)
    # The lag column is the leader's view of each follower ("-": not known yet).
    behind=$(echo "$out" | awk -v max="$max_lag" 'NR > 1 && $3 == "follower" && ($10 == "-" || $10 > max)' | wc -l)
    if [ "$serving" = "${#pid[@]}" ] && [ "$behind" = 0 ]; then return 0; fi
    sleep 0.2
  done
  return 1
}
