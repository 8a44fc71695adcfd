#!/usr/bin/env bash
# Runs each libFuzzer target named on the command line for FUZZ_SECONDS
# from its seed corpus (fuzz/corpus/NAME plus seeds generated here: GGUF
# models from genmodel and small hand-made GGUF files, wire messages from
# wireprobe --seeds). Exits non-zero on the first target that crashes and
# prints the reproducer's path. Used by `make fuzz` (docs/testing.md).
set -u
BUILD=${BUILD:-build}
FUZZ_DIR=${FUZZ_DIR:-$BUILD/fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
BIN=$BUILD/bin
PY=/usr/bin/python3
work=$FUZZ_DIR/work
mkdir -p "$work"
die() { echo "fuzz: $*" >&2; exit 1; }

# ---- generated seeds ----
models=()
for arch in llama qwen2moe; do
    m=$work/model-$arch.gguf
    [ -s "$m" ] || "$BIN/genmodel" --arch "$arch" --type f32 --out "$m" >/dev/null 2>&1 || die "genmodel --arch $arch failed"
    models+=("$m")
done
export MS_FUZZ_MODELS
MS_FUZZ_MODELS=$(IFS=:; echo "${models[*]}")

gen_seeds() { # NAME DIR: seeds made at run time rather than committed
    case $1 in
    fuzz_gguf)
        "$BIN/genmodel" --arch olmoe --type q8_0 --hidden 32 --layers 1 --experts 2 --top-k 1 --ff 32 \
            --heads 2 --kv-heads 1 --vocab-size 300 --out "$2/olmoe-q8.gguf" >/dev/null 2>&1 || return 1
        "$BIN/genmodel" --arch qwen3moe --type bf16 --hidden 32 --layers 1 --experts 2 --top-k 1 --ff 32 \
            --heads 2 --kv-heads 1 --head-dim 8 --vocab-size 300 --out "$2/qwen3-bf16.gguf" >/dev/null 2>&1 || return 1
        "$PY" fuzz/gguf_seeds.py "$2" ;;
    fuzz_wire) "$BIN/wireprobe" --seeds "$2" >/dev/null ;;
    esac
}

for name in "$@"; do
    exe=$FUZZ_DIR/bin/$name
    [ -x "$exe" ] || die "$exe is missing (make fuzz builds it)"
    corpus=$work/corpus-$name
    seeds=$work/seeds-$name
    arts=$work/artifacts-$name
    rm -rf "$seeds" "$arts"
    mkdir -p "$corpus" "$seeds" "$arts"
    gen_seeds "$name" "$seeds" || die "$name: cannot generate its seeds"
    [ -d "fuzz/corpus/$name" ] && cp fuzz/corpus/"$name"/* "$seeds"/ 2>/dev/null
    echo "fuzz: $name for ${FUZZ_SECONDS}s ($(ls "$seeds" | wc -l) seeds)"
    # stderr of the target closed (-close_fd_mask=2): parsers that print their
    # refusals would flood the log; libFuzzer and the sanitizers still report.
    timeout --kill-after=10 $((FUZZ_SECONDS + 120)) "$exe" -max_total_time="$FUZZ_SECONDS" -timeout=10 \
        -rss_limit_mb=4096 -max_len=65536 -close_fd_mask=2 -print_final_stats=1 \
        -artifact_prefix="$arts/" "$corpus" "$seeds" >"$work/$name.log" 2>&1
    rc=$?
    tail -n 12 "$work/$name.log" | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+.*DONE)' | sed 's/^/    /'
    crash=$(ls "$arts" 2>/dev/null | head -n 1)
    if [ $rc -ne 0 ] || [ -n "$crash" ]; then
        echo "FAIL  $name (exit $rc); log: $work/$name.log"
        grep -E 'ERROR: |SUMMARY: |runtime error' "$work/$name.log" | head -n 5 | sed 's/^/    /'
        [ -n "$crash" ] && echo "    reproducer: $arts/$crash (replay: $exe $arts/$crash; keep it in fuzz/regress/$name/)"
        exit 1
    fi
    echo "ok    $name"
done
