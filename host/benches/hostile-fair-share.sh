#!/bin/bash
# The read model's lag and wallet creation with four hostile components deployed
# (host/benches/README.md, "Fair share under hostile components"). Run from the repository root
# after `cargo build --release`. Usage: host/benches/hostile-fair-share.sh <label> <hostile: 0|1>
# The hostile run deploys, beside the bundled three, two components that spin to their 2 s
# deadline on every event (retried without end) and two that spin on one event in 100 under
# `on_poison = skip`. During `wallex bench create --concurrency 8 --duration 20 --no-replays`, the
# lag probe of `wallex bench projections --lag-url` creates a wallet and reads it back from the
# read model with `minPosition`, one probe after the other.
set -eu
label=$1; hostile=$2; shift 2
root=$(pwd)
wasm=$root/target/wasm-guests/wasm32-wasip2/release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$wasm"/wallex_projection_{read_model,ledger,audit}.wasm "$dir"/
if [ "$hostile" = 1 ]; then
  cp "$wasm"/wallex_projection_hostile_spin_{all,all_2,some,some_2}.wasm "$dir"/
fi
overrides=hostile-spin-all.max_retries=1000000,hostile-spin-all-2.max_retries=1000000
overrides=$overrides,hostile-spin-some.on_poison=skip,hostile-spin-some-2.on_poison=skip
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS wallex_bench_fair" 2>/dev/null
env DATABASE_URL=postgres://postgres@127.0.0.1:5432/wallex_bench_fair WALLEX_LISTEN=127.0.0.1:3951 \
  WALLEX_PROJECTIONS_DIR="$dir" RUST_LOG=warn PROJECTOR_OVERRIDES="$overrides" "$@" \
  "$root"/target/release/wallex serve > "$dir/server.log" 2>&1 &
server=$!
sleep 3
"$root"/target/release/wallex bench create --url http://127.0.0.1:3951 --concurrency 8 \
  --duration 20 --no-replays > "$dir/create.txt" 2>&1 &
load=$!
sleep 2
"$root"/target/release/wallex bench projections --lag-url http://127.0.0.1:3951 --lag-samples 1500 \
  2>&1 | sed "s/^/[$label] /"
wait $load
grep -E "creates|p95" "$dir/create.txt" | sed "s/^/[$label] /"
if [ "$hostile" = 1 ]; then
  curl -s http://127.0.0.1:3951/metrics | grep -E '^projector_(guest_call_duration_seconds_sum|quarantined|dead_letters_total)\{projection="hostile' \
    | sed "s/^/[$label] /"
fi
kill $server; wait $server 2>/dev/null || true
