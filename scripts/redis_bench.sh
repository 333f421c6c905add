#!/usr/bin/env bash
# Redis and ringkv side by side, in one run on this machine (issue 14's
# benchmark): redis-benchmark against Redis with every write fsync'ed
# (appendonly yes, appendfsync always: what ringkv guarantees), then
# against node 1 of a three-node ringkv cluster (release build, loopback)
# over the Redis protocol. Prints each result and ringkv's ratio to Redis.
#
#   ./scripts/redis_bench.sh [REQUESTS] [MEMORY_WRITES]
#
# REQUESTS per throughput test, default 100000: 50 connections, 64-byte
# values (-d 64), keys drawn from 1,000,000 (-r), SET and GET, without and
# with pipelining (-P 16), then ringkv with redis-benchmark --cluster (each
# key sent to its leader).
#
# Then memory and restart, on emptied stores: MEMORY_WRITES SETs of 100-byte
# values over the same 1,000,000 keys (default 950000, about 614k live keys;
# 0 skips this part) into both; each process's resident memory per live key
# (every ringkv node holds a replica of every key); then kill -9 of
# everything and the time until Redis answers again (AOF loaded) and until
# every ringkv node is ready (every partition led); then kill -9 of one
# ringkv node alone and the time until it is ready again.
#
# Needs redis-server and redis-benchmark (Debian: apt install redis-server
# redis-tools). Data lives in a temporary directory, removed at exit; ports
# 16379 (Redis), RESP 16381-16383, REST 18281-18283, gRPC 19291-19293.
set -euo pipefail
cd "$(dirname "$0")/.."

