#!/usr/bin/env bash
# A real PostgreSQL server on 127.0.0.1 for the integration tests.
#
# It is Debian's PostgreSQL (the newest /usr/lib/postgresql/<major>/bin present; as root, the
# `postgresql` package is installed with apt-get when none is). The server is private to this
# script: a fresh `initdb` data directory, a free port, listening on 127.0.0.1 only, fsync off.
# A cluster the Debian package may have started on port 5432 is never used nor touched.
#
#   postgres.sh start   initdb, start the server, wait until ready, create the database `ota_test`,
#                       write $STATE_DIR/env (OTA_TEST_POSTGRES_URL=...) and print it; if the
#                       server is already running, just print the env
#   postgres.sh stop    stop exactly the server that `start` recorded (idempotent)
#
# The URL is postgres://ota:<password>@127.0.0.1:<port>/ota_test. `ota` is the bootstrap
# superuser; its password is random per start, and TCP connections need it (scram-sha-256), so
# other local users cannot reach the test server. Tests should not share state through `ota_test`:
# each test should `CREATE DATABASE` (or a schema) of its own with a unique name, connecting with
# the same user and password (it may create databases) and swapping the database name in the URL.
#
# PostgreSQL refuses to run as root: as root, initdb and the server run as the `postgres` system
# user (created by the Debian package), in a directory that user owns. That is $STATE_DIR/pg when
# the user can reach it, else /tmp/ota-test-postgres-<uid>-<hash of $STATE_DIR>; the path in use is
# in $STATE_DIR/pgdir. The server log is <that directory>/postgres.log ($STATE_DIR/postgres.log
# links to it).
#
# Environment: OTA_POSTGRES_STATE (default: target/test-postgres inside the clone).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${OTA_POSTGRES_STATE:-$repo/target/test-postgres}
db_user=ota
db_name=ota_test

die() { echo "postgres.sh: $*" >&2; exit 1; }
log() { echo "postgres.sh: $*" >&2; }

# The newest Debian server binaries: /usr/lib/postgresql/<major>/bin.
find_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] \
    && { echo "$dir"; return 0; }
  return 1
}

install_server() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "no PostgreSQL server under /usr/lib/postgresql/*/bin; install Debian's postgresql package (apt-get install postgresql)"
  fi
  log "no PostgreSQL server found; installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q postgresql >&2 9>&-; then
    apt-get update -q >&2 9>&- || true
    apt-get install -y -q postgresql >&2 9>&- || true
  fi
}

# As root the server runs as this unprivileged user; otherwise as the caller.
run_as=
if [ "$(id -u)" = 0 ]; then run_as=postgres; fi

require_run_as() {
  [ -z "$run_as" ] || getent passwd "$run_as" >/dev/null \
    || die "running as root, but there is no '$run_as' user to run PostgreSQL as (PostgreSQL refuses to run as root)"
}

# Runs a command as the server's user, from / (that user may not be able to reach the caller's cwd).
as_pg() {
  if [ -z "$run_as" ]; then
    (cd / && "$@")
  elif command -v runuser >/dev/null; then
    (cd / && runuser -u "$run_as" -- "$@")
  else
    (cd / && su "$run_as" -s /bin/bash -c "$(printf '%q ' "$@")")
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The PID in $state/postgres.pid is alive and is the postmaster of the recorded data directory
# (the postmaster's working directory is its data directory), so a reused PID is never signalled.
is_ours() {
  [ -f "$state/postgres.pid" ] && [ -f "$state/pgdir" ] || return 1
  local pid data
  pid=$(cat "$state/postgres.pid"); data="$(cat "$state/pgdir")/data"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -e /proc/self/cwd ]; then
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(readlink -f "$data")" ] || return 1
  fi
}

