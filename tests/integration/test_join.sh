#!/usr/bin/env bash
# Scale-out on one machine: a coordinator places a full GGUF on 2 expertd
# whose stated capacities differ (shares follow them); a third expertd
# started with --join while a request is running is added to the placement
# (it loads its share, the switch waits for the request, the output is
# unchanged, the others unload what moved); after a coordinator restart the
# joined host finds it again by itself. Kills only the pids it started.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/placement_lib.sh"

read -r -a ports < <(free_ports 4)
SERVER="tcp://127.0.0.1:${ports[3]}"
CLIENT=(--plaintext --server "$SERVER")
make_model

host_ep() { echo "tcp://127.0.0.1:${ports[$1]}"; }
start_host() { # start_host I [options...]
    local i=$1
    shift
    "$BIN/expertd" --listen "tcp://127.0.0.1:${ports[$i]}" --model "$tmp/m.gguf" --experts none --threads 1 \
        --plaintext "$@" 2>>"$tmp/host$i.log" &
    host_pid[$i]=$!
}
start_serve() {
    timeout 300 "$BIN/moeshard" serve --model "$tmp/m.gguf" \
        --hosts "tcp://127.0.0.1:${ports[0]},tcp://127.0.0.1:${ports[1]}" --replicas 1 --listen "$SERVER" \
        --threads 1 --heartbeat-ms 200 --plaintext 2>>"$tmp/serve.log" &
    serve_pid=$!
    wait_serving "$serve_pid" "$SERVER"
}

# ---- shares follow the capacities the hosts state
start_host 0 --capacity 64MiB
start_host 1 --capacity 32MiB
start_serve
status
s0=$(column 0 3) s1=$(column 1 3)
[ -n "$s0" ] && [ -n "$s1" ] && [ $((s0 + s1)) -eq 48 ] || fail "2 hosts should hold the 48 slices: $(cat "$tmp/status.txt")"
[ $((2 * s0)) -ge $((3 * s1)) ] || fail "64 MiB vs 32 MiB: $s0 and $s1 slices, expected about 2:1"
same_as_ref two "two hosts"
echo "capacities 64 MiB and 32 MiB: $s0 and $s1 slices; output identical to the embedded run"

# ---- a host joins while a request runs
size=$(stat -c %s "$tmp/ref.txt")
generate during &
gen=$!
wait_bytes "$tmp/during.txt" 1 >/dev/null
start_host 2 --capacity 64MiB --join "$SERVER"
wait $gen || fail "the request during the join failed: $(cat "$tmp/during.err")"
cmp -s "$tmp/during.txt" "$tmp/ref.txt" || fail "a host joined during the request: its output changed"
wait_state 2 up "host 2 did not join"
grep -q "epoch" "$tmp/status.txt" || fail "status shows no epoch"
same_as_ref after "after the join"
# host 0 unloads the slices that moved away
WAIT_LOG_SECONDS=5 wait_log "$tmp/host0.log" "unloaded layer"
status
echo "host 2 joined during a request: same output; shares now $(column 0 3), $(column 1 3), $(column 2 3) slices"

# ---- the coordinator restarts: the joined host comes back by itself
stop_serve
start_serve
wait_state 2 up "host 2 did not join the restarted coordinator"
same_as_ref restarted "after the restart"
echo "coordinator restarted: host 2 joined again by itself"
echo "join: all checks passed"
