#!/usr/bin/env bash
# Benchmarks durable acknowledgements (benches/durability.rs): /stats throughput with durable
# acknowledgements against the asynchronous path on an SQLite file and on PostgreSQL (a server
# of its own, tests/postgres/postgres.sh, state under target/bench/postgres), and what a SIGKILL
# right after the last answer loses (acknowledged events: target 0; sightings: reported), and a
# flood of 1,000,000 /stats events from random devices with random versions (the server's peak
# RSS, the store's growth, a real device's update-check p99 during the flood against before it).
# Keeps the report in target/bench/durability.txt.
#
# Settings go through the environment (see the top of benches/durability.rs), e.g.
#   OTA_BENCH_EVENTS=50000 OTA_BENCH_ROUNDS=5 tests/bench/durability.sh
#   OTA_BENCH_PARTS=flood OTA_BENCH_FLOOD_EVENTS=100000 tests/bench/durability.sh
# Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# A state folder of its own: a server started by tests/run.sh is neither reused nor stopped.
export OTA_POSTGRES_STATE="$PWD/target/bench/postgres"
trap 'tests/postgres/postgres.sh stop' EXIT
while IFS= read -r line; do
  case "$line" in
    OTA_TEST_POSTGRES_URL=*) export "${line?}" ;;
  esac
done < <(tests/postgres/postgres.sh start)
[ -n "${OTA_TEST_POSTGRES_URL:-}" ] || { echo "tests/bench/durability.sh: PostgreSQL did not start" >&2; exit 1; }

mkdir -p target/bench
report=target/bench/durability.txt
cargo bench --bench durability | tee "$report.partial"
mv "$report.partial" "$report"
echo "report saved in $report" >&2
