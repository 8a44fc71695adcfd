#!/usr/bin/env bash
# moeshard plan: the numbers it prints for a tiny model (whole and split)
# against values computed here from the GGUF tensor infos and the formulas of
# docs/plan.md; a case that does not fit (exit 1 and the smallest host count,
# computed here); DeepSeek-V3's shapes at Q4_K from a header-only file, with
# the expert bytes computed from the published shapes; usage errors (exit 2).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T=60

# An independent GGUF header reader: metadata and tensor infos.
cat >"$tmp/ghead.py" <<'PYEOF'
import struct
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
# ggml type id: (elements per block, bytes per block), from the GGUF/ggml spec
BLOCKS = {0: (1, 4), 1: (1, 2), 8: (32, 34), 12: (256, 144), 14: (256, 210), 30: (1, 2)}
def header(path):
    """({key: value}, [(name, ne, nbytes)])"""
    with open(path, "rb") as f:
        b = f.read(1 << 24)
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
            kv[key], pos = string(pos)
        elif t == 9:
            at, an = struct.unpack_from("<IQ", b, pos); pos += 12
            for _ in range(an):
                pos = string(pos)[1] if at == 8 else pos + SIZES[at]
            kv[key] = None
        else:
            kv[key] = struct.unpack_from("<" + FMT[t], b, pos)[0]; pos += SIZES[t]
    tensors = []
    for _ in range(nt):
        name, pos = string(pos)
        (nd,) = struct.unpack_from("<I", b, pos); pos += 4
        ne = list(struct.unpack_from("<%dQ" % nd, b, pos)); pos += 8 * nd
        typ, _off = struct.unpack_from("<IQ", b, pos); pos += 12
        per, size = BLOCKS[typ]
        elems = 1
        for d in ne:
            elems *= d
        tensors.append((name, ne, elems // per * size))
    return kv, tensors
PYEOF

# check.py MODEL HOSTS GIB RESERVE REPLICAS WIRE_BYTES EXIT OUTPUT: recomputes
# what plan must print and compares.
cat >"$tmp/check.py" <<'PYEOF'
import math, re, sys
from ghead import header
model, n, gib, reserve, r, wb, code, out = sys.argv[1:]
n, reserve, r, wb, code, gib = int(n), int(reserve), int(r), int(wb), int(code), float(gib)
text = open(out).read()
kv, tensors = header(model)
arch = kv["general.architecture"]
E, k, d = kv[arch + ".expert_count"], kv[arch + ".expert_used_count"], kv[arch + ".embedding_length"]
L = kv[arch + ".block_count"]
lead = kv.get(arch + ".leading_dense_block_count", 0)
exps = [t for t in tensors if re.fullmatch(r"blk\.\d+\.ffn_(gate|up|down)_exps\.weight", t[0])]
expert = sum(t[2] for t in exps)
dense = sum(t[2] for t in tensors) - expert
slice_b = sum(t[2] for t in exps if t[0].startswith("blk.%d." % lead)) // E
slices = (L - lead) * E
def need(pat, what):
    m = re.search(pat, text)
    assert m, "no %s in:\n%s" % (what, text)
    return m
assert int(need(r"dense (\d+) bytes", "dense bytes").group(1)) == dense
assert int(need(r"experts (\d+) bytes", "expert bytes").group(1)) == expert
assert int(need(r"slice +(\d+) bytes", "slice bytes").group(1)) == slice_b
assert int(need(r"; (\d+) slices", "slice count").group(1)) == slices
# KV cache: latent + rope key per token and layer under latent attention, K and V otherwise
if kv.get(arch + ".attention.kv_lora_rank"):
    floats = kv[arch + ".attention.kv_lora_rank"] + kv[arch + ".rope.dimension_count"]
else:
    floats = kv[arch + ".attention.head_count_kv"] * (kv[arch + ".attention.key_length"] + kv[arch + ".attention.value_length"])
assert int(need(r"KV cache (\d+) bytes \([^)]*\) per 4096", "kv").group(1)) == floats * 2 * L * 4096  # f16
usable = int(gib * 2**30) // 100 * (100 - reserve)
assert int(need(r"(\d+) bytes \([^)]*\) usable", "usable").group(1)) == usable
# equal slices: the greedy placement deals copies round robin, so loads differ by one slice at most
copies = slices * r
hosts = re.findall(r"host (\d+) +(\d+) slices, (\d+) bytes", text)
assert len(hosts) == n, hosts
for h, s, b in hosts:
    want = copies // n + (1 if int(h) < copies % n else 0)
    assert int(s) == want and int(b) == want * slice_b, (h, s, b, want)
touched = n * (1 - (1 - 1 / n) ** k)
assert abs(float(need(r"touch ([\d.]+) of", "hosts touched").group(1)) - touched) < 1e-3
act = touched * 2 * d * wb
assert abs(int(need(r"activations (\d+)", "activation bytes").group(1)) - act) <= 1
best = next(m for m in range(r, 1025) if math.ceil(copies / m) * slice_b <= usable)
assert int(need(r"smallest host count that fits: (\d+) host", "smallest").group(1)) == best
fits = math.ceil(copies / n) * slice_b <= usable
assert code == (0 if fits else 1), (code, fits)
assert ("result        fits on" in text) == fits
print("%s: %d hosts x %g GiB, R=%d: %s; expert bytes %d, smallest %d hosts" % (model.split("/")[-1], n, gib, r,
      "fits" if fits else "does not fit", expert, best))
PYEOF

plan() { # OUT MODEL [options]: runs plan, keeps its exit status in $rc
    local out=$1 model=$2
    shift 2
    set +e
    timeout "$T" "$BIN/moeshard" plan --model "$model" "$@" >"$out" 2>"$out.err"
    rc=$?
    set -e
}

check() { # OUT MODEL HOSTS GIB RESERVE REPLICAS WIRE_BYTES
    PYTHONPATH="$tmp" "$PY" "$tmp/check.py" "$2" "$3" "$4" "$5" "$6" "$7" "$rc" "$1" \
        || fail "plan output for $2 (exit $rc):\n$(cat "$1" "$1.err")"
}

# ---- a tiny model, whole and split ----
timeout "$T" "$BIN/genmodel" --arch qwen3moe --out "$tmp/q.gguf" 2>/dev/null || fail genmodel
timeout "$T" "$BIN/genmodel" --arch qwen3moe --split 3 --out "$tmp/qs-00001-of-00003.gguf" 2>/dev/null \
    || fail "genmodel --split"
plan "$tmp/q1" "$tmp/q.gguf" --hosts 3 --host-memory 1
[ "$rc" -eq 0 ] || fail "tiny plan exit $rc: $(cat "$tmp/q1.err")"
check "$tmp/q1" "$tmp/q.gguf" 3 1 10 1 4
plan "$tmp/q2" "$tmp/q.gguf" --hosts 4 --host-memory 1 --replicas 2 --wire bf16
check "$tmp/q2" "$tmp/q.gguf" 4 1 10 2 2
plan "$tmp/qs" "$tmp/qs-00002-of-00003.gguf" --hosts 4 --host-memory 1 --replicas 2 --wire bf16
diff <(tail -n +2 "$tmp/q2") <(tail -n +2 "$tmp/qs") >/dev/null || fail "the split model plans differently"
grep -q "(3 files;" "$tmp/qs" || fail "plan does not say the model has 3 files: $(head -1 "$tmp/qs")"

# A deepseek2 tiny model: leading dense layers are not placed.
timeout "$T" "$BIN/genmodel" --arch deepseek2 --variant v3 --out "$tmp/ds-tiny.gguf" 2>/dev/null || fail "genmodel ds"
plan "$tmp/d1" "$tmp/ds-tiny.gguf" --hosts 2 --host-memory 1 --wire f16
check "$tmp/d1" "$tmp/ds-tiny.gguf" 2 1 10 1 2

# ---- does not fit: 1 MiB hosts with 90% reserved ----
plan "$tmp/nf" "$tmp/q.gguf" --hosts 3 --host-memory 0.0009765625 --reserve 90
[ "$rc" -eq 1 ] || fail "not fitting: exit $rc, expected 1"
check "$tmp/nf" "$tmp/q.gguf" 3 0.0009765625 90 1 4
grep -q "DOES NOT FIT" "$tmp/nf" || fail "no DOES NOT FIT line"
grep -q "does not fit on 3 hosts.*smallest host count that fits: [0-9]* hosts" "$tmp/nf.err" \
    || fail "stderr: $(cat "$tmp/nf.err")"
plan "$tmp/nf2" "$tmp/q.gguf" --hosts 3 --host-memory 0.0009765625 --reserve 90 --replicas 2
[ "$rc" -eq 1 ] || fail "not fitting R=2: exit $rc"
check "$tmp/nf2" "$tmp/q.gguf" 3 0.0009765625 90 2 4

# ---- DeepSeek-V3 shapes at Q4_K, header only ----
timeout "$T" "$BIN/genmodel" --arch deepseek2 --shape deepseek-v3 --header-only --type q4_k \
    --out "$tmp/dsv3.gguf" 2>/dev/null || fail "genmodel deepseek-v3 header"
set +e
timeout "$T" "$BIN/moeshard" inspect "$tmp/dsv3.gguf" >/dev/null 2>"$tmp/insp.err"
irc=$?
set -e
[ "$irc" -eq 1 ] && grep -q "past end of file" "$tmp/insp.err" || fail "a header-only file must not open normally"
plan "$tmp/v3" "$tmp/dsv3.gguf" --hosts 8 --host-memory 64 --wire bf16
[ "$rc" -eq 0 ] || fail "DeepSeek-V3 on 8 x 64 GiB: exit $rc: $(cat "$tmp/v3.err")"
check "$tmp/v3" "$tmp/dsv3.gguf" 8 64 10 1 2
# From the published configuration, not from the file: 58 MoE layers x 256
# experts x (gate + up + down: 3 x 7168 x 2048 weights) in Q4_K (144 bytes per 256).
"$PY" - "$tmp/v3" <<'PYEOF' || fail "DeepSeek-V3 sizes: $(cat "$tmp/v3")"
import re, sys
text = open(sys.argv[1]).read()
expert = 58 * 256 * 3 * 7168 * 2048 * 144 // 256
got = int(re.search(r"experts (\d+) bytes", text).group(1))
assert got == expert, (got, expert)
dense = int(re.search(r"dense (\d+) bytes", text).group(1))
total_gb = (dense + expert) / 1e9
assert abs(total_gb - 377) / 377 < 0.03, total_gb      # DeepSeek-V3 at 4.5 bits per weight: ~377 GB
assert "layers 3-60: experts 0-248/8" in text           # host 0: every 8th expert of every MoE layer
assert re.search(r"KV cache %d bytes" % (61 * 4096 * 576 * 2), text)
print("DeepSeek-V3 Q4_K: experts %.1f GiB, model %.1f GB" % (expert / 2**30, total_gb))
PYEOF
plan "$tmp/v3r2" "$tmp/dsv3.gguf" --hosts 8 --host-memory 64 --replicas 2
[ "$rc" -eq 1 ] || fail "DeepSeek-V3 twice on 8 x 64 GiB must not fit (exit $rc)"
check "$tmp/v3r2" "$tmp/dsv3.gguf" 8 64 10 2 4

# ---- usage ----
for args in "--hosts 2 --host-memory 1" "--model $tmp/q.gguf --host-memory 1" "--model $tmp/q.gguf --hosts 2" \
            "--model $tmp/q.gguf --hosts 2 --host-memory 1 --replicas 3" \
            "--model $tmp/q.gguf --hosts 2 --host-memory 1 --wire f8" \
            "--model $tmp/q.gguf --hosts 0 --host-memory 1" "--model $tmp/q.gguf --hosts 2 --host-memory -1" \
            "--model $tmp/q.gguf --hosts 2 --host-memory 1 extra"; do
    set +e
    # shellcheck disable=SC2086
    timeout "$T" "$BIN/moeshard" plan $args >/dev/null 2>&1
    urc=$?
    set -e
    [ "$urc" -eq 2 ] || fail "plan $args: exit $urc, expected 2"
done
timeout "$T" "$BIN/moeshard" plan --help | grep -q "host-memory" || fail "plan --help"
plan "$tmp/missing" "$tmp/nothere.gguf" --hosts 2 --host-memory 1
[ "$rc" -eq 1 ] && grep -q "nothere.gguf" "$tmp/missing.err" || fail "a missing model: exit $rc"
echo "plan: all checks passed"
