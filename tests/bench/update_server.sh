#!/usr/bin/env bash
# Benchmarks the update server's POST /updates against a bare hyper server on this machine
# (benches/update_server.rs): installs wrk when it is missing (Debian: apt-get), runs
# `cargo bench --bench update_server` and keeps the report in target/bench/update_server.txt.
#
# Settings go through the environment (see the top of benches/update_server.rs), e.g.
#   OTA_BENCH_ROUNDS=5 OTA_BENCH_SECONDS=15 tests/bench/update_server.sh
# Run it on an otherwise idle machine: the report says how much CPU other processes took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if ! command -v wrk >/dev/null; then
  echo "tests/bench/update_server.sh: installing wrk" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q wrk
fi

mkdir -p target/bench
report=target/bench/update_server.txt
# The report goes to stdout (kept in the file); progress and cargo's output go to stderr.
cargo bench --bench update_server | tee "$report.partial"
mv "$report.partial" "$report"
echo "report saved in $report" >&2
