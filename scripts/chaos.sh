#!/usr/bin/env bash
# Real-process chaos for longer than CI's run: node/tests/chaos.rs (three
# `ringkv server` processes in network namespaces, every peer link through
# the test's fault-injecting proxy; kill -9, SIGSTOP, partitions both ways
# and one way, slow, stalled and lossy links; clients on REST, gRPC and the
# Redis protocol; the history judged for linearizability and lost writes).
#
#   ./scripts/chaos.sh [MINUTES]    MINUTES of faults per round (default 10)
#
#   CHAOS_ROUNDS        rounds, each a fresh cluster and seed (default 1)
#   RINGKV_CHAOS_SEED   the first round's seed (default: from the clock);
#                       round i uses seed + i
#
# Needs root and iproute2 (network namespaces). Prints each round's faults,
# operations by API and outcome, and violations; exits non-zero if any
# round failed, naming its seed.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
rounds="${CHAOS_ROUNDS:-1}"
seed="${RINGKV_CHAOS_SEED:-$(date +%s)}"
if [ "$(id -u)" != 0 ]; then
  echo "chaos: needs root (network namespaces)" >&2
  exit 2
fi
export RINGKV_REQUIRE_NETNS=1 RINGKV_CHAOS_SECONDS=$((minutes * 60))
cargo test -p ringkv-node --test chaos --no-run

failed=()
for ((i = 0; i < rounds; i++)); do
  s=$((seed + i))
  echo "chaos: round $((i + 1)) of ${rounds}, seed ${s}, ${minutes} min of faults"
  log="$(mktemp)"
  if RINGKV_CHAOS_SEED="$s" cargo test -q -p ringkv-node --test chaos -- --nocapture >"$log" 2>&1; then
    sed -n '/^chaos: results/,/^  history/p' "$log"
  else
    grep -v '^20[0-9][0-9]-' "$log" | tail -n 60
    failed+=("$s")
  fi
  rm -f "$log"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "chaos: ${#failed[@]} of ${rounds} rounds FAILED; replay: RINGKV_CHAOS_SEED=<seed> ./scripts/chaos.sh ${minutes} (seeds: ${failed[*]})"
  exit 1
fi
echo "chaos: ${rounds} of ${rounds} rounds passed"
