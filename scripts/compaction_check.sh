#!/usr/bin/env bash
# Write latency with and without compaction, on `ringkv demo` (release
# build). Each scenario runs the same closed-loop write load twice, on a fresh
# cluster each time, once with compaction effectively off and once with it
# triggered over and over, and prints both runs' percentiles, the ratio of
# their p99s, and the snapshots written during the compacting run.
#
#   entries   64 partitions, 100-byte values: --snapshot-entries 100000000
#             (never reached) against 1000 (every partition snapshots
#             several times in the run).
#   wal       1,024 partitions, 2 KB values: the write-ahead log passes its
#             allowance (4 segments of 64 MiB) after about 130,000 writes, which makes
#             every partition with entries in the oldest segment due for a
#             snapshot at once; the compaction queue paces them. The
#             baseline is the first 25 s of the same load (before the WAL
#             is full), the compacting run is the next 60 s.
#
#   ./scripts/compaction_check.sh [entries|wal|all]   (default: all)
#
# Data lives in a temporary directory, removed at exit; the demo uses its
# default ports (REST 8081-8083, gRPC 9091-9093).
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
cargo build --release --bin ringkv >&2
bin="$PWD/target/release/ringkv"
dir="$(mktemp -d)"
demo=""
cleanup() {
  [ -n "$demo" ] && kill "$demo" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

start_demo() {
  rm -rf "$dir/data"
  "$bin" demo --data-dir "$dir/data" "$@" >"$dir/demo.log" 2>&1 &
  demo=$!
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:8081/readyz >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the demo did not become ready; its log:" >&2
  cat "$dir/demo.log" >&2
  exit 1
}

stop_demo() {
  kill "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  demo=""
}

snapshots() {
  curl -s http://127.0.0.1:8081/metrics | awk '/^ringkv_snapshots_written_total/ { s += $2 } END { print s + 0 }'
}

# bench NAME ARGS...: one measured run, its JSON report in $dir/NAME.json and
# its per-second lines in $dir/NAME.log.
bench() {
  local name=$1
  shift
  "$bin" bench --clients 50 --route leader -o json "$@" >"$dir/$name.json" 2>"$dir/$name.log"
}

summary() {
  jq -r --arg name "$1" --arg snaps "$2" \
    '.writes as $w | "  \($name): \($w.ok) ok writes, \($w.ops_s | floor) ops/s, p50 \($w.latency_ms.p50) ms, p99 \($w.latency_ms.p99) ms, p99.9 \($w.latency_ms.p999) ms, max \($w.latency_ms.max) ms, errors \($w.errors), snapshots written \($snaps)"' \
    "$dir/$1.json"
}

ratio() {
  jq -rn --slurpfile a "$dir/$1.json" --slurpfile b "$dir/$2.json" \
    '"  p99 with compaction / without: \(($b[0].writes.latency_ms.p99 / $a[0].writes.latency_ms.p99 * 100 | round) / 100)x; p99.9: \(($b[0].writes.latency_ms.p999 / $a[0].writes.latency_ms.p999 * 100 | round) / 100)x"'
}

entries() {
  echo "== entries: 64 partitions, 100-byte values, 40 s per run"
  start_demo --snapshot-entries 100000000
  bench off --duration 40s --value-size 100 --keys 10000
  local off_snaps
  off_snaps=$(snapshots)
  stop_demo
  start_demo --snapshot-entries 1000
  bench on --duration 40s --value-size 100 --keys 10000
  local on_snaps
  on_snaps=$(snapshots)
  stop_demo
  summary off "$off_snaps"
  summary on "$on_snaps"
  ratio off on
}

wal() {
  echo "== wal: 1,024 partitions, 2 KB values; 25 s before the WAL is full, then 60 s past it"
  start_demo --partitions 1024
  bench before --duration 25s --value-size 2000 --keys 20000
  local before_snaps
  before_snaps=$(snapshots)
  bench after --duration 60s --value-size 2000 --keys 20000 --warmup 0s
  local after_snaps
  after_snaps=$(snapshots)
  stop_demo
  summary before "$before_snaps"
  summary after "$after_snaps"
  ratio before after
  echo "  worst seconds of the compacting run (per-second p99):"
  grep -o 'p99 [0-9.]* ms  max [0-9.]* ms' "$dir/after.log" | sort -k2 -n -r | head -3 | sed 's/^/    /'
}

case "$what" in
  entries) entries ;;
  wal) wal ;;
  all) entries; wal ;;
  *) echo "usage: $0 [entries|wal|all]" >&2; exit 2 ;;
esac
