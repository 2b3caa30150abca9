#!/usr/bin/env bash
# Installs what a fresh machine lacks to build the switch: clang and libclang for RocksDB's
# bindings (bindgen), protoc for the gRPC code generator, PostgreSQL for loadgen's baseline,
# Prometheus and Chromium for the operator tests, and the Rust components the checks use.
# Idempotent: installs only what is missing, so it is cheap on a machine that has everything.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
# bindgen loads libclang at build time.
if ! ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
  missing+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# tonic's code generator runs protoc on proto/.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# The operator tests: promtool and a real Prometheus server (Debian's prometheus), and the live
# dashboard in headless Chromium.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# loadgen's baseline runs the same workload against a private PostgreSQL cluster (initdb, pg_ctl).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done
