#!/usr/bin/env bash
# Runs every test of the project: starts the real parts the integration tests talk to (a real
# Kubernetes API server, a real PostgreSQL server and a real S3 server on 127.0.0.1), runs
# `cargo test`, and stops exactly what it started.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh --test crd_api_server`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# State folders of this run's own, so servers a developer left running, or another run of this
# script at the same time, are neither reused nor stopped.
run_state="$PWD/target/test-run/$$"
export OTA_APISERVER_STATE="$run_state/apiserver"
export OTA_POSTGRES_STATE="$run_state/postgres"
export OTA_S3_STATE="$run_state/s3"
trap 'tests/apiserver/apiserver.sh stop; tests/postgres/postgres.sh stop; tests/s3/s3.sh stop; rm -rf "$run_state"' EXIT

# Each script prints KEY=VALUE lines for the tests; export those.
start() {
  local line
  while IFS= read -r line; do
    case "$line" in
      KUBECONFIG=*|OTA_TEST_KUBECONFIG=*|OTA_TEST_POSTGRES_URL=*|OTA_TEST_S3_*=*) export "${line?}" ;;
    esac
  done < <("$@")
}
start tests/apiserver/apiserver.sh start
[ -n "${OTA_TEST_KUBECONFIG:-}" ] || { echo "tests/run.sh: the test API server did not start" >&2; exit 1; }
start tests/postgres/postgres.sh start
[ -n "${OTA_TEST_POSTGRES_URL:-}" ] || { echo "tests/run.sh: the test PostgreSQL server did not start" >&2; exit 1; }
start tests/s3/s3.sh start
[ -n "${OTA_TEST_S3_ENDPOINT:-}" ] || { echo "tests/run.sh: the test S3 server did not start" >&2; exit 1; }

cargo test "$@"
