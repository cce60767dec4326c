#!/bin/bash
# Drift checks and one-stream repairs at scale (host/benches/README.md, "Recovery"). Run from the
# repository root after `cargo build --release -p wallex`.
# Usage: host/benches/drift.sh [events] [repairs] [concurrency] [duration] [pairs]
# 1. `wallex bench rebuild --events N` preloads N WalletCreated events into wallex_bench_rebuild
#    and lets the read model apply them.
# 2. A server on that database runs the three bundled projections (ledger and audit replay the N
#    events first; the bench waits until every projection is caught up).
# 3. Drift check: `wallex recovery drift read-model --wait`, timed end to end, then its report.
# 4. One-stream repair: `repairs` repairs of random wallets one after the other over HTTP;
#    p50/p95/max of the whole request and of the repair's transaction (`millis`).
# 5. Write path during a drift check: `wallex bench system` (projections live), `pairs` times
#    without and with a drift check of the read model running the whole time, alternating; the
#    creates' p95 of each run, and their ratio.
set -eu
events=${1:-1000000}
repairs=${2:-200}
concurrency=${3:-16}
duration=${4:-10}
pairs=${5:-2}
root=$(pwd)
bin="$root"/target/release/wallex
db=wallex_bench_rebuild
port=3975
url=http://127.0.0.1:$port
token=bench-admin-token-0123456789
export WALLEX_URL=$url WALLEX_ADMIN_TOKEN=$token
"$bin" bench rebuild --events "$events" 2>&1 | grep -v INFO
components=$(mktemp -d)
wasm_dir=$(ls -d "$root"/target/wasm-guests/wasm32-wasip2/release)
cp "$wasm_dir"/wallex_projection_{read_model,ledger,audit}.wasm "$components"/
env DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db WALLEX_LISTEN=127.0.0.1:$port \
  WALLEX_PROJECTIONS_DIR="$components" RUST_LOG=warn "$bin" serve > /tmp/drift-bench-server.log 2>&1 &
server=$!
trap 'kill $server 2> /dev/null || true; rm -rf "$components"' EXIT
for _ in $(seq 1 600); do curl -sf $url/readyz > /dev/null && break; sleep 0.5; done
caught_up() {
  curl -sf $url/projections | python3 -c '
import json, sys
items = json.load(sys.stdin)["projections"]
sys.exit(0 if len(items) == 3 and all(p["caughtUp"] for p in items) else 1)'
}
echo "waiting for ledger and audit to replay the $events events…"
until caught_up; do sleep 1; done

# 3. The drift check.
start=$(date +%s.%N)
run=$("$bin" recovery drift read-model --wait --json)
end=$(date +%s.%N)
echo "drift check of the read model over $events events: $(echo "$end - $start" | bc) s"
id=$(echo "$run" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$bin" recovery run "$id"

# 4. One-stream repairs of random wallets.
psql -h 127.0.0.1 -U postgres -d $db -Atc \
  "SELECT id FROM projection_read_model.wallets ORDER BY random() LIMIT $repairs" > /tmp/drift-bench-ids
python3 - "$url" "$token" /tmp/drift-bench-ids <<'PY'
import json, sys, time, urllib.request
url, token, ids = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().split()
total, tx = [], []
for wallet in ids:
    request = urllib.request.Request(
        f"{url}/admin/recovery/repair/read-model?stream=wallet-{wallet}", method="POST",
        headers={"authorization": f"Bearer {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        body = json.load(response)
    total.append((time.perf_counter() - start) * 1000)
    tx.append(body["stream"]["millis"])
    assert body["stream"]["rowsWritten"] == 1, body
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
for name, values in (("request", total), ("transaction", tx)):
    print(f"one-stream repair ({len(values)} wallets) {name}: p50 {pct(values, 50):.1f} ms, "
          f"p95 {pct(values, 95):.1f} ms, max {max(values):.1f} ms")
PY

# 5. The write path with and without a drift check running.
# `bench system` prints "creates: N in T s = R/s" and "  latency p50 … ms  p95 X ms  …".
p95_of() { tee -a /tmp/drift-bench-system.log | sed -n 's/^  latency .*p95 \([0-9.]*\) ms.*/\1/p' | head -1; }
: > /tmp/drift-bench-system.log
for pair in $(seq 1 "$pairs"); do
  without=$("$bin" bench system --concurrency "$concurrency" --duration "$duration" | p95_of)
  until caught_up; do sleep 1; done
  "$bin" recovery drift read-model --json > /tmp/drift-bench-run
  sleep 1
  with=$("$bin" bench system --concurrency "$concurrency" --duration "$duration" | p95_of)
  drift_id=$(python3 -c 'import json; print(json.load(open("/tmp/drift-bench-run"))["id"])')
  state=$("$bin" recovery run "$drift_id" --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["outcome"], (r.get("progress") or {}).get("phase", "-"))')
  echo "pair $pair: creates p95 without a drift check $without ms, with one $with ms (ratio $(echo "scale=2; $with / $without" | bc)); the check was then: $state"
  until [ "$("$bin" recovery run "$drift_id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["outcome"])')" != running ]; do sleep 1; done
  until caught_up; do sleep 1; done
done
echo "bench system runs (without, with, …):"
grep '^creates:' /tmp/drift-bench-system.log
