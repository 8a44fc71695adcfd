#!/usr/bin/env bash
# moeshard serve with generate and status, on loopback: (1) embedded serve,
# generate --temp 0 byte-identical to run; (2) a 3-host pack with 3 expertd,
# 64 greedy tokens identical to run; (3) 16 simultaneous clients, each equal
# to its solo run with the same seed; (4) status; (5) Ctrl-C cancels on the
# coordinator, which serves the next request; (6) usage errors exit 2.
# Kills only the pids it started; every wait is bounded.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T=60
PROMPT="The quick brown fox jumps over the lazy dog"

"$BIN/genmodel" --arch qwen2moe --type f32 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel"
read -r -a ports < <(free_ports 5)
EP="tcp://127.0.0.1:${ports[0]}"

# ---- (1) embedded serve: generate --temp 0 prints what run prints ----
"$BIN/moeshard" serve --plaintext --model "$tmp/m.gguf" --listen "$EP" --threads 2 --max-seqs 4 --ctx 256 2>"$tmp/serve.log" &
serve_pid=$!
pids+=($serve_pid)
wait_log "$tmp/serve.log" "serving"
timeout $T "$BIN/moeshard" run --model "$tmp/m.gguf" -p "$PROMPT" -n 48 --temp 0 >"$tmp/run.txt" 2>"$tmp/run.err" \
    || fail "run: $(cat "$tmp/run.err")"
timeout $T "$BIN/moeshard" generate --plaintext --server "$EP" -n 48 --temp 0 "$PROMPT" >"$tmp/gen.txt" 2>"$tmp/gen.err" \
    || fail "generate: $(cat "$tmp/gen.err")"
cmp "$tmp/gen.txt" "$tmp/run.txt" || fail "generate --temp 0 differs from run"
grep -Eq '^moeshard: prefill [0-9.]+ tok/s \([0-9]+ tokens, [0-9.]+ s\), decode [0-9.]+ tok/s \([0-9]+ steps' \
    "$tmp/gen.err" || fail "summary line: $(cat "$tmp/gen.err")"
echo "ok (1) generate --temp 0 equals run ($(wc -c <"$tmp/gen.txt") bytes)"

# ---- (3) 16 simultaneous clients, sampled, each equal to its solo run ----
for i in $(seq 1 16); do
    timeout $T "$BIN/moeshard" run --model "$tmp/m.gguf" -p "prompt number $i" -n 24 --temp 0.9 --seed $((i * 7)) \
        >"$tmp/solo$i.txt" 2>/dev/null || fail "solo run $i"
done
cpids=()
for i in $(seq 1 16); do
    timeout $T "$BIN/moeshard" generate --plaintext --server "$EP" -n 24 --temp 0.9 --seed $((i * 7)) "prompt number $i" \
        >"$tmp/conc$i.txt" 2>"$tmp/conc$i.err" &
    cpids+=($!)
done
for i in $(seq 1 16); do
    wait "${cpids[$((i - 1))]}" || fail "client $i: $(cat "$tmp/conc$i.err")"
    cmp -s "$tmp/conc$i.txt" "$tmp/solo$i.txt" || fail "client $i differs from its solo run"
done
echo "ok (3) 16 simultaneous clients equal their solo runs"

# ---- (4) status ----
timeout $T "$BIN/moeshard" status --plaintext --server "$EP" >"$tmp/status.txt" 2>&1 || fail "status: $(cat "$tmp/status.txt")"
grep -q "^model .*m.gguf (qwen2moe)" "$tmp/status.txt" || fail "status model: $(cat "$tmp/status.txt")"
grep -q "17 done" "$tmp/status.txt" || fail "status count: $(cat "$tmp/status.txt")"
grep -q "experts    in the coordinator's process" "$tmp/status.txt" || fail "status experts"
echo "ok (4) status"

# ---- (6) usage and runtime errors ----
set +e
"$BIN/moeshard" generate "$PROMPT" 2>/dev/null; [ $? -eq 2 ] || fail "generate without --server"
"$BIN/moeshard" generate --server "$EP" --temp -1 "$PROMPT" 2>/dev/null; [ $? -eq 2 ] || fail "bad --temp"
"$BIN/moeshard" serve --listen "$EP" 2>/dev/null; [ $? -eq 2 ] || fail "serve without --model"
"$BIN/moeshard" serve --model "$tmp/m.gguf" --listen "$EP" --bogus 2>/dev/null; [ $? -eq 2 ] || fail "serve --bogus"
"$BIN/moeshard" status 2>/dev/null; [ $? -eq 2 ] || fail "status without --server"
echo "threads = zero" >"$tmp/bad.conf"
"$BIN/moeshard" serve --config "$tmp/bad.conf" 2>"$tmp/conf.err"; [ $? -eq 2 ] || fail "bad config value"
grep -q -- "--threads expects" "$tmp/conf.err" || fail "bad config message: $(cat "$tmp/conf.err")"
echo "kv-type = f8" >"$tmp/bad.conf"
"$BIN/moeshard" serve --config "$tmp/bad.conf" 2>"$tmp/conf.err"; [ $? -eq 2 ] || fail "bad kv-type in the config"
grep -q -- "--kv-type expects f16 or f32, got 'f8'" "$tmp/conf.err" || fail "bad kv-type message: $(cat "$tmp/conf.err")"
# a coordinator that is not there: a clear error within the timeout
timeout 10 "$BIN/moeshard" generate --plaintext --server "tcp://127.0.0.1:${ports[1]}" --timeout-ms 500 "$PROMPT" \
    >/dev/null 2>"$tmp/lost.err"; rc=$?
