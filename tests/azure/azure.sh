#!/usr/bin/env bash
# An Azure Blob Storage emulator on 127.0.0.1 for the integration tests.
#
# It is Azurite's blob service (npm package azurite), plain http, over a folder of its own, with
# one storage account whose key is random per start. Azurite checks Shared Key signatures on
# requests and SAS signatures in URLs against that key. Accounts are addressed by path
# (http://127.0.0.1:<port>/<account>/<container>/<blob>). Telemetry is switched off.
#
#   azure.sh start   install Azurite if needed, start it on a free port, wait until it accepts
#                    a signed request, create the container, write $STATE_DIR/env and print it:
#                      OTA_TEST_AZURE_ENDPOINT=http://127.0.0.1:<port>/otatest
#                      OTA_TEST_AZURE_ACCOUNT=otatest
#                      OTA_TEST_AZURE_ACCOUNT_KEY=<random, base64>
#                      OTA_TEST_AZURE_CONTAINER=ota-test
#                    If the server is already running, just print the env.
#   azure.sh stop    stop exactly the server that `start` recorded (idempotent)
#
# Azurite is taken from $OTA_AZURITE (the azurite-blob executable), else `azurite-blob` on the
# PATH, else installed with `npm install --prefix <cache>/azurite azurite@3` (a private folder),
# where <cache> is $OTA_CACHE_DIR or ${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator.
#
# The key reaches Azurite (AZURITE_ACCOUNTS) and the signing helper through the environment and
# a mode-600 file, never the command line (other local users could read that in /proc).
#
# Environment: OTA_AZURE_STATE (default: target/test-azure inside the clone), OTA_CACHE_DIR,
# OTA_AZURITE.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${OTA_AZURE_STATE:-$repo/target/test-azure}
cache_root=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator}
account=otatest
container=ota-test

die() { echo "azure.sh: $*" >&2; exit 1; }
log() { echo "azure.sh: $*" >&2; }

# The azurite-blob executable: $OTA_AZURITE, the PATH, or a private npm install.
find_azurite() {
  if [ -n "${OTA_AZURITE:-}" ]; then
    [ -x "$OTA_AZURITE" ] || die "OTA_AZURITE=$OTA_AZURITE is not an executable"
    echo "$OTA_AZURITE"; return 0
  fi
  if command -v azurite-blob >/dev/null 2>&1; then command -v azurite-blob; return 0; fi
  local target="$cache_root/azurite"
  if [ ! -x "$target/node_modules/.bin/azurite-blob" ]; then
    command -v npm >/dev/null || die "npm (Node.js) is required to install Azurite (npm install azurite)"
    log "azurite-blob not found; installing it with npm into $target"
    rm -rf "$target.tmp"
    mkdir -p "$target.tmp"
    npm install --prefix "$target.tmp" --no-audit --no-fund --no-update-notifier --silent azurite@3 >&2 9>&- \
      || die "npm install azurite failed (is the npm registry reachable?)"
    [ -x "$target.tmp/node_modules/.bin/azurite-blob" ] || die "the azurite package has no azurite-blob"
    # npm's .bin links are relative, so the folder can be moved into place.
    rm -rf "$target"; mv "$target.tmp" "$target"
  fi
  echo "$target/node_modules/.bin/azurite-blob"
}

# The version in the azurite package.json above the executable's real path; not
# `azurite-blob --version`, which is a second Node.js start (1-2 s).
azurite_version() {
  local dir; dir=$(dirname "$(readlink -f "$1")")
  while [ "$dir" != / ]; do
    if [ -f "$dir/package.json" ] && grep -q '"name": "azurite"' "$dir/package.json"; then
      sed -n 's/^  "version": "\(.*\)",$/\1/p' "$dir/package.json"; return 0
    fi
    dir=$(dirname "$dir")
  done
  echo "of unknown version"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The recorded PID is alive and is an Azurite serving our data folder (never signal a reused
# PID).
# Whether the process recorded in $1 still runs. During start-up this, not is_ours, tells
# whether it exited: right after the fork its command line is still the shell's.
alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

is_ours() {
  [ -f "$state/azurite.pid" ] || return 1
  local pid; pid=$(cat "$state/azurite.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qxF "$state/data" || return 1
  fi
}

# Creates the container with a Shared Key signed request (path-style: the account is the first
# path segment, and so appears twice in the canonicalized resource). Prints the HTTP status.
create_container() {
  OTA_AZURE_KEY_FILE="$state/account.key" python3 - "$1" "$account" "$container" <<'PY' 9>&- || echo 000
import base64, hashlib, hmac, os, sys, urllib.error, urllib.request
from email.utils import formatdate

endpoint, account, container = sys.argv[1:]
with open(os.environ["OTA_AZURE_KEY_FILE"]) as f:
    key = base64.b64decode(f.read().strip())
date, version = formatdate(usegmt=True), "2021-12-02"
string_to_sign = "\n".join(
    ["PUT"] + [""] * 11
    + [f"x-ms-date:{date}", f"x-ms-version:{version}",
       f"/{account}/{account}/{container}\nrestype:container"]
)
signature = base64.b64encode(hmac.new(key, string_to_sign.encode(), hashlib.sha256).digest()).decode()
request = urllib.request.Request(
    f"{endpoint}/{container}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version,
             "Authorization": f"SharedKey {account}:{signature}"},
)
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError:
    print("000")
PY
}

start() {
  if [ -f "$state/env" ] && is_ours; then
    log "already running (state in $state)"; cat "$state/env"; return 0
  fi
  stop_quietly
  local azurite; azurite=$(find_azurite)
  command -v python3 >/dev/null || die "python3 is required to pick a free port and sign requests"

  rm -rf "$state"; mkdir -p "$state/data"
  local port key
  port=$(free_port)
  key=$(python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(64)).decode())')
  (umask 077; printf '%s\n' "$key" > "$state/account.key")

  AZURITE_ACCOUNTS="$account:$key" "$azurite" --blobHost 127.0.0.1 --blobPort "$port" \
      --location "$state/data" --skipApiVersionCheck --disableTelemetry --disableProductStyleUrl \
      --silent </dev/null > "$state/azurite.log" 2>&1 9>&- &
  echo $! > "$state/azurite.pid"

  local endpoint="http://127.0.0.1:$port/$account" i status
  for i in $(seq 1 150); do
    status=$(create_container "$endpoint")
    case "$status" in 201|409) break ;; esac
    if ! { alive "$state/azurite.pid"; }; then
      tail -n 20 "$state/azurite.log" >&2; stop_quietly; die "Azurite exited during start-up"
    fi
    [ "$i" = 150 ] && { tail -n 20 "$state/azurite.log" >&2; stop_quietly
                        die "Azurite did not create container $container within 15 s (last status $status)"; }
    sleep 0.1
  done

  (umask 077; printf 'OTA_TEST_AZURE_ENDPOINT=%s\nOTA_TEST_AZURE_ACCOUNT=%s\nOTA_TEST_AZURE_ACCOUNT_KEY=%s\nOTA_TEST_AZURE_CONTAINER=%s\n' \
    "$endpoint" "$account" "$key" "$container" > "$state/env")
  log "ready on $endpoint (Azurite $(azurite_version "$azurite"), container $container, data in $state/data)"
  cat "$state/env"
}

stop_quietly() {
  rm -f "$state/env"
  if is_ours; then
    local pid i; pid=$(cat "$state/azurite.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/azurite.pid"
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
