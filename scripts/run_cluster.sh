#!/usr/bin/env bash
# A local 3-node keel cluster on 127.0.0.1:7001-7003.
#
#   scripts/run_cluster.sh start        build if needed, start the nodes that are not running, wait for a leader
#   scripts/run_cluster.sh stop         SIGTERM every node (graceful), SIGKILL after 10 s; leaves no process behind
#   scripts/run_cluster.sh status       which nodes run, and `keel status` of the cluster
#   scripts/run_cluster.sh killnode N   SIGKILL node N (a crash: no goodbye to its peers)
#   scripts/run_cluster.sh startnode N  start node N again, on its preserved data
#   scripts/run_cluster.sh watchlogs    follow all three logs (node 1 blue, 2 green, 3 yellow); ctrl-c to stop
#   scripts/run_cluster.sh clean        stop, then delete ./cluster-data
#
# Data, logs and pid files live under ./cluster-data/ at the repository root (git-ignored):
#   cluster-data/node{1,2,3}/        each node's --data-dir
#   cluster-data/logs/node{1,2,3}.log
#   cluster-data/pids/node{1,2,3}.pid
# Environment: KEEL_BIN (use this binary instead of building target/release/keel, or
# $CARGO_TARGET_DIR/release/keel when that is set),
# KEEL_CLUSTER_DIR (instead of ./cluster-data), KEEL_LOG_LEVEL (passed to the nodes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${KEEL_CLUSTER_DIR:-$ROOT/cluster-data}"
LOGS="$DATA/logs"
PIDS="$DATA/pids"
NODES=(1 2 3)
ENDPOINTS="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
PEERS="1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
# cargo builds into CARGO_TARGET_DIR when it is set (relative to where cargo runs: $ROOT).
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN="${KEEL_BIN:-$TARGET_DIR/release/keel}"
STOP_WAIT_SECONDS=10

die() { echo "run_cluster.sh: $*" >&2; exit 1; }

# Whether process $1 still runs. An exited node whose parent (this script, gone by then)
# has not been reaped yet is a zombie: kill -0 still finds it, so look at its state.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

check_node_id() {
    case "${1:-}" in
        1|2|3) ;;
        *) die "node id must be 1, 2 or 3, not '${1:-}'" ;;
    esac
}

build() {
    if [[ -n "${KEEL_BIN:-}" ]]; then
        [[ -x "$BIN" ]] || die "KEEL_BIN=$BIN is not executable"
        return
    fi
    # cargo decides whether anything changed; a fresh build is a no-op.
    echo "building keel (cargo build --release -p keel-server)..."
    (cd "$ROOT" && cargo build --release --quiet -p keel-server) || die "build failed"
}

# The pid of node N if it runs (checked against its command line, so a reused pid is not
# mistaken for it), else nothing.
node_pid() {
    local n=$1 pid_file="$PIDS/node$1.pid" pid
    [[ -f "$pid_file" ]] || return 0
    pid=$(cat "$pid_file")
    if [[ -n "$pid" ]] && alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "--data-dir $DATA/node$n "; then
        echo "$pid"
    fi
}

# Every process serving one of this cluster's data dirs, pid file or not (orphans included).
cluster_pids() {
    local n pid
    for pid in $(pgrep -x keel || true); do
        alive "$pid" || continue
        for n in "${NODES[@]}"; do
            if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-dir $DATA/node$n "; then
                echo "$pid"
            fi
        done
    done
}

start_node() {
    local n=$1 pid
    pid=$(node_pid "$n")
    if [[ -n "$pid" ]]; then
        echo "node $n already running (pid $pid)"
        return
    fi
    mkdir -p "$DATA/node$n" "$LOGS" "$PIDS"
    KEEL_LOG_LEVEL="${KEEL_LOG_LEVEL:-info}" nohup "$BIN" serve \
        --id "$n" --listen "127.0.0.1:700$n" --data-dir "$DATA/node$n" --peers "$PEERS" \
        >> "$LOGS/node$n.log" 2>&1 < /dev/null &
    echo $! > "$PIDS/node$n.pid"
    echo "node $n started (pid $!, 127.0.0.1:700$n, log $LOGS/node$n.log)"
}

