#!/usr/bin/env bash
# moeshard run / tokenize / inspect from the command line on a tiny model:
# usage errors, determinism, thread-count and batch-size invariance of logits,
# the same logits from weights read into memory and from the file's mapping.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN/genmodel" --arch qwen2moe --type f32 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel failed"
M="$tmp/m.gguf"

# usage errors exit 2 with a message naming the problem
set +e
"$BIN/moeshard" >/dev/null 2>"$tmp/err"; [ $? -eq 2 ] || fail "no command should exit 2"
"$BIN/moeshard" frobnicate 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 2 ] && grep -q "unknown command 'frobnicate'" "$tmp/err" || fail "unknown command: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" run --model "$M" --prompt hi --bogus 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 2 ] && grep -q "unknown option '--bogus'" "$tmp/err" || fail "unknown option: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" run --model "$M" --prompt hi --temp abc 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 2 ] && grep -q -- "--temp expects" "$tmp/err" || fail "bad --temp: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" run --model "$M" --prompt hi --kv-type bf16 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 2 ] && grep -q -- "--kv-type expects f16 or f32, got 'bf16'" "$tmp/err" || fail "bad --kv-type: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" run --model "$M" 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 2 ] && grep -q -- "--prompt" "$tmp/err" || fail "missing prompt: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" run --model "$tmp/missing.gguf" --prompt hi 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 1 ] && grep -q "missing.gguf" "$tmp/err" || fail "missing model: rc $rc: $(cat "$tmp/err")"
head -c 1000 "$M" >"$tmp/trunc.gguf"
"$BIN/moeshard" run --model "$tmp/trunc.gguf" --prompt hi 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 1 ] && grep -q "trunc.gguf" "$tmp/err" || fail "truncated model: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" inspect "$tmp/trunc.gguf" 2>"$tmp/err" >/dev/null; rc=$?
[ $rc -eq 1 ] && grep -q "trunc.gguf" "$tmp/err" || fail "inspect truncated: rc $rc"
set -e
for cmd in run tokenize inspect; do
    "$BIN/moeshard" $cmd --help | grep -q "usage: moeshard $cmd" || fail "$cmd --help"
done

prompt="The quick brown fox jumps over the lazy dog. Once upon a time"
run() { "$BIN/moeshard" run --model "$M" --prompt "$prompt" -n 24 "$@"; }

# greedy is deterministic; the summary line has the speeds
run --temp 0 --threads 2 --dump-logits "$tmp/a.npy" >"$tmp/a.txt" 2>"$tmp/a.err"
grep -Eq 'prefill [0-9.]+ tok/s' "$tmp/a.err" && grep -Eq 'decode [0-9.]+ tok/s' "$tmp/a.err" \
    || fail "summary line: $(cat "$tmp/a.err")"
run --temp 0 --threads 2 >"$tmp/a2.txt" 2>/dev/null
cmp -s "$tmp/a.txt" "$tmp/a2.txt" || fail "greedy output differs between two runs"

# weights used from the file's mapping compute exactly what weights read into memory do
run --temp 0 --threads 2 --mmap --dump-logits "$tmp/m.npy" >"$tmp/m.txt" 2>/dev/null || fail "run --mmap failed"
cmp -s "$tmp/a.txt" "$tmp/m.txt" && cmp -s "$tmp/a.npy" "$tmp/m.npy" || fail "--mmap changed the output or the logits"
"$BIN/moeshard" run --help | grep -q -- "--mmap" || fail "run --help does not show --mmap"

# the KV cache in f32 takes twice the bytes of the default f16 one, and gives logits
# within the halves' rounding of the f16 cache's (test_reference checks both exactly)
run --temp 0 --threads 2 --kv-type f32 --dump-logits "$tmp/f.npy" >/dev/null 2>"$tmp/f.err" || fail "run --kv-type f32 failed"
grep -q 'kv-cache [0-9.]* MB f16,' "$tmp/a.err" || fail "the default summary does not name an f16 cache: $(cat "$tmp/a.err")"
run -n 1 --ctx 512 >/dev/null 2>"$tmp/k16.err" && run -n 1 --ctx 512 --kv-type f32 >/dev/null 2>"$tmp/k32.err" ||
    fail "run --ctx 512 failed: $(cat "$tmp/k16.err" "$tmp/k32.err")"
