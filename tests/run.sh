#!/usr/bin/env bash
# Runs every CUnit suite binary in $BUILD/tests, then every integration
# script tests/integration/test_*.sh (exit 0 = pass, 77 = skipped, else fail),
# and prints one closing summary line. Exits non-zero on any failure.
set -u
BUILD=${BUILD:-build}
export BUILD
case $BUILD in
    /*) export MS_BIN="$BUILD/bin" ;;
    *) export MS_BIN="$PWD/$BUILD/bin" ;;
esac
TEST_TIMEOUT=${TEST_TIMEOUT:-600}
logdir="$BUILD/test-logs"
mkdir -p "$logdir"

passed=0 failed=0 skipped=0
failed_names=()

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    timeout --kill-after=10 "$TEST_TIMEOUT" "$t" >"$logdir/$name.log" 2>&1
    rc=$?
    # CUnit's basic runner prints "tests  <total> <ran> <passed> <failed> <inactive>"
    line=$(grep -E '^ +tests +[0-9]+' "$logdir/$name.log" | tail -1)
    if [ -n "$line" ]; then
        read -r _ _total _ran p f _ <<<"$line"
        passed=$((passed + p))
        failed=$((failed + f))
    fi
    if [ $rc -ne 0 ]; then
        [ -z "$line" ] && failed=$((failed + 1))
        failed_names+=("$name (exit $rc)")
        echo "FAIL  $name (exit $rc); log: $logdir/$name.log"
        tail -n 40 "$logdir/$name.log" | sed 's/^/    /'
    else
        echo "ok    $name: ${p:-?} tests"
    fi
    unset p f line
done

for t in tests/integration/test_*.sh; do
    [ -f "$t" ] || continue
    name=$(basename "$t" .sh)
    timeout --kill-after=10 "$TEST_TIMEOUT" bash "$t" >"$logdir/$name.log" 2>&1
    rc=$?
    case $rc in
        0) passed=$((passed + 1)); echo "ok    $name" ;;
        77) skipped=$((skipped + 1)); echo "skip  $name: $(tail -n 1 "$logdir/$name.log")" ;;
        *) failed=$((failed + 1)); failed_names+=("$name (exit $rc)")
           echo "FAIL  $name (exit $rc); log: $logdir/$name.log"
           tail -n 40 "$logdir/$name.log" | sed 's/^/    /' ;;
    esac
done

echo
if [ ${#failed_names[@]} -gt 0 ]; then
    echo "failed: ${failed_names[*]}"
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ ${#failed_names[@]} -eq 0 ]
