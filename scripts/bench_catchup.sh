#!/usr/bin/env bash
# Snapshot catch-up benchmark (issue: "snapshots that scale"). Starts a local 3-node
# cluster in a temporary directory, writes KEYS distinct 16-byte keys with 16-byte values
# (`keel bench --fill`), then adds node 4 empty (`run_cluster.sh addnode 4`): the leader
# streams its snapshot to it, and node 4 is promoted once caught up. Prints how long that
# took and every node's peak resident memory (VmHWM), then stops and deletes the cluster.
#
#   scripts/bench_catchup.sh            # 1,000,000 keys
#   KEYS=200000 scripts/bench_catchup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEYS="${KEYS:-1000000}"
export KEEL_CLUSTER_DIR="${KEEL_CLUSTER_DIR:-$(mktemp -d /tmp/keel-catchup.XXXXXX)}"
CLUSTER="$ROOT/scripts/run_cluster.sh"
BIN="${KEEL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/keel}"

cleanup() {
    "$CLUSTER" stop > /dev/null 2>&1 || true
    rm -rf "$KEEL_CLUSTER_DIR"
}
trap cleanup EXIT

peak_rss() {
    local n pid
    for n in "$@"; do
        pid=$(cat "$KEEL_CLUSTER_DIR/pids/node$n.pid")
        printf 'node %s: peak RSS %s MiB\n' "$n" "$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")"
    done
}

"$CLUSTER" start > /dev/null
echo "loading $KEYS keys..."
"$BIN" bench --fill --key-space "$KEYS" --clients 64 --duration 30m --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 | grep -E "writes|ops/s" || true
echo "after the load:"
peak_rss 1 2 3
started=$(date +%s.%N)
"$CLUSTER" addnode 4 > /dev/null
finished=$(date +%s.%N)
printf 'node 4 caught up and was promoted in %.1f s\n' "$(echo "$finished - $started" | bc)"
grep -h "installed snapshot\|snapshot taken" "$KEEL_CLUSTER_DIR/logs/node4.log" | tail -n 2 || true
echo "after the catch-up:"
peak_rss 1 2 3 4
"$BIN" get "fill-$(printf '%011d' $((KEYS - 1)))" --endpoints 127.0.0.1:7004 --consistency stale > /dev/null && echo "node 4 serves the last key written"
