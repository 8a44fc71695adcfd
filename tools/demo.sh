#!/usr/bin/env bash
# What `make demo` runs after building: generates a tiny Mixtral-shaped model
# and generates text from it with the embedded runner, end to end.
set -euo pipefail

BUILD=${BUILD:-build}
bin="$BUILD/bin"
demo_dir="$BUILD/demo"
model="$demo_dir/tiny-llama.gguf"

for prog in genmodel moeshard; do
    if [ ! -x "$bin/$prog" ]; then
        echo "demo: $bin/$prog is missing; build it first with: make BUILD=$BUILD" >&2
        exit 1
    fi
done

mkdir -p "$demo_dir"

echo "demo: generating a tiny Mixtral-shaped model (2 layers, 4 experts, 2 used per token, random weights) into $model ..."
"$bin/genmodel" --arch llama --out "$model"

echo "demo: generating 48 tokens after the prompt \"Once upon a time\" (temperature 0.8, seed 42) ..."
"$bin/moeshard" run --model "$model" --prompt "Once upon a time" -n 48 --temp 0.8 --seed 42
echo

echo "demo: done. The weights are random, so the text is noise; what it shows is the whole path"
echo "demo: working: GGUF loading, tokenizer, attention, expert routing, sampling and streaming."
