#!/usr/bin/env bash
# The cluster on one machine: tiny models packed for 3 hosts, 3 expertd on
# 127.0.0.1, and `moeshard run --hosts` must print the same greedy tokens as
# the embedded run with logits within 1e-4 (f32 wire); bf16 wire within a
# loose bound; replicas; the errors for a dead endpoint and a missing host.
# Then, where network namespaces work, the same with each expertd in its own
# namespace. Kills only the pids it started; removes only what it created.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUN_TIMEOUT=60
PROMPT="The quick brown fox jumps over the lazy dog"

# start_host NAME MODEL ENDPOINT [NETNS]: one expertd; its pid joins pids.
# Plaintext on loopback; the namespace part below sets CURVE keys.
host_sec=(--plaintext)
start_host() {
    local name=$1 model=$2 ep=$3 ns=${4:-}
    if [ -n "$ns" ]; then
        ip netns exec "$ns" "$BIN/expertd" --listen "$ep" --model "$model" --threads 1 "${host_sec[@]}" \
            2>"$tmp/$name.log" &
    else
        "$BIN/expertd" --listen "$ep" --model "$model" --threads 1 "${host_sec[@]}" 2>"$tmp/$name.log" &
    fi
    pids+=($!)
}

# run_model OUT MODEL [options...]: 64 greedy tokens; stdout to OUT.txt, logits to OUT.npy.
run_model() {
    local out=$1 model=$2
    shift 2
    timeout "$RUN_TIMEOUT" "$BIN/moeshard" run --model "$model" -p "$PROMPT" -n 64 --temp 0 \
        --dump-logits "$out.npy" "$@" >"$out.txt" 2>"$out.err" || fail "run $out failed: $(cat "$out.err")"
}

# max |a - b| over two logit dumps of the same shape, printed.
max_diff() {
    "$PY" - "$1" "$2" <<'PYEOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
assert a.shape == b.shape and a.shape[0] > 64, (a.shape, b.shape)
print("%.3g %.3g" % (float(np.abs(a.astype(np.float64) - b).max()), float(np.abs(b).max())))
PYEOF
}

# Like max_diff over the rows up to and including the first whose greedy
# choice differs (after it the two runs continue from different tokens).
prefix_diff() {
    "$PY" - "$1" "$2" <<'PYEOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]).astype(np.float64), np.load(sys.argv[2])
assert a.shape == b.shape, (a.shape, b.shape)
flips = np.nonzero(a.argmax(axis=1) != b.argmax(axis=1))[0]
n = int(flips[0]) + 1 if len(flips) else a.shape[0]
what = "all %d rows, same tokens" % n if not len(flips) else "%d of %d rows, first greedy flip at row %d" % (n, a.shape[0], n - 1)
print("%.3g %.3g %s" % (float(np.abs(a[:n] - b[:n]).max()), float(np.abs(b[:n]).max()), what))
PYEOF
}

# same_as_embedded NAME REF: tokens identical, logits within 1e-4.
same_as_embedded() {
    local name=$1 ref=$2
    cmp -s "$tmp/$name.txt" "$tmp/$ref.txt" || fail "$name: tokens differ from the embedded run"
    read -r diff _ < <(max_diff "$tmp/$name.npy" "$tmp/$ref.npy")
    echo "$name: max logit difference to embedded $diff"
    "$PY" -c "import sys; sys.exit(0 if float('$diff') <= 1e-4 else 1)" || fail "$name: logits differ by $diff"
}

hosts_of() { # endpoints for ports on host address $1
    local addr=$1 out="" p
    shift
    for p in "$@"; do out+="${out:+,}tcp://$addr:$p"; done
    echo "$out"
}

