#!/usr/bin/env bash
# The fleet figures of docs/benchmarks.md, on a local fleet (`vitrina cluster up`: 2 shards of a
# Patroni leader and a replica, Redis Cluster 3+3, 3 instances behind HAProxy):
#   1. closed-loop throughput of browse and flash-sale through the gateway with 1, 2 and 3
#      instances in rotation, as ratios to one instance without the gateway, same run;
#   2. the rolling restart's duration under browse load, and what the load saw;
#   3. the write outage of a shard-leader failover (first refused order to first accepted
#      one, through the gateway), over DRILLS drills.
#
#   bash benches/fleet.sh [SECONDS_PER_RUN] [DRILLS]     # defaults 15 and 5; needs python3
#
# FLEET_BIN runs a vitrina built elsewhere instead of building this checkout. Everything runs on
# loopback in a temporary directory and is taken down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
drills=${2:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrina-target}"
if [ -n "${FLEET_BIN:-}" ]; then
  bin=$FLEET_BIN
else
  cargo build --release --locked --quiet -p vitrina
  bin="$CARGO_TARGET_DIR/release/vitrina"
fi
dir=$(mktemp -d)
chmod 755 "$dir" # the postgres user must reach the nodes below it
trap '"$bin" cluster down --purge --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$bin" cluster up --dir "$dir" --shards 2 --replicas 1 --instances 3 --redis-cluster
field() { python3 -c "import json,sys; d=json.load(open('$dir/cluster.json')); print(eval(sys.argv[1]))" "$1"; }
url=$(field 'd["url"]')
token=$(field 'd["admin_token"]')
direct=$(field 'd["instances"][0]["url"]')
export VITRINA_ADMIN_TOKEN=$token

gateway() { python3 - "$dir/run/gateway.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((sys.argv[2] + "\n").encode())
print(s.recv(65536).decode().strip())
PY
}
rotation() { # the first $1 instances in rotation, the others in maintenance
  for i in 1 2 3; do
    if [ "$i" -le "$1" ]; then gateway "set server instances/app$i state ready" >/dev/null
    else gateway "set server instances/app$i state maint" >/dev/null; fi
  done
  sleep 3 # two health checks
}
run() { # label url scenario-args...
  local label=$1 target=$2; shift 2
  "$bin" bench --url "$target" --duration "${secs}s" --connections 32 --quiet --report "$dir/$label.json" "$@" >/dev/null
}

echo "== throughput (closed loop, 32 connections, ${secs}s each)"
for scenario in browse flash-sale; do
  args=(--scenario "$scenario")
  [ "$scenario" = flash-sale ] && args+=(--skus 5 --stock 10000000 --retries 0)
  rotation 3
  run "$scenario-direct" "$direct" "${args[@]}"
  for n in 1 2 3; do
    rotation "$n"
    run "$scenario-gw$n" "$url" "${args[@]}"
  done
done
rotation 3
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
# Goodput: answers that served the buyer (a flash sale's admission refusals are not).
print(f"{'run':<18} {'rps':>8} {'goodput':>8} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6}  refusals and errors")
for scenario in ["browse", "flash-sale"]:
    ref = json.load(open(f"{d}/{scenario}-direct.json"))
    for label in ["direct", "gw1", "gw2", "gw3"]:
        r = json.load(open(f"{d}/{scenario}-{label}.json"))
        other = {k: v for k, v in {**r["answers"], **r["errors"]}.items() if k not in ("ok", "created")}
        print(f"{scenario + ' ' + label:<18} {r['throughput_rps']:>8.0f} {r['goodput_rps']:>8.0f} "
              f"{r['latency_admitted_ms']['p50']:>7.2f} {r['latency_admitted_ms']['p99']:>7.2f} "
              f"{r['goodput_rps'] / ref['goodput_rps']:>6.2f}  {other}")
PY

