#!/usr/bin/env bash
# What a page deep in a shop's orders costs against its first page, on the embedded store
# (docs/benchmarks.md, "Deep pages"). Places orders for one shop with wrk (one unit each under a
# fresh Idempotency-Key), then times, one request at a time, the newest page and the page just
# before an order placed first, with and without a status filter.
#
#   bash benches/deep_pages.sh [SECONDS]      # default 20 of ordering; needs wrk, curl, python3
#
# DEEP_BINS="before=/path/old after=/path/new" compares builds one after the other (default: this
# checkout's release build). Everything runs on loopback in a temporary directory and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrina-target}"
if [ -z "${DEEP_BINS:-}" ]; then
  cargo build --release --locked --quiet
  DEEP_BINS="this=$CARGO_TARGET_DIR/release/vitrina"
fi
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
token="deep-pages-admin-token-0123456789"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"

# median_ms URL: the median of 200 sequential requests' times, in milliseconds.
median_ms() {
  for _ in $(seq 1 200); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $key" "$1"
  done | sort -n | awk '{t[NR]=$1} END {printf "%.2f", t[int(NR/2)+1]*1000}'
}

printf '| build | orders | page | first ms | deepest ms | deepest / first |\n|---|---|---|---|---|---|\n'
for entry in $DEEP_BINS; do
  name=${entry%%=*} bin=${entry#*=}
  rm -rf "$work/data"
  VITRINA_LOG_LEVEL=warn VITRINA_ADMIN_TOKEN=$token VITRINA_ADMISSION__SHOP_WRITES=64 VITRINA_ADMISSION__SHARD_WRITES=64 \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -sf "$url/health/ready" >/dev/null && break; sleep 0.1; done
  key=$(curl -sf -X POST "$url/shops" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"id":"deep","name":"Deep","currency":"USD"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
  printf '%s\n%s\n' '{"type":"product","sku":"A","name":"A","category":"c","price":{"amount":100,"currency":"USD"}}' \
    '{"type":"stock","sku":"A","on_hand":100000000}' |
    curl -sf -o /dev/null -X POST "$url/shops/deep/feed" -H "Authorization: Bearer $key" -H 'content-type: application/x-ndjson' --data-binary @-
  # The 100 oldest orders; the page before the last of them is the deepest.
  for i in $(seq 1 100); do
    first=$(curl -sf -X POST "$url/shops/deep/orders" -H "Authorization: Bearer $key" -H 'content-type: application/json' \
      -H "Idempotency-Key: first-$i" -d '{"customer_id":"c","lines":[{"sku":"A","qty":1}]}' |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  done
  cat >"$work/order.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local headers = {["Authorization"] = "Bearer $key", ["Content-Type"] = "application/json",
                   ["Idempotency-Key"] = "wrk-" .. tostring(n) .. "-" .. tostring(math.random(1e9))}
  return wrk.format("POST", "/shops/deep/orders", headers, '{"customer_id":"c","lines":[{"sku":"A","qty":1}]}')
end
LUA
  wrk -t2 -c24 -d"${secs}s" -s "$work/order.lua" "$url" >/dev/null
  orders=$(curl -sf "$url/shops/deep/stock/A" -H "Authorization: Bearer $key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["reserved"])')
  cursor=$(python3 -c 'import base64,json,sys; print(base64.urlsafe_b64encode(json.dumps(sys.argv[1]).encode()).decode().rstrip("="))' "$first")
  for filter in "" "status=placed&"; do
    a=$(median_ms "$url/shops/deep/orders?${filter}limit=50")
    b=$(median_ms "$url/shops/deep/orders?${filter}limit=50&cursor=$cursor")
    ratio=$(python3 -c "print(f'{$b / $a:.2f}')")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$orders" "${filter:-all}" "$a" "$b" "$ratio"
  done
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
done
