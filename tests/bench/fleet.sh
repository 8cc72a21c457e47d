#!/usr/bin/env bash
# Benchmarks standalone rollouts with 100,000 simulated devices (benches/fleet.rs): the share of
# devices on the candidate at each step, and the time from the failure threshold being crossed
# to the abort being served. Runs `cargo bench --bench fleet` and keeps the report in
# target/bench/fleet.txt.
#
# Settings go through the environment (see the top of benches/fleet.rs), e.g.
#   OTA_BENCH_DEVICES=20000 OTA_BENCH_INTERVAL_SECONDS=1 tests/bench/fleet.sh
# Run it on an otherwise idle machine: the report says how much CPU other processes took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

mkdir -p target/bench
report=target/bench/fleet.txt
# The report goes to stdout (kept in the file); progress and cargo's output go to stderr.
cargo bench --bench fleet | tee "$report.partial"
mv "$report.partial" "$report"
echo "report saved in $report" >&2
