#!/usr/bin/env bash
# genmodel: deterministic output, clear refusals, and every architecture/type
# it writes loads and generates in moeshard.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN/genmodel" --arch qwen3moe --type q8_0 --out "$tmp/a.gguf" 2>/dev/null
"$BIN/genmodel" --arch qwen3moe --type q8_0 --out "$tmp/b.gguf" 2>/dev/null
"$BIN/genmodel" --arch qwen3moe --type q8_0 --seed 2 --out "$tmp/c.gguf" 2>/dev/null
cmp -s "$tmp/a.gguf" "$tmp/b.gguf" || fail "same arguments, different files"
cmp -s "$tmp/a.gguf" "$tmp/c.gguf" && fail "different seeds, same file"

set +e
"$BIN/genmodel" --arch gpt2 --out "$tmp/x.gguf" 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "gpt2" "$tmp/err" || fail "unknown arch: rc $rc: $(cat "$tmp/err")"
"$BIN/genmodel" --arch llama --top-k 9 --out "$tmp/x.gguf" 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] || fail "top-k above the expert count: rc $rc"
"$BIN/genmodel" --arch llama --out /nonexistent-dir/x.gguf 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "nonexistent-dir" "$tmp/err" || fail "unwritable path: rc $rc: $(cat "$tmp/err")"
set -e
"$BIN/genmodel" --help | grep -q -- "--arch" || fail "--help"

for arch in llama qwen2moe qwen3moe olmoe; do
    for type in f32 f16 bf16 q8_0; do
        "$BIN/genmodel" --arch $arch --type $type --out "$tmp/$arch-$type.gguf" 2>/dev/null
        out=$("$BIN/moeshard" run --model "$tmp/$arch-$type.gguf" --prompt "Hello there" -n 8 --temp 0 --seed 1 2>"$tmp/err") \
            || fail "$arch $type: moeshard run failed: $(cat "$tmp/err")"
        [ -n "$out" ] || fail "$arch $type: no text generated"
    done
done
echo "genmodel: all checks passed"
