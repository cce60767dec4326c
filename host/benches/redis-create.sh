#!/bin/bash
# Wallet creation and replays with and without Redis (host/benches/README.md, "Redis"). Run from
# the repository root after `cargo build --release`.
# Usage: host/benches/redis-create.sh [pairs]
# Alternates `wallex serve` without Redis and with REDIS_URL (a redis-server of its own on port
# 6390, started and stopped here), each against a fresh database with the three projections
# live, under `wallex bench create --concurrency 64 --duration 10` (creates, then replays).
set -eu
pairs=${1:-2}
root=$(pwd)
port=3972
url=http://127.0.0.1:$port
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes > /dev/null
trap 'redis-cli -p 6390 shutdown nosave > /dev/null 2>&1 || true' EXIT
run() {
  local label=$1 redis=$2
  local db=wallex_bench_redis
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" 2>/dev/null
  redis-cli -p 6390 flushall > /dev/null
  env DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_LISTEN=127.0.0.1:$port \
    REDIS_URL=$redis RUST_LOG=warn "$root"/target/release/wallex serve > /tmp/redis-bench-server.log 2>&1 &
  local server=$!
  for _ in $(seq 1 600); do curl -sf $url/readyz > /dev/null && break; sleep 0.5; done
  "$root"/target/release/wallex bench create --url $url --concurrency 64 --duration 10 2>&1 \
    | grep -E '^[a-z]+: [0-9]+ requests|latency' | sed "s/^/[$label] /"
  curl -s $url/metrics | grep -E '^redis_(replay_cache|lock|errors)_total' | sed "s/^/[$label] /" || true
  kill $server; wait $server 2>/dev/null || true
}
for _ in $(seq 1 "$pairs"); do
  run without ""
  run with redis://127.0.0.1:6390
done
