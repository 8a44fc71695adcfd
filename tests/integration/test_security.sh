#!/usr/bin/env bash
# Encrypted, authenticated links on loopback (docs/security.md):
# (1) moeshard keygen: files, modes, no overwrite without --force;
# (2) refusals before anything binds: no keys, --plaintext beyond loopback,
#     a key file others can read, plain HTTP beyond loopback;
# (3) expertd + serve with CURVE keys: generate and status work; a client
#     with no key (plaintext), a wrong server key or a key not on the
#     allowlist is refused at once with a clear error, and the daemon logs the
#     refused peer's address and key; a coordinator the host does not allow is refused;
# (4) tcpdump on lo: the prompt is not in the clear with CURVE, and is with
#     --plaintext (so the check can fail); skipped where tcpdump cannot capture;
# (5) the HTTP API over TLS (a self-signed certificate made here) with an
#     API key: 200 with the bearer token, 401 without, no plain HTTP.
# Kills only the pids it started; every wait is bounded.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WAIT_LOG_SECONDS=20 # for a daemon to start or log a refusal
T=60
CANARY="zebra marmalade canary 7731 over the wire"

pub() { grep -v '^#' "$tmp/$1.pub"; }

"$BIN/genmodel" --arch qwen2moe --type f32 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel"
"$BIN/moeshard" pack "$tmp/m.gguf" --hosts 1 --replicas 1 --out "$tmp/p" >/dev/null || fail "pack"
read -r -a ports < <(free_ports 5)
HOST="tcp://127.0.0.1:${ports[0]}" EP="tcp://127.0.0.1:${ports[1]}" PLAIN="tcp://127.0.0.1:${ports[2]}"
HP=${ports[3]}

# ---- (1) keygen ----
for name in coord host client stranger; do
    "$BIN/moeshard" keygen --out "$tmp/$name" >"$tmp/keygen.out" || fail "keygen $name"
done
grep -qF "public key $(pub stranger)" "$tmp/keygen.out" || fail "keygen output: $(cat "$tmp/keygen.out")"
[ "$(stat -c %a "$tmp/coord.key")" = 600 ] || fail "key pair mode $(stat -c %a "$tmp/coord.key")"
[ "$(stat -c %a "$tmp/coord.pub")" = 644 ] || fail "public key mode $(stat -c %a "$tmp/coord.pub")"
grep -Eq '^public = .{40}$' "$tmp/coord.key" && grep -Eq '^secret = .{40}$' "$tmp/coord.key" || fail "key pair format"
[ "$(pub coord | wc -c)" -eq 41 ] || fail "public key file: $(cat "$tmp/coord.pub")"
before=$(cat "$tmp/coord.key")
set +e
"$BIN/moeshard" keygen --out "$tmp/coord" 2>"$tmp/err"; rc=$?
set -e
[ $rc -eq 1 ] && grep -q -- "--force" "$tmp/err" || fail "keygen overwrote: rc $rc $(cat "$tmp/err")"
[ "$before" = "$(cat "$tmp/coord.key")" ] || fail "the refused keygen changed the key"
"$BIN/moeshard" keygen --out "$tmp/spare" --force >/dev/null && "$BIN/moeshard" keygen --out "$tmp/spare" --force \
    >/dev/null || fail "keygen --force"
"$BIN/moeshard" keygen --help | grep -q -- "--out PREFIX" || fail "keygen --help"
echo "$(pub coord) coordinator" >"$tmp/host.allow"
echo "$(pub client) client" >"$tmp/clients.allow"
echo "$HOST $(pub host)" >"$tmp/hosts.keys"
echo "$HOST $(pub stranger)" >"$tmp/wrong.keys"
echo "ok (1) keygen"

# ---- (2) refusals before anything is bound (and before the model is read) ----
set +e
"$BIN/expertd" --listen tcp://0.0.0.0:0 --model "$tmp/p/host-0.gguf" 2>"$tmp/r1.err"; rc=$?
[ $rc -eq 2 ] && grep -q "moeshard keygen" "$tmp/r1.err" && ! grep -q "opening" "$tmp/r1.err" \
    || fail "expertd without keys: rc $rc $(cat "$tmp/r1.err")"
