#!/usr/bin/env bash
# Scale-out on one machine: a coordinator places a full GGUF on 2 expertd
# whose stated capacities differ (shares follow them); a third expertd
# started with --join while a request is running is added to the placement
# (it loads its share, the switch waits for the request, the output is
# unchanged, the others unload what moved); after a coordinator restart the
# joined host finds it again by itself. Kills only the pids it started.
set -euo pipefail
BIN=${MS_BIN:-$PWD/build/bin}
PY=/usr/bin/python3
tmp=$(mktemp -d)
pids=()
serve_pid=""
cleanup() {
    local p
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null # timeout passes SIGTERM on to serve
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}" $serve_pid; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    for f in "$tmp"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
    exit 1
}
PROMPT="The quick brown fox"
N=128

read -r -a ports < <("$PY" - <<'PYEOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
)
SERVER="tcp://127.0.0.1:${ports[3]}"

"$BIN/genmodel" --arch qwen2moe --out "$tmp/m.gguf" --layers 6 --hidden 128 --ff 128 --experts 8 --top-k 2 \
    >/dev/null 2>&1 || fail "genmodel"
timeout 60 "$BIN/moeshard" run --model "$tmp/m.gguf" -p "$PROMPT" -n $N --temp 0 --threads 1 \
    >"$tmp/ref.txt" 2>"$tmp/ref.err" || fail "embedded run: $(cat "$tmp/ref.err")"

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
    local i
    for ((i = 0; i < 200; i++)); do
        grep -q "serving .* on $SERVER" "$tmp/serve.log" 2>/dev/null && return 0
        kill -0 "$serve_pid" 2>/dev/null || fail "serve exited"
        sleep 0.05
    done
    fail "serve did not start"
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
for ((i = 0; i < 2000; i++)); do
    [ "$(stat -c %s "$tmp/during.txt" 2>/dev/null || echo 0)" -gt 0 ] && break
    sleep 0.005
done
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