# Waits until node N answers, or fails with the end of its log if it exited.
wait_node_up() {
    local n=$1 attempt
    for attempt in $(seq 1 100); do
        if [[ -z "$(node_pid "$n")" ]]; then
            echo "node $n exited; the end of its log:" >&2
            tail -n 5 "$LOGS/node$n.log" >&2
            return 1
        fi
        if curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:700$n/v1/status"; then
            return 0
        fi
        sleep 0.1
    done
    echo "node $n does not answer on 127.0.0.1:700$n" >&2
    return 1
}

stop_pids() {
    local pids=("$@") pid deadline
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + STOP_WAIT_SECONDS))
    for pid in "${pids[@]}"; do
        while alive "$pid" && (( SECONDS < deadline )); do
            sleep 0.05
        done
        if alive "$pid"; then
            echo "pid $pid did not stop in ${STOP_WAIT_SECONDS}s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

cmd_start() {
    build
    local n failed=0
    for n in "${NODES[@]}"; do start_node "$n"; done
    for n in "${NODES[@]}"; do wait_node_up "$n" || failed=1; done
    (( failed == 0 )) || die "some nodes did not start; see above (scripts/run_cluster.sh stop cleans up)"
    local leader
    leader=$("$BIN" leader --quiet --endpoints "$ENDPOINTS" --timeout-ms 10000) || die "no leader elected within 10 s"
    cat <<EOF

keel cluster is up: node $leader leads.
  endpoints: $ENDPOINTS   (the default of every keel client command)
  logs:      $LOGS/node{1,2,3}.log   (scripts/run_cluster.sh watchlogs)

Try:
  export PATH="$(dirname "$BIN"):\$PATH"
  keel put greeting hello && keel get greeting
  keel status
  curl -s 127.0.0.1:7002/v1/kv/greeting; echo
EOF
}

cmd_stop() {
    local pids
    mapfile -t pids < <(cluster_pids)
    if [[ ${#pids[@]} -eq 0 ]]; then
        echo "no node running"
    else
        echo "stopping ${#pids[@]} node(s): ${pids[*]}"
        stop_pids "${pids[@]}"
    fi
    rm -f "$PIDS"/node*.pid
}

cmd_status() {
    local n pid running=0
    for n in "${NODES[@]}"; do
        pid=$(node_pid "$n")
        if [[ -n "$pid" ]]; then
            echo "node $n: running (pid $pid) on 127.0.0.1:700$n"
            running=1
        else
            echo "node $n: stopped"
        fi
    done
    if (( running )); then
        echo
        "$BIN" status --endpoints "$ENDPOINTS" --timeout-ms 3000 || true
    fi
}

cmd_killnode() {
    check_node_id "${1:-}"
    local n=$1 pid
    pid=$(node_pid "$n")
    [[ -n "$pid" ]] || { echo "node $n is not running"; return; }
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.05; done
    rm -f "$PIDS/node$n.pid"
    echo "node $n killed (SIGKILL, pid $pid); its data is kept: scripts/run_cluster.sh startnode $n"
}

cmd_startnode() {
    check_node_id "${1:-}"
    [[ -x "$BIN" ]] || build
    start_node "$1"
    wait_node_up "$1"
}

cmd_watchlogs() {
    mkdir -p "$LOGS"
    local colors=("" "34" "32" "33") n
    trap 'kill $(jobs -p) 2>/dev/null; exit 0' INT TERM
    for n in "${NODES[@]}"; do
        touch "$LOGS/node$n.log"
        tail -n 20 -F "$LOGS/node$n.log" 2>/dev/null | while IFS= read -r line; do
            printf '\033[%sm%s\033[0m\n' "${colors[$n]}" "$line"
        done &
    done
    wait
}

cmd_clean() {
    cmd_stop
    rm -rf "$DATA"
    echo "removed $DATA"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    killnode) cmd_killnode "${2:-}" ;;
    startnode) cmd_startnode "${2:-}" ;;
    watchlogs) cmd_watchlogs ;;
    clean) cmd_clean ;;
    *)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
