#!/usr/bin/env bash
# Replication under large values and long backlogs, on three real `ringkv
# server` processes (release build) on loopback. It runs the reproductions of
# issue 9 and prints what an operator would look at:
#
#   large     32 clients write 900 KB values for 15 s (partition-aware); then,
#             idle, the peer reconnect counters over 10 s; then 60 sequential
#             10 KB PUTs through node 1, each timed.
#   backlog   node 3 is killed (-9), 32 clients write 1 KB values for 25 s,
#             node 3 restarts: how long until its applied indexes match the
#             leaders', sampled every second.
#   mib       1 MiB values: node 3 is killed 5 s into a 30 s load and
#             restarted 20 s later; catch-up time, then every key the load
#             wrote is read back from node 3 with consistency=stale and
#             compared with what a linearizable read returns.
#
#   ./scripts/replication_check.sh [large|backlog|mib|all]   (default: all)
#
# Data lives in a temporary directory, removed at exit; the nodes use REST
# ports 18081-18083 and gRPC ports 19091-19093.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
cargo build --release --bin ringkv >&2
bin="$PWD/target/release/ringkv"
dir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

peers="1=127.0.0.1:19091,2=127.0.0.1:19092,3=127.0.0.1:19093"
grpc_endpoints="http://127.0.0.1:19091,http://127.0.0.1:19092,http://127.0.0.1:19093"

start_node() {
  local id=$1
  "$bin" server --id "$id" --peers "$peers" --rest-listen "127.0.0.1:1808$id" \
    --data-dir "$dir/node-$id" --log "${RINGKV_LOG:-warn}" >>"$dir/node-$id.log" 2>&1 &
  pids[$id]=$!
}

kill_node() {
  local pid="${pids[$1]:-}"
  [ -n "$pid" ] || return 0
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pids[$1]=""
}

wait_ready() {
  for _ in $(seq 1 100); do
    local ok=1
    for id in 1 2 3; do
      curl -sf "127.0.0.1:1808$id/readyz" >/dev/null || ok=0
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.2
  done
  echo "cluster not ready after 20 s" >&2
  return 1
}

metric() { # node name -> value (summed over label sets)
  curl -sf "127.0.0.1:1808$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}

# Per partition: the leader's applied index minus node 3's, summed; and how
# many partitions are behind.
lag_of_node3() {
  python3 - "$@" <<'EOF'
import json, urllib.request
def status(n):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:1808{n}/v1/cluster/status", timeout=5))
views = {n: status(n) for n in (1, 2, 3)}
behind = total = 0
for p in views[3]["partitions"]:
    if 3 not in p["replicas"]:
        continue
    best = max(views[n]["partitions"][p["partition"]]["applied_index"] for n in (1, 2, 3))
    lag = best - p["applied_index"]
    if lag > 0:
        behind += 1
        total += lag
print(behind, total)
EOF
}

wait_caught_up() {
  local started=$SECONDS
  while true; do
    read -r behind total < <(lag_of_node3)
    echo "  t+$((SECONDS - started)) s: node 3 behind on ${behind} partitions by ${total} entries in all"
    if [ "$behind" = 0 ]; then
      echo "  node 3 caught up in $((SECONDS - started)) s"
      return 0
    fi
    if [ $((SECONDS - started)) -ge 60 ]; then
      echo "  node 3 did NOT catch up within 60 s"
      return 1
    fi
    sleep 1
  done
}

fresh_cluster() {
  for id in 1 2 3; do kill_node "$id" 2>/dev/null || true; done
  rm -rf "$dir"/node-*
  for id in 1 2 3; do start_node "$id"; done
  wait_ready
}

bench() { # ENDPOINTS ARGS...
  local endpoints=$1
  shift
  "$bin" bench --protocol grpc --endpoints "$endpoints" "$@"
}

large() {
  echo "== large: 32 clients x 900 KB values for 15 s"
  fresh_cluster
  bench "$grpc_endpoints" --route leader --clients 32 --keys 1000 --duration 15s --value-size 900000 2>/dev/null
  sleep 2
  local before after
  before="$(metric 1 ringkv_peer_reconnects_total) $(metric 2 ringkv_peer_reconnects_total) $(metric 3 ringkv_peer_reconnects_total)"
  sleep 10
  after="$(metric 1 ringkv_peer_reconnects_total) $(metric 2 ringkv_peer_reconnects_total) $(metric 3 ringkv_peer_reconnects_total)"
  echo "  reconnects while idle for 10 s (nodes 1 2 3): before ${before}; after ${after}"
  head -c 10000 /dev/zero | tr '\0' 'x' >"$dir/value10k"
  local slow=0 failed=0 worst=0
  for i in $(seq 1 60); do
    local out code ms
    out="$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -X PUT --data-binary "@$dir/value10k" \
      "127.0.0.1:18081/v1/kv/seq-$i" || echo "000 0")"
    code="${out% *}"
    ms="$(awk -v t="${out#* }" 'BEGIN { printf "%d", t * 1000 }')"
    [ "$code" = 200 ] || [ "$code" = 201 ] || failed=$((failed + 1))
    [ "$ms" -gt 1000 ] && slow=$((slow + 1))
    [ "$ms" -gt "$worst" ] && worst=$ms
  done
  echo "  60 sequential 10 KB PUTs via node 1: ${failed} failed, ${slow} over 1 s, slowest ${worst} ms"
}

backlog() {
  echo "== backlog: node 3 down during 25 s of 1 KB writes from 32 clients"
  fresh_cluster
  kill_node 3
  bench "http://127.0.0.1:19091,http://127.0.0.1:19092" --clients 32 --keys 960 --duration 25s --value-size 1000 2>/dev/null | grep -E '^(measured|writes|errors)' || true
  start_node 3
  wait_caught_up
  echo "  reconnects (nodes 1 2 3): $(metric 1 ringkv_peer_reconnects_total) $(metric 2 ringkv_peer_reconnects_total) $(metric 3 ringkv_peer_reconnects_total)"
}

mib() {
  echo "== mib: 1 MiB values, node 3 killed 5 s in and restarted 20 s later"
  fresh_cluster
  bench "$grpc_endpoints" --clients 16 --keys 200 --duration 30s --value-size 1048576 -o json >"$dir/mib.json" 2>/dev/null &
  local bench_pid=$!
  sleep 5
  kill_node 3
  sleep 20
  start_node 3
  wait "$bench_pid" || true
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); w=r["writes"]; print("  load: %d ok writes, %.1f MB/s, p99 %s ms, errors %s" % (w["ok"], w["ok"]*1048576/r["duration_s"]/1e6, (w["latency_ms"] or {}).get("p99"), w["errors"]))' "$dir/mib.json"
  wait_caught_up
  python3 - <<'EOF'
import urllib.request
bad = 0
for i in range(200):
    key = "bench-%08d" % i
    def get(port, consistency):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/kv/{key}?consistency={consistency}", timeout=10).read()
        except urllib.error.HTTPError as e:
            return e.code
    lin = get(18081, "linearizable")
    stale = get(18083, "stale")
    if lin != stale:
        bad += 1
print(f"  200 keys read from node 3 (stale) vs linearizable: {bad} differ")
EOF
}

case "$what" in
  large) large ;;
  backlog) backlog ;;
  mib) mib ;;
  all) large; backlog; mib ;;
  *) echo "usage: $0 [large|backlog|mib|all]" >&2; exit 2 ;;
esac