kv16=$(sed -n 's/.*kv-cache \([0-9.]*\) MB f16,.*/\1/p' "$tmp/k16.err")
kv32=$(sed -n 's/.*kv-cache \([0-9.]*\) MB f32,.*/\1/p' "$tmp/k32.err")
awk -v a="$kv16" -v b="$kv32" 'BEGIN { exit !(a > 0 && (b / a > 1.98) && (b / a < 2.02)) }' ||
    fail "kv-cache: f16 $kv16 MB, f32 $kv32 MB (want twice)"
n_kv=$("$BIN/moeshard" tokenize --model "$M" "$prompt" | wc -w)
"$PY" - "$tmp" "$n_kv" <<'PYEOF' || fail "f16 and f32 KV caches differ beyond the halves' rounding"
import sys, numpy as np
d, n = sys.argv[1], int(sys.argv[2])  # the prompt's rows: the same tokens on both sides
a, f = np.load(f"{d}/a.npy")[:n], np.load(f"{d}/f.npy")[:n]
delta = np.max(np.abs(a - f))
assert 0 < delta < 0.02 * np.max(np.abs(f)), (delta, np.max(np.abs(f)))
PYEOF

# one thread, and one token per prefill step, give the same logits
run --temp 0 --threads 1 --dump-logits "$tmp/b.npy" >"$tmp/b.txt" 2>/dev/null
run --temp 0 --threads 3 --batch 1 --dump-logits "$tmp/c.npy" >"$tmp/c.txt" 2>/dev/null
cmp -s "$tmp/a.txt" "$tmp/b.txt" || fail "output differs with 1 thread"
cmp -s "$tmp/a.txt" "$tmp/c.txt" || fail "output differs with --batch 1"
n_prompt=$("$BIN/moeshard" tokenize --model "$M" "$prompt" | wc -w)
"$PY" - "$tmp" "$n_prompt" <<'PYEOF' || fail "logits differ across threads/batch sizes"
import sys, numpy as np
d, n_prompt = sys.argv[1], int(sys.argv[2])
a, b, c = (np.load(f"{d}/{x}.npy") for x in "abc")
assert a.shape == (n_prompt + 23, a.shape[1]) and a.dtype == np.float32, a.shape
assert np.max(np.abs(a - b)) <= 1e-4, np.max(np.abs(a - b))
assert np.max(np.abs(a - c)) <= 1e-4, np.max(np.abs(a - c))
assert a.std() > 0.5, "logits should spread over several units"
PYEOF

# sampling: the same seed gives the same text, another seed (almost surely) another
run --temp 1.0 --seed 7 >"$tmp/s1.txt" 2>/dev/null
run --temp 1.0 --seed 7 >"$tmp/s2.txt" 2>/dev/null
run --temp 1.0 --seed 8 >"$tmp/s3.txt" 2>/dev/null
cmp -s "$tmp/s1.txt" "$tmp/s2.txt" || fail "same seed, different text"
cmp -s "$tmp/s1.txt" "$tmp/s3.txt" && fail "different seeds gave the same text"

# tokenize and inspect
ids=$("$BIN/moeshard" tokenize --model "$M" "Hello world")
[[ "$ids" =~ ^[0-9]+( [0-9]+)*$ ]] || fail "tokenize output: $ids"
"$BIN/moeshard" tokenize --model "$M" --pieces "Hello world" | grep -Eq $'^[0-9]+\t' || fail "tokenize --pieces"
"$BIN/moeshard" inspect "$M" >"$tmp/inspect.txt"
grep -q "architecture  qwen2moe" "$tmp/inspect.txt" && grep -q "shared expert" "$tmp/inspect.txt" \
    && grep -q "per token" "$tmp/inspect.txt" || fail "inspect output: $(cat "$tmp/inspect.txt")"
echo "run/tokenize/inspect CLI: all checks passed"
