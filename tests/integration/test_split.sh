#!/usr/bin/env bash
# Split GGUF models (llama.cpp's gguf-split layout): a tiny model written
# whole and in 3 parts gives byte-identical greedy `moeshard run` output and
# logits, the same tokens and inspect summary; `moeshard pack` of the split
# model makes shards that expertd serves with the embedded output; expertd
# also serves the split model directly; a missing part is one clear error.
# Every process is bounded by timeout; daemons are killed by pid.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T=60
PROMPT="The quick brown fox jumps over the lazy dog"

start_host() { # NAME MODEL ENDPOINT: one expertd on loopback, its pid kept
    timeout "$T" "$BIN/expertd" --listen "$3" --model "$2" --threads 1 --plaintext 2>"$tmp/$1.log" &
    pids+=($!)
}

run_model() { # OUT MODEL [options]: 48 greedy tokens, logits to OUT.npy
    local out=$1 model=$2
    shift 2
    timeout "$T" "$BIN/moeshard" run --model "$model" -p "$PROMPT" -n 48 --temp 0 --threads 1 \
        --dump-logits "$out.npy" "$@" >"$out.txt" 2>"$out.err" || fail "run $out failed: $(cat "$out.err")"
}

max_diff() {
    "$PY" - "$1" "$2" <<'PYEOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
assert a.shape == b.shape and a.shape[0] > 48, (a.shape, b.shape)
print("%.3g" % float(np.abs(a.astype(np.float64) - b).max()))
PYEOF
}

same_as() { # NAME REF: same tokens, logits within 1e-4 (f32 wire)
    cmp -s "$tmp/$1.txt" "$tmp/$2.txt" || fail "$1: tokens differ from $2"
    local d
    d=$(max_diff "$tmp/$1.npy" "$tmp/$2.npy")
    echo "$1: max logit difference to $2 $d"
    "$PY" -c "import sys; sys.exit(0 if float('$d') <= 1e-4 else 1)" || fail "$1: logits differ by $d"
}

# ---- the same model, whole and in 3 parts ----
timeout "$T" "$BIN/genmodel" --arch qwen2moe --out "$tmp/whole.gguf" 2>/dev/null || fail "genmodel whole"
mkdir "$tmp/split"
timeout "$T" "$BIN/genmodel" --arch qwen2moe --split 3 --out "$tmp/split/m-00001-of-00003.gguf" 2>/dev/null \
    || fail "genmodel --split 3"
for k in 1 2 3; do
    [ -s "$tmp/split/m-0000$k-of-00003.gguf" ] || fail "part $k was not written"
