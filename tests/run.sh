#!/usr/bin/env bash
# Runs every test of the project: starts the real parts the integration tests talk to (a real
# Kubernetes API server on 127.0.0.1), runs `cargo test`, and stops exactly what it started.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh --test crd_api_server`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A state folder of its own, so a server a developer left running is neither reused nor stopped.
export OTA_APISERVER_STATE="$PWD/target/test-apiserver-run"
trap 'tests/apiserver/apiserver.sh stop' EXIT

while IFS='=' read -r key value; do
  case "$key" in
    KUBECONFIG|OTA_TEST_KUBECONFIG) export "$key=$value" ;;
  esac
done < <(tests/apiserver/apiserver.sh start)
[ -n "${OTA_TEST_KUBECONFIG:-}" ] || { echo "tests/run.sh: the test API server did not start" >&2; exit 1; }

cargo test "$@"
