#!/usr/bin/env bash
#
# The README's dashboard screenshot, taken during a rebalance: starts three
# nodes (release build, loopback), loads MIB MiB (default 256) in 64 KiB
# values, runs a write load, opens /ui in headless Chromium (chromedriver,
# spoken to over WebDriver with curl), joins a fourth node, and once the
# controller's moves are under way saves the page to OUT (default
# docs/dashboard.png). Needs chromium and chromium-driver (apt).
#
# Usage: scripts/dashboard_screenshot.sh [MIB] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."

mib="${1:-256}"
out="${2:-docs/dashboard.png}"
command -v chromedriver >/dev/null || {
  echo "dashboard_screenshot: chromedriver not found (apt-get install chromium chromium-driver)" >&2
  exit 1
}
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

peers="1=127.0.0.1:19291,2=127.0.0.1:19292,3=127.0.0.1:19293"
endpoints="127.0.0.1:19291,127.0.0.1:19292,127.0.0.1:19293"
for id in 1 2 3; do
  "$bin" server --id "$id" --peers "$peers" --rest-listen "127.0.0.1:1828$id" \
    --data-dir "$dir/node-$id" --log warn >>"$dir/node-$id.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 600); do
  ok=1
  for id in 1 2 3; do curl -sf "127.0.0.1:1828$id/readyz" >/dev/null || ok=0; done
  [ "$ok" = 1 ] && break
  sleep 0.1
done
[ "$ok" = 1 ] || { echo "dashboard_screenshot: the cluster did not become ready" >&2; exit 1; }

keys=$((mib * 16))
echo "loading $mib MiB ($keys values of 64 KiB)..." >&2
head -c 65536 /dev/urandom >"$dir/value"
seq 0 $((keys - 1)) | xargs -P 16 -I{} \
  curl -sf -o /dev/null --retry 10 --retry-all-errors --retry-delay 1 \
  -X PUT --data-binary @"$dir/value" "127.0.0.1:18281/v1/kv/load-{}"

# Traffic for the charts, through the whole shot.
"$bin" bench --endpoints "$endpoints" --protocol grpc --clients 8 --duration 120s \
  --value-size 1024 --keys 10000 >/dev/null 2>&1 &
pids+=($!)

port=19515
chromedriver --port=$port >"$dir/chromedriver.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/status" >/dev/null && break; sleep 0.1; done
session=$(curl -sf "127.0.0.1:$port/session" -d '{"capabilities":{"alwaysMatch":{"goog:chromeOptions":{"args":["--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage","--window-size=1280,1500","--hide-scrollbars"]}}}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["value"]["sessionId"])')
wd() { curl -sf "127.0.0.1:$port/session/$session/$1" "${@:2}"; }
wd url -d '{"url":"http://127.0.0.1:18281/ui"}' >/dev/null
echo "page open; 30 s of traffic history before the join..." >&2
sleep 30

"$bin" server --id 4 --join 127.0.0.1:19291 --grpc-listen 127.0.0.1:19294 \
  --rest-listen 127.0.0.1:18284 --data-dir "$dir/node-4" --log warn >>"$dir/node-4.log" 2>&1 &
pids+=($!)
echo "node 4 joining; waiting for moves with snapshot progress..." >&2
for _ in $(seq 1 300); do
  moving=$(curl -sf 127.0.0.1:18281/v1/dashboard/cluster | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(sum(1 for m in v["moves"] if m["snapshot_bytes_acked"] > 0))')
  [ "${moving:-0}" -ge 2 ] && break
  sleep 0.5
done
sleep 2
wd screenshot | python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["value"]))' >"$out"
curl -sf -X DELETE "127.0.0.1:$port/session/$session" >/dev/null || true
echo "saved $out ($(stat -c %s "$out") bytes)" >&2