# ---- loopback: llama and qwen2moe, replicas 1 ----
for arch in llama qwen2moe; do
    "$BIN/genmodel" --arch "$arch" --type f32 --out "$tmp/$arch.gguf" >/dev/null 2>&1 || fail "genmodel $arch"
    "$BIN/moeshard" pack "$tmp/$arch.gguf" --hosts 3 --replicas 1 --out "$tmp/$arch-p1" >/dev/null \
        || fail "pack $arch"
    run_model "$tmp/$arch-embedded" "$tmp/$arch.gguf"
    read -r -a ports < <(free_ports 3)
    for k in 0 1 2; do start_host "$arch-h$k" "$tmp/$arch-p1/host-$k.gguf" "tcp://127.0.0.1:${ports[$k]}"; done
    wait_hosts "$arch-h0" "$arch-h1" "$arch-h2"
    H=$(hosts_of 127.0.0.1 "${ports[@]}")
    run_model "$tmp/$arch-pack" "$tmp/$arch-p1" --hosts "$H" --plaintext
    same_as_embedded "$arch-pack" "$arch-embedded"
    if [ "$arch" = llama ]; then # the bench's empty-dispatch round trip (bench/rttbench.c) against these hosts
        timeout "$RUN_TIMEOUT" "$BIN/rttbench" --hosts "$H" --rounds 50 --warmup 5 >"$tmp/rtt.out" 2>"$tmp/rtt.err" ||
            fail "rttbench: $(cat "$tmp/rtt.err")"
        grep -Eq '^rtt_hosts=3 rtt_tokens=1 rtt_wire=f32 rtt_rounds=50 rtt_us_mean=[0-9.]+ rtt_us_median=[0-9.]+ rtt_us_p90=[0-9.]+ rtt_us_min=[0-9.]+$' \
            "$tmp/rtt.out" || fail "rttbench printed: $(cat "$tmp/rtt.out")"
        echo "rttbench: $(cat "$tmp/rtt.out")"
    fi
    grep -q "experts on 3 hosts (wire f32)" "$tmp/$arch-pack.err" || fail "summary: $(cat "$tmp/$arch-pack.err")"
    run_model "$tmp/$arch-full" "$tmp/$arch.gguf" --hosts "$H" --plaintext   # a full model: its experts unused
    same_as_embedded "$arch-full" "$arch-embedded"
    # bf16 halves the bytes and rounds each activation and partial sum to 8
    # significant bits (relative error <= 2^-9); through two layers of these
    # random weights that moves logits by a few 1e-2 of their magnitude. Once
    # a greedy choice flips the two runs continue from different text, so only
    # the rows up to the first flip are compared. The bound (5% of the largest
    # logit) only catches a broken conversion.
    run_model "$tmp/$arch-bf16" "$tmp/$arch-p1" --hosts "$H" --wire bf16 --plaintext
    read -r diff mag rows < <(prefix_diff "$tmp/$arch-bf16.npy" "$tmp/$arch-embedded.npy")
    echo "$arch-bf16: max logit difference to embedded $diff (largest |logit| $mag; $rows)"
    "$PY" -c "import sys; sys.exit(0 if float('$diff') <= 0.05 * float('$mag') else 1)" \
        || fail "$arch bf16: logits differ by $diff"
    stop_pids
done

# ---- Q8_0: hosts lay out their slices 16 rows at a time after the digest check, as
# the process does with what it reads into memory, and give the process's products ----
"$BIN/genmodel" --arch llama --type q8_0 --out "$tmp/q8.gguf" >/dev/null 2>&1 || fail "genmodel llama q8_0"
"$BIN/moeshard" pack "$tmp/q8.gguf" --hosts 2 --replicas 1 --out "$tmp/q8-p1" >/dev/null || fail "pack q8_0"
run_model "$tmp/q8-embedded" "$tmp/q8.gguf"
read -r -a ports < <(free_ports 2)
for k in 0 1; do start_host "q8-h$k" "$tmp/q8-p1/host-$k.gguf" "tcp://127.0.0.1:${ports[$k]}"; done
wait_hosts q8-h0 q8-h1
for k in 0 1; do
    grep -q "laid out [1-9][0-9]* Q8_0 matrices 16 rows at a time" "$tmp/q8-h$k.log" ||
        fail "host $k did not lay out its Q8_0 slices: $(cat "$tmp/q8-h$k.log")"
done
run_model "$tmp/q8-pack" "$tmp/q8-p1" --hosts "$(hosts_of 127.0.0.1 "${ports[@]}")" --plaintext
same_as_embedded q8-pack q8-embedded
stop_pids

# ---- replicas 2 over 3 hosts: all three, then any two cover every slice ----
"$BIN/moeshard" pack "$tmp/qwen2moe.gguf" --hosts 3 --replicas 2 --out "$tmp/q-p2" >/dev/null || fail "pack R=2"
read -r -a ports < <(free_ports 3)
for k in 0 1 2; do start_host "q2-h$k" "$tmp/q-p2/host-$k.gguf" "tcp://127.0.0.1:${ports[$k]}"; done
wait_hosts q2-h0 q2-h1 q2-h2
run_model "$tmp/q2-all" "$tmp/q-p2" --hosts "$(hosts_of 127.0.0.1 "${ports[@]}")" --plaintext
same_as_embedded q2-all qwen2moe-embedded
run_model "$tmp/q2-two" "$tmp/q-p2" --hosts "$(hosts_of 127.0.0.1 "${ports[1]}" "${ports[2]}")" --plaintext
same_as_embedded q2-two qwen2moe-embedded
stop_pids

# ---- errors ----
set +e
read -r -a ports < <(free_ports 3)
start=$(date +%s)
timeout "$RUN_TIMEOUT" "$BIN/moeshard" run --model "$tmp/qwen2moe-p1" --hosts "tcp://127.0.0.1:${ports[0]}" \
    --plaintext --deadline-ms 2000 -p "x" -n 4 >/dev/null 2>"$tmp/dead.err"
rc=$?
elapsed=$(($(date +%s) - start))
[ $rc -eq 1 ] && grep -q "no Hello reply within 2000 ms from tcp://127.0.0.1:${ports[0]}" "$tmp/dead.err" \
    || fail "nothing listening: rc $rc: $(cat "$tmp/dead.err")"
