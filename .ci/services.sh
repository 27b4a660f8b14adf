#!/usr/bin/env bash
# Makes sure the services the test suite talks to are up on loopback. Nothing in the suite
# needs one yet (the embedded store is self-contained); the PostgreSQL, Redis and broker
# issues extend this script with their install-and-start steps as their tests arrive.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for svc in "postgresql 5432" "redis 6379" "nats 4222" "rabbitmq 5672"; do
  set -- $svc
  if port_open "$2"; then
    echo "service $1: listening on 127.0.0.1:$2"
  else
    echo "service $1: not listening on 127.0.0.1:$2 (no test needs it yet)"
  fi
done
