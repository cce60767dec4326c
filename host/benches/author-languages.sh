#!/usr/bin/env bash
# The same projection (the `wallex projections new` project: one row per wallet) in Rust (on the
# SDK), Python and JavaScript, measured in one run against one release server with the default settings:
# component size, build time, `projections test` warm, deploy answered, active (first compile),
# compiled bytes and server RSS, catch-up events/s over the preloaded log, and the load from the
# stored artifact after a restart.
#
#   cargo build --release && host/benches/author-languages.sh [SECONDS_OF_PRELOAD]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=$root/target/release/wallex
preload=${1:-15}
db=wallex_bench_authoring
port=3931
token=bench-token-0123456789abcdef
url=http://127.0.0.1:$port
work=$(mktemp -d)
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_URL=$url WALLEX_ADMIN_TOKEN=$token
export CARGO_TARGET_DIR=$root/target/wasm-guests RUST_LOG=warn
ms() { date +%s%3N; }
dropdb -h 127.0.0.1 -U postgres --if-exists "$db" >/dev/null
start_server() {
  WALLEX_LISTEN=127.0.0.1:$port RUST_LOG=info,sqlx=warn "$bin" serve >"$work/server.log" 2>&1 &
  server=$!
  until curl -sf "$url/readyz" >/dev/null; do sleep 0.2; done
}
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$server/status"; }
start_server
"$bin" bench create --url "$url" --concurrency 16 --duration "$preload" >/dev/null 2>&1 || true
events=$(psql -h 127.0.0.1 -U postgres -tAc "select count(*) from outbox" "$db")
echo "preloaded $events events; server RSS $(rss) MiB"

last=$(psql -h 127.0.0.1 -U postgres -tAc "select max(global_position) from outbox" "$db")
"$bin" projections new wallets-rs --dir "$work/rust" >/dev/null
"$bin" projections new wallets-py --lang python --dir "$work/python" >/dev/null
"$bin" projections new wallets-js --lang javascript --dir "$work/javascript" >/dev/null
(cd "$work/javascript" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
printf '%-11s %10s %9s %9s %10s %9s %11s %10s %9s\n' language bytes build_ms test_ms answered_ms active_ms compiled_MiB rss_MiB events/s
for lang in rust python javascript; do
  case $lang in rust) name=wallets-rs ;; python) name=wallets-py ;; *) name=wallets-js ;; esac
  dir=$work/$lang; file=$dir/target/projection.wasm
  t0=$(ms); "$bin" projections build "$dir" >/dev/null 2>&1; t1=$(ms)
  "$bin" projections test "$dir" >/dev/null 2>&1          # compiles and caches the component
  t2=$(ms); "$bin" projections test "$dir" >/dev/null; t3=$(ms)   # warm: 3 cases
  before=$(rss)
  a0=$(ms)
  code=$(curl -s -o "$work/answer.json" -w '%{http_code}' -X PUT "$url/admin/projections/$name" \
    -H "Authorization: Bearer $token" -H 'content-type: application/wasm' --data-binary "@$file")
  a1=$(ms)
  for _ in $(seq 1 1200); do
    "$bin" projections status "$name" --json 2>/dev/null | grep -q '"compiledBytes"' && break
    sleep 0.05
  done
  a2=$(ms)
  for _ in $(seq 1 6000); do
    at=$("$bin" projections status "$name" --json | python3 -c 'import json,sys; print((json.load(sys.stdin).get("checkpoint") or {}).get("position", 0))')
    [ "$at" -ge "$last" ] && break
    sleep 0.05
  done
  a3=$(ms)
  compiled=$("$bin" projections status "$name" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["runningHere"]["compiledBytes"]/1048576,1))')
  rate=$(( events * 1000 / (a3 - a2 + 1) ))
  printf '%-11s %10s %9s %9s %7s(%s) %9s %11s %5s→%-4s %9s\n' "$lang" "$(stat -c %s "$file")" \
    "$((t1 - t0))" "$((t3 - t2))" "$((a1 - a0))" "$code" "$((a2 - a0))" "$compiled" "$before" "$(rss)" "$rate"
done
kill "$server"; wait "$server" 2>/dev/null || true
start_server
echo "after a restart (loaded from the stored artifacts, no compile):"
grep -E 'loaded from its stored compiled artifact|component compiled' "$work/server.log" \
  | sed -E 's/.*(loaded from its stored compiled artifact|component compiled).*origin=([^ ]+).*(load_ms|compile_ms)=([0-9]+).*/  \2 \1 \3=\4/'
echo "server RSS after restart: $(rss) MiB; compiles in the whole cluster: $(psql -h 127.0.0.1 -U postgres -tAc 'select count(*) from projection_artifacts' "$db")"
kill "$server"; wait "$server" 2>/dev/null || true
dropdb -h 127.0.0.1 -U postgres "$db"
rm -rf "$work"
