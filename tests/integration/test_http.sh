#!/usr/bin/env bash
# The OpenAI-compatible HTTP API of `moeshard serve --http` on a tiny model,
# checked with curl: greedy text equal to `moeshard run`, streamed chunks
# adding up to the same text, seeded sampling, stop sequences, chat, models,
# health, metrics, every 4xx, a client hanging up mid-stream; then the
# official openai npm client (skipped with 77 when npm cannot reach the registry).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BUILD=${BUILD:-build}

command -v curl >/dev/null || { echo "skipped: curl is not installed"; exit 77; }
"$BIN/moeshard" serve --help >/dev/null 2>&1 || { echo "skipped: 'moeshard serve' is not available"; exit 77; }

"$BIN/genmodel" --arch qwen2moe --type f32 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel failed"
M="$tmp/m.gguf"

# Starts serve on fresh ports (again if a port was taken meanwhile) and waits for /health.
start_serve() {
    for attempt in 1 2 3; do
        read -r ZP HP < <(free_ports 2)
        U="http://127.0.0.1:$HP"
        "$BIN/moeshard" serve --plaintext --model "$M" --listen "tcp://127.0.0.1:$ZP" --http "127.0.0.1:$HP" --threads 2 \
            --name tiny >"$tmp/serve.log" 2>&1 &
        pid=$!
        pids+=($pid)
        for _ in $(seq 300); do
            curl -sf "$U/health" >/dev/null 2>&1 && return 0
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        stop_pids
    done
    fail "moeshard serve --http did not come up"
}
start_serve

# post PATH BODY OUT: writes the body to OUT, prints the status code.
post() { curl -s -o "$3" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$2" "$U$1"; }
# js FILE EXPR: evaluates EXPR on the parsed JSON j, writes str results raw (UTF-8, no newline).
js() {
    $PY - "$1" "$2" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1], encoding="utf-8"))
