#!/bin/sh
# Patroni runs this once per shard, on the node that initialises it, after initdb and before any
# replica clones it; $1 is the superuser's connection string. It creates the service's role and
# database (what `vitrina cluster` does with ensure_database) and a read-only role for the
# postgres exporters.
set -eu
psql "$1" -v ON_ERROR_STOP=1 \
    --set=app_password="$VITRINA_DB_PASSWORD" \
    --set=monitor_password="$MONITOR_DB_PASSWORD" <<'SQL'
CREATE ROLE vitrina LOGIN PASSWORD :'app_password';
CREATE DATABASE vitrina OWNER vitrina;
CREATE ROLE monitor LOGIN PASSWORD :'monitor_password' IN ROLE pg_monitor;
SQL
