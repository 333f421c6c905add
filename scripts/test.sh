#!/usr/bin/env bash
# Runs every test: the workspace's tests (core, node with real processes,
# checkers), then the deterministic simulation under madsim for a fixed set
# of seeds, once more with madsim's determinism check on.
#
#   MADSIM_TEST_SEED        first seed (default 1)
#   MADSIM_TEST_NUM         seeds per simulation test (default 50)
#   RINGKV_SIM_DISK_FAULTS  seeds of each disk-fault test (default 10)
#   RINGKV_SIM_LINEARIZABLE seeds of each linearizability run, under faults
#                           and under membership churn (default 200, 30 s of
#                           simulated time each)
#   MADSIM_TEST_JOBS        seeds of that run at once (default: the number
#                           of CPUs; each seed replays the same either way)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

# The simulation build: madsim's tokio and tonic, its own target directory.
export RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim
seed="${MADSIM_TEST_SEED:-1}"
num="${MADSIM_TEST_NUM:-50}"
runs="${RINGKV_SIM_LINEARIZABLE:-200}"
echo "simulation: seeds ${seed}..$((seed + num - 1)) per test"
MADSIM_TEST_SEED="$seed" MADSIM_TEST_NUM="$num" \
  cargo test -p ringkv-sim -- --skip histories_under_faults_are_linearizable \
  --skip histories_under_membership_churn_are_linearizable \
  --skip a_failed_fsync_stops_the_node --skip a_full_disk_stops_the_node
# The disk faults (sim/tests/disk_faults.rs): about 4.5 s of real time a
# seed each, so fewer seeds (RINGKV_SIM_DISK_FAULTS, default 10).
disk_seeds="${RINGKV_SIM_DISK_FAULTS:-10}"
echo "simulation: disk faults, seeds ${seed}..$((seed + disk_seeds - 1)) per test"
MADSIM_TEST_SEED="$seed" MADSIM_TEST_NUM="$disk_seeds" cargo test -p ringkv-sim --test disk_faults
echo "simulation: the node's peer-client fault hook"
cargo test -p ringkv-node --lib transport::faults

echo "simulation: linearizability under faults, and under membership churn, seeds ${seed}..$((seed + runs - 1)) each"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$SECONDS
if ! MADSIM_TEST_SEED="$seed" MADSIM_TEST_NUM="$runs" MADSIM_TEST_JOBS="${MADSIM_TEST_JOBS:-$(nproc)}" \
  cargo test -p ringkv-sim --test linearizable -- --nocapture >"$log" 2>&1; then
  tail -n 80 "$log"
  echo "simulation: linearizability run FAILED (the replay command is above)"
  exit 1
fi
grep '^test result' "$log"
passed="$(grep -c '^seed [0-9]*: .* passed$' "$log" || true)"
churned="$(grep -c '^churn seed [0-9]*: .* passed$' "$log" || true)"
echo "simulation: ${passed} of ${runs} runs under faults and ${churned} of ${runs} under churn passed in $((SECONDS - started)) s"
if [ "$passed" -ne "$runs" ] || [ "$churned" -ne "$runs" ]; then
  echo "simulation: expected ${runs} passing runs of each"
  exit 1
fi

echo "simulation: determinism check, seed ${seed}"
MADSIM_TEST_SEED="$seed" MADSIM_TEST_CHECK_DETERMINISM=1 cargo test -p ringkv-sim --test smoke --test linearizable