done
[ "$(find "$tmp/split" -type f | wc -l)" -eq 3 ] || fail "genmodel --split 3 wrote $(ls "$tmp/split")"
# An independent GGUF header reader (metadata only), for the checks below.
cat >"$tmp/ghead.py" <<'PYEOF'
import struct
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
def header(path):
    """(tensor count, {key: (type id, value)}); strings decoded, arrays as None."""
    with open(path, "rb") as f:
        b = f.read(1 << 22)
    magic, ver, nt, nkv = struct.unpack_from("<IIQQ", b, 0)
    assert magic == 0x46554747 and ver == 3
    pos, kv = 24, {}
    def string(pos):
        (n,) = struct.unpack_from("<Q", b, pos)
        return b[pos + 8:pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n
    for _ in range(nkv):
        key, pos = string(pos)
        (t,) = struct.unpack_from("<I", b, pos); pos += 4
        if t == 8:
            v, pos = string(pos); kv[key] = (t, v)
        elif t == 9:
            at, an = struct.unpack_from("<IQ", b, pos); pos += 12
            for _ in range(an):
                pos = string(pos)[1] if at == 8 else pos + SIZES[at]
            kv[key] = (t, None)
        else:
            kv[key] = (t, struct.unpack_from("<" + FMT[t], b, pos)[0]); pos += SIZES[t]
    return nt, kv
PYEOF
# The split keys as llama.cpp writes them, and the tensors divided among the parts.
PYTHONPATH="$tmp" "$PY" - "$tmp/whole.gguf" "$tmp"/split/m-0000{1,2,3}-of-00003.gguf <<'PYEOF' || fail "split keys"
import sys
from ghead import header
whole_n, _ = header(sys.argv[1])
total = 0
for i, p in enumerate(sys.argv[2:]):
    n, kv = header(p)
    assert kv["split.no"] == (2, i), kv["split.no"]            # uint16
    assert kv["split.count"] == (2, 3), kv["split.count"]      # uint16
    assert kv["split.tensors.count"] == (5, whole_n)           # int32
    assert ("general.architecture" in kv) == (i == 0)
    assert n > 0
    total += n
assert total == whole_n, (total, whole_n)
print("split keys ok: %d tensors in 3 parts" % total)
PYEOF

run_model "$tmp/whole" "$tmp/whole.gguf"
run_model "$tmp/split1" "$tmp/split/m-00001-of-00003.gguf"
run_model "$tmp/split3" "$tmp/split/m-00003-of-00003.gguf"   # any part names the model
for r in split1 split3; do
    cmp "$tmp/whole.txt" "$tmp/$r.txt" || fail "$r: text differs from the whole model's"
    cmp "$tmp/whole.npy" "$tmp/$r.npy" || fail "$r: logits are not byte-identical to the whole model's"
done
echo "run: split model output byte-identical to the whole model's"

tw=$(timeout "$T" "$BIN/moeshard" tokenize --model "$tmp/whole.gguf" "$PROMPT")
ts=$(timeout "$T" "$BIN/moeshard" tokenize --model "$tmp/split/m-00002-of-00003.gguf" "$PROMPT")
[ "$tw" = "$ts" ] || fail "tokenize differs: '$tw' vs '$ts'"

timeout "$T" "$BIN/moeshard" inspect --tensors "$tmp/split/m-00001-of-00003.gguf" >"$tmp/inspect.txt" \
    || fail "inspect split: $(cat "$tmp/inspect.txt")"
grep -q "split model in 3 parts" "$tmp/inspect.txt" || fail "inspect: $(head -5 "$tmp/inspect.txt")"
grep -q "^  part 3 .*m-00003-of-00003.gguf" "$tmp/inspect.txt" || fail "inspect lists no part 3"
grep -q "^architecture  qwen2moe" "$tmp/inspect.txt" || fail "inspect: the split model is not runnable"

# ---- pack the split model; expertd serves its shards like the whole model's ----
timeout "$T" "$BIN/moeshard" pack "$tmp/split/m-00002-of-00003.gguf" --hosts 2 --out "$tmp/pack" >"$tmp/pack.out" \
    2>&1 || fail "pack split: $(cat "$tmp/pack.out")"
timeout "$T" "$BIN/moeshard" pack "$tmp/whole.gguf" --hosts 2 --out "$tmp/pack-whole" >/dev/null 2>&1 \
    || fail "pack whole"
# The same tensors with the same SHA-256 digests (only the recorded source
# name differs), and no split.* keys in the one-file dense part.
PYTHONPATH="$tmp" "$PY" - "$tmp/pack" "$tmp/pack-whole" <<'PYEOF' || fail "pack of the split model differs"
import sys
from ghead import header
for f in ("dense.gguf", "host-0.gguf", "host-1.gguf"):
    a = header(sys.argv[1] + "/" + f)[1]
    b = header(sys.argv[2] + "/" + f)[1]
    da = {k: v for k, v in a.items() if "sha256" in k}
    db = {k: v for k, v in b.items() if "sha256" in k}
    assert da and da == db, f
    assert not any(k.startswith("split.") for k in a), f
print("pack: the split model's shards equal the whole model's (SHA-256 of every tensor)")
PYEOF
read -r -a ports < <(free_ports 3)
start_host h0 "$tmp/pack/host-0.gguf" "tcp://127.0.0.1:${ports[0]}"
start_host h1 "$tmp/pack/host-1.gguf" "tcp://127.0.0.1:${ports[1]}"
start_host full "$tmp/split/m-00003-of-00003.gguf" "tcp://127.0.0.1:${ports[2]}"  # the split model itself
wait_hosts h0 h1 full
run_model "$tmp/cluster" "$tmp/pack" --hosts "tcp://127.0.0.1:${ports[0]},tcp://127.0.0.1:${ports[1]}" --plaintext
same_as cluster whole
run_model "$tmp/direct" "$tmp/split/m-00001-of-00003.gguf" --hosts "tcp://127.0.0.1:${ports[2]}" --plaintext
same_as direct whole
stop_pids

# ---- a missing part is one error naming it ----
rm "$tmp/split/m-00002-of-00003.gguf"
set +e
timeout "$T" "$BIN/moeshard" run --model "$tmp/split/m-00001-of-00003.gguf" -p hi -n 2 >/dev/null 2>"$tmp/miss.err"
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "missing part: exit $rc, expected 1"
grep -q "m-00002-of-00003.gguf.*missing" "$tmp/miss.err" || fail "missing part: $(cat "$tmp/miss.err")"
echo "split: all checks passed"
