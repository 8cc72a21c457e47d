#!/usr/bin/env bash
# A real Kubernetes API server on 127.0.0.1 for the integration tests.
#
# It is the upstream apiextensions-apiserver (the CRD half of kube-apiserver: CRD registration,
# structural schemas, CEL validation, the status subresource, server-side apply, watches) built
# from Debian sid's Go source packages, in front of a real etcd. No package ships kube-apiserver
# or envtest binaries, so this is the closest real server these machines can run. builtin.go adds
# the built-in kinds the operator writes (core, apps, policy, autoscaling, networking, RBAC,
# coordination, events) through k8s.io/apiserver's generic registry; their OpenAPI models, which
# server-side apply needs, are generated from k8s.io/api with the packaged openapi-gen.
#
#   apiserver.sh build   download the Debian packages into a private apt root and build the
#                        server; the binaries are cached outside the clone, keyed by the package
#                        versions and the hash of the Go sources and the generated API list, so
#                        later runs skip this step
#   apiserver.sh start   build if needed, start etcd and the server, wait until ready, write
#                        $STATE_DIR/kubeconfig and $STATE_DIR/env (KUBECONFIG=...)
#   apiserver.sh stop    stop exactly the processes that `start` recorded
#
# Environment: OTA_APISERVER_STATE (default: target/test-apiserver inside the clone),
#              OTA_CACHE_DIR (default: ${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator),
#              OTA_APISERVER_REFRESH=1 (look up the newest package versions even if a build is cached).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache_root=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator}/apiserver
state=${OTA_APISERVER_STATE:-$repo/target/test-apiserver}
packages=(golang-k8s-apiextensions-apiserver-dev golang-k8s-apiserver-dev golang-k8s-api-dev
  golang-k8s-client-go-dev golang-k8s-kube-openapi-dev golang-github-kubernetes-gengo-dev etcd-server)
# The Go packages whose OpenAPI models are generated for the built-in kinds of builtin.go (their
# types and every type they refer to).
openapi_packages=(k8s.io/api/core/v1 k8s.io/api/apps/v1 k8s.io/api/policy/v1 k8s.io/api/autoscaling/v2
  k8s.io/api/networking/v1 k8s.io/api/rbac/v1 k8s.io/api/coordination/v1 k8s.io/api/events/v1
  k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/util/intstr
  k8s.io/apimachinery/pkg/api/resource k8s.io/apimachinery/pkg/version)

die() { echo "apiserver.sh: $*" >&2; exit 1; }
log() { echo "apiserver.sh: $*" >&2; }

