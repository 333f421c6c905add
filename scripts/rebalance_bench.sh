#!/usr/bin/env bash
# The ring moving, measured on real `ringkv server` processes (release
# build) on loopback: what issue 13's benchmark asks for.
#
#   1. Three nodes; MIB MiB of 64 KiB values written (default 256; 1024 for
#      the issue's 1 GiB), then write throughput for 15 s (1 KiB values, 16
#      clients): the baseline.
#   2. A fourth node joins (--join); the same load runs during the
#      rebalance: its throughput as a fraction of the baseline (goal >= 0.7),
#      and the time until `ringkv status`, asked of the controller, says the
#      cluster is healthy again (exit 0), with the bytes node 4 then holds
#      against its fair share (rf x data / 4).
#   3. Node 4 is killed (-9) for good (--dead-after 5): the time until every
#      partition has three healthy replicas again (status healthy), minus
#      the grace period.
#
#   For the join and the loss, the snapshot bytes the nodes streamed
#   (ringkv_snapshot_bytes_sent_total) against the minimum: one copy of each
#   partition node 4 holds, at the data's size over the partition count
#   (keys hash uniformly).
#
#   ./scripts/rebalance_bench.sh [MIB]
#
# Data lives in a temporary directory, removed at exit; the nodes use REST
# ports 18181-18184 and gRPC ports 19191-19194.
set -euo pipefail
cd "$(dirname "$0")/.."

mib="${1:-256}"
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

peers="1=127.0.0.1:19191,2=127.0.0.1:19192,3=127.0.0.1:19193"
endpoints="127.0.0.1:19191,127.0.0.1:19192,127.0.0.1:19193"
common=(--dead-after 5 --log "${RINGKV_LOG:-warn}")

start_founder() {
  local id=$1
  "$bin" server --id "$id" --peers "$peers" --rest-listen "127.0.0.1:1818$id" \
    --data-dir "$dir/node-$id" "${common[@]}" >>"$dir/node-$id.log" 2>&1 &
  pids[$id]=$!
}

wait_ready() {
  for _ in $(seq 1 200); do
    local ok=1
    for id in "$@"; do
      curl -sf "127.0.0.1:1818$id/readyz" >/dev/null || ok=0
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.1
  done
  echo "nodes $* not ready" >&2
  exit 1
}

# Exit code of `ringkv status` asked of the controller (0: healthy).
cluster_healthy() {
  local controller
  controller=$("$bin" status --endpoints "$endpoints" -o json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("metadata_leader") or 0)') || return 1
  [ "$controller" != 0 ] || return 1
  "$bin" status --endpoints "127.0.0.1:1919$controller" >/dev/null 2>&1
}

wait_healthy() {
  local started=$SECONDS
  until cluster_healthy; do
    if ((SECONDS - started > 1800)); then
      echo "the cluster did not become healthy in 30 min" >&2
      exit 1
    fi
    sleep 1
  done
}

# Snapshot bytes the nodes given have streamed so far.
streamed() {
  local total=0 id n
  for id in "$@"; do
    n=$(curl -sf "127.0.0.1:1818$id/metrics" | awk '/^ringkv_snapshot_bytes_sent_total /{print $2}')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}

throughput() {
  "$bin" bench --endpoints "$endpoints" --protocol grpc --clients 16 --duration 15s \
    --value-size 1024 --keys 10000 -o json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["throughput_ops_s"]))'
}

for id in 1 2 3; do start_founder "$id"; done
wait_ready 1 2 3
keys=$((mib * 16))
echo "loading $mib MiB ($keys values of 64 KiB, keys load-N; the load below writes bench-N)..."
head -c 65536 /dev/urandom >"$dir/value"
# (A write refused while leaders settle, 503 no_leader, is retried.)
seq 0 $((keys - 1)) | xargs -P 16 -I{} \
  curl -sf -o /dev/null --retry 10 --retry-all-errors --retry-delay 1 \
  -X PUT --data-binary @"$dir/value" "127.0.0.1:18181/v1/kv/load-{}"
wait_healthy
base=$(throughput)
echo "baseline: $base writes/s (1 KiB values, 16 clients)"

"$bin" server --id 4 --join 127.0.0.1:19191 --grpc-listen 127.0.0.1:19194 \
  --rest-listen 127.0.0.1:18184 --data-dir "$dir/node-4" "${common[@]}" >>"$dir/node-4.log" 2>&1 &
pids[4]=$!
streamed_before_join=$(streamed 1 2 3)
joined=$SECONDS
during=$(throughput)
wait_healthy
took=$((SECONDS - joined))
held=$(du -sb "$dir/node-4" | cut -f1)
fair=$((3 * mib * 1024 * 1024 / 4))
streamed_join=$(($(streamed 1 2 3 4) - streamed_before_join))
# One copy of each partition node 4 holds: the least a join (or its loss)
# can stream. The data is the load plus the 10,000 1 KiB values of the bench.
minimum=$("$bin" status --endpoints 127.0.0.1:19194 -o json | python3 -c '
import json, sys
s = json.load(sys.stdin)
held = sum(1 for p in s["partitions"] if 4 in p["replicas"])
data = int(sys.argv[1]) * 2**20 + 10000 * 1024
print(held * data // s["partition_count"])' "$mib")
python3 - "$base" "$during" "$took" "$held" "$fair" "$streamed_join" "$minimum" <<'EOF'
import sys
base, during, took, held, fair, streamed, minimum = map(float, sys.argv[1:])
print(f"join: {during:.0f} writes/s during the rebalance = {during / base:.2f} of the baseline "
      f"(goal >= 0.7); healthy again {took:.0f} s after the join; node 4 holds "
      f"{held / 2**20:.0f} MiB on disk, fair share {fair / 2**20:.0f} MiB ({held / fair:.2f}); "
      f"snapshots streamed {streamed / 2**20:.0f} MiB, minimum {minimum / 2**20:.0f} MiB "
      f"({streamed / minimum:.2f})")
EOF

streamed_before_loss=$(streamed 1 2 3)
kill -9 "${pids[4]}"
wait "${pids[4]}" 2>/dev/null || true
pids[4]=""
killed=$SECONDS
# First the controller notices (node 4 down), then it recovers.
for _ in $(seq 1 60); do cluster_healthy || break; sleep 0.5; done
wait_healthy
recovered=$((SECONDS - killed))
streamed_loss=$(($(streamed 1 2 3) - streamed_before_loss))
python3 - "$held" "$recovered" "$streamed_loss" "$minimum" <<'EOF'
import sys
held, recovered, streamed, minimum = map(float, sys.argv[1:])
print(f"loss: node 4 (holding {held / 2**20:.0f} MiB) killed for good; every partition on 3 "
      f"healthy replicas again {recovered:.0f} s later (--dead-after 5 included); snapshots "
      f"streamed {streamed / 2**20:.0f} MiB, minimum {minimum / 2**20:.0f} MiB "
      f"({streamed / minimum:.2f})")
EOF
