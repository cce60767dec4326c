#!/usr/bin/env bash
# From `wallex projections new` to live, as a new user runs it, for Rust, Python and JavaScript,
# against one release server with the default settings and a preloaded log: the commands
# `new`, `test` (which builds), `deploy --dry-run`, `deploy`, then the wait until the projection
# has caught up with the log. Rust builds in a fresh target directory (its dependencies compiled
# for wasm32 from the local crates.io cache: the cold first build); the JavaScript project's
# `npm install` (jco and componentize-js from the registry) is timed apart, as a tool install.
#
#   cargo build --release && host/benches/new-to-live.sh [SECONDS_OF_PRELOAD]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=$root/target/release/wallex
preload=${1:-10}
db=wallex_bench_new_to_live
port=3932
token=bench-token-0123456789abcdef
url=http://127.0.0.1:$port
work=$(mktemp -d)
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_URL=$url WALLEX_ADMIN_TOKEN=$token
export RUST_LOG=warn
ms() { date +%s%3N; }
dropdb -h 127.0.0.1 -U postgres --if-exists "$db" >/dev/null
WALLEX_LISTEN=127.0.0.1:$port RUST_LOG=info,sqlx=warn "$bin" serve >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
until curl -sf "$url/readyz" >/dev/null; do sleep 0.2; done
"$bin" bench create --url "$url" --concurrency 16 --duration "$preload" >/dev/null 2>&1 || true
events=$(psql -h 127.0.0.1 -U postgres -tAc "select count(*) from outbox" "$db")
last=$(psql -h 127.0.0.1 -U postgres -tAc "select max(global_position) from outbox" "$db")
echo "preloaded $events events"
printf '%-11s %8s %9s %10s %10s %9s %9s %10s\n' language new_ms test_ms dry_run_ms deploy_ms live_ms total_s install_s
for lang in rust python javascript; do
  name=walk-${lang:0:2}
  dir=$work/$lang
  install=0
  t0=$(ms); "$bin" projections new "$name" --lang "$lang" --dir "$dir" >/dev/null; t1=$(ms)
  if [ "$lang" = javascript ]; then
    i0=$(ms); (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null); i1=$(ms)
    install=$((i1 - i0))
  fi
  if [ "$lang" = rust ]; then export CARGO_TARGET_DIR=$work/rust-target; else unset CARGO_TARGET_DIR; fi
  t2=$(ms); "$bin" projections test "$dir" >/dev/null 2>&1; t3=$(ms)
  "$bin" projections deploy "$dir/target/projection.wasm" --dry-run >"$work/dry-$lang.txt" 2>/dev/null; t4=$(ms)
  "$bin" projections deploy "$dir/target/projection.wasm" >/dev/null 2>&1; t5=$(ms)
  for _ in $(seq 1 12000); do
    at=$("$bin" projections status "$name" --json | python3 -c 'import json,sys; print((json.load(sys.stdin).get("checkpoint") or {}).get("position", 0))')
    [ "$at" -ge "$last" ] && break
    sleep 0.05
  done
  t6=$(ms)
  printf '%-11s %8d %9d %10d %10d %9d %9.1f %10.1f\n' "$lang" $((t1 - t0)) $((t3 - t2)) $((t4 - t3)) \
    $((t5 - t4)) $((t6 - t5)) "$(echo "($t6 - $t0 - $install) / 1000" | bc -l)" "$(echo "$install / 1000" | bc -l)"
  head -1 "$work/dry-$lang.txt" | sed 's/^/    /'
done
