#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for SECONDS each (default
# 60), or only the TARGETs named, and prints a table: runs, runs per
# second, corpus, coverage.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each target starts from its seeds (fuzz/seeds/TARGET, written by
# `cargo run --manifest-path fuzz/Cargo.toml --example seeds`) and grows a
# working corpus in fuzz/corpus/TARGET (not in git), so a second run goes
# on where the first stopped. Inputs that once crashed a target live in
# fuzz/regressions/TARGET and are replayed first, every run.
#
# Stable Rust, no sanitizer (libFuzzer's coverage and our own assertions,
# overflow checks on). RINGKV_FUZZ_ASAN=1 adds AddressSanitizer, with
# RUSTC_BOOTSTRAP=1 (as OSS-Fuzz does): slower, and only for `unsafe` code,
# of which ringkv has none outside its dependencies.
#
# A crash stops that target: the input is saved under fuzz/artifacts/TARGET
# and the script says how to replay it; the exit status is then 1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]  (SECONDS: a whole number, at least 1)" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --locked --quiet
fi

all=$(cargo fuzz list)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets <<<"$all"
fi
for t in "${targets[@]}"; do
  if ! grep -qx "$t" <<<"$all"; then
    echo "fuzz: no target '$t'; the targets are: $(echo $all)" >&2
    exit 2
  fi
done

build=(--sanitizer none)
if [ "${RINGKV_FUZZ_ASAN:-0}" = 1 ]; then
  export RUSTC_BOOTSTRAP=1
  build=(--sanitizer address)
fi
# Optimized, with debug assertions and overflow checks (-O -a).
cargo fuzz build "${build[@]}" -O -a 2>&1 | grep -v '^\s*Compiling' >&2 || {
  echo "fuzz: the targets do not build" >&2
  exit 1
}

logs=$(mktemp -d)
status=0
printf '%-14s %12s %10s %8s %8s  %s\n' target runs runs/s corpus cov result
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  log=$logs/$t.log
  result=ok
  # Replay every input that once crashed this target.
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    if ! cargo fuzz run "${build[@]}" -O -a "$t" fuzz/regressions/"$t"/* -- -runs=1 \
        >"$logs/$t.regressions.log" 2>&1; then
      result="REGRESSION (see $logs/$t.regressions.log)"
      status=1
    fi
  fi
  if ! cargo fuzz run "${build[@]}" -O -a "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
    artifact=$(grep -o "fuzz/artifacts/$t/[^ ]*" "$log" | tail -1 || true)
    result="CRASH: replay with: cargo fuzz run --sanitizer none -O -a $t ${artifact:-(see $log)}"
    status=1
  fi
  runs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$log" | tail -1)
  speed=$(awk '/^stat::average_exec_per_sec:/ { print $2 }' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{ print $2 }' || true)
  files=$(find "$corpus" -type f | wc -l)
  printf '%-14s %12s %10s %8s %8s  %s\n' "$t" "${runs:-?}" "${speed:-?}" "$files" "${cov:-?}" "$result"
  if [ "$result" != ok ]; then
    grep -E "panicked|ERROR|SUMMARY" "$log" | head -5 | sed 's/^/    /' || true
  fi
done
exit $status
