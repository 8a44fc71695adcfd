#!/usr/bin/env bash
# The measuring programs make bench runs (membw, mmbench) on small sizes:
# their output keys, and refusals of bad arguments with exit status 2.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

positive() { awk -v v="$1" 'BEGIN { exit !(v + 0 > 0) }'; }

timeout 60 "$BIN/membw" --size-mib 16 --passes 2 --threads 2 >"$tmp/membw.out" || fail "membw failed"
g=$(sed -n 's/^membw_threads=2 gbps=\([0-9.]*\) median_gbps=[0-9.]*$/\1/p' "$tmp/membw.out")
[ -n "$g" ] && positive "$g" || fail "membw printed no 2-thread rate: $(cat "$tmp/membw.out")"
grep -q '^membw_touch_ahead_kib=64$' "$tmp/membw.out" || fail "membw touches pages 64 KiB ahead by default: $(cat "$tmp/membw.out")"
timeout 60 "$BIN/membw" --size-mib 16 --passes 2 --threads 1 --touch-ahead 0 >"$tmp/membw.out" || fail "membw --touch-ahead 0 failed"
grep -q '^membw_touch_ahead_kib=0$' "$tmp/membw.out" && grep -q '^membw_threads=1 gbps=' "$tmp/membw.out" \
    || fail "membw --touch-ahead 0: $(cat "$tmp/membw.out")"

for shape in "--rows 64 --jobs 3" "--rows 0"; do
    # shellcheck disable=SC2086
    timeout 60 "$BIN/mmbench" $shape --size-mib 16 --passes 2 --threads 2 >"$tmp/mmb.out" \
        || fail "mmbench $shape failed"
    g=$(sed -n 's/^mmbench_gbps=//p' "$tmp/mmb.out")
    m=$(sed -n 's/^mmbench_mean_gbps=//p' "$tmp/mmb.out")
    [ -n "$g" ] && [ -n "$m" ] && positive "$g" && positive "$m" \
        || fail "mmbench $shape printed no rates: $(cat "$tmp/mmb.out")"
done
grep -q '^mmbench_jobs=1$' "$tmp/mmb.out" && grep -q '^mmbench_products=1$' "$tmp/mmb.out" \
    || fail "--rows 0 is one product over the buffer: $(cat "$tmp/mmb.out")"
"$BIN/mmbench" --help | grep -q "usage: mmbench" || fail "mmbench --help"
# the CPU-speed probe: one product over rows that stay in L1, gone over many times a pass
in_cache() { # expected rows, expected layout, then mmbench's options
    local rows=$1 layout=$2
    shift 2
    timeout 60 "$BIN/mmbench" --in-cache "$@" --passes 2 --threads 1 >"$tmp/mmb.out" \
        || fail "mmbench --in-cache $* failed"
    g=$(sed -n 's/^mmbench_gbps=//p' "$tmp/mmb.out")
    grep -q '^mmbench_in_cache=1$' "$tmp/mmb.out" && grep -q '^mmbench_products=1$' "$tmp/mmb.out" &&
        grep -q "^mmbench_rows=$rows\$" "$tmp/mmb.out" && grep -q "^mmbench_layout=$layout\$" "$tmp/mmb.out" &&
        [ -n "$g" ] && positive "$g" ||
        fail "mmbench --in-cache $*: one product of $rows rows in 32 KiB: $(cat "$tmp/mmb.out")"
}
in_cache 30 rows --layout rows # the 30 rows (1088 B each) in 32 KiB
in_cache 16 r16                # the default 16-row layout: the one whole group of 16 rows

set +e
"$BIN/membw" --touch-ahead -1 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "bad option or value: '--touch-ahead -1'" "$tmp/err" || fail "bad --touch-ahead: rc $rc: $(cat "$tmp/err")"
"$BIN/mmbench" --rows abc >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--rows expects an integer" "$tmp/err" || fail "bad --rows: rc $rc: $(cat "$tmp/err")"
"$BIN/mmbench" --n-in 100 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "multiple of 32" "$tmp/err" || fail "bad --n-in: rc $rc: $(cat "$tmp/err")"
"$BIN/mmbench" --rows 100000 --jobs 64 --size-mib 16 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "need more than --size-mib" "$tmp/err" || fail "oversized shape: rc $rc: $(cat "$tmp/err")"
"$BIN/mmbench" --in-cache --rows 16 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--in-cache sets the weights itself" "$tmp/err" || fail "--in-cache with --rows: rc $rc: $(cat "$tmp/err")"
"$BIN/mmbench" --in-cache --n-in 4096 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "16 rows of --n-in 4096 must fit in 32 KiB" "$tmp/err" || fail "--in-cache, 16 rows too long: rc $rc: $(cat "$tmp/err")"
"$BIN/mmbench" --bogus >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "unknown option '--bogus'" "$tmp/err" || fail "unknown option: rc $rc: $(cat "$tmp/err")"
set -e
echo "bench tools: all checks passed"
