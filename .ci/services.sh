#!/usr/bin/env bash
# Makes sure the services the test suite talks to run on loopback, installing them from the
# distribution when a fresh machine lacks them. Prints what it found or did.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "service $name: still not listening on 127.0.0.1:$port" >&2
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

ensure_postgres() {
  if port_open 5432; then
    echo "service postgresql: listening on 127.0.0.1:5432"
    return
  fi
  local installed_now=0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "service postgresql: installing from the distribution"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
    installed_now=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 postgresql
  if [ "$installed_now" = 1 ]; then
    # A fresh cluster asks for a password on TCP; give the test role the one the URL carries.
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\""
  fi
  echo "service postgresql: started ($version)"
}

ensure_postgres

for svc in "redis 6379" "nats 4222" "rabbitmq 5672"; do
  set -- $svc
  if port_open "$2"; then
    echo "service $1: listening on 127.0.0.1:$2"
  else
    echo "service $1: not listening on 127.0.0.1:$2 (no test needs it yet)"
  fi
done