"$BIN/expertd" --listen tcp://0.0.0.0:0 --model "$tmp/p/host-0.gguf" --plaintext 2>"$tmp/r2.err"; rc=$?
[ $rc -eq 2 ] && grep -q "not loopback" "$tmp/r2.err" || fail "expertd --plaintext on 0.0.0.0: rc $rc $(cat "$tmp/r2.err")"
"$BIN/expertd" --listen "$HOST" --model "$tmp/p/host-0.gguf" --key "$tmp/host.key" 2>"$tmp/r3.err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--allow" "$tmp/r3.err" || fail "expertd --key without --allow: rc $rc"
cp "$tmp/host.key" "$tmp/open.key" && chmod 644 "$tmp/open.key"
"$BIN/expertd" --listen "$HOST" --model "$tmp/p/host-0.gguf" --key "$tmp/open.key" --allow "$tmp/host.allow" \
    2>"$tmp/r4.err"; rc=$?
[ $rc -eq 1 ] && grep -q "chmod 600" "$tmp/r4.err" || fail "readable key file: rc $rc $(cat "$tmp/r4.err")"
"$BIN/moeshard" serve --model "$tmp/m.gguf" --listen "tcp://0.0.0.0:0" --plaintext 2>"$tmp/r5.err"; rc=$?
[ $rc -eq 2 ] && grep -q "not loopback" "$tmp/r5.err" || fail "serve --plaintext on 0.0.0.0: rc $rc $(cat "$tmp/r5.err")"
"$BIN/moeshard" serve --model "$tmp/m.gguf" --listen "$PLAIN" 2>"$tmp/r6.err"; rc=$?
[ $rc -eq 2 ] && grep -q "moeshard keygen" "$tmp/r6.err" || fail "serve without keys: rc $rc $(cat "$tmp/r6.err")"
"$BIN/moeshard" serve --model "$tmp/m.gguf" --listen "$PLAIN" --plaintext --http "0.0.0.0:0" 2>"$tmp/r7.err"; rc=$?
[ $rc -eq 1 ] && grep -q "beyond loopback in plain text" "$tmp/r7.err" \
    || fail "plain HTTP on 0.0.0.0: rc $rc $(cat "$tmp/r7.err")"
"$BIN/moeshard" generate --server "tcp://10.255.255.1:5600" --plaintext "x" 2>"$tmp/r8.err"; rc=$?
[ $rc -eq 2 ] && grep -q "not loopback" "$tmp/r8.err" || fail "generate --plaintext to 10.x: rc $rc"
"$BIN/moeshard" generate --server "$EP" "x" 2>"$tmp/r9.err"; rc=$?
[ $rc -eq 2 ] && grep -q "moeshard keygen" "$tmp/r9.err" || fail "generate without keys: rc $rc"
"$BIN/moeshard" run --model "$tmp/p" --hosts "tcp://10.255.255.1:5555" --plaintext -p x 2>"$tmp/r10.err"; rc=$?
[ $rc -eq 2 ] && grep -q "not loopback" "$tmp/r10.err" || fail "run --hosts --plaintext to 10.x: rc $rc"
set -e
echo "ok (2) refused before binding: no keys, --plaintext beyond loopback, open key file, plain HTTP"

# ---- (3) expertd and serve with keys ----
printf 'bearer-token-%s\n' "$RANDOM$RANDOM" >"$tmp/api.key"
chmod 600 "$tmp/api.key"
TOKEN=$(cat "$tmp/api.key")
have_tls=0
if openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "/CN=localhost" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null; then
    chmod 600 "$tmp/tls.key"
    have_tls=1
fi
http_opts=(--http "127.0.0.1:$HP" --http-api-key "$tmp/api.key")
[ $have_tls -eq 1 ] && http_opts+=(--http-tls-cert "$tmp/tls.crt" --http-tls-key "$tmp/tls.key")
"$BIN/expertd" --listen "$HOST" --model "$tmp/p/host-0.gguf" --threads 1 --key "$tmp/host.key" \
    --allow "$tmp/host.allow" 2>"$tmp/host.log" &
pids+=($!)
wait_log -F "$tmp/host.log" "serving "
# the bench's round-trip probe over the same CURVE link (the coordinator's key is allowed)
timeout $T "$BIN/rttbench" --hosts "$HOST" --key "$tmp/coord.key" --host-keys "$tmp/hosts.keys" --rounds 20 \
    --warmup 2 >"$tmp/rtt.out" 2>"$tmp/rtt.err" || fail "rttbench over CURVE: $(cat "$tmp/rtt.err")"
