#!/usr/bin/env bash
# Makes sure the services the test suite talks to run on loopback, installing them from the
# distribution when a fresh machine lacks them. Prints what it found or did.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do
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

ensure_nats() {
  if port_open 4222; then
    echo "service nats: listening on 127.0.0.1:4222"
    return
  fi
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "service nats: installing from the distribution"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nats-server >/dev/null
  fi
  local store=/var/lib/nats-server
  as_root mkdir -p "$store"
  as_root start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd "$store" -l /var/log/nats-server.log
  wait_port 4222 nats
  echo "service nats: started with JetStream"
}

ensure_rabbitmq() {
  if port_open 5672; then
    echo "service rabbitmq: listening on 127.0.0.1:5672"
    return
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "service rabbitmq: installing from the distribution"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  as_root rabbitmq-server -detached || true
  wait_port 5672 rabbitmq
  echo "service rabbitmq: started"
}

ensure_nats
ensure_rabbitmq

# The cache tests use this server and also start private ones (a node they kill, a cluster),
# so redis-server and redis-cli must be installed either way.
ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "service redis: installing from the distribution"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools >/dev/null
  fi
  if port_open 6379; then
    echo "service redis: listening on 127.0.0.1:6379"
    return
  fi
  redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes >/dev/null
  wait_port 6379 redis
  echo "service redis: started"
}

ensure_redis

# promtool checks the alert rules and scrape configuration in deploy/prometheus.
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    return
  fi
  echo "tool promtool: installing the distribution's prometheus package"
  as_root apt-get update -qq
  # Only the binaries are wanted: no service is started in a container without an init system.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

ensure_promtool

# The fleet drills (`vitrina cluster up`): Patroni over etcd runs the PostgreSQL nodes, HAProxy
# is the gateway, Prometheus, Alertmanager and the exporters monitor it. Installed only; each
# drill starts its own on loopback ports.
ensure_fleet_engines() {
  local missing=()
  command -v patroni >/dev/null 2>&1 || missing+=(patroni)
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  local tool
  for tool in prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter prometheus-redis-exporter; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ ${#missing[@]} = 0 ]; then
    echo "tools patroni, etcd, haproxy, alertmanager, exporters: installed"
    return
  fi
  echo "tools ${missing[*]}: installing from the distribution"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages may start their own instances on the standard ports; the drills need none.
  as_root service etcd stop >/dev/null 2>&1 || true
  local svc
  for svc in haproxy prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter prometheus-redis-exporter; do
    as_root service "$svc" stop >/dev/null 2>&1 || true
  done
}
ensure_fleet_engines
