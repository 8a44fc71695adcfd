#!/usr/bin/env bash
# What `make demo` runs after building: a tiny Mixtral-shaped model, first
# run in one process, then served as a cluster on loopback (2 expertd hosts
# and the coordinator, every link encrypted and authenticated with CURVE keys
# made by 'moeshard keygen'), a prompt submitted through the client, and the
# cluster's status. Everything it starts, it stops.
set -euo pipefail

BUILD=${BUILD:-build}
bin="$BUILD/bin"
demo_dir="$BUILD/demo"
model="$demo_dir/tiny-llama.gguf"
pack="$demo_dir/packed"
pids=()

stop_all() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_all EXIT

for prog in genmodel moeshard expertd; do
    if [ ! -x "$bin/$prog" ]; then
        echo "demo: $bin/$prog is missing; build it first with: make BUILD=$BUILD" >&2
        exit 1
    fi
done

mkdir -p "$demo_dir"

echo "demo: generating a tiny Mixtral-shaped model (2 layers, 4 experts, 2 used per token, random weights) into $model ..."
"$bin/genmodel" --arch llama --out "$model"

echo "demo: generating 48 tokens after the prompt \"Once upon a time\" in one process (temperature 0.8, seed 42) ..."
"$bin/moeshard" run --model "$model" --prompt "Once upon a time" -n 48 --temp 0.8 --seed 42
echo

echo "demo: packing the model for 2 expert hosts into $pack ..."
"$bin/moeshard" pack "$model" --hosts 2 --out "$pack" --force

# free loopback ports: the kernel's choice of an ephemeral port, probed by bash's /dev/tcp
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "demo: no free loopback port found" >&2
    return 1
}

wait_for() { # wait_for LOGFILE PATTERN WHAT
    for _ in $(seq 1 150); do
        grep -q "$2" "$1" && return 0
        sleep 0.1
    done
    echo "demo: $3 did not start; its log:" >&2
    cat "$1" >&2
    return 1
}

# Keys: one pair per process. Each side admits the public keys it is given:
# the hosts admit the coordinator, the coordinator admits the client, and the
# coordinator and the client know the server keys they talk to.
keys="$demo_dir/keys"
mkdir -p "$keys"
echo "demo: making CURVE key pairs for the coordinator, 2 hosts and a client in $keys (moeshard keygen) ..."
for name in coordinator host-0 host-1 client; do
    "$bin/moeshard" keygen --out "$keys/$name" --force >/dev/null
done
pubkey() { grep -v '^#' "$keys/$1.pub"; }
echo "$(pubkey coordinator) coordinator" >"$keys/hosts.allow"
echo "$(pubkey client) demo-client" >"$keys/clients.allow"
: >"$keys/host-keys"

hosts=""
for k in 0 1; do
    port=$(free_port)
    echo "demo: starting expertd $k on tcp://127.0.0.1:$port with $pack/host-$k.gguf ..."
    "$bin/expertd" --listen "tcp://127.0.0.1:$port" --model "$pack/host-$k.gguf" --threads 1 \
        --key "$keys/host-$k.key" --allow "$keys/hosts.allow" 2>"$demo_dir/expertd-$k.log" &
    pids+=($!)
    wait_for "$demo_dir/expertd-$k.log" "serving " "expertd $k"
    hosts="${hosts:+$hosts,}tcp://127.0.0.1:$port"
    echo "tcp://127.0.0.1:$port $(pubkey "host-$k")" >>"$keys/host-keys"
done

cport=$(free_port)
echo "demo: starting the coordinator on tcp://127.0.0.1:$cport, experts on $hosts ..."
"$bin/moeshard" serve --model "$pack" --hosts "$hosts" --listen "tcp://127.0.0.1:$cport" --threads 2 \
    --key "$keys/coordinator.key" --allow "$keys/clients.allow" --host-keys "$keys/host-keys" \
    2>"$demo_dir/serve.log" &
pids+=($!)
wait_for "$demo_dir/serve.log" "serving" "the coordinator"

echo "demo: submitting the same prompt through the client (moeshard generate) ..."
client_keys=(--key "$keys/client.key" --server-key "$keys/coordinator.pub")
"$bin/moeshard" generate --server "tcp://127.0.0.1:$cport" "${client_keys[@]}" -n 48 --temp 0.8 --seed 42 \
    "Once upon a time"
echo
echo "demo: the cluster as the coordinator sees it (moeshard status):"
"$bin/moeshard" status --server "tcp://127.0.0.1:$cport" "${client_keys[@]}"

stop_all
echo
echo "demo: done. The weights are random, so the text is noise; what it shows is the whole path"
echo "demo: working: GGUF loading, tokenizer, attention, expert routing over the network, sampling and"
echo "demo: streaming; the cluster's text equals the single-process text for the same seed."
echo "demo: every link used CURVE: encrypted, and only the allowed keys got in (docs/security.md)."
