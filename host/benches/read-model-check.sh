#!/bin/bash
# The read-model check over a million wallets (host/benches/README.md, "Recovery"). Run from the
# repository root after `cargo build --release`.
# Usage: host/benches/read-model-check.sh [events] [chunk]
# 1. `wallex bench rebuild --events N` preloads N WalletCreated events into wallex_bench_rebuild
#    and lets the read-model apply them (it then rebuilds it once: the live read model is full).
# 2. The write model is filled from the read model (bench data: `bench rebuild` seeds events
#    only), so that the two agree, and one row is edited in the read model's tables.
# 3. A server on that database runs POST /admin/recovery/read-model-check, timed end to end, and
#    `wallex recovery run` prints what it found (1 row different).
set -eu
events=${1:-1000000}
chunk=${2:-10000}
root=$(pwd)
db=wallex_bench_rebuild
url=http://127.0.0.1:3974
token=bench-admin-token-0123456789
"$root"/target/release/wallex bench rebuild --events "$events" 2>&1 | grep -v INFO
psql -q -h 127.0.0.1 -U postgres -d $db <<'SQL'
TRUNCATE wallets;
INSERT INTO wallets (id, owner_id, balance, currency, version, created_at, updated_at)
  SELECT id, owner, balance, currency, version, created_at, updated_at
  FROM projection_read_model.wallets;
ANALYZE wallets;
SQL
namespace=$(psql -h 127.0.0.1 -U postgres -d $db -Atc \
  "SELECT namespace FROM projector_checkpoints WHERE projection = 'read-model'")
psql -q -h 127.0.0.1 -U postgres -d $db -c \
  "UPDATE $namespace.wallets SET balance = balance + 1 WHERE id = (SELECT min(id) FROM $namespace.wallets)"
env DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_LISTEN=127.0.0.1:3974 \
  WALLEX_ADMIN_TOKEN=$token RECOVERY_CHECK_MARGIN_SECS=0 RECOVERY_CHECK_CHUNK="$chunk" RUST_LOG=warn \
  "$root"/target/release/wallex serve > /tmp/read-model-check-server.log 2>&1 &
server=$!
trap 'kill $server 2> /dev/null || true' EXIT
for _ in $(seq 1 600); do curl -sf $url/readyz > /dev/null && break; sleep 0.5; done
start=$(date +%s.%N)
run=$(curl -sf -X POST -H "authorization: Bearer $token" $url/admin/recovery/read-model-check)
end=$(date +%s.%N)
echo "read-model check of $events wallets (chunk $chunk): $(echo "$end - $start" | bc) s"
id=$(echo "$run" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
WALLEX_URL=$url WALLEX_ADMIN_TOKEN=$token "$root"/target/release/wallex recovery run "$id"
