#!/bin/bash
# Wallet-creation latency with and without a hostile component spinning in the background
# (host/benches/README.md, "Cost of a hostile component"). Run from the repository root after
# `cargo build --release`. Usage: host/benches/hostile-p95.sh <label> <hostile: 0|1> [ENV=value...]
# The hostile run deploys the bundled three plus projections/fixtures/hostile-loop, lets it spin on
# a poison event (retried up to 1000 times under the default backoff), and runs
# `wallex bench create --concurrency 8 --duration 20 --no-replays` against the server.
set -eu
label=$1; hostile=$2; shift 2
root=$(pwd)
wasm=$root/target/wasm-guests/wasm32-wasip2/release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$wasm"/wallex_projection_{read_model,ledger,audit}.wasm "$dir"/
[ "$hostile" = 1 ] && cp "$wasm"/wallex_projection_hostile_loop.wasm "$dir"/
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS wallex_bench_hostile" 2>/dev/null
env DATABASE_URL=postgres://postgres@127.0.0.1:5432/wallex_bench_hostile WALLEX_LISTEN=127.0.0.1:3950 \
  WALLEX_PROJECTIONS_DIR="$dir" RUST_LOG=warn PROJECTOR_OVERRIDES="hostile-loop.max_retries=1000" "$@" \
  "$root"/target/release/wallex serve > "$dir/server.log" 2>&1 &
server=$!
sleep 3
if [ "$hostile" = 1 ]; then
  curl -s -o /dev/null -X POST http://127.0.0.1:3950/wallets -H 'content-type: application/json' \
    -d '{"walletId":"poison-bench","ownerId":"bench","initialBalance":1}'
  sleep 3
fi
"$root"/target/release/wallex bench create --url http://127.0.0.1:3950 --concurrency 8 --duration 20 \
  --no-replays 2>&1 | grep -E "creates|p95" | sed "s/^/[$label] /"
kill $server; wait $server 2>/dev/null || true
