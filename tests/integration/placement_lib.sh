# Shared by the placement tests (test_failover.sh, test_join.sh,
# test_failover_netns.sh), on top of lib.sh: the reference text, expertd kept
# by index in host_pid, one coordinator in serve_pid, and the client commands
# against it. Sourced, not run (the runner takes only test_*.sh). The caller
# defines host_ep I (host I's endpoint) and sets CLIENT (the client options
# that reach the coordinator) and, to run clients elsewhere, IN (a prefix).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PROMPT="The quick brown fox"
N=256 # long enough that a host can be killed in the middle of a request
declare -A host_pid=() # expertd pids by host index: kill_host and cleanup stop them with SIGKILL
serve_pid="" # the coordinator's timeout wrapper: SIGTERM reaches serve through it
CLIENT=() # client options naming the coordinator (and its keys)
IN=() # a command prefix the clients run under (e.g. ip netns exec NS)
STATE_WAIT_SECONDS=10 # how long wait_state waits

# cleanup_extra: lib.sh's cleanup stops the coordinator and every host this way.
cleanup_extra() {
    local p
    if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; fi
    for p in "${host_pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${host_pid[@]}" $serve_pid; do wait "$p" 2>/dev/null || true; done
}

# make_model: the model the tests place (6 layers, so an N-token request runs
# long enough to be interrupted) and its embedded greedy text in $tmp/ref.txt.
make_model() {
    "$BIN/genmodel" --arch qwen2moe --out "$tmp/m.gguf" --layers 6 --hidden 128 --ff 128 --experts 8 --top-k 2 \
        >/dev/null 2>&1 || fail "genmodel"
    timeout 60 "$BIN/moeshard" run --model "$tmp/m.gguf" -p "$PROMPT" -n $N --temp 0 --threads 1 \
        >"$tmp/ref.txt" 2>"$tmp/ref.err" || fail "embedded run: $(cat "$tmp/ref.err")"
}

# wait_serving PID ENDPOINT: until serve (pid PID, log $tmp/serve.log) serves on ENDPOINT, 10 s at most.
wait_serving() { wait_log "$tmp/serve.log" "serving .* on $2" "$1"; }

# stop_serve: stops the coordinator and empties its log for the next one.
stop_serve() {
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=""
    : >"$tmp/serve.log"
}

# kill_host I: host I dies at once (SIGKILL), as a crashed machine would.
kill_host() {
    kill -9 "${host_pid[$1]}" 2>/dev/null || true
    wait "${host_pid[$1]}" 2>/dev/null || true
    unset "host_pid[$1]"
}

# generate OUT: a greedy request of N tokens; stdout OUT.txt, stderr OUT.err; returns its status.
generate() {
    "${IN[@]}" timeout 60 "$BIN/moeshard" generate "${CLIENT[@]}" -n $N --temp 0 "$PROMPT" \
        >"$tmp/$1.txt" 2>"$tmp/$1.err"
}

# same_as_ref OUT WHAT: generate OUT must succeed and print the embedded run's text.
same_as_ref() {
    generate "$1" || fail "$2: $(cat "$tmp/$1.err")"
    cmp -s "$tmp/$1.txt" "$tmp/ref.txt" || fail "$2: output differs from the embedded run"
}

# status: the coordinator's status in $tmp/status.txt.
status() {
    "${IN[@]}" timeout 10 "$BIN/moeshard" status "${CLIENT[@]}" >"$tmp/status.txt" 2>&1 \
        || fail "status: $(cat "$tmp/status.txt")"
}

# column I FIELD: field FIELD (2 state, 3 slices) of host I's row in $tmp/status.txt.
column() { awk -v ep="$(host_ep "$1")" -v f="$2" '$1 == ep { print $f }' "$tmp/status.txt"; }

# host_state I: the state of host I in a fresh status.
host_state() {
    status
    column "$1" 2
}

# wait_state I STATE [WHAT]: until status shows host I in STATE, STATE_WAIT_SECONDS at most;
# WHAT names the failure.
wait_state() {
    local i
    for ((i = 0; i < STATE_WAIT_SECONDS * 10; i++)); do
        [ "$(host_state "$1")" = "$2" ] && return 0
        sleep 0.1
    done
    fail "${3:-host $1 is not $2 after $STATE_WAIT_SECONDS s}: $(cat "$tmp/status.txt")"
}

# wait_bytes FILE MIN: until FILE holds at least MIN bytes (10 s at most); prints its size.
wait_bytes() {
    local i s=0
    for ((i = 0; i < 2000; i++)); do
        s=$(stat -c %s "$1" 2>/dev/null || echo 0)
        [ "$s" -ge "$2" ] && break
        sleep 0.005
    done
    echo "$s"
}

# kill_mid_request I: host I killed a third of the way into a request, which
# must still print the reference text; status must then show host I down.
# Sets size (the text's bytes) and s (the bytes printed when host I died).
kill_mid_request() {
    local gen
    size=$(stat -c %s "$tmp/ref.txt")
    generate killed &
    gen=$!
    s=$(wait_bytes "$tmp/killed.txt" $((size / 3)))
    kill_host "$1"
    wait $gen || fail "the request failed when host $1 died: $(cat "$tmp/killed.err")"
    cmp -s "$tmp/killed.txt" "$tmp/ref.txt" || fail "host $1 killed: output differs from the undisturbed run"
    [ "$(host_state "$1")" = down ] || fail "status does not show host $1 down: $(cat "$tmp/status.txt")"
}
