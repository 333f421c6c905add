#!/usr/bin/env bash
#
# Watch fan-out: starts a three-node ringkv cluster (release build,
# loopback), attaches WATCHERS watchers (default 1,000) to one prefix over
# gRPC Kv.Watch, and writes under the prefix at RATE writes a second
# (default 10,000) for 10 s through all three nodes; prints the writes
# achieved, the changes delivered (each write to every watcher) and the
# delivery latency from a write being sent to a watcher receiving it
# (`ringkv bench-watch`; its --help has more knobs, passed through after
# the first two arguments).
#
# Usage: scripts/watch_bench.sh [WATCHERS] [RATE] [bench-watch flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

watchers="${1:-1000}"
rate="${2:-10000}"
shift $(($# > 2 ? 2 : $#))
cargo build --release --bin ringkv >&2
bin="$PWD/target/release/ringkv"
dir="$(mktemp -d)"
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" != 0 ]; then
    for log in "$dir"/*.log; do
      [ -f "$log" ] && { echo "--- tail of $log" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

peers="1=127.0.0.1:19591,2=127.0.0.1:19592,3=127.0.0.1:19593"
for id in 1 2 3; do
  "$bin" server --id "$id" --peers "$peers" --rest-listen "127.0.0.1:1868$id" \
    --data-dir "$dir/node-$id" --log warn >>"$dir/node-$id.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 1200); do
  ready=1
  for id in 1 2 3; do curl -sf "127.0.0.1:1868$id/readyz" >/dev/null || ready=0; done
  [ "$ready" = 1 ] && break
  sleep 0.05
done
[ "$ready" = 1 ] || { echo "watch_bench: the cluster did not become ready" >&2; exit 1; }

"$bin" bench-watch --endpoints 127.0.0.1:19591,127.0.0.1:19592,127.0.0.1:19593 \
  --watchers "$watchers" --rate "$rate" "$@"