[ $elapsed -le 6 ] || fail "nothing listening: took $elapsed s with a 2 s deadline"

for k in 0 1; do start_host "miss-h$k" "$tmp/qwen2moe-p1/host-$k.gguf" "tcp://127.0.0.1:${ports[$k]}"; done
wait_hosts miss-h0 miss-h1
timeout "$RUN_TIMEOUT" "$BIN/moeshard" run --model "$tmp/qwen2moe-p1" \
    --hosts "$(hosts_of 127.0.0.1 "${ports[@]}")" --plaintext --deadline-ms 2000 -p "x" -n 4 >/dev/null 2>"$tmp/miss.err"
rc=$?
[ $rc -eq 1 ] || fail "host-2 not started: rc $rc: $(cat "$tmp/miss.err")"
grep -q "no Hello reply within 2000 ms from tcp://127.0.0.1:${ports[2]} .*; without it, no live host holds" \
    "$tmp/miss.err" || fail "host-2 not started: $(cat "$tmp/miss.err")"
stop_pids
# the same two hosts, the third not even listed
for k in 0 1; do start_host "miss2-h$k" "$tmp/qwen2moe-p1/host-$k.gguf" "tcp://127.0.0.1:${ports[$k]}"; done
wait_hosts miss2-h0 miss2-h1
timeout "$RUN_TIMEOUT" "$BIN/moeshard" run --model "$tmp/qwen2moe-p1" \
    --hosts "$(hosts_of 127.0.0.1 "${ports[0]}" "${ports[1]}")" --plaintext -p "x" -n 4 >/dev/null 2>"$tmp/miss2.err"
rc=$?
set -e
[ $rc -eq 1 ] || fail "two of three hosts: rc $rc: $(cat "$tmp/miss2.err")"
# both messages list exactly host-2's slices (plan.json), compactly
for f in miss miss2; do
    "$PY" - "$tmp/qwen2moe-p1/plan.json" "$tmp/$f.err" <<'PYEOF' || fail "missing slices: $(cat "$tmp/$f.err")"
import json, re, sys
plan = json.load(open(sys.argv[1]))
msg = open(sys.argv[2]).read()
missing = {layer: ids for layer, ids in plan["host_files"][2]["slices"]}
n = sum(len(v) for v in missing.values())
m = re.search(r"no live host holds (.*) \((\d+) slices; hosts: ", msg)
assert m and int(m.group(2)) == n, msg
listed = {}
for part in m.group(1).split("; "):
    lm = re.fullmatch(r"layer (\d+) experts? ([\d,-]+)", part)
    assert lm, part
    ids = []
    for r in lm.group(2).split(","):
        a, _, b = r.partition("-")
        ids += list(range(int(a), int(b or a) + 1))
    listed[int(lm.group(1))] = ids
assert listed == missing, (listed, missing)
PYEOF
done
stop_pids
echo "loopback: ok"

# ---- network namespaces: each expertd in its own, the coordinator in a fourth ----
# Every address lives in a namespace this test creates (192.0.2.0/24, TEST-NET-1),
# so nothing is added to the root namespace's links, addresses or routes.
tag="ms$$"
if ! netns_hub "$tag"; then
    echo "skipping the network namespace part: 'ip netns add' is not permitted here"
    exit 0
fi
read -r -a ports < <(free_ports 3)
# beyond loopback plaintext is refused: the hosts and the coordinator use CURVE keys
"$BIN/moeshard" keygen --out "$tmp/coord" >/dev/null && "$BIN/moeshard" keygen --out "$tmp/host" >/dev/null \
    || fail "keygen"
grep -v '^#' "$tmp/coord.pub" >"$tmp/coord.allow"
host_sec=(--key "$tmp/host.key" --allow "$tmp/coord.allow")
: >"$tmp/hosts.keys"
H=""
for k in 0 1 2; do
    netns_host "$tag" $k
    start_host "ns-h$k" "$tmp/qwen2moe-p1/host-$k.gguf" "tcp://192.0.2.$((4 * k + 2)):${ports[$k]}" "${tag}h$k"
    H+="${H:+,}tcp://192.0.2.$((4 * k + 2)):${ports[$k]}"
    echo "tcp://192.0.2.$((4 * k + 2)):${ports[$k]} $(grep -v '^#' "$tmp/host.pub")" >>"$tmp/hosts.keys"
done
wait_hosts ns-h0 ns-h1 ns-h2
ip netns exec "${tag}c" timeout "$RUN_TIMEOUT" "$BIN/moeshard" run --model "$tmp/qwen2moe-p1" --hosts "$H" \
    --key "$tmp/coord.key" --host-keys "$tmp/hosts.keys" -p "$PROMPT" -n 64 --temp 0 --dump-logits "$tmp/ns.npy" >"$tmp/ns.txt" 2>"$tmp/ns.err" \
    || fail "run across namespaces: $(cat "$tmp/ns.err")"
same_as_embedded ns qwen2moe-embedded
echo "network namespaces: ok"