echo "== rolling restart under browse load"
"$bin" bench --url "$url" --scenario browse --duration 60s --connections 16 --quiet --report "$dir/rolling.json" >/dev/null &
load=$!
sleep 3
t0=$(date +%s.%N)
"$bin" cluster restart --rolling --dir "$dir" | tail -1
t1=$(date +%s.%N)
wait $load
python3 - "$dir" "$t0" "$t1" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/rolling.json"))
print(f"rolling restart took {float(sys.argv[3]) - float(sys.argv[2]):.1f} s; the load saw "
      f"answers {dict(r['answers'])}, errors {dict(r['errors'])}")
PY

echo "== failover drills"
python3 - "$bin" "$dir" "$url" "$token" "$drills" <<'PY'
import json, subprocess, sys, threading, time, urllib.request, urllib.error
binary, d, url, token, drills = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

def call(method, path, body=None, key=None, idem=None):
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("content-type", "application/json")
    if key: req.add_header("authorization", f"Bearer {key}")
    if idem: req.add_header("idempotency-key", idem)
    try:
        with urllib.request.urlopen(req, timeout=10) as r: return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e: return e.code, None
    except Exception: return 0, None

def cluster(*args):
    return subprocess.run([binary, "cluster", *args, "--dir", d], check=True, capture_output=True, text=True).stdout

def status(): return json.loads(cluster("status", "--json"))

shop = "fleet-drill"
_, made = call("POST", "/shops", {"id": shop, "name": "Drill", "currency": "USD"}, key=token)
key = made["api_key"]
call("PUT", f"/shops/{shop}/products/A", {"name": "A", "category": "c", "price": {"amount": 100, "currency": "USD"}}, key=key)
call("PUT", f"/shops/{shop}/stock/A", {"on_hand": 10_000_000}, key=key)
layout = json.load(open(f"{d}/cluster.json"))["layout"]["postgres"]
def shard_of_shop():
    for n in layout:
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(n["port"]), "-U", "vitrina", "-d", "vitrina", "-tAc",
                              f"SELECT count(*) FROM shops WHERE id = '{shop}'"], capture_output=True, text=True).stdout.strip()
        if out == "1": return n["shard"]
shard = shard_of_shop()
outages = []
for i in range(drills):
    log, stop, n = [], threading.Event(), [0]
    def buyer(b):
        while not stop.is_set():
            n[0] += 1
            s, _ = call("POST", f"/shops/{shop}/orders", {"customer_id": "c", "lines": [{"sku": "A", "qty": 1}]}, key=key, idem=f"d{i}-{b}-{n[0]}")
            log.append((time.monotonic(), s))
            time.sleep(0.01)
    threads = [threading.Thread(target=buyer, args=(b,)) for b in range(4)]
    for t in threads: t.start()
    time.sleep(1)
    leader = next(k for k, v in status()["postgres"][shard].items() if v["role"] == "leader")
    cluster("kill", leader)
    killed = time.monotonic()
    def refused(): return [t for t, s in list(log) if t > killed and s != 201]
    def resumed(): return [t for t, s in list(log) if refused() and t > min(refused()) and s == 201]
    while not resumed() and time.monotonic() - killed < 60:
        time.sleep(0.05)
    stop.set()
    for t in threads: t.join()
    kinds = sorted({s for t, s in log if t > killed and s != 201})
    if not resumed():
        print(f"drill {i + 1}: {leader} killed; writes had not resumed after 60 s (answers: {kinds}); status {status()['postgres'][shard]}")
        break
    outage = min(resumed()) - min(refused())
    outages.append(outage)
    print(f"drill {i + 1}: {leader} killed; writes refused for {outage:.1f} s (answers meanwhile: {kinds})")
    cluster("start", leader)
    # The next drill needs a replica that streams again, not only one that runs.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        node = status()["postgres"][shard][leader]
        if node["role"] == "replica" and node["lag_bytes"] is not None and node["lag_bytes"] < 1 << 20: break
        time.sleep(0.5)
outages.sort()
if outages: print(f"write outage over {drills} drills: min {outages[0]:.1f} s, median {outages[len(outages) // 2]:.1f} s, max {outages[-1]:.1f} s")
PY
