#!/usr/bin/env bash
# Long soak of the simulation: the linearizability-under-faults test
# (sim/tests/linearizable.rs, 30 s of simulated time per seed) for many
# seeds, in a release build, several seeds at once. A failing seed does not
# stop the soak: it is listed with its replay command at the end.
#
#   ./scripts/soak.sh [SEEDS]     SEEDS defaults to 10000
#
#   MADSIM_TEST_SEED   first seed (default 1)
#   MADSIM_TEST_JOBS   seeds run at once (default: the number of CPUs)
#   SOAK_CHUNK         seeds per test process (default 500)
#
# Prints "soak: N of M seeds passed in S s" and exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

total="${1:-10000}"
first="${MADSIM_TEST_SEED:-1}"
jobs="${MADSIM_TEST_JOBS:-$(nproc)}"
chunk="${SOAK_CHUNK:-500}"
last=$((first + total - 1))

export RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim
cargo test --release -p ringkv-sim --test linearizable --no-run

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
: >"$work/passed"
failed=()
started=$SECONDS
next=$first
while [ "$next" -le "$last" ]; do
  n=$((last - next + 1))
  [ "$n" -gt "$chunk" ] && n=$chunk
  if MADSIM_TEST_SEED="$next" MADSIM_TEST_NUM="$n" MADSIM_TEST_JOBS="$jobs" \
    cargo test --release -q -p ringkv-sim --test linearizable -- --nocapture \
    >"$work/chunk" 2>&1; then
    next=$((next + n))
  else
    # madsim names the failing seed; seeds after it may not have run.
    bad="$(sed -n 's/.*run with `MADSIM_TEST_SEED=\([0-9]*\)`.*/\1/p' "$work/chunk" | head -n 1)"
    if [ -z "$bad" ]; then
      tail -n 40 "$work/chunk"
      echo "soak: a test process failed without naming a seed" >&2
      exit 2
    fi
    grep -E "^seed $bad: |panicked|^replay" "$work/chunk" | head -n 5 >"$work/failure-$bad" || true
    failed+=("$bad")
    next=$((bad + 1))
  fi
  grep -E '^seed [0-9]+: .* passed$' "$work/chunk" >>"$work/passed" || true
  done_seeds="$(cut -d: -f1 "$work/passed" | sort -u | wc -l)"
  echo "soak: ${done_seeds} passed, ${#failed[@]} failed, up to seed $((next - 1)) of ${last} ($((SECONDS - started)) s)"
done

passed="$(cut -d: -f1 "$work/passed" | sort -u | wc -l)"
echo "soak: ${passed} of ${total} seeds passed in $((SECONDS - started)) s (seeds ${first}..${last}, ${jobs} at once)"
for seed in "${failed[@]}"; do
  echo "soak: seed ${seed} FAILED:"
  sed 's/^/  /' "$work/failure-$seed"
  echo "  replay: MADSIM_TEST_SEED=${seed} RUSTFLAGS=\"--cfg madsim\" RUSTDOCFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test linearizable -- --nocapture"
done
[ "${#failed[@]}" -eq 0 ]
