#!/usr/bin/env bash
# Fuzzes the running API against its own OpenAPI document with schemathesis (from the Python
# package index, pinned, in a private virtualenv): a fresh server with its demo data, three
# times: with the admin token, with the demo shop's key, and with no credentials, every phase
# (examples, coverage, fuzzing, stateful) and every default check. Fails on any server error,
# response-schema violation, undocumented status code or content type, schema-valid request
# refused or invalid one taken; .ci/schemathesis.toml lists the few rules the document cannot
# state, each with why.
#
#   bash .ci/schemathesis.sh [BIN]      # default: the debug build cargo test made
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrina-target}"
bin=${1:-$CARGO_TARGET_DIR/debug/vitrina}
venv="$HOME/.cache/vitrina-schemathesis"
version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
admin="fuzz-admin-token-$(date +%s)-0123456789"
VITRINA_LOG_LEVEL=warn VITRINA_ADMIN_TOKEN=$admin "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" \
  >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 150); do curl -sf "$url/health/ready" >/dev/null && break; sleep 0.2; done
curl -sf "$url/health/ready" >/dev/null || { cat "$work/server.log" >&2; exit 1; }
shop_key=$(cat "$work/data/demo-shop.key")

run() {
  local name=$1
  shift
  echo "== schemathesis, $name"
  SCHEMATHESIS_HOOKS="$PWD/.ci/schemathesis_hooks.py" timeout 600 "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml \
    run "$url/openapi.json" --seed 1 --max-failures 20 "$@"
}
status=0
run "admin token" -H "Authorization: Bearer $admin" || status=1
run "the demo shop's key" -H "Authorization: Bearer $shop_key" || status=1
run "no credentials" || status=1
if grep -q "panicked" "$work/server.log"; then
  echo "the server panicked:" >&2
  grep -A3 "panicked" "$work/server.log" >&2
  status=1
fi
exit $status
