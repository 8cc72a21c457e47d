#!/usr/bin/env bash
# Runs benchmarks on a baseline commit and on this working tree, one after the other in the same
# run, so that a change can state its figures before and after on the same machine and load.
#
#   tests/bench/compare.sh BASELINE_COMMIT [BENCH...]
#
# BENCH names a script of tests/bench/ (update_server, bundle_sync, controller, fleet, ...); the
# default is every benchmark that both trees have. The baseline is checked out in a worktree of
# its own (OTA_BENCH_BASELINE_DIR, default target/bench/baseline-<commit>) with its own target
# directory, kept between runs so that a second comparison does not build it again. Each
# benchmark runs on the baseline first, then here; the reports are kept side by side in
# target/bench/compare/ and printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

[ $# -ge 1 ] || { echo "usage: tests/bench/compare.sh BASELINE_COMMIT [BENCH...]" >&2; exit 2; }
baseline=$(git rev-parse --verify "$1^{commit}")
shift
short=${baseline:0:10}
baseline_dir=${OTA_BENCH_BASELINE_DIR:-$PWD/target/bench/baseline-$short}

if [ ! -e "$baseline_dir/.git" ]; then
  git worktree add --detach "$baseline_dir" "$baseline" >&2
fi
[ "$(git -C "$baseline_dir" rev-parse HEAD)" = "$baseline" ] || {
  echo "tests/bench/compare.sh: $baseline_dir is not at $baseline" >&2
  exit 1
}

if [ $# -gt 0 ]; then
  benches=("$@")
else
  benches=()
  for script in tests/bench/*.sh; do
    name=$(basename "$script" .sh)
    [ "$name" = compare ] && continue
    [ -x "$baseline_dir/tests/bench/$name.sh" ] && benches+=("$name")
  done
fi

out=target/bench/compare
mkdir -p "$out"
{
  echo "# Benchmarks: baseline $short against $(git rev-parse --short=10 HEAD)$(git diff --quiet HEAD || echo ' with local changes')"
  echo "# run on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs"
} > "$out/summary.txt"
for bench in "${benches[@]}"; do
  for side in baseline current; do
    if [ "$side" = baseline ]; then tree=$baseline_dir; else tree=$PWD; fi
    [ -x "$tree/tests/bench/$bench.sh" ] || { echo "tests/bench/compare.sh: no $bench in the $side tree" >&2; exit 1; }
    echo "tests/bench/compare.sh: $bench on the $side tree" >&2
    (cd "$tree" && "tests/bench/$bench.sh") > "$out/$bench.$side.txt"
  done
  {
    echo
    echo "## $bench: baseline ($short)"
    cat "$out/$bench.baseline.txt"
    echo
    echo "## $bench: current"
    cat "$out/$bench.current.txt"
  } >> "$out/summary.txt"
done
cat "$out/summary.txt"
echo "reports saved in $out" >&2
