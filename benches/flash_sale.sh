#!/usr/bin/env bash
# Flash-sale throughput of one or more vitrina builds on both stores, with pgbench running a bare
# hot-row order on the same PostgreSQL in the same run (docs/benchmarks.md, "Group reservation").
#
#   bash benches/flash_sale.sh [SECONDS]          # default 10 per run
#
# FLASH_BINS="before=/path/to/old/vitrina after=/path/to/new/vitrina" compares builds one after
# the other (default: this checkout's release build, named "this"). FLASH_STORES="sqlite postgres"
# and FLASH_SKUS="5 1000" choose the runs. VITRINA_BENCH_PG_URL is an admin URL of the
# PostgreSQL to use (default postgres://postgres:postgres@127.0.0.1:5432/postgres); needs psql,
# pgbench and python3. Buyers back to back on 24 connections, one unit each under a fresh
# Idempotency-Key, places raised to 64 so admission is not what limits.
#
# Everything runs on loopback, in a temporary directory and scratch databases, and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrina-target}"
pg=${VITRINA_BENCH_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
pg_base=${pg%/*}
stores=${FLASH_STORES:-sqlite postgres}
skus_list=${FLASH_SKUS:-5 1000}
clients=24
if [ -z "${FLASH_BINS:-}" ]; then
  cargo build --release --locked --quiet
  FLASH_BINS="this=$CARGO_TARGET_DIR/release/vitrina"
fi
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  psql -q "$pg" -c "DROP DATABASE IF EXISTS vitrina_flash WITH (FORCE)" -c "DROP DATABASE IF EXISTS vitrina_flash_ref WITH (FORCE)" \
    >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
token="flash-sale-admin-token-0123456789"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"

# serve BIN STORE: a fresh server on a fresh store.
serve() {
  local bin=$1 store=$2 args
  rm -rf "$work/data"
  if [ "$store" = postgres ]; then
    psql -q "$pg" -c "DROP DATABASE IF EXISTS vitrina_flash WITH (FORCE)" -c "CREATE DATABASE vitrina_flash" >/dev/null 2>&1
    printf 'store = "postgres"\n[[postgres.shards]]\nname = "shard1"\nprimary = "%s/vitrina_flash"\n' "$pg_base" >"$work/pg.toml"
    args=(--config "$work/pg.toml")
  else
    args=(--data-dir "$work/data")
  fi
  VITRINA_LOG_LEVEL=warn VITRINA_ADMIN_TOKEN=$token VITRINA_ADMISSION__SHOP_WRITES=64 VITRINA_ADMISSION__SHARD_WRITES=64 \
    "$bin" serve --listen "127.0.0.1:$port" "${args[@]}" >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -sf "$url/health/ready" >/dev/null && return; sleep 0.1; done
  cat "$work/server.log" >&2
  exit 1
}

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}

# The reference: an order as bare SQL, on the hottest possible rows, on the same server.
reference() {
  local skus=$1
  psql -q "$pg" -c "DROP DATABASE IF EXISTS vitrina_flash_ref WITH (FORCE)" -c "CREATE DATABASE vitrina_flash_ref" >/dev/null 2>&1
  psql -q "$pg_base/vitrina_flash_ref" >/dev/null <<SQL
CREATE TABLE stock (sku INT PRIMARY KEY, on_hand BIGINT NOT NULL, reserved BIGINT NOT NULL DEFAULT 0);
CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, sku INT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE order_lines (order_id BIGINT NOT NULL, sku INT NOT NULL, qty INT NOT NULL);
INSERT INTO stock SELECT g, 10000000 FROM generate_series(1, $skus) g;
SQL
  cat >"$work/order.sql" <<SQL
\set sku random(1, $skus)
BEGIN;
UPDATE stock SET reserved = reserved + 1 WHERE sku = :sku AND on_hand - reserved >= 1;
INSERT INTO orders (sku) VALUES (:sku) RETURNING id \gset
INSERT INTO order_lines VALUES (:id, :sku, 1);
COMMIT;
SQL
  pgbench -n -M prepared -c "$clients" -j 2 -T "$secs" -f "$work/order.sql" "$pg_base/vitrina_flash_ref" 2>/dev/null \
    | awk '/^tps/ {print $3}' >"$work/ref-$skus.tps"
  echo "ran pgbench, $skus SKUs" >&2
}

for skus in $skus_list; do
  [[ " $stores " == *" postgres "* ]] && reference "$skus"
  for entry in $FLASH_BINS; do
    name=${entry%%=*} bin=${entry#*=}
    for store in $stores; do
      serve "$bin" "$store"
      "$bin" bench --url "$url" --admin-token "$token" --quiet --scenario flash-sale --skus "$skus" --stock 10000000 \
        --connections "$clients" --retries 0 --duration "${secs}s" --report "$work/$name-$store-$skus.json" >/dev/null
      stop
      echo "ran $name on $store, $skus SKUs" >&2
    done
  done
done

python3 - "$work" "$FLASH_BINS" "$stores" "$skus_list" <<'PY'
import json, os, sys
work, bins, stores, skus_list = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
names = [b.split("=", 1)[0] for b in bins]
print("| build | store | SKUs | orders/s | p50 / p99 ms | oversell | vs pgbench | PostgreSQL vs embedded |")
print("|---|---|---|---|---|---|---|---|")
for skus in skus_list:
    ref_path = f"{work}/ref-{skus}.tps"
    ref = float(open(ref_path).read() or 0) if os.path.exists(ref_path) else 0
    if ref:
        print(f"| pgbench bare order | postgres | {skus} | {ref:,.0f} | | | 1.00 | |")
    for name in names:
        got = {}
        for store in stores:
            r = json.load(open(f"{work}/{name}-{store}-{skus}.json"))
            got[store] = r["goodput_rps"]
            lat = r["latency_admitted_ms"]
            vs_ref = f"{r['goodput_rps'] / ref:.2f}" if ref and store == "postgres" else ""
            vs_emb = f"{got['postgres'] / got['sqlite']:.2f}" if store == "postgres" and "sqlite" in got else ""
            print(f"| {name} | {store} | {skus} | {r['goodput_rps']:,.0f} | {lat['p50']:.1f} / {lat['p99']:.1f} | "
                  f"{r.get('oversell', '')} | {vs_ref} | {vs_emb} |")
if len(names) > 1:
    print()
    print("| store | SKUs | " + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |")
    print("|---|---|" + "---|" * (len(names) - 1))
    for skus in skus_list:
        for store in stores:
            base = json.load(open(f"{work}/{names[0]}-{store}-{skus}.json"))["goodput_rps"]
            ratios = [json.load(open(f"{work}/{n}-{store}-{skus}.json"))["goodput_rps"] / base for n in names[1:]]
            print(f"| {store} | {skus} | " + " | ".join(f"{x:.2f}" for x in ratios) + " |")
PY
