#!/usr/bin/env bash
# A local keel cluster on 127.0.0.1: node N listens on 127.0.0.1:700N; 3 nodes by default.
#
#   scripts/run_cluster.sh start [--nodes N] [--secure]  build if needed, start the nodes that are not running, wait for a leader
#   scripts/run_cluster.sh stop          SIGTERM every node (graceful: a leader hands over first), SIGKILL after 10 s
#   scripts/run_cluster.sh status        which nodes run, `keel status` and `keel member list`
#   scripts/run_cluster.sh killnode N    SIGKILL node N (a crash: no goodbye to its peers)
#   scripts/run_cluster.sh startnode N   start node N again, on its preserved data
#   scripts/run_cluster.sh addnode N     start node N empty, add it as a learner, promote it once caught up
#   scripts/run_cluster.sh removenode N  remove node N from the cluster, stop it, delete its data
#   scripts/run_cluster.sh watchlogs     follow every node's log, one colour each; ctrl-c to stop
#   scripts/run_cluster.sh clean         stop, then delete ./cluster-data
#
# `start --nodes N` founds a cluster of nodes 1..N (N from 1 to 9) on a new data directory.
# `start --secure` (on a new data directory) makes a development CA and node certificates
# (keel certs init), an admin and a read-only token (keel token add), and runs every node
# with peer mutual TLS, HTTPS for clients and tokens; later commands see cluster-data/certs
# and keep it secure. It prints how to call the cluster with keel and curl.
# From then on the members are what the cluster's replicated configuration says (addnode,
# removenode), and `start` restarts every node that has a data directory.
#
# Data, logs and pid files live under ./cluster-data/ at the repository root (git-ignored):
#   cluster-data/nodeN/        each node's --data-dir
#   cluster-data/logs/nodeN.log
#   cluster-data/pids/nodeN.pid
#   cluster-data/certs/        (--secure) ca.pem, node-N.pem, node-N-key.pem, client.pem...
#   cluster-data/tokens.toml   (--secure) the tokens' hashes and roles; admin.token, read.token hold the tokens
# Environment: KEEL_BIN (use this binary instead of building target/release/keel, or
# $CARGO_TARGET_DIR/release/keel when that is set),
# KEEL_CLUSTER_DIR (instead of ./cluster-data), KEEL_LOG_LEVEL (passed to the nodes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${KEEL_CLUSTER_DIR:-$ROOT/cluster-data}"
LOGS="$DATA/logs"
PIDS="$DATA/pids"
# cargo builds into CARGO_TARGET_DIR when it is set (relative to where cargo runs: $ROOT).
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN="${KEEL_BIN:-$TARGET_DIR/release/keel}"
STOP_WAIT_SECONDS=10
# addnode promotes the new node within this long, or leaves it a learner.
PROMOTE_WAIT_SECONDS=60

die() { echo "run_cluster.sh: $*" >&2; exit 1; }

CERTS="$DATA/certs"
TOKENS="$DATA/tokens.toml"
# Secure mode is on for a cluster that has certificates: `keel` and curl then speak HTTPS
# with the admin token (the script's own calls; what it prints says how to do the same).
SECURE=0
secure_env() {
    SECURE=1
    export KEEL_CACERT="$CERTS/ca.pem" KEEL_TOKEN_FILE="$DATA/admin.token"
}
if [[ -f "$CERTS/ca.pem" ]]; then secure_env; fi
scheme() { if (( SECURE )); then echo https; else echo http; fi; }

# Whether process $1 still runs. An exited node whose parent (this script, gone by then)
# has not been reaped yet is a zombie: kill -0 still finds it, so look at its state.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

check_node_id() {
    case "${1:-}" in
        [1-9]) ;;
        *) die "node id must be 1 to 9, not '${1:-}'" ;;
    esac
}

address() { echo "127.0.0.1:700$1"; }