grep -Eq '^rtt_hosts=1 .* rtt_us_mean=[0-9.]+ ' "$tmp/rtt.out" || fail "rttbench printed: $(cat "$tmp/rtt.out")"
set +e
"$BIN/rttbench" --hosts tcp://192.0.2.1:5555 --rounds 1 >/dev/null 2>"$tmp/rtt-plain.err"; rc=$?
[ $rc -eq 1 ] && grep -q "plaintext" "$tmp/rtt-plain.err" || fail "rttbench plaintext beyond loopback: rc $rc $(cat "$tmp/rtt-plain.err")"
"$BIN/rttbench" --hosts "$HOST" --key "$tmp/coord.key" >/dev/null 2>"$tmp/rtt-usage.err"; rc=$?
[ $rc -eq 1 ] && grep -q -- "--key and --host-keys go together" "$tmp/rtt-usage.err" || fail "rttbench --key alone: rc $rc"
set -e
"$BIN/moeshard" serve --model "$tmp/p" --hosts "$HOST" --listen "$EP" --threads 1 --key "$tmp/coord.key" \
    --allow "$tmp/clients.allow" --host-keys "$tmp/hosts.keys" "${http_opts[@]}" 2>"$tmp/serve.log" &
pids+=($!)
wait_log -F "$tmp/serve.log" "serving p"
grep -qF "admitted coordinator 127.0.0.1 (key $(pub coord), coordinator)" "$tmp/host.log" \
    || fail "the host did not log the coordinator it admitted"
ok_client=(--key "$tmp/client.key" --server-key "$tmp/coord.pub")
timeout $T "$BIN/moeshard" run --model "$tmp/m.gguf" -p "$CANARY" -n 16 --temp 0 >"$tmp/run.txt" 2>/dev/null \
    || fail "embedded run"
timeout $T "$BIN/moeshard" generate --server "$EP" "${ok_client[@]}" -n 16 --temp 0 "$CANARY" >"$tmp/gen.txt" \
    2>"$tmp/gen.err" || fail "generate with keys: $(cat "$tmp/gen.err")"
cmp -s "$tmp/gen.txt" "$tmp/run.txt" || fail "generate over CURVE differs from run"
timeout $T "$BIN/moeshard" status --server "$EP" "${ok_client[@]}" | grep -q "experts    on 1 hosts" \
    || fail "status with keys"

# refused clients: exit 1 with the reason, well before their 20 s timeout
refused() { # refused NAME PATTERN ARGS...: the client fails quickly with PATTERN
    local name=$1 pattern=$2 start rc=0
    shift 2
    start=$(date +%s%N)
    timeout $T "$BIN/moeshard" generate --server "$EP" --timeout-ms 20000 "$@" -n 4 "$CANARY" >/dev/null \
        2>"$tmp/$name.err" || rc=$?
    local ms=$((($(date +%s%N) - start) / 1000000))
    [ $rc -eq 1 ] && grep -q -- "$pattern" "$tmp/$name.err" || fail "$name: rc $rc: $(cat "$tmp/$name.err")"
    [ $ms -lt 5000 ] || fail "$name: refused only after $ms ms"
    echo "    $name refused in $ms ms: $(cat "$tmp/$name.err")"
}
refused no-key "plaintext" --plaintext
refused wrong-server-key "server key" --key "$tmp/client.key" --server-key "$tmp/host.pub"
refused not-allowed "not on the server's allowlist" --key "$tmp/stranger.key" --server-key "$tmp/coord.pub"
wait_log -F "$tmp/serve.log" "refused client 127.0.0.1: key $(pub stranger) is not on the allowlist"
# a coordinator whose key the host does not allow, and a wrong host key
set +e
timeout $T "$BIN/moeshard" run --model "$tmp/p" --hosts "$HOST" --key "$tmp/stranger.key" \
    --host-keys "$tmp/hosts.keys" -p x -n 2 >/dev/null 2>"$tmp/c1.err"; rc=$?
[ $rc -eq 1 ] && grep -q "host $HOST refused this key" "$tmp/c1.err" || fail "stranger coordinator: rc $rc $(cat "$tmp/c1.err")"
timeout $T "$BIN/moeshard" run --model "$tmp/p" --hosts "$HOST" --key "$tmp/coord.key" \
    --host-keys "$tmp/wrong.keys" -p x -n 2 >/dev/null 2>"$tmp/c2.err"; rc=$?
[ $rc -eq 1 ] && grep -q "server key" "$tmp/c2.err" || fail "wrong host key: rc $rc $(cat "$tmp/c2.err")"
set -e
wait_log -F "$tmp/host.log" "refused connection from 127.0.0.1: key $(pub stranger) is not on the allowlist"
echo "ok (3) CURVE: keys admitted, no key / wrong server key / key not allowed refused and logged"