[ $rc -eq 1 ] && grep -q "no reply from the coordinator" "$tmp/lost.err" || fail "lost server: rc $rc $(cat "$tmp/lost.err")"
# too long for the context: refused with a message
timeout 10 "$BIN/moeshard" generate --plaintext --server "$EP" -n 250 "$PROMPT" >/dev/null 2>"$tmp/big.err"; rc=$?
[ $rc -eq 1 ] && grep -q "context" "$tmp/big.err" || fail "too long: rc $rc $(cat "$tmp/big.err")"
set -e
echo "ok (6) usage and request errors"

kill -TERM $serve_pid
wait $serve_pid || fail "serve exited non-zero after SIGTERM"
pids=()
grep -q "stopping" "$tmp/serve.log" || fail "no stop line"

# ---- (2) pack for 3 hosts, 3 expertd, serve --hosts: 64 greedy tokens equal run ----
"$BIN/moeshard" pack "$tmp/m.gguf" --hosts 3 --replicas 1 --out "$tmp/p" >/dev/null || fail "pack"
H=""
for k in 0 1 2; do
    "$BIN/expertd" --listen "tcp://127.0.0.1:${ports[$((k + 2))]}" --model "$tmp/p/host-$k.gguf" --threads 1 --plaintext \
        2>"$tmp/h$k.log" &
    pids+=($!)
    H+="${H:+,}tcp://127.0.0.1:${ports[$((k + 2))]}"
done
wait_hosts h0 h1 h2
# the config file holds the same settings as the options
cat >"$tmp/serve.conf" <<CONF
# coordinator for the test pack
model = $tmp/p
hosts = $H
listen = $EP
plaintext = true
threads = 2
deadline-ms = 30000
# dense weights from the file's mapping; run below reads them into memory: same text
mmap = true
CONF
"$BIN/moeshard" serve --config "$tmp/serve.conf" 2>"$tmp/serve2.log" &
pids+=($!)
wait_log "$tmp/serve2.log" "serving"
timeout $T "$BIN/moeshard" run --model "$tmp/m.gguf" -p "$PROMPT" -n 64 --temp 0 >"$tmp/run64.txt" 2>/dev/null \
    || fail "run 64"
timeout $T "$BIN/moeshard" generate --plaintext --server "$EP" -n 64 --temp 0 "$PROMPT" >"$tmp/gen64.txt" 2>"$tmp/gen64.err" \
    || fail "generate on hosts: $(cat "$tmp/gen64.err")"
cmp "$tmp/gen64.txt" "$tmp/run64.txt" || fail "3-host generate differs from run"
grep -q "experts on 3 hosts (wire f32)" "$tmp/gen64.err" || fail "host summary: $(cat "$tmp/gen64.err")"
timeout $T "$BIN/moeshard" status --plaintext --server "$EP" >"$tmp/status2.txt" 2>&1 || fail "status on hosts"
grep -q "experts    on 3 hosts (wire f32)" "$tmp/status2.txt" || fail "status hosts: $(cat "$tmp/status2.txt")"
[ "$(grep -c '^tcp://127.0.0.1:' "$tmp/status2.txt")" -eq 3 ] || fail "status host rows: $(cat "$tmp/status2.txt")"
echo "ok (2) 3 expert hosts: 64 greedy tokens equal run"
cat "$tmp/status2.txt"

# ---- (5) Ctrl-C cancels on the coordinator: a stopped host holds the request
# in its first step, the client is interrupted, the host resumes ----
kill -STOP "${pids[0]}"
"$BIN/moeshard" generate --plaintext --server "$EP" -n 64 --temp 0 "$PROMPT" >"$tmp/int.txt" 2>"$tmp/int.err" &
gpid=$!
wait_log "$tmp/serve2.log" "request 2: "
sleep 0.3
kill -INT $gpid
rc=0
wait $gpid || rc=$?
kill -CONT "${pids[0]}"
[ $rc -eq 130 ] || fail "interrupted generate exited $rc, expected 130: $(cat "$tmp/int.err")"
wait_log "$tmp/serve2.log" "request 2: cancel requested by the client"
wait_log "$tmp/serve2.log" "request 2: cancelled after"
timeout $T "$BIN/moeshard" generate --plaintext --server "$EP" -n 64 --temp 0 "$PROMPT" >"$tmp/gen3.txt" 2>"$tmp/gen3.err" \
    || fail "generate after cancel: $(cat "$tmp/gen3.err")"
cmp -s "$tmp/gen3.txt" "$tmp/run64.txt" || fail "generate after cancel differs"
echo "ok (5) Ctrl-C cancels on the coordinator, which serves the next request"
echo "all serve checks passed"
