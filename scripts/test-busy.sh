#!/usr/bin/env bash
# The whole test suite on a busy machine: `stress-ng --cpu N` (N = the
# number of cores) keeps every core loaded while the suite runs RUNS times
# (default 3), as on a shared CI host. The load is started and stopped here,
# never by the tests. Every run must pass.
#
# usage: scripts/test-busy.sh [RUNS] [-- nextest args...]
#   STRESS="--cpu 16" scripts/test-busy.sh 1         (other stress-ng load)
#   STRESS="--cpu 2 --hdd 1" scripts/test-busy.sh 1 -- --test-threads 6
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing stress-ng:stress-ng

runs=${1:-3}
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" = -- ] && shift
stress=${STRESS:---cpu $(nproc)}

# Build first, unloaded: the point is the tests, not the compiler.
cargo nextest run --workspace --features nixswarm/test-hooks --no-run

# shellcheck disable=SC2086 # $stress is a list of stress-ng flags
stress-ng $stress --quiet --temp-path "${TMPDIR:-/tmp}" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT

failed=0
for i in $(seq 1 "$runs"); do
  echo "=== busy run $i of $runs (stress-ng $stress) ===" >&2
  if ! bash scripts/test.sh "$@"; then
    echo "=== busy run $i FAILED ===" >&2
    failed=$((failed + 1))
  fi
done
echo "=== $failed of $runs busy runs failed ===" >&2
[ "$failed" -eq 0 ]
