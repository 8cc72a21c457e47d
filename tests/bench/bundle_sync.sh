#!/usr/bin/env bash
# Benchmarks bundle sync against `sha256sum` plus `cp` of the same zip on this machine
# (benches/bundle_sync.rs): starts a real S3 server of its own (tests/s3/s3.sh, with its state
# under target/bench/s3) for the second, S3 figure, runs `cargo bench --bench bundle_sync`, keeps
# the report in target/bench/bundle_sync.txt, and stops the S3 server it started.
#
# Settings go through the environment (see the top of benches/bundle_sync.rs), e.g.
#   OTA_BENCH_ROUNDS=7 tests/bench/bundle_sync.sh
# OTA_BENCH_S3=0 skips the S3 rounds (and the server). Run it on an otherwise idle machine: the
# report says how much CPU other processes took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

for tool in sha256sum cp sync df; do
  command -v "$tool" >/dev/null || { echo "tests/bench/bundle_sync.sh: $tool is missing" >&2; exit 1; }
done

if [ "${OTA_BENCH_S3:-1}" != 0 ]; then
  # A state folder of its own: servers started by tests/run.sh are neither reused nor stopped.
  export OTA_S3_STATE="$PWD/target/bench/s3"
  trap 'tests/s3/s3.sh stop; rm -rf "$OTA_S3_STATE/data"' EXIT
  while IFS= read -r line; do
    case "$line" in
      OTA_TEST_S3_*=*) export "${line?}" ;;
    esac
  done < <(tests/s3/s3.sh start)
  [ -n "${OTA_TEST_S3_ENDPOINT:-}" ] || { echo "tests/bench/bundle_sync.sh: the S3 server did not start" >&2; exit 1; }
  # Its CPU is the benchmark's own, not another process's.
  OTA_BENCH_S3_PID=$(cat "$OTA_S3_STATE/rclone.pid")
  export OTA_BENCH_S3_PID
fi

mkdir -p target/bench
report=target/bench/bundle_sync.txt
# The report goes to stdout (kept in the file); progress and cargo's output go to stderr.
cargo bench --bench bundle_sync | tee "$report.partial"
mv "$report.partial" "$report"
echo "report saved in $report" >&2
