#!/usr/bin/env bash
# The test command (README, and CI through .ci/run): set up a fresh machine, then format check,
# lints, and every test of the workspace. Everything builds in the release profile (with
# overflow checks on), so RocksDB's C++ is compiled once for tests, benchmarks and the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
# The Kubernetes PrometheusRule wraps the generated alert rules: it must not go stale.
bash deploy/k8s/make-prometheusrule.sh --check
