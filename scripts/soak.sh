#!/usr/bin/env bash
# Long soak of the simulation: a linearizability test of
# sim/tests/linearizable.rs (30 s of simulated time per seed) for many
# seeds, in a release build, several seeds at once. A failing seed does not
# stop the soak: it is listed with its replay command at the end. Every
# failure is confirmed by running its seed again alone, so seeds failing at
# once (their output interleaved, RUST_BACKTRACE set or not) are each named.
#
#   ./scripts/soak.sh [SEEDS]     SEEDS defaults to 10000
#
#   SOAK_TEST          faults (default: histories_under_faults_are_linearizable)
#                      or churn (histories_under_membership_churn_are_linearizable)
#   MADSIM_TEST_SEED   first seed (default 1)
#   MADSIM_TEST_JOBS   seeds run at once (default: the number of CPUs)
#   SOAK_CHUNK         seeds per test process (default 100; a process
#                      stays near 100 MB since SimCluster kills its hosts
#                      when dropped, see docs/testing.md)
#
# Prints "soak: N of M seeds passed in S s" and exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${SOAK_TEST:-faults}" in
  faults) test=histories_under_faults_are_linearizable label="seed" ;;
  churn) test=histories_under_membership_churn_are_linearizable label="churn seed" ;;
  *) echo "soak: SOAK_TEST must be faults or churn, not ${SOAK_TEST}" >&2; exit 64 ;;
esac
total="${1:-10000}"
first="${MADSIM_TEST_SEED:-1}"
jobs="${MADSIM_TEST_JOBS:-$(nproc)}"
chunk="${SOAK_CHUNK:-100}"
last=$((first + total - 1))

export RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim
cargo test --release -p ringkv-sim --test linearizable --no-run

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
: >"$work/passed"
failed=()
started=$SECONDS

# run FIRST COUNT JOBS OUT: one test process over seeds FIRST..FIRST+COUNT-1.
run() {
  MADSIM_TEST_SEED="$1" MADSIM_TEST_NUM="$2" MADSIM_TEST_JOBS="$3" \
    cargo test --release -q -p ringkv-sim --test linearizable -- --nocapture --exact "$test" >"$4" 2>&1
}

# Seeds that printed their passing summary line, from any output so far.
passed_in() {
  grep -aE "^${label} [0-9]+: .* passed\$" "$1" | sed -E "s/^${label} ([0-9]+):.*/\1/" || true
}

next=$first
while [ "$next" -le "$last" ]; do
  n=$((last - next + 1))
  [ "$n" -gt "$chunk" ] && n=$chunk
  if ! run "$next" "$n" "$jobs" "$work/chunk"; then
    # A failure stops the process; seeds running beside it may be cut
    # short, and their output interleaves (with RUST_BACKTRACE set, badly).
    # So the madsim message is not trusted: the lowest seed of the chunk
    # without a passing line is run again alone, and only that clean run
    # decides whether it failed and what is reported.
    passed_in "$work/chunk" | sort -n >"$work/chunk-passed"
    suspect=$next
    while grep -qx "$suspect" "$work/chunk-passed"; do
      suspect=$((suspect + 1))
    done
    if [ "$suspect" -gt $((next + n - 1)) ]; then
      tail -n 40 "$work/chunk"
      echo "soak: every seed of ${next}..$((next + n - 1)) passed, yet the process failed" >&2
      exit 2
    fi
    if run "$suspect" 1 1 "$work/solo-$suspect"; then
      passed_in "$work/solo-$suspect" >>"$work/passed"
    else
      failed+=("$suspect")
      # Said at once (a long soak may be stopped before its summary).
      echo "soak: seed ${suspect} FAILED: $(grep -aE "^${label} $suspect: |^seed $suspect: " "$work/solo-$suspect" | grep -av 'passed$' | head -n 1 | cut -c1-300)"
    fi
    passed_in "$work/chunk" >>"$work/passed"
    next=$((suspect + 1))
  else
    passed_in "$work/chunk" >>"$work/passed"
    next=$((next + n))
  fi
  done_seeds="$(sort -u "$work/passed" | wc -l)"
  echo "soak: ${done_seeds} passed, ${#failed[@]} failed, up to seed $((next - 1)) of ${last} ($((SECONDS - started)) s)"
done

passed="$(sort -u "$work/passed" | wc -l)"
echo "soak: ${test}: ${passed} of ${total} seeds passed in $((SECONDS - started)) s (seeds ${first}..${last}, ${jobs} at once)"
for seed in "${failed[@]}"; do
  echo "soak: seed ${seed} FAILED:"
  grep -aE "^${label} $seed: |panicked|Raft invariants|checks failed|^  \[" "$work/solo-$seed" | head -n 8 | sed 's/^/  /'
  echo "  replay: MADSIM_TEST_SEED=${seed} RUSTFLAGS=\"--cfg madsim\" RUSTDOCFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test linearizable -- --nocapture --exact ${test}"
done
[ "${#failed[@]}" -eq 0 ]
