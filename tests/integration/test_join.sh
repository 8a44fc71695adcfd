#!/usr/bin/env bash
# Scale-out on one machine: a coordinator places a full GGUF on 2 expertd
# whose stated capacities differ (shares follow them); a third expertd
# started with --join while a request is running is added to the placement
# (it loads its share, the switch waits for the request, the output is
# unchanged, the others unload what moved); after a coordinator restart the
# joined host finds it again by itself. Kills only the pids it started.
set -euo pipefail
BIN=${MS_BIN:-$PWD/build/bin}
pids=()
serve_pid=""
cleanup_pids() {
    local p
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null # timeout passes SIGTERM on to serve
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}" $serve_pid; do wait "$p" 2>/dev/null || true; done
}
. "$(dirname "$0")/placement_lib.sh"

read -r -a ports < <(free_ports 4)
SERVER="tcp://127.0.0.1:${ports[3]}"
make_model

start_host() { # start_host I [options...]
    local i=$1
    shift
    "$BIN/expertd" --listen "tcp://127.0.0.1:${ports[$i]}" --model "$tmp/m.gguf" --experts none --threads 1 \
        --plaintext "$@" 2>>"$tmp/host$i.log" &
    pids+=($!)
}
start_serve() {
    timeout 300 "$BIN/moeshard" serve --model "$tmp/m.gguf" \
        --hosts "tcp://127.0.0.1:${ports[0]},tcp://127.0.0.1:${ports[1]}" --replicas 1 --listen "$SERVER" \
        --threads 1 --heartbeat-ms 200 --plaintext 2>>"$tmp/serve.log" &
    serve_pid=$!   # the timeout wrapper: SIGTERM reaches serve through it
    wait_serving "$serve_pid" "$SERVER"
}
generate() {
    timeout 60 "$BIN/moeshard" generate --plaintext --server "$SERVER" -n $N --temp 0 "$PROMPT" \
        >"$tmp/$1.txt" 2>"$tmp/$1.err"
}
status() {
    timeout 10 "$BIN/moeshard" status --plaintext --server "$SERVER" >"$tmp/status.txt" 2>&1 || fail "status: $(cat "$tmp/status.txt")"
}
column() { # column I FIELD: field FIELD (2 state, 3 slices) of host I's status row
    awk -v ep="tcp://127.0.0.1:${ports[$1]}" -v f="$2" '$1 == ep { print $f }' "$tmp/status.txt"
}

# ---- shares follow the capacities the hosts state
start_host 0 --capacity 64MiB
start_host 1 --capacity 32MiB
start_serve
status
s0=$(column 0 3) s1=$(column 1 3)
[ -n "$s0" ] && [ -n "$s1" ] && [ $((s0 + s1)) -eq 48 ] || fail "2 hosts should hold the 48 slices: $(cat "$tmp/status.txt")"
[ $((2 * s0)) -ge $((3 * s1)) ] || fail "64 MiB vs 32 MiB: $s0 and $s1 slices, expected about 2:1"
generate two || fail "two hosts: $(cat "$tmp/two.err")"
cmp -s "$tmp/two.txt" "$tmp/ref.txt" || fail "two hosts: output differs from the embedded run"
echo "capacities 64 MiB and 32 MiB: $s0 and $s1 slices; output identical to the embedded run"

# ---- a host joins while a request runs
size=$(stat -c %s "$tmp/ref.txt")
generate during &
gen=$!
wait_bytes "$tmp/during.txt" 1 >/dev/null
start_host 2 --capacity 64MiB --join "$SERVER"
wait $gen || fail "the request during the join failed: $(cat "$tmp/during.err")"
cmp -s "$tmp/during.txt" "$tmp/ref.txt" || fail "a host joined during the request: its output changed"
for ((i = 0; i < 100; i++)); do
    status
    [ "$(column 2 2)" = up ] && break
    sleep 0.1
done
[ "$(column 2 2)" = up ] || fail "host 2 did not join: $(cat "$tmp/status.txt")"
grep -q "epoch" "$tmp/status.txt" || fail "status shows no epoch"
generate after || fail "after the join: $(cat "$tmp/after.err")"
cmp -s "$tmp/after.txt" "$tmp/ref.txt" || fail "after the join: output differs"
for ((i = 0; i < 50; i++)); do
    grep -q "unloaded layer" "$tmp/host0.log" && break
    sleep 0.1
done
grep -q "unloaded layer" "$tmp/host0.log" || fail "host 0 kept the slices that moved"
status
echo "host 2 joined during a request: same output; shares now $(column 0 3), $(column 1 3), $(column 2 3) slices"

# ---- the coordinator restarts: the joined host comes back by itself
kill "$serve_pid"
wait "$serve_pid" 2>/dev/null || true
serve_pid=""
: >"$tmp/serve.log"
start_serve
for ((i = 0; i < 100; i++)); do
    status
    [ "$(column 2 2)" = up ] && break
    sleep 0.1
done
[ "$(column 2 2)" = up ] || fail "host 2 did not join the restarted coordinator: $(cat "$tmp/status.txt")"
generate restarted || fail "after the restart: $(cat "$tmp/restarted.err")"
cmp -s "$tmp/restarted.txt" "$tmp/ref.txt" || fail "after the restart: output differs"
echo "coordinator restarted: host 2 joined again by itself"
echo "join: all checks passed"
