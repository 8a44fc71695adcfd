#!/usr/bin/env bash
# Failover and joining across network namespaces, as separate hosts joined by
# veth links with CURVE keys: the coordinator in one namespace places a full
# GGUF on 3 expertd (2 replicas), one is killed in the middle of a request
# (same output), restarted (back in the placement); a fourth joins with
# --join (its key authenticated on the join link is the key the coordinator
# reaches it with). Skipped where `ip netns` is not permitted. Every address
# lives in a namespace this test creates (192.0.2.0/24, TEST-NET-1).
set -euo pipefail
tag="mf$$"
. "$(dirname "${BASH_SOURCE[0]}")/placement_lib.sh"
STATE_WAIT_SECONDS=15
if ! netns_hub "$tag"; then
    echo "skipped: 'ip netns add' is not permitted here"
    exit 77
fi
PORT=5555 SPORT=5600
make_model

for who in coord host client; do "$BIN/moeshard" keygen --out "$tmp/$who" >/dev/null || fail "keygen $who"; done
grep -v '^#' "$tmp/coord.pub" >"$tmp/coord.allow"
grep -v '^#' "$tmp/client.pub" >"$tmp/client.allow"
grep -v '^#' "$tmp/host.pub" >"$tmp/join.allow" # hosts that may join (and only join)
: >"$tmp/hosts.keys"

# host K in namespace hK at 192.0.2.(4K+2), the coordinator's side at 4K+1
host_ep() { echo "tcp://192.0.2.$((4 * $1 + 2)):$PORT"; }
start_host() { # start_host K [options...]
    local k=$1
    shift
    ip netns exec "${tag}h$k" "$BIN/expertd" --listen "$(host_ep "$k")" --model "$tmp/m.gguf" --experts none \
        --threads 1 --key "$tmp/host.key" --allow "$tmp/coord.allow" "$@" 2>>"$tmp/host$k.log" &
    host_pid[$k]=$!
}
IN=(ip netns exec "${tag}c")
CLIENT=(--key "$tmp/client.key" --server-key "$tmp/coord.pub" --server "tcp://127.0.0.1:$SPORT")

H=""
for k in 0 1 2; do
    netns_host "$tag" $k
    echo "$(host_ep $k) $(grep -v '^#' "$tmp/host.pub")" >>"$tmp/hosts.keys"
    H+="${H:+,}$(host_ep $k)"
    start_host $k
done
netns_host "$tag" 3 # for the host that joins later
# started directly, not through $IN: $! must be the process itself (ip netns
# exec becomes timeout, which passes SIGTERM on to serve), not a subshell
ip netns exec "${tag}c" timeout 300 "$BIN/moeshard" serve --model "$tmp/m.gguf" --hosts "$H" --replicas 2 \
    --listen "tcp://0.0.0.0:$SPORT" --threads 1 --heartbeat-ms 200 --key "$tmp/coord.key" \
    --allow "$tmp/client.allow" --host-keys "$tmp/hosts.keys" --join-allow "$tmp/join.allow" 2>>"$tmp/serve.log" &
serve_pid=$!
wait_serving "$serve_pid" "tcp://0.0.0.0:$SPORT"
same_as_ref placed "placed across namespaces"
echo "namespaces: 3 hosts, 2 replicas placed by the coordinator, same output as the embedded run"

kill_mid_request 1
echo "namespaces: host 1 killed at $s of $size bytes: same output, status shows it down"
start_host 1
wait_state 1 up
same_as_ref back "host 1 back"
echo "namespaces: host 1 restarted and back in the placement"

start_host 3 --join "tcp://192.0.2.13:$SPORT" --coordinator-key "$tmp/coord.pub"
wait_state 3 up
same_as_ref joined "host 3 joined"
echo "namespaces: host 3 joined over CURVE and serves its share"
if "${IN[@]}" timeout 30 "$BIN/moeshard" generate --key "$tmp/host.key" --server-key "$tmp/coord.pub" \
    --server "tcp://127.0.0.1:$SPORT" -n 4 "$PROMPT" >/dev/null 2>"$tmp/hostgen.err"; then
    fail "a host key (on --join-allow only) submitted a request"
fi
grep -q "may only join as an expert host" "$tmp/hostgen.err" || fail "host key refusal unclear: $(cat "$tmp/hostgen.err")"
echo "namespaces: the host key may join but not submit requests"
echo "failover across namespaces: all checks passed"
