#!/bin/bash
# Wallet creation with the projections live: PostgreSQL as the event store against KurrentDB (the
# in-process-protocol stub, `wallex-kurrentdb-stub`) with Redis on (host/benches/README.md,
# "KurrentDB as the event store").
# Run from the repository root after `cargo build --release -p wallex -p wallex-kurrentdb-stub`.
# Usage: host/benches/kurrentdb-system.sh [pairs] [concurrency]
# Alternates `wallex serve` with EVENT_STORE=postgres and with EVENT_STORE=kurrentdb + REDIS_URL,
# each against a fresh database (and a fresh stub and Redis), under `wallex bench system
# --duration 10 --pgbench-url …`: creates/s, latency, the projections' lag and catch-up, and
# pgbench's 4-insert ceiling measured in the same run.
set -eu
pairs=${1:-1}
concurrency=${2:-64}
root=$(pwd)
port=3973
url=http://127.0.0.1:$port
stub_addr=127.0.0.1:2193
redis-server --port 6391 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes > /dev/null
stub=""
cleanup() {
  redis-cli -p 6391 shutdown nosave > /dev/null 2>&1 || true
  if [ -n "$stub" ]; then kill "$stub" 2> /dev/null || true; fi
}
trap cleanup EXIT
run() {
  local label=$1 stub_args=$2
  shift 2
  local db=wallex_bench_kdb
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" 2> /dev/null
  redis-cli -p 6391 flushall > /dev/null
  if [ -n "$stub" ]; then kill "$stub"; wait "$stub" 2> /dev/null || true; fi
  # shellcheck disable=SC2086
  "$root"/target/release/wallex-kurrentdb-stub --listen $stub_addr $stub_args > /tmp/kdb-bench-stub.log 2>&1 &
  stub=$!
  sleep 0.5
  env DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_LISTEN=127.0.0.1:$port \
    RUST_LOG=warn "$@" "$root"/target/release/wallex serve > /tmp/kdb-bench-server.log 2>&1 &
  local server=$!
  for _ in $(seq 1 600); do curl -sf $url/readyz > /dev/null && break; sleep 0.5; done
  "$root"/target/release/wallex bench system --url $url --concurrency "$concurrency" --duration 10 \
    --pgbench-url postgres://postgres@127.0.0.1:5432/wallex_pgbench 2>&1 | sed "s/^/[$label] /"
  curl -s $url/metrics | grep -E '^(kurrentdb_[a-z_]+|redis_errors_total)' | sed "s/^/[$label] /" || true
  kill $server
  wait $server 2> /dev/null || true
}
for _ in $(seq 1 "$pairs"); do
  run postgres "" EVENT_STORE=postgres
  run kurrentdb+redis "" EVENT_STORE=kurrentdb "KURRENTDB_CONNECTION_STRING=kurrentdb://$stub_addr?tls=false" \
    REDIS_URL=redis://127.0.0.1:6391
done
