# Shared by the placement tests (test_failover.sh, test_join.sh,
# test_failover_netns.sh): a scratch folder, failure with the daemons' logs,
# the reference text, and waiting for a coordinator. Sourced, not run (the
# runner takes only test_*.sh). The caller sets BIN and defines cleanup_pids,
# which stops what it started; this file's EXIT trap then removes $tmp.
PY=/usr/bin/python3
tmp=$(mktemp -d)
PROMPT="The quick brown fox"
N=256 # long enough that a host can be killed in the middle of a request

placement_cleanup() {
    cleanup_pids
    rm -rf "$tmp"
}
trap placement_cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    local f
    for f in "$tmp"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
    exit 1
}

free_ports() { # free_ports N: N free TCP ports on 127.0.0.1, space separated
    "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

# The model the tests place (6 layers, so an N-token request runs long
# enough to be interrupted) and its embedded greedy text in $tmp/ref.txt.
make_model() {
    "$BIN/genmodel" --arch qwen2moe --out "$tmp/m.gguf" --layers 6 --hidden 128 --ff 128 --experts 8 --top-k 2 \
        >/dev/null 2>&1 || fail "genmodel"
    timeout 60 "$BIN/moeshard" run --model "$tmp/m.gguf" -p "$PROMPT" -n $N --temp 0 --threads 1 \
        >"$tmp/ref.txt" 2>"$tmp/ref.err" || fail "embedded run: $(cat "$tmp/ref.err")"
}

# wait_serving PID ENDPOINT: until serve (pid PID, log $tmp/serve.log) serves on ENDPOINT, 10 s at most.
wait_serving() {
    local i
    for ((i = 0; i < 200; i++)); do
        grep -q "serving .* on $2" "$tmp/serve.log" 2>/dev/null && return 0
        kill -0 "$1" 2>/dev/null || fail "serve exited"
        sleep 0.05
    done
    fail "serve did not start on $2"
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