main_hash() { { cat "$here"/*.go; printf '%s\n' "${openapi_packages[@]}"; } | sha256sum | cut -c1-16; }

# A cached build whose main.go hash matches, whatever package versions it was built from.
cached_build() {
  local hash; hash=$(main_hash)
  local dir
  for dir in "$cache_root"/"$hash"-*; do
    [ -x "$dir/bin/ota-test-apiserver" ] && [ -x "$dir/bin/etcd" ] && { echo "$dir"; return 0; }
  done
  return 1
}

apt_private() {
  local work=$1; shift
  apt-get -q -o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" \
    -o Dir::State::status="$work/status" -o Debug::NoLocking=1 "$@"
}

apt_cache_private() {
  local work=$1; shift
  apt-cache -o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" \
    -o Dir::State::status="$work/status" "$@"
}

build() {
  if [ "${OTA_APISERVER_REFRESH:-0}" != 1 ] && dir=$(cached_build); then
    echo "$dir"; return 0
  fi
  command -v apt-get >/dev/null || die "apt-get is required to download Debian's Go sources"
  command -v dpkg >/dev/null || die "dpkg is required to unpack Debian's Go sources"
  # One build at a time per cache: test runs with different state folders share the work folder.
  mkdir -p "$cache_root"
  exec 8>"$cache_root/build.lock"
  flock 8
  if [ "${OTA_APISERVER_REFRESH:-0}" != 1 ] && dir=$(cached_build); then
    echo "$dir"; return 0
  fi
  local work="$cache_root/work"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo 'deb http://deb.debian.org/debian sid main' > "$work/sources.list"
  : > "$work/status"
  log "updating a private apt index of Debian sid"
  apt_private "$work" update >&2 || die "apt-get update of Debian sid failed (is deb.debian.org reachable?)"
  local versions=()
  local p v
  for p in "${packages[@]}"; do
    v=$(apt_cache_private "$work" policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    [ "$v" = "(none)" ] && v=
    [ -n "$v" ] || die "package $p is not in Debian sid"
    versions+=("$p=$v")
  done
  local key; key="$(main_hash)-$(printf '%s\n' "${versions[@]}" | sha256sum | cut -c1-16)"
  local out="$cache_root/$key"
  if [ -x "$out/bin/ota-test-apiserver" ] && [ -x "$out/bin/etcd" ]; then echo "$out"; return 0; fi
  log "downloading ${versions[*]} and their dependencies"
  apt_private "$work" install --download-only -y "${packages[@]}" >&2 \
    || die "apt-get could not download the packages"
  local root="$work/root"
  rm -rf "$root"; mkdir -p "$root"
  local deb
  for deb in "$work"/cache/archives/*.deb; do dpkg -x "$deb" "$root"; done
  local goroot
  goroot=$(ls -d "$root"/usr/lib/go-1.* 2>/dev/null | sort -V | tail -n 1)
  [ -n "$goroot" ] && [ -x "$goroot/bin/go" ] || die "no Go toolchain was unpacked from the packages"
  local gopath="$work/gopath"
  rm -rf "$gopath"; mkdir -p "$gopath/src/ota-test-apiserver"
  cp "$here"/*.go "$gopath/src/ota-test-apiserver/"
  local k8s_version
  k8s_version=$(printf '%s\n' "${versions[@]}" | sed -n 's/^golang-k8s-apiextensions-apiserver-dev=0\.\([0-9]*\)\.\([0-9]*\).*/1.\1.\2/p')
  local minor=${k8s_version#1.}; minor=${minor%%.*}
  mkdir -p "$out.tmp/bin"
  local go_env=(GOROOT="$goroot" PATH="$goroot/bin:$PATH" GO111MODULE=off GOTOOLCHAIN=local CGO_ENABLED=0
    GOFLAGS= GOPATH="$gopath:$root/usr/share/gocode" GOCACHE="$work/gocache")
  log "generating the OpenAPI models of the built-in kinds with the packaged openapi-gen"
  (
    cd "$root/usr/share/gocode/src/k8s.io/kube-openapi/cmd/openapi-gen"
    env "${go_env[@]}" "$goroot/bin/go" build -o "$work/openapi-gen" . || die "go build of openapi-gen failed"
    : > "$work/boilerplate.txt"
    # Upstream's known API-rule exceptions (field names) are reported to a file, not fatal.
    env "${go_env[@]}" "$work/openapi-gen" --go-header-file "$work/boilerplate.txt" \
      --output-dir "$gopath/src/ota-test-apiserver/builtinopenapi" \
      --output-pkg ota-test-apiserver/builtinopenapi --output-file zz_generated.openapi.go \
      --report-filename "$work/openapi-rule-violations.txt" "${openapi_packages[@]}" \
      || die "openapi-gen could not generate the built-in kinds' OpenAPI models"
  ) >&2 || exit 1
  log "building the API server (Kubernetes v$k8s_version) with $(basename "$goroot")"
  (
    cd "$gopath/src/ota-test-apiserver"
    env "${go_env[@]}" "$goroot/bin/go" build -o "$out.tmp/bin/ota-test-apiserver" -ldflags "\
        -X k8s.io/component-base/version.gitVersion=v$k8s_version \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=$minor" .
  ) >&2 || die "go build of the API server failed"
  cp "$root/usr/bin/etcd" "$out.tmp/bin/etcd" || die "etcd-server did not unpack usr/bin/etcd"
  printf '%s\n' "${versions[@]}" > "$out.tmp/versions"
  rm -rf "$out"; mv "$out.tmp" "$out"
  # The unpacked sources and the Go build cache take gigabytes; only the binaries are kept.
  rm -rf "$root" "$gopath" "$work/gocache" "$work/openapi-gen"
  echo "$out"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

is_running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  if is_running "$state/apiserver.pid" && is_running "$state/etcd.pid" && [ -f "$state/env" ]; then
    log "already running (state in $state)"; cat "$state/env"; return 0
  fi
  stop_quietly
  local dir; dir=$(build)
  command -v openssl >/dev/null || die "openssl is required to make the test certificates"
  rm -rf "$state"; mkdir -p "$state/pki" "$state/etcd-data"
  local pki="$state/pki"
  # A self-made CA; a server certificate for 127.0.0.1; a client certificate in system:masters.
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj '/CN=ota-test-ca' 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
      -subj '/CN=ota-test-apiserver' 2>/dev/null
    # X.509 v3 with extensions throughout: rustls refuses v1 certificates.
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
    printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > client.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
      -days 3650 -extfile server.ext 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
      -subj '/CN=ota-test-admin/O=system:masters' 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt \
      -days 3650 -extfile client.ext 2>/dev/null
  ) || die "openssl could not make the test certificates"
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  local b64="base64 -w0"
  cat > "$state/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: ota-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $($b64 < "$pki/ca.crt")
users:
- name: ota-test-admin
  user:
    client-certificate-data: $($b64 < "$pki/admin.crt")
    client-key-data: $($b64 < "$pki/admin.key")
contexts:
- name: ota-test
  context: {cluster: ota-test, user: ota-test-admin, namespace: default}
current-context: ota-test
KUBECONFIG
  "$dir/bin/etcd" --name ota-test --data-dir "$state/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "ota-test=http://127.0.0.1:$peer_port" --unsafe-no-fsync \
    > "$state/etcd.log" 2>&1 9>&- &
  echo $! > "$state/etcd.pid"
  "$dir/bin/ota-test-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --secure-port "$api_port" --bind-address 127.0.0.1 \
    --tls-cert-file "$pki/server.crt" --tls-private-key-file "$pki/server.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubeconfig "$state/kubeconfig" --authentication-kubeconfig "$state/kubeconfig" \
    --authorization-kubeconfig "$state/kubeconfig" \
    --authentication-skip-lookup --authentication-tolerate-lookup-failure \
    --enable-priority-and-fairness=false \
    --disable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy \
    > "$state/apiserver.log" 2>&1 9>&- &
  echo $! > "$state/apiserver.pid"
  local i
  for i in $(seq 1 300); do
    if curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.1:$api_port/readyz?exclude=informer-sync" >/dev/null 2>&1; then
      printf 'KUBECONFIG=%s\nOTA_TEST_KUBECONFIG=%s\n' "$state/kubeconfig" "$state/kubeconfig" > "$state/env"
      log "ready on https://127.0.0.1:$api_port (kubeconfig $state/kubeconfig)"
      cat "$state/env"
      return 0
    fi
    if ! is_running "$state/apiserver.pid"; then
      tail -n 20 "$state/apiserver.log" >&2; stop_quietly; die "the API server exited during start-up"
    fi
    if ! is_running "$state/etcd.pid"; then
      tail -n 20 "$state/etcd.log" >&2; stop_quietly; die "etcd exited during start-up"
    fi
    sleep 0.1
  done
  tail -n 20 "$state/apiserver.log" >&2
  stop_quietly
  die "the API server did not become ready within 30 s"
}

stop_pidfile() {
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_quietly() {
  stop_pidfile "$state/apiserver.pid"
  stop_pidfile "$state/etcd.pid"
  rm -f "$state/env"
}

# One start or stop at a time: test binaries and helpers may call this concurrently.
mkdir -p "$(dirname "$state")"
exec 9>"$state.lock"
flock 9

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop_quietly; log "stopped" ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
