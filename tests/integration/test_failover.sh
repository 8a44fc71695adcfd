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
. "$(dirname "${BASH_SOURCE[0]}")/placement_lib.sh"

read -r -a ports < <(free_ports 4)
HOSTS="tcp://127.0.0.1:${ports[0]},tcp://127.0.0.1:${ports[1]},tcp://127.0.0.1:${ports[2]}"
SERVER="tcp://127.0.0.1:${ports[3]}"
CLIENT=(--plaintext --server "$SERVER")
make_model

host_ep() { echo "tcp://127.0.0.1:${ports[$1]}"; }
start_host() { # start_host I: expertd I holding nothing until told
    local i=$1
    "$BIN/expertd" --listen "tcp://127.0.0.1:${ports[$i]}" --model "$tmp/m.gguf" --experts none --threads 1 \
        --plaintext 2>>"$tmp/host$i.log" &
    host_pid[$i]=$!
}
start_serve() { # start_serve REPLICAS
    timeout 300 "$BIN/moeshard" serve --model "$tmp/m.gguf" --hosts "$HOSTS" --replicas "$1" --listen "$SERVER" \
        --threads 1 --heartbeat-ms 200 --plaintext 2>>"$tmp/serve.log" &
    serve_pid=$!
    wait_serving "$serve_pid" "$SERVER"
}

# ---- R = 2: placement, then a host killed in the middle of a request
for i in 0 1 2; do start_host $i; done
start_serve 2
same_as_ref placed "placed slices"
grep -q "loaded layer" "$tmp/host0.log" || fail "host 0 never loaded a layer"
echo "R=2: $N greedy tokens on slices placed by the coordinator, identical to the embedded run"

kill_mid_request 1
slots=$(sed -n 's/.* \([0-9]*\) slots recomputed on replicas.*/\1/p' "$tmp/status.txt")
[ "${slots:-0}" -gt 0 ] || fail "host 1 died after the request ended (killed at $s of $size bytes): no slot was recomputed"
echo "R=2: host 1 killed at $s of $size bytes: same $N tokens, $slots slots recomputed on replicas"

start_host 1
wait_state 1 up
same_as_ref back "host 1 back"
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
same_as_ref r1 "R=1"
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
same_as_ref again "R=1 host 2 back"
echo "R=1: host 2 back: served again"
stop_serve
echo "failover: all checks passed"
