# Sourced by run.sh and bench-switch.sh: `start_switch BIN` starts `switch serve` on its embedded
# defaults in the current directory (log in switch.log), sets `switch_pid`, stops it on exit, and
# returns once every port is bound (the health port's line is printed last).
start_switch() {
  "$1/switch" serve >switch.log 2>&1 &
  switch_pid=$!
  # Stop it and wait, so the next run finds the ports free.
  trap 'kill "$switch_pid" 2>/dev/null || true; wait "$switch_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    grep -q "^health" switch.log && return 0
    kill -0 "$switch_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat switch.log
  echo "the switch did not start" >&2
  exit 1
}
