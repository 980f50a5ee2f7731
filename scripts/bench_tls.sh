#!/usr/bin/env bash
# TLS cost benchmark (issue 19): the same `keel bench` loads against a plain local cluster and
# a secure one (`run_cluster.sh start --secure`: peer mTLS, HTTPS for clients, a token on
# every request), alternating, ROUNDS times each. Prints one line per run and the medians.
#
#   scripts/bench_tls.sh                 # 3 rounds, 10 s per load
#   ROUNDS=5 DURATION=20s scripts/bench_tls.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
BIN="${KEEL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/keel}"
export KEEL_BIN="$BIN"
CLUSTER="$ROOT/scripts/run_cluster.sh"
RESULTS=$(mktemp /tmp/keel-bench-tls.XXXXXX)

cleanup() {
    "$CLUSTER" stop > /dev/null 2>&1 || true
    rm -rf "${KEEL_CLUSTER_DIR:-}"
}
trap cleanup EXIT

# load NAME ARGS...: one keel bench run; appends "mode name ops/s p50_ms p99_ms errors".
load() {
    local mode=$1 name=$2
    shift 2
    "$BIN" bench --duration "$DURATION" --json "$@" | python3 -c '
import json, sys
r = json.load(sys.stdin)
part = r["writes"] if r["writes"]["ops"] >= r["reads"]["ops"] else r["reads"]
ops = r["writes"]["ops_per_s"] + r["reads"]["ops_per_s"]
errors = sum(r["writes"]["errors"].values()) + sum(r["reads"]["errors"].values())
print(sys.argv[1], sys.argv[2], round(ops), part["latency_ms"]["p50"], part["latency_ms"]["p99"], errors)
' "$mode" "$name" | tee -a "$RESULTS"
}

run_mode() {
    local mode=$1
    export KEEL_CLUSTER_DIR
    KEEL_CLUSTER_DIR=$(mktemp -d /tmp/keel-bench-tls-cluster.XXXXXX)
    unset KEEL_CACERT KEEL_TOKEN_FILE
    if [[ "$mode" == tls ]]; then
        "$CLUSTER" start --secure > /dev/null
        export KEEL_CACERT="$KEEL_CLUSTER_DIR/certs/ca.pem" KEEL_TOKEN_FILE="$KEEL_CLUSTER_DIR/admin.token"
    else
        "$CLUSTER" start > /dev/null
    fi
    load "$mode" w1 --clients 1
    load "$mode" w64 --clients 64
    load "$mode" rw64 --clients 64 --ratio-reads 0.5
    "$CLUSTER" stop > /dev/null
    rm -rf "$KEEL_CLUSTER_DIR"
}

echo "mode load ops/s p50_ms p99_ms errors"
for round in $(seq 1 "$ROUNDS"); do
    run_mode plain
    run_mode tls
done
echo "medians (ops/s, p50 ms, p99 ms):"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for load in ["w1", "w64", "rw64"]:
    out = []
    for mode in ["plain", "tls"]:
        runs = [r for r in rows if r[0] == mode and r[1] == load]
        out.append(f"{mode} {statistics.median(float(r[2]) for r in runs):,.0f} ops/s, p50 {statistics.median(float(r[3]) for r in runs):.2f}, p99 {statistics.median(float(r[4]) for r in runs):.2f}")
    print(f"{load}: " + "; ".join(out))
PY
rm -f "$RESULTS"