v = eval(sys.argv[2], {"j": j})
sys.stdout.buffer.write(v.encode("utf-8") if isinstance(v, str) else json.dumps(v).encode())
PYEOF
}
# sse FILE KIND OUT: checks a server-sent event stream (every event "data: JSON",
# [DONE] last) and writes the concatenated text to OUT; prints the finish reason.
sse() {
    $PY - "$1" "$2" "$3" <<'PYEOF'
import json, sys
raw, kind, out = open(sys.argv[1], "rb").read().decode("utf-8"), sys.argv[2], sys.argv[3]
events = [e for e in raw.split("\n\n") if e]
assert events and events[-1] == "data: [DONE]", "stream does not end with [DONE]: %r" % events[-1:]
text, finish, obj = "", None, "chat.completion.chunk" if kind == "chat" else "text_completion"
for i, e in enumerate(events[:-1]):
    assert e.startswith("data: "), "not a data event: %r" % e
    c = json.loads(e[6:])
    assert c["object"] == obj and c["model"] == "tiny" and c["id"], c
    if c["choices"] == []:  # the usage chunk of stream_options.include_usage, last before [DONE]
        assert "usage" in c and i == len(events) - 2, c
        continue
    ch = c["choices"][0]
    if kind == "chat":
        if i == 0:
            assert ch["delta"].get("role") == "assistant", "first chat chunk has no role: %r" % c
        text += ch["delta"].get("content", "")
    else:
        text += ch["text"]
    assert finish is None, "chunk after the finish reason: %r" % c
    finish = ch["finish_reason"]
open(out, "wb").write(text.encode("utf-8"))
print(finish)
PYEOF
}
metric() { curl -s "$U/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }

prompt="The quick brown fox jumps over the lazy dog. Once upon a time"
"$BIN/moeshard" run --model "$M" --prompt "$prompt" -n 24 --temp 0 --threads 2 >"$tmp/run.txt" 2>/dev/null
head -c -1 "$tmp/run.txt" >"$tmp/want.txt" # run ends its text with a newline
n_prompt=$("$BIN/moeshard" tokenize --model "$M" "$prompt" | wc -w)
body=$($PY -c 'import json,sys; print(json.dumps({"model": "tiny", "prompt": sys.argv[1], "max_tokens": 24, "temperature": 0}))' "$prompt")

# completions: greedy text equals moeshard run, usage counts the tokens
[ "$(post /v1/completions "$body" "$tmp/c.json")" = 200 ] || fail "completions: $(cat "$tmp/c.json")"
js "$tmp/c.json" 'j["choices"][0]["text"]' >"$tmp/c.txt"
cmp -s "$tmp/c.txt" "$tmp/want.txt" || fail "completion text differs from moeshard run"
[ "$(js "$tmp/c.json" '[j["object"], j["model"], j["choices"][0]["index"], j["usage"]["prompt_tokens"], j["usage"]["total_tokens"] - j["usage"]["completion_tokens"]]')" \
    = "[\"text_completion\", \"tiny\", 0, $n_prompt, $n_prompt]" ] || fail "completion fields: $(cat "$tmp/c.json")"
js "$tmp/c.json" 'j["id"].startswith("cmpl-") and j["created"] > 0 and j["choices"][0]["finish_reason"] in ("length", "stop")' \
    | grep -qx true || fail "completion id/created/finish_reason: $(cat "$tmp/c.json")"

# streaming: the chunks add up to the same text
body_s=$($PY -c 'import json,sys; b=json.loads(sys.argv[1]); b["stream"]=True; print(json.dumps(b))' "$body")
curl -sN -D "$tmp/s.hdr" -o "$tmp/s.sse" --data-binary "$body_s" "$U/v1/completions"
grep -qi '^content-type: text/event-stream' "$tmp/s.hdr" || fail "stream content type: $(cat "$tmp/s.hdr")"
fin=$(sse "$tmp/s.sse" completion "$tmp/s.txt") || fail "completion stream malformed"
cmp -s "$tmp/s.txt" "$tmp/want.txt" || fail "streamed text differs from moeshard run"
[ "$fin" = "$(js "$tmp/c.json" 'j["choices"][0]["finish_reason"]')" ] || fail "stream finish reason $fin"

# seeded sampling: OpenAI's defaults (top_p 1, no top-k/min-p) match run with those settings
body_t=$($PY -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": 24, "temperature": 1.0, "seed": 5}))' "$prompt")
"$BIN/moeshard" run --model "$M" --prompt "$prompt" -n 24 --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 5 \
    --threads 2 2>/dev/null | head -c -1 >"$tmp/want_t.txt"
[ "$(post /v1/completions "$body_t" "$tmp/t.json")" = 200 ] || fail "seeded completion: $(cat "$tmp/t.json")"
js "$tmp/t.json" 'j["choices"][0]["text"]' >"$tmp/t.txt"
cmp -s "$tmp/t.txt" "$tmp/want_t.txt" || fail "seeded text differs from moeshard run --seed 5"

# stop sequences: the text ends before the first match, finish_reason "stop", whole and streamed
$PY - "$tmp/want.txt" "$tmp/stop" <<'PYEOF'
import sys
s = open(sys.argv[1], "rb").read().decode("utf-8")
assert len(s) >= 16, "greedy text too short for the stop test: %r" % s
stop = s[10:13]
open(sys.argv[2] + ".seq", "wb").write(stop.encode())
open(sys.argv[2] + ".want", "wb").write(s[:s.find(stop)].encode())
PYEOF
body_p=$($PY -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": 24, "temperature": 0, "stop": ["\u2603never", open(sys.argv[2], encoding="utf-8").read()]}))' "$prompt" "$tmp/stop.seq")
[ "$(post /v1/completions "$body_p" "$tmp/p.json")" = 200 ] || fail "stop: $(cat "$tmp/p.json")"
js "$tmp/p.json" 'j["choices"][0]["text"]' >"$tmp/p.txt"
cmp -s "$tmp/p.txt" "$tmp/stop.want" || fail "stop: text $(cat "$tmp/p.txt" | od -c | head -3)"
[ "$(js "$tmp/p.json" 'j["choices"][0]["finish_reason"]')" = stop ] || fail "stop: finish_reason"
body_ps=$($PY -c 'import json,sys; b=json.loads(sys.argv[1]); b["stream"]=True; print(json.dumps(b))' "$body_p")
curl -sN -o "$tmp/ps.sse" --data-binary "$body_ps" "$U/v1/completions"
[ "$(sse "$tmp/ps.sse" completion "$tmp/ps.txt")" = stop ] || fail "streamed stop: finish_reason"
cmp -s "$tmp/ps.txt" "$tmp/stop.want" || fail "streamed stop: text differs"

# chat completions: whole and streamed agree (greedy), usage and roles as OpenAI
chat='{"model": "tiny", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}], "max_tokens": 16, "temperature": 0}'
[ "$(post /v1/chat/completions "$chat" "$tmp/h.json")" = 200 ] || fail "chat: $(cat "$tmp/h.json")"
js "$tmp/h.json" 'j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant" and j["usage"]["completion_tokens"] >= 1 and j["id"].startswith("chatcmpl-")' \
    | grep -qx true || fail "chat fields: $(cat "$tmp/h.json")"
js "$tmp/h.json" 'j["choices"][0]["message"]["content"]' >"$tmp/h.txt"
chat_s=$($PY -c 'import json,sys; b=json.loads(sys.argv[1]); b["stream"]=True; b["stream_options"]={"include_usage": True}; print(json.dumps(b))' "$chat")
curl -sN -o "$tmp/hs.sse" --data-binary "$chat_s" "$U/v1/chat/completions"
$PY - "$tmp/hs.sse" "$tmp/h.json" <<'PYEOF' || fail "streamed chat usage chunk"
import json, sys
events = [e for e in open(sys.argv[1], encoding="utf-8").read().split("\n\n") if e]
usage = json.loads(events[-2][6:])
assert usage["choices"] == [] and usage["usage"] == json.load(open(sys.argv[2]))["usage"], usage
PYEOF
sse "$tmp/hs.sse" chat "$tmp/hs.txt" >/dev/null || fail "chat stream malformed"
cmp -s "$tmp/h.txt" "$tmp/hs.txt" || fail "streamed chat text differs from the whole reply"
[ "$(post /v1/chat/completions '{"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 2}' "$tmp/h2.json")" = 200 ] \
    || fail "chat with a developer message and text parts: $(cat "$tmp/h2.json")"

# models, health, metrics
[ "$(curl -s -o "$tmp/models.json" -w '%{http_code}' "$U/v1/models")" = 200 ] || fail "/v1/models"
[ "$(js "$tmp/models.json" '[j["object"], j["data"][0]["id"], j["data"][0]["object"]]')" = '["list", "tiny", "model"]' ] \
    || fail "/v1/models: $(cat "$tmp/models.json")"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$U/v1/models/tiny")" = 200 ] || fail "/v1/models/tiny"
[ "$(curl -s -o "$tmp/e.json" -w '%{http_code}' "$U/v1/models/other")" = 404 ] || fail "/v1/models/other"
[ "$(curl -s -o "$tmp/health.json" -w '%{http_code}' "$U/health")" = 200 ] || fail "/health"
[ "$(js "$tmp/health.json" 'j["status"]')" = ok ] || fail "/health body: $(cat "$tmp/health.json")"
curl -s -D "$tmp/m.hdr" -o "$tmp/metrics.txt" "$U/metrics"
grep -qi '^content-type: text/plain; version=0.0.4' "$tmp/m.hdr" || fail "/metrics content type"
for m in moeshard_tokens_generated_total moeshard_prompt_tokens_total moeshard_requests_total moeshard_queue_depth \
    moeshard_active_requests moeshard_decode_tokens_per_second; do
    grep -q "^# TYPE $m " "$tmp/metrics.txt" && grep -Eq "^$m [0-9.e+-]+$" "$tmp/metrics.txt" || fail "/metrics lacks $m"
done
$PY - "$tmp/metrics.txt" <<'PYEOF' || fail "/metrics values: $(cat "$tmp/metrics.txt")"
import sys
v = dict(l.split() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#") and "{" not in l)
assert float(v["moeshard_requests_total"]) >= 8 and float(v["moeshard_tokens_generated_total"]) >= 24
assert float(v["moeshard_prompt_tokens_total"]) > 0 and float(v["moeshard_queue_depth"]) == 0
PYEOF

# refused requests: status, and an OpenAI error body naming the parameter
bad() { # bad STATUS PARAM PATH BODY
    local code
    code=$(post "$3" "$4" "$tmp/e.json")
    [ "$code" = "$1" ] || fail "$3 $4: status $code, expected $1: $(cat "$tmp/e.json")"
    js "$tmp/e.json" "j['error']['type'] == 'invalid_request_error' and len(j['error']['message']) > 0 and j['error']['param'] == ${2} and 'code' in j['error']" \
        | grep -qx true || fail "$3 $4: error body $(cat "$tmp/e.json")"
}
bad 400 None /v1/completions '{"prompt": "hi", "max_tokens": 4'
bad 400 None /v1/completions '["prompt"]'
bad 400 "'prompt'" /v1/completions '{"max_tokens": 4}'
bad 400 "'prompt'" /v1/completions '{"prompt": 42}'
bad 400 "'temperature'" /v1/completions '{"prompt": "hi", "temperature": "hot"}'
bad 400 "'temperature'" /v1/completions '{"prompt": "hi", "temperature": 2.5}'
bad 400 "'temperature'" /v1/completions '{"prompt": "hi", "temperature": -0.1}'
bad 400 "'max_tokens'" /v1/completions '{"prompt": "hi", "max_tokens": 0}'
bad 400 "'max_tokens'" /v1/completions '{"prompt": "hi", "max_tokens": 1000000}'
bad 400 "'max_tokens'" /v1/completions '{"prompt": "hi", "max_tokens": 1.5}'
bad 400 "'max_tokens'" /v1/completions "{\"prompt\": \"$(printf 'word %.0s' $(seq 200))\", \"max_tokens\": 500}"
bad 400 "'top_p'" /v1/completions '{"prompt": "hi", "top_p": 0}'
bad 400 "'stop'" /v1/completions '{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}'
bad 400 "'stop'" /v1/completions '{"prompt": "hi", "stop": 7}'
bad 400 "'stream'" /v1/completions '{"prompt": "hi", "stream": "yes"}'
bad 400 "'n'" /v1/completions '{"prompt": "hi", "n": 3}'
bad 400 "'messages'" /v1/chat/completions '{"messages": []}'
bad 400 "'messages'" /v1/chat/completions '{"messages": "hello"}'
bad 400 "'messages[1].role'" /v1/chat/completions '{"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}'
bad 400 "'messages[0].content'" /v1/chat/completions '{"messages": [{"role": "user", "content": 5}]}'
bad 400 "'messages'" /v1/chat/completions '{"messages": [{"role": "assistant", "content": "I end the conversation"}]}'
bad 404 None /v1/nothing '{}'
code=$(curl -s -D "$tmp/e.hdr" -o "$tmp/e.json" -w '%{http_code}' "$U/v1/completions")
[ "$code" = 405 ] && grep -qi '^allow: POST' "$tmp/e.hdr" || fail "GET /v1/completions: $code $(cat "$tmp/e.hdr")"
code=$(curl -s -o "$tmp/e.json" -w '%{http_code}' -X DELETE "$U/health")
[ "$code" = 405 ] || fail "DELETE /health: $code"
head -c $((2 * 1024 * 1024)) /dev/zero | tr '\0' ' ' >"$tmp/big.json"
code=$(curl -s -o "$tmp/e.json" -w '%{http_code}' --data-binary @"$tmp/big.json" "$U/v1/completions")
[ "$code" = 413 ] && js "$tmp/e.json" 'j["error"]["message"]' >/dev/null || fail "2 MiB body: $code $(cat "$tmp/e.json")"

# a client that hangs up mid-stream cancels its request
gen0=$(metric moeshard_tokens_generated_total)
long=$($PY -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": 400, "temperature": 0, "stream": True}))' "$prompt")
curl -sN --data-binary "$long" "$U/v1/completions" 2>/dev/null | head -c 1 >/dev/null || true
for _ in $(seq 100); do
    [ "$(metric moeshard_active_requests)" = 0 ] && [ "$(metric moeshard_http_requests_in_flight)" = 0 ] && break
    sleep 0.1
done
[ "$(metric moeshard_active_requests)" = 0 ] || fail "the abandoned stream is still generating"
gen1=$(metric moeshard_tokens_generated_total)
$PY -c "import sys; d = $gen1 - $gen0; sys.exit(0 if d < 400 else 1)" \
    || fail "an abandoned stream generated all its tokens ($gen0 -> $gen1): not cancelled"
curl -sf "$U/health" >/dev/null || fail "/health after a client hung up"
echo "curl checks passed"

# the official openai npm client, installed outside the source tree
command -v npm >/dev/null && command -v node >/dev/null || { echo "skipped: curl checks passed; node/npm are not installed"; exit 77; }
case $BUILD in /*) npmdir="$BUILD/http_client" ;; *) npmdir="$ROOT/$BUILD/http_client" ;; esac
mkdir -p "$npmdir"
cp "$ROOT/tests/http_client/package.json" "$ROOT/tests/http_client/package-lock.json" "$ROOT/tests/http_client/client.mjs" "$npmdir/"
if ! [ -f "$npmdir/node_modules/openai/package.json" ] || ! grep -q '"version": "4.104.0"' "$npmdir/node_modules/openai/package.json"; then
    if ! (cd "$npmdir" && timeout 300 npm ci --no-audit --no-fund >"$tmp/npm.log" 2>&1); then
        tail -n 5 "$tmp/npm.log"
        echo "skipped: curl checks passed; npm cannot install the openai client (registry unreachable?)"
        exit 77
    fi
fi
(cd "$npmdir" && node client.mjs "$U/v1" tiny "$prompt" 24) >"$tmp/node.json" 2>"$tmp/node.err" \
    || fail "openai client: $(cat "$tmp/node.err")"
js "$tmp/node.json" 'j["completion"]' >"$tmp/n.txt"
cmp -s "$tmp/n.txt" "$tmp/want.txt" || fail "openai client: completion differs from moeshard run"
js "$tmp/node.json" 'j["chat"]' >"$tmp/nc.txt"
cmp -s "$tmp/nc.txt" "$tmp/h.txt" || fail "openai client: streamed chat differs from curl's"
js "$tmp/node.json" 'j["object"] == "text_completion" and j["role"] == "assistant" and j["chatFinish"] in ("stop", "length") and j["chunks"] >= 2 and j["bad"] == {"status": 400, "type": "invalid_request_error", "param": "temperature"}' \
    | grep -qx true || fail "openai client: $(cat "$tmp/node.json")"
echo "HTTP API: all checks passed (curl and the openai client)"