requests="${1:-100000}"
memory_writes="${2:-950000}"
for tool in redis-server redis-benchmark; do
  command -v "$tool" >/dev/null || {
    echo "redis_bench: $tool not found (apt install redis-server redis-tools)" >&2
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
    # A failed run: what the servers said last.
    for log in "$dir"/*.log; do
      [ -f "$log" ] && { echo "--- tail of $log" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

start_redis() {
  mkdir -p "$dir/redis"
  redis-server --port 16379 --dir "$dir/redis" --appendonly yes --appendfsync always \
    --save '' --daemonize no >>"$dir/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
}

peers="1=127.0.0.1:19291,2=127.0.0.1:19292,3=127.0.0.1:19293"
start_ringkv() {
  ringkv_pids=()
  for id in 1 2 3; do
    "$bin" server --id "$id" --peers "$peers" --rest-listen "127.0.0.1:1828$id" \
      --resp-listen "127.0.0.1:1638$id" --data-dir "$dir/node-$id" --log warn \
      >>"$dir/node-$id.log" 2>&1 &
    ringkv_pids+=($!)
    pids+=($!)
  done
}

# Every node ready (every partition it replicates has a leader) and Redis
# answering (not loading its AOF). Polls every 50 ms, gives up after 60 s.
wait_ready() {
  for _ in $(seq 1 1200); do
    ready=1
    for id in 1 2 3; do curl -sf "127.0.0.1:1828$id/readyz" >/dev/null || ready=0; done
    [ "$(redis-cli -p 16379 ping 2>/dev/null)" = PONG ] || ready=0
    [ "$ready" = 1 ] && return 0
    sleep 0.05
  done
  echo "redis_bench: the servers did not become ready" >&2
  exit 1
}

start_redis
start_ringkv
wait_ready

# One redis-benchmark run: prints "TEST rps p50 p99" lines.
run() {
  local port=$1
  shift
  redis-benchmark -p "$port" -t set,get -c 50 -n "$requests" -d 64 -r 1000000 --csv "$@" |
    python3 -c '
import csv, sys
for row in csv.reader(sys.stdin):
    if row and row[0] in ("SET", "GET"):
        print(row[0], row[1], row[4], row[6])'
}

report() {
  local label=$1 redis=$2 ringkv=$3
  python3 - "$label" "$redis" "$ringkv" <<'EOF'
import sys
label, redis, ringkv = sys.argv[1], sys.argv[2], sys.argv[3]
parse = lambda text: {l.split()[0]: l.split()[1:] for l in text.strip().splitlines()}
r, k = parse(redis), parse(ringkv)
for test in ("SET", "GET"):
    if test not in r or test not in k:
        print(f"{label} {test}: missing result (redis: {r.get(test)}, ringkv: {k.get(test)})")
        continue
    (rr, rp50, rp99), (kr, kp50, kp99) = r[test], k[test]
    print(f"{label} {test}: Redis {float(rr):,.0f}/s (p50 {rp50} ms, p99 {rp99} ms); "
          f"ringkv {float(kr):,.0f}/s (p50 {kp50} ms, p99 {kp99} ms); "
          f"ratio {float(kr) / float(rr):.2f}")
EOF
}

echo "redis-benchmark: $requests requests per test, 50 connections, 64-byte values"
redis_p1=""
for pipeline in 1 16; do
  redis=$(run 16379 -P "$pipeline")
  [ "$pipeline" = 1 ] && redis_p1=$redis
  ringkv=$(run 16381 -P "$pipeline")
  report "-P $pipeline" "$redis" "$ringkv"
done
# Cluster-aware: redis-benchmark reads CLUSTER NODES and sends each key to
# the node that leads its slot (no forwarding hop). Against the same single
# Redis (not a cluster), so the ratio compares three ringkv nodes sharing
# this machine with one Redis.
# (A new cluster's member list holds the nodes' RESP addresses a second or
# so after it formed; until then CLUSTER NODES names only the node asked.)
for _ in $(seq 1 200); do
  [ "$(redis-cli -p 16381 cluster nodes | grep -c master)" -ge 2 ] && break
  sleep 0.05
done
ringkv=$(run 16381 --cluster)
report "--cluster" "$redis_p1" "$ringkv"


[ "$memory_writes" = 0 ] && exit 0

# Memory and restart, on emptied stores.
kill -9 "${ringkv_pids[@]}"
wait "${ringkv_pids[@]}" 2>/dev/null || true
rm -rf "$dir"/node-*
redis-cli -p 16379 flushall >/dev/null
start_ringkv
wait_ready
echo
echo "memory: $memory_writes SETs of 100-byte values over 1,000,000 keys, 50 connections"
for port in 16379 16381; do
  redis-benchmark -p "$port" -t set -c 50 -n "$memory_writes" -d 100 -r 1000000 -q >/dev/null
done
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
redis_keys=$(redis-cli -p 16379 dbsize)
ringkv_keys=$(redis-cli -p 16381 dbsize)
redis_rss=$(rss_kib "$redis_pid")
ringkv_rss=()
for pid in "${ringkv_pids[@]}"; do ringkv_rss+=("$(rss_kib "$pid")"); done
python3 - "$redis_keys" "$redis_rss" "$ringkv_keys" "${ringkv_rss[@]}" <<'EOF'
import sys
redis_keys, redis_rss, ringkv_keys = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
nodes = [int(x) for x in sys.argv[4:]]
redis_per_key = redis_rss * 1024 / redis_keys
print(f"Redis: {redis_keys:,} keys, {redis_rss / 1024:,.0f} MiB resident, {redis_per_key:,.0f} bytes per key")
for i, rss in enumerate(nodes, 1):
    per_key = rss * 1024 / ringkv_keys
    print(f"ringkv node {i}: {ringkv_keys:,} keys, {rss / 1024:,.0f} MiB resident, "
          f"{per_key:,.0f} bytes per key per replica; ratio {per_key / redis_per_key:.2f}")
EOF

# Restart: kill -9 of everything, then the time until each answers again.
kill -9 "$redis_pid" "${ringkv_pids[@]}"
wait "$redis_pid" "${ringkv_pids[@]}" 2>/dev/null || true
started=$(date +%s.%N)
start_redis
for _ in $(seq 1 1200); do
  [ "$(redis-cli -p 16379 ping 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
redis_ready=$(date +%s.%N)
start_ringkv
# A node listens once it has recovered its data (snapshots loaded, WAL
# replayed); it is ready once every partition it holds has a leader.
for _ in $(seq 1 1200); do
  up=1
  for id in 1 2 3; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:1828$id/readyz")" != 000 ] || up=0
  done
  [ "$up" = 1 ] && break
  sleep 0.05
done
ringkv_recovered=$(date +%s.%N)
wait_ready
ringkv_ready=$(date +%s.%N)
python3 - "$started" "$redis_ready" "$ringkv_recovered" "$ringkv_ready" <<'EOF'
import sys
start, redis, recovered, ringkv = (float(x) for x in sys.argv[1:])
print(f"restart after kill -9: Redis answered after {redis - start:.1f} s (AOF loaded); "
      f"ringkv's three nodes were ready after {ringkv - redis:.1f} s "
      f"(data recovered and listening after {recovered - redis:.1f} s, "
      f"then every partition led {ringkv - recovered:.1f} s later)")
EOF

# One node alone: kill -9 of node 1 while the others run, then the time
# until it is ready again (its data recovered, and every partition it holds
# led, by it or by a peer).
kill -9 "${ringkv_pids[0]}"
wait "${ringkv_pids[0]}" 2>/dev/null || true
started=$(date +%s.%N)
"$bin" server --id 1 --peers "$peers" --rest-listen "127.0.0.1:18281" \
  --resp-listen "127.0.0.1:16381" --data-dir "$dir/node-1" --log warn \
  >>"$dir/node-1.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 1200); do
  curl -sf "127.0.0.1:18281/readyz" >/dev/null && break
  sleep 0.05
done
python3 - "$started" "$(date +%s.%N)" <<'PY'
import sys
start, ready = (float(x) for x in sys.argv[1:])
print(f"restart of one node after kill -9 (the others running): ready after {ready - start:.1f} s")
PY
