#!/usr/bin/env bash
# Replays every input that once crashed a fuzz target (fuzz/regress/NAME/),
# and the seed corpora, through the same entry points compiled normally
# ($BUILD/fuzz-replay/NAME, built by `make test`; with sanitizers under
# `make asan`). A crash, a sanitizer report or a failed check fails the test.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BUILD=${BUILD:-build}
BIN=${MS_BIN:-$PWD/$BUILD/bin}
REPLAY=$(dirname "$BIN")/fuzz-replay
T=120

[ -d "$REPLAY" ] || fail "$REPLAY is missing (make test builds it)"
for arch in llama qwen2moe; do
    "$BIN/genmodel" --arch "$arch" --type f32 --out "$tmp/$arch.gguf" >/dev/null 2>&1 || fail "genmodel $arch"
done
export MS_FUZZ_MODELS="$tmp/llama.gguf:$tmp/qwen2moe.gguf"
mkdir -p "$tmp/seeds-fuzz_wire"
"$BIN/wireprobe" --seeds "$tmp/seeds-fuzz_wire" >/dev/null || fail "wireprobe --seeds"
mkdir -p "$tmp/seeds-fuzz_gguf"
"$PY" fuzz/gguf_seeds.py "$tmp/seeds-fuzz_gguf" || fail "fuzz/gguf_seeds.py"
cp "$tmp/llama.gguf" "$tmp/seeds-fuzz_gguf/"

n=0
for exe in "$REPLAY"/fuzz_*; do
    name=$(basename "$exe")
    inputs=()
    for d in "fuzz/regress/$name" "fuzz/corpus/$name" "$tmp/seeds-$name"; do
        [ -d "$d" ] && inputs+=("$d")
    done
    [ ${#inputs[@]} -gt 0 ] || continue
    out=$(timeout --kill-after=5 $T "$exe" "${inputs[@]}" 2>"$tmp/$name.err") \
        || fail "$name: $(tail -n 20 "$tmp/$name.err")"
    echo "ok    $name: $out"
    n=$((n + 1))
done
[ $n -gt 0 ] || fail "no fuzz target had inputs to replay"
echo "fuzz regressions: $n targets replayed"
