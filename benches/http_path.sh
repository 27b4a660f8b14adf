#!/usr/bin/env bash
# What vitrina's request path costs: wrk against vitrina's cheapest answers and against a bare
# axum server (examples/bare_axum.rs: same runtime, allocator and HTTP/1 stack, nothing else),
# one after the other in the same run, as ratios (docs/benchmarks.md, "The request path").
#
#   bash benches/http_path.sh [SECONDS]      # default 10 per run; needs wrk
#
# HTTP_PATH_BIN runs a vitrina built elsewhere (two builds compared one after the other).
# Both servers run on loopback, vitrina over a fresh embedded store with its demo data; the run
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrina-target}"
cargo build --release --locked --quiet --example bare_axum
[ -n "${HTTP_PATH_BIN:-}" ] || cargo build --release --locked --quiet
bin=${HTTP_PATH_BIN:-$CARGO_TARGET_DIR/release/vitrina}
bare=$CARGO_TARGET_DIR/release/examples/bare_axum
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
vport=$(free_port) bport=$(free_port)
VITRINA_LOG_LEVEL=warn "$bin" serve --listen "127.0.0.1:$vport" --data-dir "$work/data" >"$work/vitrina.log" 2>&1 &
vpid=$!
"$bare" "127.0.0.1:$bport" >/dev/null 2>&1 &
bpid=$!
trap 'kill $vpid $bpid 2>/dev/null; wait $vpid $bpid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$vport/health/ready" >/dev/null && break; sleep 0.1; done

# rps URL: requests/s of a wrk run (2 threads, 64 connections), after a short warm-up.
rps() {
  wrk -t2 -c64 -d2s "$1" >/dev/null
  wrk -t2 -c64 -d"${secs}s" "$1" | awk '/^Requests\/sec/ {print $2}'
}
v="http://127.0.0.1:$vport" b="http://127.0.0.1:$bport"
json=$(rps "$b/json")
product=$(rps "$b/product")
live=$(rps "$v/health/live")
cached=$(rps "$v/shops/demo/products/TSHIRT-BLK-M")
page=$(rps "$v/shops/demo/products?limit=20")
count=$(rps "$v/helloDoc/count")
python3 - "$json" "$product" "$live" "$cached" "$page" "$count" <<'PY'
import sys
json_, product, live, cached, page, count = map(float, sys.argv[1:])
print("| request | reference | requests/s | reference requests/s | ratio |")
print("|---|---|---|---|---|")
for name, got, ref_name, ref in (
    ("GET /health/live", live, "bare /json", json_),
    ("cached product GET", cached, "bare in-memory product", product),
    ("catalog page (20, cached)", page, "bare in-memory product", product),
    ("GET /helloDoc/count", count, "bare /json", json_),
):
    print(f"| {name} | {ref_name} | {got:,.0f} | {ref:,.0f} | {got / ref:.2f} |")
PY
