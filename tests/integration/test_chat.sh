#!/usr/bin/env bash
# moeshard chat against moeshard serve on loopback: a piped conversation
# gets one reply per line; the first reply equals 'moeshard run' on the
# prompt the chatml template makes of that line; without --template chat
# uses the family the coordinator reports (status shows it), and chatml with
# a note when the model has none; usage errors exit 2; a silent server ends
# the chat with exit 1 within its timeout.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if ! "$BIN/moeshard" serve --help >/dev/null 2>&1; then
    echo "moeshard serve is not built; skipping the chat test"
    exit 77
fi

# usage errors need no server
set +e
"$BIN/moeshard" chat </dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--server" "$tmp/err" || fail "no --server: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" chat --server tcp://127.0.0.1:1 --template llama3 </dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q "llama3" "$tmp/err" || fail "bad --template: rc $rc: $(cat "$tmp/err")"
"$BIN/moeshard" chat --server tcp://127.0.0.1:1 extra </dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] || fail "stray argument: rc $rc"
# nobody listens there: the turn times out and the chat ends with 1
dead=$(free_ports 1)
echo hi | timeout 20 "$BIN/moeshard" chat --plaintext --server "tcp://127.0.0.1:$dead" --timeout-ms 500 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 1 ] && grep -q "no word from" "$tmp/err" || fail "silent server: rc $rc: $(cat "$tmp/err")"
set -e
"$BIN/moeshard" chat --help | grep -q -- "--template" || fail "--help"

# serve MODEL LOG: starts a coordinator on a free port; its endpoint in $ep.
serve() {
    local port
    port=$(free_ports 1)
    "$BIN/moeshard" serve --plaintext --model "$1" --listen "tcp://127.0.0.1:$port" --threads 2 >"$2" 2>&1 &
    pids+=($!)
    ep="tcp://127.0.0.1:$port"
}

"$BIN/genmodel" --arch qwen2moe --chat-template chatml --out "$tmp/m.gguf" 2>/dev/null
serve "$tmp/m.gguf" "$tmp/serve.log"

# The client queues its request until the coordinator listens, so no
# readiness poll is needed; the timeout bounds the wait.
chat() { timeout 60 "$BIN/moeshard" chat --plaintext --server "$ep" --timeout-ms 30000 -n 12 --temp 0 --seed 1 "$@"; }

printf 'Hello there\n' | chat >"$tmp/one.out" 2>"$tmp/one.err" || fail "one turn: $(cat "$tmp/one.err")"
# the family came from the coordinator: no fallback note, and --template
# chatml gives the same bytes
grep -q "using chatml" "$tmp/one.err" && fail "chatml model reported as having no template: $(cat "$tmp/one.err")"
printf 'Hello there\n' | chat --template chatml >"$tmp/one-t.out" 2>"$tmp/one-t.err" \
    || fail "one turn with --template chatml: $(cat "$tmp/one-t.err")"
cmp -s "$tmp/one.out" "$tmp/one-t.out" || fail "chat without --template differs from --template chatml"
timeout 30 "$BIN/moeshard" status --plaintext --server "$ep" >"$tmp/status.txt" 2>&1 || fail "status: $(cat "$tmp/status.txt")"
grep -q "^template   chatml$" "$tmp/status.txt" || fail "status template line: $(cat "$tmp/status.txt")"
prompt=$'<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n'
"$BIN/moeshard" run --model "$tmp/m.gguf" --prompt "$prompt" -n 12 --temp 0 --seed 1 >"$tmp/run.out" 2>/dev/null \
    || fail "moeshard run failed"
cmp -s "$tmp/one.out" "$tmp/run.out" || fail "chat reply differs from moeshard run: $(od -c "$tmp/one.out" | head -5) vs $(od -c "$tmp/run.out" | head -5)"

# A system message, three turns and a blank line (skipped): greedy replies
# are deterministic, so the first reply is the same as the one above only
# without the system message; here check each turn got a reply line.
printf 'Hello there\n\nAnd then?\nThanks\n' | chat --system "Be brief." >"$tmp/multi.out" 2>"$tmp/multi.err" \
    || fail "three turns: $(cat "$tmp/multi.err")"
[ -s "$tmp/multi.out" ] || fail "three turns printed nothing"

# The second turn's prompt holds the first reply: render it the same way
# and compare the second reply with run's.
printf 'Hello there\nAnd then?\n' | chat >"$tmp/two.out" 2>"$tmp/two.err" || fail "two turns: $(cat "$tmp/two.err")"
head -c "$(stat -c %s "$tmp/one.out")" "$tmp/two.out" | cmp -s - "$tmp/one.out" || fail "first of two turns differs"
reply1=$(head -c "$(($(stat -c %s "$tmp/one.out") - 1))" "$tmp/one.out"; echo x)
reply1=${reply1%x}
prompt2="${prompt}${reply1}"$'<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n'
"$BIN/moeshard" run --model "$tmp/m.gguf" --prompt "$prompt2" -n 12 --temp 0 --seed 1 >"$tmp/run2.out" 2>/dev/null \
    || fail "moeshard run (turn 2) failed"
tail -c +"$(($(stat -c %s "$tmp/one.out") + 1))" "$tmp/two.out" | cmp -s - "$tmp/run2.out" \
    || fail "second reply differs from moeshard run on the rendered conversation"

# A mistral model: the family reported is used (the reply equals run's on
# the mistral rendering, which differs from the chatml one above).
"$BIN/genmodel" --arch qwen2moe --chat-template mistral --out "$tmp/mi.gguf" 2>/dev/null
serve "$tmp/mi.gguf" "$tmp/serve-mi.log"
printf 'Hello there\n' | chat >"$tmp/mi.out" 2>"$tmp/mi.err" || fail "mistral turn: $(cat "$tmp/mi.err")"
"$BIN/moeshard" run --model "$tmp/mi.gguf" --prompt ' [INST] Hello there [/INST]' -n 12 --temp 0 --seed 1 \
    >"$tmp/run-mi.out" 2>/dev/null || fail "moeshard run (mistral) failed"
cmp -s "$tmp/mi.out" "$tmp/run-mi.out" || fail "chat on a mistral model differs from run on the mistral prompt"
timeout 30 "$BIN/moeshard" status --plaintext --server "$ep" | grep -q "^template   mistral$" || fail "status on the mistral model"

# No template: status says so, chat notes the fallback and writes chatml.
"$BIN/genmodel" --arch qwen2moe --chat-template none --out "$tmp/none.gguf" 2>/dev/null
serve "$tmp/none.gguf" "$tmp/serve-none.log"
printf 'Hello there\n' | chat >"$tmp/none.out" 2>"$tmp/none.err" || fail "no-template turn: $(cat "$tmp/none.err")"
grep -q "no chat template .*using chatml" "$tmp/none.err" || fail "no fallback note: $(cat "$tmp/none.err")"
"$BIN/moeshard" run --model "$tmp/none.gguf" --prompt "$prompt" -n 12 --temp 0 --seed 1 >"$tmp/run-none.out" 2>/dev/null \
    || fail "moeshard run (no template) failed"
cmp -s "$tmp/none.out" "$tmp/run-none.out" || fail "fallback chat differs from run on the chatml prompt"
timeout 30 "$BIN/moeshard" status --plaintext --server "$ep" | grep -q "^template   none recognised" || fail "status without template"

echo "chat: all checks passed"
