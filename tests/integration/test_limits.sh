#!/usr/bin/env bash
# Limits of `moeshard serve`: a per-client request rate (ZeroMQ clients and
# the HTTP API: a refusal naming the limit, HTTP 429 with Retry-After and an
# OpenAI-style body), requests decoding at once and waiting in the queue
# (refused with a clear message, not a crash or a hang), a prompt longer
# than the context (refused). Each refusal leaves the server serving.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v curl >/dev/null || { echo "skipped: curl is not installed"; exit 77; }
"$BIN/genmodel" --arch qwen2moe --type f32 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel failed"

start_serve() { # [MODEL=FILE] start_serve OPTIONS...: waits for /health
    stop_pids
    read -r ZP HP < <(free_ports 2)
    U="http://127.0.0.1:$HP"
    "$BIN/moeshard" serve --plaintext --model "${MODEL:-$tmp/m.gguf}" --listen "tcp://127.0.0.1:$ZP" --http "127.0.0.1:$HP" \
        --threads 1 "$@" >"$tmp/serve.log" 2>&1 &
    pid=$!
    pids+=($pid)
    for _ in $(seq 300); do
        curl -sf "$U/health" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || fail "serve $* exited"
        sleep 0.1
    done
    fail "serve $* did not come up"
}
gen() { # gen OUT N: a greedy request of N tokens; returns its status
    timeout 60 "$BIN/moeshard" generate --plaintext --server "tcp://127.0.0.1:$ZP" -n "$2" --temp 0 "Hello" \
        >"$tmp/$1.txt" 2>"$tmp/$1.err"
}
post() { # post OUT: a completion over HTTP; prints the status code, headers to OUT.h
    curl -s -D "$tmp/$1.h" -o "$tmp/$1.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary '{"model":"m","prompt":"Hello","max_tokens":4,"temperature":0}' "$U/v1/completions"
}

# ---- 6 a minute from one client: a burst of 1, then refused until it refills
start_serve --rate-limit 6
gen first 4 || fail "first request: $(cat "$tmp/first.err")"
if gen second 4; then fail "a second request at once passed the rate limit"; fi
grep -q "rate limit: at most 6 requests a minute from one client; retry in [0-9]* s" "$tmp/second.err" ||
    fail "rate refusal unclear: $(cat "$tmp/second.err")"
[ "$(post h1)" = 200 ] || fail "first HTTP request: $(cat "$tmp/h1.json")"
code=$(post h2)
[ "$code" = 429 ] || fail "second HTTP request at once: status $code"
grep -qi "^retry-after: [1-9][0-9]*" "$tmp/h2.h" || fail "429 without Retry-After: $(cat "$tmp/h2.h")"
$PY -c "import json,sys; e=json.load(open(sys.argv[1]))['error']; assert e['type']=='rate_limit_error' and 'rate limit' in e['message'], e" \
    "$tmp/h2.json" || fail "429 body: $(cat "$tmp/h2.json")"
curl -sf "$U/health" >/dev/null || fail "not healthy after refusals"
echo "rate limit: the second request of one client refused (ZeroMQ: $(tail -n 1 "$tmp/second.err" | cut -c1-80)...; HTTP 429)"

# ---- one sequence at once and no queue: a second request while one runs is
# refused, not lost. The tiny model decodes thousands of tokens a second, so a
# long request on a model with room for it runs while the second one arrives
# (tried again longer if the first one ended first).
"$BIN/genmodel" --arch qwen2moe --type f32 --ctx 8192 --out "$tmp/long.gguf" >/dev/null 2>&1 || fail "genmodel --ctx"
M_LONG="$tmp/long.gguf"
refused=0
for n in 2000 7000; do
    MODEL="$M_LONG" start_serve --max-seqs 1 --queue 0 --ctx 8192
    gen long "$n" &
    g=$!
    for _ in $(seq 500); do [ -s "$tmp/long.txt" ] && break; sleep 0.01; done
    if gen busy 4; then
        wait $g || fail "the long request failed: $(cat "$tmp/long.err")"
        continue # the long one ended before the second arrived: again, longer
    fi
    grep -q "the request queue is full (0 waiting); try again later" "$tmp/busy.err" ||
        fail "refusal at the request limit unclear: $(cat "$tmp/busy.err")"
    wait $g || fail "the running request failed: $(cat "$tmp/long.err")"
    refused=1
    break
done
[ $refused -eq 1 ] || fail "could not run two requests at once on one sequence"
gen after 4 || fail "a request after the refusal: $(cat "$tmp/after.err")"
echo "1 sequence, no queue: a second request while one runs refused: $(tail -n 1 "$tmp/busy.err" | cut -c1-100)"

# ---- a prompt beyond the context
start_serve --ctx 64
$PY -c 'print("word " * 400)' >"$tmp/long_prompt"
if timeout 60 "$BIN/moeshard" generate --plaintext --server "tcp://127.0.0.1:$ZP" -n 4 "$(cat "$tmp/long_prompt")" \
    >/dev/null 2>"$tmp/ctx.err"; then
    fail "a prompt longer than the context was accepted"
fi
grep -qi "context\|too long\|longer" "$tmp/ctx.err" || fail "context refusal unclear: $(cat "$tmp/ctx.err")"
gen small 4 || fail "a request after the context refusal: $(cat "$tmp/small.err")"
echo "context: a $(wc -c <"$tmp/long_prompt")-byte prompt refused: $(tail -n 1 "$tmp/ctx.err" | cut -c1-100)"
stop_pids
echo "limits: all checks passed"