# ---- (5) HTTP: TLS and the API key ----
if [ $have_tls -eq 1 ]; then
    URL="https://127.0.0.1:$HP"
    curl_tls=(--cacert "$tmp/tls.crt")
else
    echo "    (openssl cannot make a certificate here: the HTTP checks run without TLS)"
    URL="http://127.0.0.1:$HP"
    curl_tls=()
fi
body='{"prompt": "'"$CANARY"'", "max_tokens": 4, "temperature": 0}'
code=$(curl -s "${curl_tls[@]}" -o "$tmp/h1.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "$body" "$URL/v1/completions") || fail "curl with the token"
[ "$code" = 200 ] && grep -q '"text_completion"' "$tmp/h1.json" || fail "with the token: $code $(cat "$tmp/h1.json")"
code=$(curl -s "${curl_tls[@]}" -o "$tmp/h2.json" -w '%{http_code}' -d "$body" "$URL/v1/completions") || fail "curl"
[ "$code" = 401 ] && grep -q '"invalid_api_key"' "$tmp/h2.json" || fail "without the token: $code $(cat "$tmp/h2.json")"
code=$(curl -s "${curl_tls[@]}" -o "$tmp/h3.json" -w '%{http_code}' -H "Authorization: Bearer wrong$TOKEN" \
    "$URL/v1/models") || fail "curl"
[ "$code" = 401 ] || fail "a wrong token: $code"
if [ $have_tls -eq 1 ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$HP/health" || true)
    [ "$code" != 200 ] || fail "plain HTTP answered on the TLS port"
    curl -s --max-time 5 -o /dev/null "https://127.0.0.1:$HP/health" && fail "an unknown certificate was accepted"
    echo "ok (5) HTTPS with a self-signed certificate: 200 with the token, 401 without or wrong, no plain HTTP"
else
    echo "ok (5) HTTP API key: 200 with the token, 401 without or wrong"
fi

# ---- (4) what an observer of the loopback interface sees ----
capture() { # capture NAME PORT CMD...: runs CMD while tcpdump records PORT; 1 when capturing is impossible
    local name=$1 port=$2 i
    shift 2
    tcpdump -i lo --immediate-mode -U -s 0 -w "$tmp/$name.pcap" "tcp port $port" 2>"$tmp/$name-tcpdump.log" &
    local tpid=$!
    for ((i = 0; i < 50; i++)); do
        grep -q "listening on" "$tmp/$name-tcpdump.log" 2>/dev/null && break
        kill -0 $tpid 2>/dev/null || { wait $tpid 2>/dev/null || true; return 1; }
        sleep 0.1
    done
    grep -q "listening on" "$tmp/$name-tcpdump.log" || { kill $tpid; wait $tpid 2>/dev/null || true; return 1; }
    "$@"
    sleep 0.3
    kill -INT $tpid
    wait $tpid 2>/dev/null || true
    return 0
}
if ! command -v tcpdump >/dev/null; then
    echo "skipped (4): tcpdump is not installed"
elif ! capture curve "${ports[1]}" timeout $T "$BIN/moeshard" generate --server "$EP" "${ok_client[@]}" -n 8 \
    --temp 0 "$CANARY" >/dev/null 2>&1; then
    echo "skipped (4): tcpdump may not capture on lo here: $(head -c 300 "$tmp/curve-tcpdump.log")"
else
    "$BIN/moeshard" serve --model "$tmp/m.gguf" --listen "$PLAIN" --threads 1 --plaintext 2>"$tmp/plain.log" &
    pids+=($!)
    wait_log -F "$tmp/plain.log" "serving m.gguf"
    capture plain "${ports[2]}" timeout $T "$BIN/moeshard" generate --server "$PLAIN" --plaintext -n 8 --temp 0 \
        "$CANARY" >/dev/null 2>&1 || fail "the second capture could not start"
    n=$(tcpdump -r "$tmp/curve.pcap" 2>/dev/null | wc -l)
    [ "$n" -ge 6 ] || fail "the CURVE capture holds $n packets: nothing to judge"
    if grep -a -q "$CANARY" "$tmp/curve.pcap"; then fail "the prompt crossed the CURVE link in the clear"; fi
    grep -a -q "$CANARY" "$tmp/plain.pcap" || fail "the plaintext capture lacks the prompt: the check proves nothing"
    echo "ok (4) tcpdump on lo: the prompt is absent from $n CURVE packets and present in the plaintext run"
fi
echo "all security checks passed"
