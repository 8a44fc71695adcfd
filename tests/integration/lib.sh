# Helpers shared by the integration scripts: sourced by a test_*.sh, never run
# (tests/run.sh runs only test_*.sh). Sourcing sets ROOT, BIN, PY and a scratch
# folder $tmp, and traps EXIT to stop what the script started and remove $tmp.
# A script adds what it starts to pids and what it creates to netns, may define
# cleanup_extra for anything else, and may raise FAIL_TAIL or WAIT_LOG_SECONDS.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd) # the source tree
BIN=${MS_BIN:-$ROOT/build/bin} # the binaries under test (tests/run.sh exports MS_BIN)
PY=/usr/bin/python3 # the system python, the one with numpy
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ms-$(basename "$0" .sh).XXXXXX") || exit 1 # scratch folder, removed on exit
pids=() # background processes this script started: cleanup stops them, by pid
netns=() # network namespaces this script created: cleanup deletes them
FAIL_TAIL=20 # how many lines of each $tmp/*.log fail prints
WAIT_LOG_SECONDS=10 # how long wait_log waits for its pattern

# stop_pids: SIGTERM to every pid in pids, wait for each, then forget them.
stop_pids() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}

# cleanup: the EXIT trap: the script's cleanup_extra if it has one, then pids, netns and $tmp.
cleanup() {
    local n
    if declare -F cleanup_extra >/dev/null; then cleanup_extra || true; fi
    stop_pids
    for n in "${netns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# fail MESSAGE...: prints FAIL: MESSAGE and the last FAIL_TAIL lines of each $tmp/*.log, exits 1.
fail() {
    local f
    echo "FAIL: $*" >&2
    for f in "$tmp"/*.log; do
        [ -f "$f" ] && { echo "== $f" >&2; tail -n "$FAIL_TAIL" "$f" >&2; }
    done
    exit 1
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, space separated.
free_ports() {
    "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

# wait_log [-F] FILE PATTERN [PID]: until FILE has PATTERN (grep regex; -F: fixed string), at most
# WAIT_LOG_SECONDS; fails at once if process PID is gone first.
wait_log() {
    local opt=-q i
    if [ "$1" = -F ]; then opt=-qF; shift; fi
    for ((i = 0; i < WAIT_LOG_SECONDS * 10; i++)); do
        grep "$opt" -- "$2" "$1" 2>/dev/null && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then fail "pid $3 exited before '$2' appeared in $1"; fi
        sleep 0.1
    done
    fail "'$2' did not appear in $1 within $WAIT_LOG_SECONDS s"
}

# wait_hosts NAME...: until each expertd's log $tmp/NAME.log says it is serving.
wait_hosts() {
    local name
    for name in "$@"; do wait_log "$tmp/$name.log" serving; done
}

# netns_hub TAG: namespace TAGc (loopback up) for the coordinator's side; returns 1 where
# `ip netns add` is not permitted. Addresses live only in namespaces made here (192.0.2.0/24).
netns_hub() {
    ip netns add "${1}c" 2>/dev/null || return 1
    netns+=("${1}c")
    ip -n "${1}c" link set lo up
}

# netns_host TAG K: namespace TAGhK joined to TAGc by a veth pair: 192.0.2.(4K+1) on TAGc's side,
# 192.0.2.(4K+2) (the host's address) on its own; both ends and its loopback up.
netns_host() {
    local tag=$1 k=$2 ns="$1h$2"
    ip netns add "$ns"
    netns+=("$ns")
    ip link add "${tag}c$k" netns "${tag}c" type veth peer name "${tag}h$k" netns "$ns"
    ip -n "${tag}c" addr add "192.0.2.$((4 * k + 1))/30" dev "${tag}c$k"
    ip -n "$ns" addr add "192.0.2.$((4 * k + 2))/30" dev "${tag}h$k"
    ip -n "${tag}c" link set "${tag}c$k" up
    ip -n "$ns" link set "${tag}h$k" up
    ip -n "$ns" link set lo up
}
