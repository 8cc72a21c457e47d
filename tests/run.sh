#!/usr/bin/env bash
# Runs every test of the project: starts the real parts the integration tests talk to (a real
# Kubernetes API server, a real PostgreSQL server, a real S3 server, a Google Cloud Storage
# emulator, an Azure Blob Storage emulator and a real Prometheus server, all on 127.0.0.1), runs
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
export OTA_GCS_STATE="$run_state/gcs"
export OTA_AZURE_STATE="$run_state/azure"
export OTA_PROMETHEUS_STATE="$run_state/prometheus"
trap 'tests/apiserver/apiserver.sh stop; tests/postgres/postgres.sh stop; tests/s3/s3.sh stop; tests/gcs/gcs.sh stop; tests/azure/azure.sh stop; tests/prometheus/prometheus.sh stop; rm -rf "$run_state"' EXIT

# Each script prints KEY=VALUE lines for the tests; export those.
start() {
  local line
  while IFS= read -r line; do
    case "$line" in
      KUBECONFIG=*|OTA_TEST_KUBECONFIG=*|OTA_TEST_POSTGRES_URL=*|OTA_TEST_S3_*=*|OTA_TEST_GCS_*=*|OTA_TEST_AZURE_*=*|OTA_TEST_PROMETHEUS_*=*) export "${line?}" ;;
    esac
  done < <("$@")
}
start tests/apiserver/apiserver.sh start
[ -n "${OTA_TEST_KUBECONFIG:-}" ] || { echo "tests/run.sh: the test API server did not start" >&2; exit 1; }
start tests/postgres/postgres.sh start
[ -n "${OTA_TEST_POSTGRES_URL:-}" ] || { echo "tests/run.sh: the test PostgreSQL server did not start" >&2; exit 1; }
start tests/s3/s3.sh start
[ -n "${OTA_TEST_S3_ENDPOINT:-}" ] || { echo "tests/run.sh: the test S3 server did not start" >&2; exit 1; }
start tests/gcs/gcs.sh start
[ -n "${OTA_TEST_GCS_ENDPOINT:-}" ] || { echo "tests/run.sh: the GCS emulator did not start" >&2; exit 1; }
start tests/azure/azure.sh start
[ -n "${OTA_TEST_AZURE_ENDPOINT:-}" ] || { echo "tests/run.sh: the Azure Blob emulator did not start" >&2; exit 1; }
start tests/prometheus/prometheus.sh start
[ -n "${OTA_TEST_PROMETHEUS_URL:-}" ] || { echo "tests/run.sh: the test Prometheus server did not start" >&2; exit 1; }

cargo test "$@"