# The nodes of this cluster: every node with a data directory (1 2 3 before there is any).
NODES=()
refresh_nodes() {
    NODES=()
    local dir
    for dir in "$DATA"/node[1-9]; do
        if [[ -d "$dir" ]]; then NODES+=("${dir##*node}"); fi
    done
    if (( ${#NODES[@]} == 0 )); then NODES=(1 2 3); fi
}
refresh_nodes

# host:port of every node but $1 (if given), comma separated.
endpoints() {
    local n list=()
    for n in "${NODES[@]}"; do
        if [[ "$n" != "${1:-}" ]]; then list+=("$(address "$n")"); fi
    done
    (IFS=,; echo "${list[*]}")
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
        for n in 1 2 3 4 5 6 7 8 9; do
            if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-dir $DATA/node$n "; then
                echo "$pid"
            fi
        done
    done
}

# start_node N [--peers LIST | --join MEMBER]: a node whose data directory records its first
# configuration needs neither; a new one founds the cluster (--peers) or joins it (--join).
start_node() {
    local n=$1 pid
    shift
    pid=$(node_pid "$n")
    if [[ -n "$pid" ]]; then
        echo "node $n already running (pid $pid)"
        return
    fi
    local membership=() security=()
    if [[ ! -f "$DATA/node$n/cluster.json" ]]; then membership=("$@"); fi
    if (( SECURE )); then
        [[ -f "$CERTS/node-$n.pem" ]] || "$BIN" certs node "$CERTS" "$n" > /dev/null || die "cannot issue node $n's certificate"
        security=(--peer-cert "$CERTS/node-$n.pem" --peer-key "$CERTS/node-$n-key.pem" --peer-ca "$CERTS/ca.pem"
                  --client-cert "$CERTS/node-$n.pem" --client-key "$CERTS/node-$n-key.pem" --auth-tokens "$TOKENS")
    fi
    mkdir -p "$DATA/node$n" "$LOGS" "$PIDS"
    KEEL_LOG_LEVEL="${KEEL_LOG_LEVEL:-info}" nohup "$BIN" serve \
        --id "$n" --listen "$(address "$n")" --data-dir "$DATA/node$n" "${membership[@]}" "${security[@]}" \
        >> "$LOGS/node$n.log" 2>&1 < /dev/null &
    echo $! > "$PIDS/node$n.pid"
    echo "node $n started (pid $!, $(address "$n"), log $LOGS/node$n.log)"
}

# curl, with the CA and the admin token in secure mode.
curl_node() {
    if (( SECURE )); then
        curl --cacert "$CERTS/ca.pem" -H "Authorization: Bearer $(cat "$DATA/admin.token")" "$@"
    else
        curl "$@"
    fi
}

# Secure mode for a new cluster: certificates for nodes 1..$1 and two tokens.
make_secure() {
    mkdir -p "$DATA"
    "$BIN" certs init "$CERTS" --nodes "$1" > /dev/null || die "keel certs init failed"
    (umask 077
     "$BIN" token add --file "$TOKENS" --role admin --name admin 2> /dev/null > "$DATA/admin.token"
     "$BIN" token add --file "$TOKENS" --role read --name read-only 2> /dev/null > "$DATA/read.token") || die "keel token add failed"
    secure_env
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
        if curl_node -sf -o /dev/null --max-time 1 "$(scheme)://$(address "$n")/v1/status"; then
            return 0
        fi
        sleep 0.1
    done
    echo "node $n does not answer on $(address "$n")" >&2
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
    local count="" secure=0
    while (( $# > 0 )); do
        case "$1" in
            --nodes) count="${2:-}"; shift; shift || true ;;
            --secure) secure=1; shift ;;
            *) die "unknown option to start: $1 (start [--nodes N] [--secure])" ;;
        esac
    done
    build
    if compgen -G "$DATA/node[1-9]" > /dev/null; then
        if [[ -n "$count" && "$count" != "${#NODES[@]}" ]]; then
            echo "note: $DATA holds nodes ${NODES[*]}; --nodes only sizes a new cluster (clean first, or use addnode/removenode)" >&2
        fi
        if (( secure && ! SECURE )); then
            die "$DATA holds a plain cluster; --secure founds a new one (scripts/run_cluster.sh clean first)"
        fi
    else
        count="${count:-3}"
        [[ "$count" =~ ^[1-9]$ ]] || die "--nodes must be 1 to 9, not '$count'"
        NODES=($(seq 1 "$count"))
        if (( secure )); then make_secure "$count"; fi
    fi
    local n list=()
    for n in "${NODES[@]}"; do list+=("$n=$(address "$n")"); done
    local peers
    peers=$(IFS=,; echo "${list[*]}")
    local failed=0
    for n in "${NODES[@]}"; do start_node "$n" --peers "$peers"; done
    for n in "${NODES[@]}"; do wait_node_up "$n" || failed=1; done
    (( failed == 0 )) || die "some nodes did not start; see above (scripts/run_cluster.sh stop cleans up)"
    local leader all
    all=$(endpoints)
    leader=$("$BIN" leader --quiet --endpoints "$all" --timeout-ms 10000) || die "no leader elected within 10 s"
    if (( SECURE )); then print_secure_usage "$leader" "$all"; return; fi
    cat <<EOF

keel cluster is up: node $leader leads.
  endpoints: $all
             (keel's default is 127.0.0.1:7001-7003; otherwise export KEEL_ENDPOINTS=$all)
  logs:      $LOGS/node*.log   (scripts/run_cluster.sh watchlogs)

Try:
  export PATH="$(dirname "$BIN"):\$PATH"
  keel put greeting hello && keel get greeting
  keel status
  keel member list
  curl -s 127.0.0.1:7002/v1/kv/greeting; echo
EOF
}

print_secure_usage() {
    local https
    https=$(echo "$2" | sed -e 's|^|https://|' -e 's|,|,https://|g')
    cat <<EOF

keel cluster is up with TLS and tokens: node $1 leads.
  endpoints: $https
  CA:        $CERTS/ca.pem    (node certificates name node-N.keel, 127.0.0.1 and localhost)
  tokens:    $DATA/admin.token (role admin), $DATA/read.token (role read); hashes in $TOKENS
  logs:      $LOGS/node*.log   (scripts/run_cluster.sh watchlogs)

Try:
  export PATH="$(dirname "$BIN"):\$PATH"
  export KEEL_CACERT=$CERTS/ca.pem KEEL_TOKEN_FILE=$DATA/admin.token
  keel put greeting hello && keel get greeting
  keel status
  keel member list
  KEEL_TOKEN_FILE=$DATA/read.token keel put greeting bye     # refused: 403, role read
  curl -s --cacert $CERTS/ca.pem -H "Authorization: Bearer \$(cat $DATA/admin.token)" https://127.0.0.1:7002/v1/kv/greeting; echo
  curl -s --cacert $CERTS/ca.pem https://127.0.0.1:7002/v1/kv/greeting; echo     # 401: no token
  curl -s http://127.0.0.1:7002/v1/kv/greeting; echo                            # 400: HTTPS only
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
            echo "node $n: running (pid $pid) on $(address "$n")"
            running=1
        else
            echo "node $n: stopped"
        fi
    done
    if (( running )); then
        echo
        "$BIN" status --endpoints "$(endpoints)" --timeout-ms 3000 || true
        "$BIN" member list --endpoints "$(endpoints)" --timeout-ms 3000 || true
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
    [[ -f "$DATA/node$1/cluster.json" ]] || die "node $1 has no data directory here (scripts/run_cluster.sh addnode $1 adds a new node)"
    [[ -x "$BIN" ]] || build
    start_node "$1"
    wait_node_up "$1"
}

cmd_addnode() {
    check_node_id "${1:-}"
    local n=$1 member="" m deadline members
    [[ ! -d "$DATA/node$n" ]] || die "node $n has a data directory already (startnode $n restarts it; removenode $n removes it)"
    [[ -x "$BIN" ]] || build
    for m in "${NODES[@]}"; do
        if [[ -n "$(node_pid "$m")" ]]; then member=$(address "$m"); break; fi
    done
    [[ -n "$member" ]] || die "no node is running to join through"
    members=$(endpoints)
    start_node "$n" --join "$member"
    wait_node_up "$n" || die "node $n did not start"
    echo "adding node $n as a learner..."
    "$BIN" member add "$n" "$(address "$n")" --endpoints "$members" > /dev/null || die "could not add node $n (it still runs: removenode $n stops it)"
    echo "promoting node $n to voter once it has caught up..."
    deadline=$((SECONDS + PROMOTE_WAIT_SECONDS))
    until "$BIN" member promote "$n" --endpoints "$members" > /dev/null 2> "$DATA/promote.err"; do
        if (( SECONDS >= deadline )); then
            cat "$DATA/promote.err" >&2
            die "node $n did not catch up within ${PROMOTE_WAIT_SECONDS}s; it stays a learner"
        fi
        sleep 0.5
    done
    rm -f "$DATA/promote.err"
    refresh_nodes
    "$BIN" member list --endpoints "$(endpoints)"
}

cmd_removenode() {
    check_node_id "${1:-}"
    local n=$1 pid others
    others=$(endpoints "$n")
    [[ -n "$others" ]] || die "node $n is the last node"
    "$BIN" member remove "$n" --endpoints "$others" > /dev/null || die "could not remove node $n"
    pid=$(node_pid "$n")
    if [[ -n "$pid" ]]; then stop_pids "$pid"; fi
    rm -f "$PIDS/node$n.pid"
    rm -rf "$DATA/node$n"
    refresh_nodes
    echo "node $n removed from the cluster, stopped, and its data deleted"
    "$BIN" member list --endpoints "$(endpoints)"
}

cmd_watchlogs() {
    mkdir -p "$LOGS"
    local colors=("" "34" "32" "33" "35" "36" "31" "94" "92" "93") n
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
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    killnode) cmd_killnode "${2:-}" ;;
    startnode) cmd_startnode "${2:-}" ;;
    addnode) cmd_addnode "${2:-}" ;;
    removenode) cmd_removenode "${2:-}" ;;
    watchlogs) cmd_watchlogs ;;
    clean) cmd_clean ;;
    *)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
