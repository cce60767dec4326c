#!/bin/bash
# The cost of metrics and tracing (host/benches/README.md, "Telemetry overhead"). Run from the
# repository root after `cargo build --release`. Usage: host/benches/observability-overhead.sh [pairs]
# Alternates runs of one release build with telemetry on (the defaults: METRICS_ENABLED=true,
# RUST_LOG=info; no OTLP endpoint) and compiled in but unused (METRICS_ENABLED=false,
# RUST_LOG=off: no recorder, no span or log built), and, when given as $2, a third binary (e.g.
# the build before the change) with the defaults.
# Each run: a fresh database, `wallex serve` with the three bundled projections live, then
# `wallex bench create --concurrency 64 --duration 10 --no-replays`. Besides the
# bench's figures it prints the server's CPU time per request (utime+stime from /proc over the
# run, divided by the requests answered): a fixed-work measure less noisy than throughput.
set -eu
pairs=${1:-3}
root=$(pwd)
port=3971
url=http://127.0.0.1:$port
tick=$(getconf CLK_TCK)
run() {
  local label=$1 metrics=$2 log=$3 binary=${4:-$root/target/release/wallex}
  local db=wallex_bench_overhead
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" 2>/dev/null
  env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_LISTEN=127.0.0.1:$port \
    METRICS_ENABLED=$metrics RUST_LOG=$log "$binary" serve > /tmp/overhead-server.log 2>&1 &
  local server=$!
  for _ in $(seq 1 600); do curl -sf $url/readyz > /dev/null && break; sleep 0.5; done
  local before
  before=$(awk '{print $14 + $15}' /proc/$server/stat)
  local out
  out=$("$root"/target/release/wallex bench create --url $url --concurrency ${CONCURRENCY:-64} --duration ${DURATION:-10} --no-replays 2>&1)
  local after
  after=$(awk '{print $14 + $15}' /proc/$server/stat)
  kill $server; wait $server 2>/dev/null || true
  local requests
  requests=$(echo "$out" | grep -oE '^[a-z]+: [0-9]+ requests' | grep -oE '[0-9]+' | paste -sd+ | bc)
  echo "$out" | grep -E '^[a-z]+: [0-9]+ requests|latency' | sed "s/^/[$label] /"
  echo "[$label] server CPU: $(( (after - before) * 1000000 / tick / requests )) µs per request ($requests requests)"
}
other=${2:-}
for _ in $(seq 1 "$pairs"); do
  run on true info
  run off false off
  if [ -n "$other" ]; then run other true info "$other"; fi
done
