#!/usr/bin/env bash
# Benchmarks standalone rollouts with 100,000 simulated devices (benches/fleet.rs): the share of
# devices on the candidate at each step, the time from the failure threshold being crossed
# to the abort being served, and the time from a Prometheus metric crossing its threshold to
# the stable bundle being served again (a Prometheus server of its own,
# tests/prometheus/prometheus.sh, state under target/bench/prometheus). Runs
# `cargo bench --bench fleet` and keeps the report in target/bench/fleet.txt.
#
# Settings go through the environment (see the top of benches/fleet.rs), e.g.
#   OTA_BENCH_DEVICES=20000 OTA_BENCH_INTERVAL_SECONDS=1 tests/bench/fleet.sh
# Run it on an otherwise idle machine: the report says how much CPU other processes took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# A state folder of its own: a server started by tests/run.sh is neither reused nor stopped.
export OTA_PROMETHEUS_STATE="$PWD/target/bench/prometheus"
trap 'tests/prometheus/prometheus.sh stop' EXIT
while IFS= read -r line; do
  case "$line" in
    OTA_TEST_PROMETHEUS_*=*) export "${line?}" ;;
  esac
done < <(tests/prometheus/prometheus.sh start)
[ -n "${OTA_TEST_PROMETHEUS_URL:-}" ] || { echo "tests/bench/fleet.sh: Prometheus did not start" >&2; exit 1; }

mkdir -p target/bench
report=target/bench/fleet.txt
# The report goes to stdout (kept in the file); progress and cargo's output go to stderr.
cargo bench --bench fleet | tee "$report.partial"
mv "$report.partial" "$report"
echo "report saved in $report" >&2
