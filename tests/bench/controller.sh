#!/usr/bin/env bash
# Benchmarks `ota controller` on a world of 100 Apps, 1,000 Channels and 10,000 pre-synced
# Bundles (benches/controller.rs): starts a test API server of its own (tests/apiserver/apiserver.sh,
# with its state under target/bench/controller-apiserver, so a fresh etcd), builds the release
# `ota` binary, runs `cargo bench --bench controller`, keeps the report in
# target/bench/controller.txt, and stops the API server it started.
#
# Settings go through the environment (see the top of benches/controller.rs), e.g. a quick run:
#   OTA_BENCH_APPS=10 OTA_BENCH_CHANNELS=100 OTA_BENCH_BUNDLES=1000 OTA_BENCH_IDLE_SECONDS=20 \
#     tests/bench/controller.sh
# Run it on an otherwise idle machine: the report says how much CPU other processes took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# A state folder of its own: servers started by tests/run.sh are neither reused nor stopped.
export OTA_APISERVER_STATE="$PWD/target/bench/controller-apiserver"
trap 'tests/apiserver/apiserver.sh stop' EXIT
# A server left running by an interrupted run holds an old world: start afresh.
tests/apiserver/apiserver.sh stop
OTA_TEST_KUBECONFIG=
while IFS= read -r line; do
  case "$line" in
    OTA_TEST_KUBECONFIG=*) export "${line?}" ;;
  esac
done < <(tests/apiserver/apiserver.sh start)
[ -n "$OTA_TEST_KUBECONFIG" ] || { echo "tests/bench/controller.sh: the test API server did not start" >&2; exit 1; }
# Their CPU is the benchmark's own, not another process's.
OTA_BENCH_HELPER_PIDS="$(cat "$OTA_APISERVER_STATE/apiserver.pid") $(cat "$OTA_APISERVER_STATE/etcd.pid")"
export OTA_BENCH_HELPER_PIDS

cargo build --release --bin ota >&2
export OTA_BENCH_OTA="$PWD/target/release/ota"

mkdir -p target/bench
report=target/bench/controller.txt
# The report goes to stdout (kept in the file); progress and cargo's output go to stderr.
cargo bench --bench controller | tee "$report.partial"
mv "$report.partial" "$report"
echo "report saved in $report" >&2
