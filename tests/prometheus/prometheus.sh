#!/usr/bin/env bash
# A real Prometheus server on 127.0.0.1 for the integration tests of rollout analysis.
#
# It is the server of Debian's `prometheus` package, run as our own process with our own config,
# a free port and a data folder under the state folder. The binary is $OTA_PROMETHEUS, else
# `prometheus` on the PATH, else taken from the package without installing it (`apt-get download`
# and `dpkg-deb -x` into a cache folder): installing the package would start a system service on
# port 9090 that these tests have no business with.
#
# Tests choose what it scrapes: the config reads targets from files (file-based service
# discovery) in the folder OTA_TEST_PROMETHEUS_TARGETS. A test starts an exporter on 127.0.0.1,
# writes <unique>.json there (write it under another name and rename it: a half-written file
# must not be read), labelled `ota_test: <unique>`, and queries with that label, so tests running
# at the same time never see each other's series. Scrapes run every second; a new target is
# picked up within the discovery manager's 5 s update throttle.
#
#   prometheus.sh start   find or unpack the binary, start the server on a free port, wait until
#                         it is ready, write $STATE_DIR/env and print it:
#                           OTA_TEST_PROMETHEUS_URL=http://127.0.0.1:<port>
#                           OTA_TEST_PROMETHEUS_TARGETS=<folder of target files>
#                         If the server is already running, just print the env.
#   prometheus.sh stop    stop exactly the server that `start` recorded (idempotent)
#
# Environment: OTA_PROMETHEUS_STATE (default: target/test-prometheus inside the clone),
#              OTA_CACHE_DIR (default: ${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator),
#              OTA_PROMETHEUS (a prometheus binary to use).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${OTA_PROMETHEUS_STATE:-$repo/target/test-prometheus}
cache_root=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator}

die() { echo "prometheus.sh: $*" >&2; exit 1; }
log() { echo "prometheus.sh: $*" >&2; }

# Unpacks Debian's prometheus package into the cache (once) and prints the binary's path.
unpack_package() {
  command -v apt-get >/dev/null || die "no prometheus binary; apt-get is needed to fetch Debian's prometheus package"
  command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to unpack Debian's prometheus package"
  local target="$cache_root/prometheus"
  if [ ! -x "$target/usr/bin/prometheus" ]; then
    log "no prometheus binary found; unpacking Debian's prometheus package into $target"
    local work; work=$(mktemp -d)
    # apt-get download writes into the current folder; the package lists may be missing or
    # stale on a fresh machine: update them once and try again.
    if ! (cd "$work" && apt-get download -q prometheus >&2 9>&-); then
      apt-get update -q >&2 9>&- || true
      (cd "$work" && apt-get download -q prometheus >&2 9>&-) \
        || { rm -rf "$work"; die "apt-get download prometheus failed (are Debian's package lists reachable?)"; }
    fi
    rm -rf "$target.tmp"; mkdir -p "$target.tmp"
    dpkg-deb -x "$work"/prometheus_*.deb "$target.tmp" || { rm -rf "$work" "$target.tmp"; die "dpkg-deb could not unpack the package"; }
    rm -rf "$work"
    [ -x "$target.tmp/usr/bin/prometheus" ] || { rm -rf "$target.tmp"; die "the prometheus package has no usr/bin/prometheus"; }
    rm -rf "$target"; mv "$target.tmp" "$target"
  fi
  echo "$target/usr/bin/prometheus"
}

find_prometheus() {
  if [ -n "${OTA_PROMETHEUS:-}" ]; then
    [ -x "$OTA_PROMETHEUS" ] || die "OTA_PROMETHEUS=$OTA_PROMETHEUS is not an executable"
    echo "$OTA_PROMETHEUS"; return 0
  fi
  if command -v prometheus >/dev/null 2>&1; then command -v prometheus; return 0; fi
  unpack_package
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Whether the process recorded in $1 still runs.
alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# The recorded PID is alive and is a prometheus reading our config (never signal a reused PID).
is_ours() {
  [ -f "$state/prometheus.pid" ] || return 1
  local pid; pid=$(cat "$state/prometheus.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qxF -- "--config.file=$state/prometheus.yml" || return 1
  fi
}

start() {
  if [ -f "$state/env" ] && is_ours; then
    log "already running (state in $state)"; cat "$state/env"; return 0
  fi
  stop_quietly
  local prometheus; prometheus=$(find_prometheus)
  command -v python3 >/dev/null || die "python3 is required to pick a free port"
  command -v curl >/dev/null || die "curl is required to check the server"

  rm -rf "$state"; mkdir -p "$state/data" "$state/targets"
  local port; port=$(free_port)
  # Short intervals so that a value a test sets is queryable within about a second.
  cat > "$state/prometheus.yml" <<CONF
# ota-operator tests (tests/prometheus/prometheus.sh)
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ota-tests
    file_sd_configs:
      - files: ['$state/targets/*.json']
        refresh_interval: 1s
CONF

  "$prometheus" --config.file="$state/prometheus.yml" \
      --storage.tsdb.path="$state/data" --storage.tsdb.retention.time=2h \
      --web.listen-address="127.0.0.1:$port" \
      </dev/null > "$state/prometheus.log" 2>&1 9>&- &
  echo $! > "$state/prometheus.pid"

  local url="http://127.0.0.1:$port" i
  for i in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/-/ready" 9>&- || true)" = 200 ] && break
    if ! alive "$state/prometheus.pid"; then
      tail -n 20 "$state/prometheus.log" >&2; stop_quietly; die "prometheus exited during start-up"
    fi
    [ "$i" = 300 ] && { tail -n 20 "$state/prometheus.log" >&2; stop_quietly
                        die "prometheus was not ready within 30 s"; }
    sleep 0.1
  done

  (umask 077; printf 'OTA_TEST_PROMETHEUS_URL=%s\nOTA_TEST_PROMETHEUS_TARGETS=%s\n' "$url" "$state/targets" > "$state/env")
  log "ready on $url ($("$prometheus" --version 2>&1 | head -n 1), targets in $state/targets)"
  cat "$state/env"
}

stop_quietly() {
  rm -f "$state/env"
  if is_ours; then
    local pid i; pid=$(cat "$state/prometheus.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/prometheus.pid"
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
