#!/usr/bin/env bash
# Side-by-side `keel bench`: two cluster setups, alternating, ROUNDS times each, the same three
# loads on each (1 client writing; 64 writing; 64, half reading). Prints every run and the
# medians. A setup is `plain` or `tls` (`run_cluster.sh start --secure`: peer mTLS, HTTPS,
# a token on every request), optionally `@BINARY` to run another keel build:
#
#   scripts/bench_pair.sh plain tls                      # what TLS and tokens cost
#   scripts/bench_pair.sh plain@/tmp/old/keel plain      # a change, before and after
#   ROUNDS=5 DURATION=20s scripts/bench_pair.sh plain tls
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
DEFAULT_BIN="${KEEL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/keel}"
CLUSTER="$ROOT/scripts/run_cluster.sh"
RESULTS=$(mktemp /tmp/keel-bench-pair.XXXXXX)
(( $# == 2 )) || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

cleanup() {
    "$CLUSTER" stop > /dev/null 2>&1 || true
    rm -rf "${KEEL_CLUSTER_DIR:-}"
}
trap cleanup EXIT

# load SETUP NAME ARGS...: one keel bench run; appends "setup name ops/s p50_ms p99_ms errors".
load() {
    local setup=$1 name=$2
    shift 2
    "$KEEL_BIN" bench --duration "$DURATION" --json "$@" | python3 -c '
import json, sys
r = json.load(sys.stdin)
part = r["writes"] if r["writes"]["ops"] >= r["reads"]["ops"] else r["reads"]
ops = r["writes"]["ops_per_s"] + r["reads"]["ops_per_s"]
errors = sum(r["writes"]["errors"].values()) + sum(r["reads"]["errors"].values())
print(sys.argv[1], sys.argv[2], round(ops), part["latency_ms"]["p50"], part["latency_ms"]["p99"], errors)
' "$setup" "$name" | tee -a "$RESULTS"
}

run_setup() {
    local setup=$1 mode=${1%%@*}
    export KEEL_BIN=$DEFAULT_BIN KEEL_CLUSTER_DIR
    if [[ "$setup" == *@* ]]; then KEEL_BIN=${setup#*@}; fi
    KEEL_CLUSTER_DIR=$(mktemp -d /tmp/keel-bench-pair-cluster.XXXXXX)
    unset KEEL_CACERT KEEL_TOKEN_FILE
    case "$mode" in
        tls)
            "$CLUSTER" start --secure > /dev/null
            export KEEL_CACERT="$KEEL_CLUSTER_DIR/certs/ca.pem" KEEL_TOKEN_FILE="$KEEL_CLUSTER_DIR/admin.token" ;;
        plain) "$CLUSTER" start > /dev/null ;;
        *) echo "unknown setup $setup (plain or tls, optionally @BINARY)" >&2; exit 2 ;;
    esac
    load "$setup" w1 --clients 1
    load "$setup" w64 --clients 64
    load "$setup" rw64 --clients 64 --ratio-reads 0.5
    "$CLUSTER" stop > /dev/null
    rm -rf "$KEEL_CLUSTER_DIR"
}

echo "setup load ops/s p50_ms p99_ms errors"
for round in $(seq 1 "$ROUNDS"); do
    run_setup "$1"
    run_setup "$2"
done
echo "medians (ops/s, p50 ms, p99 ms):"
python3 - "$RESULTS" "$1" "$2" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for load in ["w1", "w64", "rw64"]:
    out = []
    for setup in sys.argv[2:]:
        runs = [r for r in rows if r[0] == setup and r[1] == load]
        out.append(f"{setup} {statistics.median(float(r[2]) for r in runs):,.0f} ops/s, p50 {statistics.median(float(r[3]) for r in runs):.2f}, p99 {statistics.median(float(r[4]) for r in runs):.2f}")
    print(f"{load}: " + "; ".join(out))
PY
rm -f "$RESULTS"
