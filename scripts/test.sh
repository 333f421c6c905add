#!/usr/bin/env bash
# Runs every test: the workspace's tests (core, node with real processes,
# checkers), then the deterministic simulation under madsim for a fixed set
# of seeds, once more with madsim's determinism check on.
#
#   MADSIM_TEST_SEED   first seed (default 1)
#   MADSIM_TEST_NUM    seeds per simulation test (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

# The simulation build: madsim's tokio and tonic, its own target directory.
export RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim
seed="${MADSIM_TEST_SEED:-1}"
num="${MADSIM_TEST_NUM:-50}"
echo "simulation: seeds ${seed}..$((seed + num - 1)) per test"
MADSIM_TEST_SEED="$seed" MADSIM_TEST_NUM="$num" cargo test -p ringkv-sim
echo "simulation: determinism check, seed ${seed}"
MADSIM_TEST_SEED="$seed" MADSIM_TEST_CHECK_DETERMINISM=1 cargo test -p ringkv-sim --test smoke --test linearizable