start() {
  if [ -f "$state/env" ] && is_ours; then
    log "already running (state in $state)"; cat "$state/env"; return 0
  fi
  stop_quietly
  local bin
  bin=$(find_bin) || { install_server; bin=$(find_bin) \
    || die "the postgresql package is installed but no server binaries are under /usr/lib/postgresql/*/bin"; }
  require_run_as
  command -v python3 >/dev/null || die "python3 is required to pick a free port"

  rm -rf "$state"; mkdir -p "$state"
  # The server's own directory: data/, the socket directory run/ and the log, owned by the
  # server's user. Under $state if that user can reach it and the socket path fits in the
  # 107 bytes a Unix socket name allows, else under /tmp.
  local pgdir="$state/pg"
  if { [ -n "$run_as" ] && ! as_pg test -x "$state"; } || [ ${#pgdir} -gt 80 ]; then
    pgdir="/tmp/ota-test-postgres-$(id -u)-$(printf '%s' "$state" | sha256sum | cut -c1-16)"
  fi
  rm -rf "$pgdir"
  mkdir -m 700 "$pgdir" || die "could not create $pgdir"
  mkdir -m 700 "$pgdir/run"
  [ -z "$run_as" ] || chown -R "$run_as:" "$pgdir"
  echo "$pgdir" > "$state/pgdir"
  echo "$bin" > "$state/bindir"
  ln -s "$pgdir/postgres.log" "$state/postgres.log"

  local password port data="$pgdir/data"
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  port=$(free_port)
  (umask 077; echo "$password" > "$pgdir/pwfile")
  [ -z "$run_as" ] || chown "$run_as:" "$pgdir/pwfile"
  as_pg "$bin/initdb" -D "$data" -U "$db_user" --pwfile="$pgdir/pwfile" \
      --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 --no-sync \
      > "$pgdir/initdb.log" 2>&1 9>&- \
    || { tail -n 20 "$pgdir/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pgdir/pwfile"

  # Settings go into the config files rather than on the command line, so paths need no quoting.
  # Local socket connections are trusted: the socket directory is reachable by the server's user only.
  cat > "$data/pg_hba.conf" <<HBA
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
HBA
  local sockdir=${pgdir//\'/\'\'}/run
  cat >> "$data/postgresql.conf" <<CONF

# ota-operator tests (tests/postgres/postgres.sh)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF

  # pg_ctl puts the server in a session of its own; -w waits until it accepts connections.
  if ! as_pg "$bin/pg_ctl" start -D "$data" -l "$pgdir/postgres.log" -w -t 30 -s \
      </dev/null >/dev/null 2>"$pgdir/pg_ctl.log" 9>&-; then
    cat "$pgdir/pg_ctl.log" >&2
    tail -n 20 "$pgdir/postgres.log" >&2 || true
    [ -f "$data/postmaster.pid" ] && head -n 1 "$data/postmaster.pid" > "$state/postgres.pid"
    stop_quietly
    die "the PostgreSQL server did not start or did not become ready within 30 s (log above)"
  fi
  head -n 1 "$data/postmaster.pid" > "$state/postgres.pid"
  local i
  for i in $(seq 1 300); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres 9>&- && break
    if ! is_ours; then
      tail -n 20 "$pgdir/postgres.log" >&2; stop_quietly; die "the PostgreSQL server exited during start-up"
    fi
    [ "$i" = 300 ] && { tail -n 20 "$pgdir/postgres.log" >&2; stop_quietly
                        die "the PostgreSQL server did not accept connections within 30 s"; }
    sleep 0.1
  done
  PGPASSWORD=$password "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$db_user" \
      -d postgres -c "CREATE DATABASE $db_name" >&2 9>&- \
    || { stop_quietly; die "could not create the database $db_name"; }

  local url="postgres://$db_user:$password@127.0.0.1:$port/$db_name"
  (umask 077; printf 'OTA_TEST_POSTGRES_URL=%s\n' "$url" > "$state/env")
  log "ready on 127.0.0.1:$port (PostgreSQL $("$bin/postgres" --version | awk '{print $3}'), data in $data)"
  cat "$state/env"
}

stop_quietly() {
  rm -f "$state/env"
  if is_ours; then
    local pid bin data
    pid=$(cat "$state/postgres.pid"); data="$(cat "$state/pgdir")/data"
    bin=$(cat "$state/bindir" 2>/dev/null || true)
    if [ -n "$bin" ] && [ -x "$bin/pg_ctl" ] && { [ -z "$run_as" ] || getent passwd "$run_as" >/dev/null; }; then
      as_pg "$bin/pg_ctl" stop -D "$data" -m fast -w -t 30 -s >/dev/null 2>&1 9>&- || true
    fi
    if is_ours; then
      kill "$pid" 2>/dev/null || true
      local i
      for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$state/postgres.pid"
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
