# Sourced by run.sh and bench-switch.sh: `start_switch BIN` starts `switch serve` on its embedded
# defaults in the current directory (log in switch.log), sets `switch_pid`, stops it on exit, and
# returns once its node leads and serves the switch (a cluster of one leads at once; it logs so).
start_switch() {
  # Write back the page cache first. The kernel writes dirty pages back once they are 30 s old
  # (vm.dirty_expire_centisecs), and the ledger's next fdatasync then waits behind that burst:
  # the ~1 GB a release build leaves dirty made 30-200 ms WAL syncs in the runs that started
  # right after one, which was the whole p99 at 25,000/s (BENCHMARKS.md, seventh session).
  sync
  # SWITCH_ENV: extra environment for the switch (e.g. TOKIO_WORKER_THREADS=1), to compare settings.
  # SWITCH_CPUS: the cores the switch may run on (taskset list, e.g. 0), so that loadgen, pinned
  # elsewhere with LOADGEN_CPUS, cannot take the switch's CPU when it offers more than it can bear.
  ${SWITCH_CPUS:+taskset -c "$SWITCH_CPUS"} env ${SWITCH_ENV:-} "$1/switch" serve >switch.log 2>&1 &
  switch_pid=$!
  # Stop it and wait, so the next run finds the ports free.
  trap 'kill "$switch_pid" 2>/dev/null || true; wait "$switch_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    grep -q "leading: serving the switch" switch.log && return 0
    kill -0 "$switch_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat switch.log
  echo "the switch did not start" >&2
  exit 1
}
