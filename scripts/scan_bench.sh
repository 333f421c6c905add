#!/usr/bin/env bash
#
# Scan throughput: loads KEYS distinct keys (default 1,000,000, 32-byte
# values) into a three-node ringkv cluster (release build, loopback) and
# into Redis, then times full scans of every key and prints keys per second:
#   ringkv ls               (gRPC Kv.Scan, pages of 1,000)
#   redis-cli --scan        against ringkv node 1 (RESP SCAN; ringkv pages
#                           1,000 keys whatever the COUNT)
#   redis-cli --scan        against Redis (its default COUNT 10), for reference
# Each scan must return every key exactly once; the script fails otherwise.
#
# Usage: scripts/scan_bench.sh [KEYS]
# Needs redis-server and redis-tools (apt install redis-server redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

keys="${1:-1000000}"
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || {
    echo "scan_bench: $tool not found (apt install redis-server redis-tools)" >&2
    exit 1
  }
done
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

redis-server --port 16479 --dir "$dir" --save '' --appendonly no --daemonize no \
  >>"$dir/redis.log" 2>&1 &
pids+=($!)
peers="1=127.0.0.1:19391,2=127.0.0.1:19392,3=127.0.0.1:19393"
for id in 1 2 3; do
  "$bin" server --id "$id" --peers "$peers" --rest-listen "127.0.0.1:1838$id" \
    --resp-listen "127.0.0.1:1648$id" --data-dir "$dir/node-$id" --log warn \
    >>"$dir/node-$id.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 1200); do
  ready=1
  for id in 1 2 3; do curl -sf "127.0.0.1:1838$id/readyz" >/dev/null || ready=0; done
  [ "$(redis-cli -p 16479 ping 2>/dev/null)" = PONG ] || ready=0
  [ "$ready" = 1 ] && break
  sleep 0.05
done
[ "$ready" = 1 ] || { echo "scan_bench: the servers did not become ready" >&2; exit 1; }

# The load: SET key:<i> <32 bytes>, pipelined.
load() {
  python3 - "$keys" <<'EOF' | redis-cli -p "$1" --pipe >/dev/null
import sys
n = int(sys.argv[1])
value = b"v" * 32
out = sys.stdout.buffer
for i in range(n):
    key = b"key:%09d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$32\r\n%s\r\n" % (len(key), key, value))
EOF
}
started=$(date +%s.%N)
load 16481
loaded=$(date +%s.%N)
echo "loaded ${keys} keys into ringkv in $(python3 -c "print(f'{$loaded - $started:.1f}')") s (redis-cli --pipe to node 1)"
load 16479

# Times one scan command; checks it listed every key once.
timed() {
  local label=$1
  shift
  local start end count unique
  start=$(date +%s.%N)
  "$@" >"$dir/scan.out"
  end=$(date +%s.%N)
  count=$(wc -l <"$dir/scan.out")
  unique=$(sort -u "$dir/scan.out" | wc -l)
  if [ "$count" != "$keys" ] || [ "$unique" != "$keys" ]; then
    echo "scan_bench: $label listed $count keys ($unique distinct), expected $keys" >&2
    exit 1
  fi
  python3 -c "
s = $end - $start
print(f'$label: {$keys:,} keys in {s:.2f} s, {$keys / s:,.0f} keys/s')"
}

endpoints="127.0.0.1:19391,127.0.0.1:19392,127.0.0.1:19393"
timed "ringkv ls (gRPC, pages of 1,000)" "$bin" ls --endpoints "$endpoints"
timed "ringkv SCAN (RESP, redis-cli --scan)" redis-cli -p 16481 --scan
timed "Redis SCAN (redis-cli --scan)" redis-cli -p 16479 --scan
