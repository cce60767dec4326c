#!/usr/bin/env bash
# Activation and rebuild of two builds of wallex in one run, alternating A B A B (this machine's
# absolute figures drift between runs; the ratio within a pair is what counts): `bench deploy`
# (30 uploads of distinct builds of the read-model to a running server: answer and first event
# applied) and `bench rebuild` (1,000,000 events, blue/green rebuild of the read-model). Each
# build gets databases of its own (their migrations may differ). EVENTS=0 times activation only;
# DEPLOYS (default 30) sets the uploads per run: a p95 of 30 is their second slowest, so take 200
# to compare tails.
#
#   host/benches/before-after.sh BEFORE_BINARY AFTER_BINARY [PAIRS] [EVENTS] [DEPLOYS]
set -euo pipefail
before=$1 after=$2 pairs=${3:-2} events=${4:-1000000} deploys=${5:-30}
token=bench-token-0123456789abcdef
port=3933
deploy_run() { # label binary
  local db=wallex_bench_deploy_$1
  dropdb -h 127.0.0.1 -U postgres --if-exists "$db" >/dev/null 2>&1
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_LISTEN=127.0.0.1:$port \
    WALLEX_ADMIN_TOKEN=$token RUST_LOG=warn "$2" serve >/dev/null 2>&1 &
  local server=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.2; done
  "$2" bench deploy --url "http://127.0.0.1:$port" --token "$token" --deploys "$deploys" 2>/dev/null \
    | grep -E "answered|applied" | sed "s/^/  $1 deploy: /"
  kill $server; wait $server 2>/dev/null || true
}
rebuild_run() { # label binary
  "$2" bench rebuild --events "$events" \
    --database-url "postgres://postgres@127.0.0.1:5432/wallex_bench_rebuild_$1" 2>/dev/null \
    | grep -E "rebuild of" | sed "s/^/  $1 /"
}
for pair in $(seq 1 "$pairs"); do
  echo "pair $pair"
  deploy_run before "$before"; deploy_run after "$after"
  if [ "$events" -gt 0 ]; then
    rebuild_run before "$before"; rebuild_run after "$after"
  fi
done
