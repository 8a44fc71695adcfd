#!/usr/bin/env bash
# Failover and joining across network namespaces, as separate hosts joined by
# veth links with CURVE keys: the coordinator in one namespace places a full
# GGUF on 3 expertd (2 replicas), one is killed in the middle of a request
# (same output), restarted (back in the placement); a fourth joins with
# --join (its key authenticated on the join link is the key the coordinator
# reaches it with). Skipped where `ip netns` is not permitted. Every address
# lives in a namespace this test creates (192.0.2.0/24, TEST-NET-1).
set -euo pipefail
BIN=${MS_BIN:-$PWD/build/bin}
declare -A host_pid=()
serve_pid=""
netns=()
tag="mf$$"
cleanup_pids() {
    local p n
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null
    for p in "${host_pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${host_pid[@]}" $serve_pid; do wait "$p" 2>/dev/null || true; done
    for n in "${netns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}
. "$(dirname "$0")/placement_lib.sh"
if ! ip netns add "${tag}c" 2>/dev/null; then
    echo "skipped: 'ip netns add' is not permitted here"
    exit 77
fi
netns+=("${tag}c")
ip -n "${tag}c" link set lo up
PORT=5555 SPORT=5600
make_model

for who in coord host client; do "$BIN/moeshard" keygen --out "$tmp/$who" >/dev/null || fail "keygen $who"; done
grep -v '^#' "$tmp/coord.pub" >"$tmp/coord.allow"
grep -v '^#' "$tmp/client.pub" >"$tmp/client.allow"
grep -v '^#' "$tmp/host.pub" >"$tmp/join.allow" # hosts that may join (and only join)
: >"$tmp/hosts.keys"

# host K in namespace hK at 192.0.2.(4K+2), the coordinator's side at 4K+1
link_host() {
    local k=$1 ns="${tag}h$1"
    ip netns add "$ns"
    netns+=("$ns")
    ip link add "${tag}c$k" netns "${tag}c" type veth peer name "${tag}h$k" netns "$ns"
    ip -n "${tag}c" addr add "192.0.2.$((4 * k + 1))/30" dev "${tag}c$k"
    ip -n "$ns" addr add "192.0.2.$((4 * k + 2))/30" dev "${tag}h$k"
    ip -n "${tag}c" link set "${tag}c$k" up
    ip -n "$ns" link set "${tag}h$k" up
    ip -n "$ns" link set lo up
}
host_ep() { echo "tcp://192.0.2.$((4 * $1 + 2)):$PORT"; }
start_host() { # start_host K [options...]
    local k=$1
    shift
    ip netns exec "${tag}h$k" "$BIN/expertd" --listen "$(host_ep "$k")" --model "$tmp/m.gguf" --experts none \
        --threads 1 --key "$tmp/host.key" --allow "$tmp/coord.allow" "$@" 2>>"$tmp/host$k.log" &
    host_pid[$k]=$!
}
kill_host() {
    kill -9 "${host_pid[$1]}" 2>/dev/null || true
    wait "${host_pid[$1]}" 2>/dev/null || true
    unset "host_pid[$1]"
}
in_c() { ip netns exec "${tag}c" "$@"; }
client=(--key "$tmp/client.key" --server-key "$tmp/coord.pub" --server "tcp://127.0.0.1:$SPORT")
generate() {
    in_c timeout 60 "$BIN/moeshard" generate "${client[@]}" -n $N --temp 0 "$PROMPT" >"$tmp/$1.txt" 2>"$tmp/$1.err"
}
host_state() {
    in_c timeout 10 "$BIN/moeshard" status "${client[@]}" >"$tmp/status.txt" 2>&1 || fail "status: $(cat "$tmp/status.txt")"
    awk -v ep="$(host_ep "$1")" '$1 == ep { print $2 }' "$tmp/status.txt"
}
wait_state() {
    local i
    for ((i = 0; i < 150; i++)); do
        [ "$(host_state "$1")" = "$2" ] && return 0
        sleep 0.1
    done
    fail "host $1 is not $2: $(cat "$tmp/status.txt")"
}

H=""
for k in 0 1 2; do
    link_host $k
    echo "$(host_ep $k) $(grep -v '^#' "$tmp/host.pub")" >>"$tmp/hosts.keys"
    H+="${H:+,}$(host_ep $k)"
    start_host $k
done
link_host 3 # for the host that joins later
# started directly, not through in_c: $! must be the process itself (ip netns
# exec becomes timeout, which passes SIGTERM on to serve), not a subshell
ip netns exec "${tag}c" timeout 300 "$BIN/moeshard" serve --model "$tmp/m.gguf" --hosts "$H" --replicas 2 \
    --listen "tcp://0.0.0.0:$SPORT" --threads 1 --heartbeat-ms 200 --key "$tmp/coord.key" \
    --allow "$tmp/client.allow" --host-keys "$tmp/hosts.keys" --join-allow "$tmp/join.allow" 2>>"$tmp/serve.log" &
serve_pid=$!
wait_serving "$serve_pid" "tcp://0.0.0.0:$SPORT"
generate placed || fail "generate: $(cat "$tmp/placed.err")"
cmp -s "$tmp/placed.txt" "$tmp/ref.txt" || fail "placed across namespaces: output differs from the embedded run"
echo "namespaces: 3 hosts, 2 replicas placed by the coordinator, same output as the embedded run"

size=$(stat -c %s "$tmp/ref.txt")
generate killed &
gen=$!
s=$(wait_bytes "$tmp/killed.txt" $((size / 3)))
kill_host 1
wait $gen || fail "the request failed when host 1 died: $(cat "$tmp/killed.err")"
cmp -s "$tmp/killed.txt" "$tmp/ref.txt" || fail "host 1 killed: output differs"
[ "$(host_state 1)" = down ] || fail "status does not show host 1 down: $(cat "$tmp/status.txt")"
echo "namespaces: host 1 killed at $s of $size bytes: same output, status shows it down"
start_host 1
wait_state 1 up
generate back || fail "after host 1 came back: $(cat "$tmp/back.err")"
cmp -s "$tmp/back.txt" "$tmp/ref.txt" || fail "host 1 back: output differs"
echo "namespaces: host 1 restarted and back in the placement"

start_host 3 --join "tcp://192.0.2.13:$SPORT" --coordinator-key "$tmp/coord.pub"
wait_state 3 up
generate joined || fail "after host 3 joined: $(cat "$tmp/joined.err")"
cmp -s "$tmp/joined.txt" "$tmp/ref.txt" || fail "host 3 joined: output differs"
echo "namespaces: host 3 joined over CURVE and serves its share"
if in_c timeout 30 "$BIN/moeshard" generate --key "$tmp/host.key" --server-key "$tmp/coord.pub" \
    --server "tcp://127.0.0.1:$SPORT" -n 4 "$PROMPT" >/dev/null 2>"$tmp/hostgen.err"; then
    fail "a host key (on --join-allow only) submitted a request"
fi
grep -q "may only join as an expert host" "$tmp/hostgen.err" || fail "host key refusal unclear: $(cat "$tmp/hostgen.err")"
echo "namespaces: the host key may join but not submit requests"
echo "failover across namespaces: all checks passed"
