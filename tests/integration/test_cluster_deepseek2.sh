#!/usr/bin/env bash
# deepseek2 on the cluster, loopback only: a tiny v3 model (a leading dense
# layer computed on the coordinator, then MoE layers with shared experts and
# grouped sigmoid routing) packed for 3 hosts, 3 expertd on 127.0.0.1, and
# `moeshard run --hosts` must print the same 32 greedy tokens as the embedded
# run, logits within 1e-4 (f32 wire). Every process is bounded by a timeout
# and stopped by its pid; only what this script created is removed.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUN_TIMEOUT=60
HOST_TIMEOUT=120 # an expertd outliving the test is stopped by its timeout
PROMPT="The quick brown fox jumps over the lazy dog"

for b in genmodel moeshard expertd; do
    [ -x "$BIN/$b" ] || fail "$BIN/$b is missing; build it first ('make')"
done
# loopback links need no encryption; builds with CURVE support ask for that explicitly
plain=()
"$BIN/expertd" --help 2>&1 | grep -q -- --plaintext && plain=(--plaintext)

# run_model OUT MODEL [options...]: 32 greedy tokens; stdout to OUT.txt, logits to OUT.npy.
run_model() {
    local out=$1 model=$2
    shift 2
    timeout "$RUN_TIMEOUT" "$BIN/moeshard" run --model "$model" -p "$PROMPT" -n 32 --temp 0 \
        --dump-logits "$out.npy" "$@" >"$out.txt" 2>"$out.err" || fail "run $out failed: $(cat "$out.err")"
}

"$BIN/genmodel" --arch deepseek2 --variant v3 --type f32 --out "$tmp/ds.gguf" >/dev/null 2>&1 || fail "genmodel"
"$BIN/moeshard" pack "$tmp/ds.gguf" --hosts 3 --replicas 1 --out "$tmp/p" >"$tmp/pack.log" 2>&1 \
    || fail "pack: $(cat "$tmp/pack.log")"
# the leading dense layer has no slices: no host file may name layer 0
"$PY" - "$tmp/p/plan.json" <<'PYEOF' || fail "plan.json places slices of the dense layer 0"
import json, sys
plan = json.load(open(sys.argv[1]))
layers = {s[0] for h in plan["host_files"] for s in h["slices"]}
sys.exit(0 if layers and 0 not in layers else 1)
PYEOF

run_model "$tmp/embedded" "$tmp/ds.gguf"

read -r -a ports < <(free_ports 3)
H=""
for k in 0 1 2; do
    ep="tcp://127.0.0.1:${ports[$k]}"
    timeout "$HOST_TIMEOUT" "$BIN/expertd" --listen "$ep" --model "$tmp/p/host-$k.gguf" --threads 1 \
        "${plain[@]}" 2>"$tmp/h$k.log" &
    pids+=($!)
    H+="${H:+,}$ep"
done
wait_hosts h0 h1 h2

run_model "$tmp/cluster" "$tmp/p" --hosts "$H" "${plain[@]}"
cmp -s "$tmp/cluster.txt" "$tmp/embedded.txt" || fail "the cluster's tokens differ from the embedded run"
diff=$("$PY" - "$tmp/cluster.npy" "$tmp/embedded.npy" <<'PYEOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]).astype(np.float64), np.load(sys.argv[2])
assert a.shape == b.shape and a.shape[0] >= 32, (a.shape, b.shape)
assert (a.argmax(axis=1) == b.argmax(axis=1)).all(), "greedy tokens differ"
print("%.3g" % float(np.abs(a - b).max()))
PYEOF
) || fail "logit dumps differ: $diff"
echo "deepseek2 v3 on 3 hosts: 32 greedy tokens identical, max logit difference to embedded $diff"
"$PY" -c "import sys; sys.exit(0 if float('$diff') <= 1e-4 else 1)" || fail "logits differ by $diff"
echo "test_cluster_deepseek2: ok"
