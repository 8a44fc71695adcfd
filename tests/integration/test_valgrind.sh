#!/usr/bin/env bash
# `moeshard run` end to end on a tiny generated model under valgrind
# memcheck: no memory error and no definitely or indirectly lost block.
# Skipped (77) without valgrind, and in a sanitizer build (ASan and
# valgrind cannot share a process).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
FAIL_TAIL=60 # of valgrind's log
T=300
if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind is not installed (make deps installs it); skipped"
    exit 77
fi
if [ "${MS_ASAN:-0}" = 1 ]; then
    echo "a sanitizer build cannot run under valgrind; skipped"
    exit 77
fi

"$BIN/genmodel" --arch qwen2moe --type q8_0 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel"
# Two threads so the pool's start, hand-off and join run under memcheck too.
rc=0
timeout --kill-after=10 $T valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --track-origins=yes --log-file="$tmp/vg.log" \
    "$BIN/moeshard" run --model "$tmp/m.gguf" --prompt "The quick brown fox" -n 8 --temp 0.8 --seed 3 --threads 2 \
    >"$tmp/out.txt" 2>"$tmp/err.txt" || rc=$?
[ $rc -eq 0 ] || fail "valgrind or moeshard run exited $rc: $(tail -n 3 "$tmp/err.txt")"
grep -q "ERROR SUMMARY: 0 errors" "$tmp/vg.log" || fail "memcheck reported errors"
grep -Eq "definitely lost: [1-9]|indirectly lost: [1-9]" "$tmp/vg.log" && fail "memcheck reported leaks"
[ -s "$tmp/out.txt" ] || fail "no text generated"
echo "valgrind memcheck: moeshard run clean ($(wc -c <"$tmp/out.txt") bytes generated)"
