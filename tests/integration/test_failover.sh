#!/usr/bin/env bash
# Placement and failure handling on one machine: the coordinator places a
# full GGUF's slices on 3 expertd that start empty (--experts none) and load
# their share; with 2 replicas, kill -9 of a host in the middle of a request
# leaves its output identical to an undisturbed run, status shows the host
# down, and a restarted host takes its share back. With 1 replica a missing
# host makes requests fail at once naming the slices, until it is back.
# A coordinator killed mid-request gives its client a clear error.
# Kills only the pids it started; removes only what it created.
set -euo pipefail
BIN=${MS_BIN:-$PWD/build/bin}
declare -A host_pid=()
serve_pid=""
cleanup_pids() {
    local p
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null # timeout passes SIGTERM on to serve
    for p in "${host_pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${host_pid[@]}" $serve_pid; do wait "$p" 2>/dev/null || true; done
}
. "$(dirname "$0")/placement_lib.sh"

read -r -a ports < <(free_ports 4)
HOSTS="tcp://127.0.0.1:${ports[0]},tcp://127.0.0.1:${ports[1]},tcp://127.0.0.1:${ports[2]}"
SERVER="tcp://127.0.0.1:${ports[3]}"
make_model

start_host() { # start_host I: expertd I holding nothing until told
    local i=$1
    "$BIN/expertd" --listen "tcp://127.0.0.1:${ports[$i]}" --model "$tmp/m.gguf" --experts none --threads 1 \
        --plaintext 2>>"$tmp/host$i.log" &
    host_pid[$i]=$!
}
kill_host() {
    kill -9 "${host_pid[$1]}" 2>/dev/null || true
    wait "${host_pid[$1]}" 2>/dev/null || true
    unset "host_pid[$1]"
}
start_serve() { # start_serve REPLICAS
    timeout 300 "$BIN/moeshard" serve --model "$tmp/m.gguf" --hosts "$HOSTS" --replicas "$1" --listen "$SERVER" \
        --threads 1 --heartbeat-ms 200 --plaintext 2>>"$tmp/serve.log" &
    serve_pid=$!   # the timeout wrapper: SIGTERM reaches serve through it
    wait_serving "$serve_pid" "$SERVER"
}
stop_serve() {
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=""
    : >"$tmp/serve.log"
}
generate() { # generate OUT: greedy request, stdout OUT.txt, stderr OUT.err; returns its status
    timeout 60 "$BIN/moeshard" generate --plaintext --server "$SERVER" -n $N --temp 0 "$PROMPT" \
        >"$tmp/$1.txt" 2>"$tmp/$1.err"
}
status() {
    timeout 10 "$BIN/moeshard" status --plaintext --server "$SERVER" >"$tmp/status.txt" 2>&1 || fail "status: $(cat "$tmp/status.txt")"
}
host_state() { # host_state I: the state column of host I in status
    status
    awk -v ep="tcp://127.0.0.1:${ports[$1]}" '$1 == ep { print $2 }' "$tmp/status.txt"
}
wait_state() { # wait_state I STATE: within 10 s
    local i
    for ((i = 0; i < 100; i++)); do
        [ "$(host_state "$1")" = "$2" ] && return 0
        sleep 0.1
    done
    fail "host $1 is not $2 after 10 s: $(cat "$tmp/status.txt")"
}

# ---- R = 2: placement, then a host killed in the middle of a request
for i in 0 1 2; do start_host $i; done
start_serve 2
generate placed || fail "generate on the placed slices: $(cat "$tmp/placed.err")"
cmp -s "$tmp/placed.txt" "$tmp/ref.txt" || fail "placed slices: output differs from the embedded run"
grep -q "loaded layer" "$tmp/host0.log" || fail "host 0 never loaded a layer"
echo "R=2: $N greedy tokens on slices placed by the coordinator, identical to the embedded run"

size=$(stat -c %s "$tmp/ref.txt")
generate killed &
gen=$!
s=$(wait_bytes "$tmp/killed.txt" $((size / 3)))
kill_host 1
wait $gen || fail "the request failed when host 1 died: $(cat "$tmp/killed.err")"
cmp -s "$tmp/killed.txt" "$tmp/ref.txt" || fail "host 1 killed: output differs from the undisturbed run"
[ "$(host_state 1)" = down ] || fail "status does not show host 1 down: $(cat "$tmp/status.txt")"
slots=$(sed -n 's/.* \([0-9]*\) slots recomputed on replicas.*/\1/p' "$tmp/status.txt")
[ "${slots:-0}" -gt 0 ] || fail "host 1 died after the request ended (killed at $s of $size bytes): no slot was recomputed"
echo "R=2: host 1 killed at $s of $size bytes: same $N tokens, $slots slots recomputed on replicas"

start_host 1
wait_state 1 up
generate back || fail "generate after host 1 came back: $(cat "$tmp/back.err")"
cmp -s "$tmp/back.txt" "$tmp/ref.txt" || fail "host 1 back: output differs"
echo "R=2: host 1 restarted, reloaded its share and serves again"

# ---- the coordinator killed mid-request: the client says so, quickly
generate orphan &
gen=$!
wait_bytes "$tmp/orphan.txt" 1 >/dev/null
coord=$(pgrep -P "$serve_pid" -x moeshard) || fail "no coordinator process under $serve_pid"
kill -9 "$coord"
wait "$serve_pid" 2>/dev/null || true
serve_pid=""
t0=$(date +%s)
if wait $gen; then
    echo "note: the request finished before the coordinator died"
else
    rc=$?
    [ $rc -ne 124 ] || fail "the client waited for its timeout after the coordinator died"
    grep -qi "coordinator" "$tmp/orphan.err" || fail "unclear client error: $(cat "$tmp/orphan.err")"
    echo "coordinator killed: the client stopped in $(( $(date +%s) - t0 )) s: $(tail -n 1 "$tmp/orphan.err")"
fi
: >"$tmp/serve.log"

# ---- R = 1: a missing host fails requests at once, until it is back
start_serve 1
generate r1 || fail "R=1: $(cat "$tmp/r1.err")"
cmp -s "$tmp/r1.txt" "$tmp/ref.txt" || fail "R=1: output differs"
grep -q "unloaded layer" "$tmp/host0.log" || fail "R=1: host 0 kept its R=2 share"
kill_host 2
wait_state 2 down
t0=$(date +%s%N)
if generate gone; then fail "R=1 with host 2 gone: the request succeeded"; fi
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -q "unavailable" "$tmp/gone.err" && grep -q "${ports[2]}" "$tmp/gone.err" ||
    fail "R=1: the error does not name the unavailable slices and the host: $(cat "$tmp/gone.err")"
[ $ms -lt 5000 ] || fail "R=1: failing took $ms ms"
echo "R=1: host 2 gone: refused in $ms ms: $(tail -n 1 "$tmp/gone.err")"
start_host 2
wait_state 2 up
generate again || fail "R=1 after host 2 came back: $(cat "$tmp/again.err")"
cmp -s "$tmp/again.txt" "$tmp/ref.txt" || fail "R=1 host 2 back: output differs"
echo "R=1: host 2 back: served again"
stop_serve
echo "failover: all checks passed"
