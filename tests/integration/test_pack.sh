#!/usr/bin/env bash
# moeshard pack from the command line: a genmodel model split for 3 hosts with
# 2 replicas; plan.json parses and agrees with the shards, inspect describes
# every file, and usage errors exit 2, runtime errors 1.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN/genmodel" --arch qwen2moe --type q8_0 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel failed"
M="$tmp/m.gguf"

"$BIN/moeshard" pack --help | grep -q "usage: moeshard pack" || fail "pack --help"
"$BIN/moeshard" pack "$M" --hosts 3 --replicas 2 --out "$tmp/out" >"$tmp/summary" 2>"$tmp/err" \
    || fail "pack failed: $(cat "$tmp/err")"
grep -q "host-2.gguf" "$tmp/summary" || fail "summary lacks host 2: $(cat "$tmp/summary")"
for f in plan.json dense.gguf host-0.gguf host-1.gguf host-2.gguf; do
    [ -s "$tmp/out/$f" ] || fail "$f missing"
done
[ ! -e "$tmp/out/host-3.gguf" ] || fail "a fourth host file"
ls "$tmp/out" | grep -q '\.tmp$' && fail "temporary files left behind"

# plan.json: every (layer, expert) slice on exactly 2 distinct hosts
"$PY" - "$tmp/out/plan.json" <<'PYEOF' || fail "plan.json is wrong"
import json, sys
p = json.load(open(sys.argv[1]))
assert p["version"] == 1 and p["hosts"] == 3 and p["replicas"] == 2 and p["epoch"] == 1, p
assert p["model"] == "m.gguf" and p["architecture"] == "qwen2moe" and p["dense_file"] == "dense.gguf"
L, E = p["layers"], p["experts"]
held = {}
for h in p["host_files"]:
    assert h["file"] == "host-%d.gguf" % h["host"]
    for layer, ids in h["slices"]:
        assert ids == sorted(set(ids)), ids
        for e in ids:
            held.setdefault((layer, e), []).append(h["host"])
assert sorted(held) == [(l, e) for l in range(L) for e in range(E)], "not every slice placed"
assert all(len(v) == 2 and len(set(v)) == 2 for v in held.values()), held
b = [h["bytes"] for h in p["host_files"]]
slice = sum(b) // (L * E * 2)  # every slice has the same size here
assert sum(b) == slice * L * E * 2 and max(b) - min(b) <= slice, b
PYEOF

# inspect: each host shard lists the layers and experts plan.json gives it
for k in 0 1 2; do
    "$BIN/moeshard" inspect "$tmp/out/host-$k.gguf" >"$tmp/i$k" || fail "inspect host-$k"
    grep -q "host shard $k of 3 (replicas 2, epoch 1)" "$tmp/i$k" || fail "inspect host-$k: $(cat "$tmp/i$k")"
    n=$("$PY" -c "import json,sys; p=json.load(open(sys.argv[1])); print(sum(len(i) for _, i in p['host_files'][$k]['slices']))" "$tmp/out/plan.json")
    grep -q " $n slices" "$tmp/i$k" || fail "inspect host-$k should count $n slices: $(cat "$tmp/i$k")"
done
"$BIN/moeshard" inspect "$tmp/out/dense.gguf" >"$tmp/id" || fail "inspect dense"
grep -q "dense part of a packed model" "$tmp/id" || fail "inspect dense: $(cat "$tmp/id")"
"$BIN/moeshard" inspect "$M" | grep -q "^experts " || fail "inspect of the full model changed"

# usage errors exit 2, runtime errors 1
set +e
"$BIN/moeshard" pack "$M" --hosts 2 --replicas 3 --out "$tmp/o2" 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--replicas 3 exceeds --hosts 2" "$tmp/err" || fail "R > N: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" pack "$M" --hosts 0 --out "$tmp/o2" 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--hosts expects" "$tmp/err" || fail "bad --hosts: rc $rc"
"$BIN/moeshard" pack "$M" --out "$tmp/o2" 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--hosts is required" "$tmp/err" || fail "no --hosts: rc $rc"
"$BIN/moeshard" pack "$M" --hosts 2 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--out is required" "$tmp/err" || fail "no --out: rc $rc"
"$BIN/moeshard" pack "$M" --hosts 2 --out "$tmp/o2" --bogus 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "unknown option '--bogus'" "$tmp/err" || fail "unknown option: rc $rc"
"$BIN/moeshard" pack --hosts 2 --out "$tmp/o2" 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] || fail "no model: rc $rc"
"$BIN/moeshard" pack "$tmp/missing.gguf" --hosts 2 --out "$tmp/o2" 2>"$tmp/err"; rc=$?
[ $rc -eq 1 ] && grep -q "missing.gguf" "$tmp/err" || fail "missing model: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" pack "$M" --hosts 3 --out "$tmp/out" 2>"$tmp/err"; rc=$?
[ $rc -eq 1 ] && grep -q "not empty" "$tmp/err" || fail "non-empty folder: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" pack "$M" --hosts 2 --out "$tmp/nodir/deeper" 2>"$tmp/err"; rc=$?
[ $rc -eq 1 ] && grep -q "cannot create output folder" "$tmp/err" || fail "unwritable output: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" pack "$tmp/out/host-0.gguf" --hosts 2 --out "$tmp/o3" 2>"$tmp/err"; rc=$?
[ $rc -eq 1 ] && grep -q "host shard already" "$tmp/err" || fail "packing a shard: rc $rc: $(cat "$tmp/err")"
set -e

# --force replaces the pack and removes host files beyond the new count
"$BIN/moeshard" pack "$M" --hosts 2 --out "$tmp/out" --force >/dev/null || fail "--force"
[ ! -e "$tmp/out/host-2.gguf" ] || fail "--force left host-2.gguf"
"$BIN/moeshard" inspect "$tmp/out/host-1.gguf" | grep -q "host shard 1 of 2 (replicas 1" || fail "re-packed shard"
echo "pack ok"
