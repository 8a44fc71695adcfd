#!/usr/bin/env bash
# Hostile input to a live expertd and a live coordinator (`moeshard serve`)
# on loopback, one row of the table per malformed kind (tools/wireprobe.c):
# each gets the expected Error reply or is dropped, the daemon stays up and
# answers a valid request right after, and its resident set grows by at
# most RSS_GROWTH_KIB over 10,000 random messages (after a warm-up batch).
# Every process is bounded by timeout and killed by its pid.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WAIT_LOG_SECONDS=30 # for each daemon to start
T=60
PROBE_TIMEOUT_MS=2000 # a dropped message is one that gets no reply within this
RANDOM_COUNT=10000
RANDOM_SEED=20240601
RSS_GROWTH_KIB=${RSS_GROWTH_KIB:-8192}
[ "${MS_ASAN:-0}" = 1 ] && RSS_GROWTH_KIB=32768 # ASan's quarantine holds freed memory back on purpose

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Links are plaintext on loopback; a build that encrypts by default asks for --plaintext.
plain=()
"$BIN/expertd" --help 2>&1 | grep -q -- '--plaintext' && plain=(--plaintext)
serve_plain=()
"$BIN/moeshard" serve --help 2>&1 | grep -q -- '--plaintext' && serve_plain=(--plaintext)

"$BIN/genmodel" --arch qwen2moe --type f32 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel"
read -r -a ports < <(free_ports 2)
EP_E="tcp://127.0.0.1:${ports[0]}"
EP_C="tcp://127.0.0.1:${ports[1]}"

"$BIN/expertd" --listen "$EP_E" --model "$tmp/m.gguf" --experts 0-5 --threads 1 "${plain[@]}" 2>"$tmp/expertd.log" &
e_pid=$!
pids+=($e_pid)
"$BIN/moeshard" serve --model "$tmp/m.gguf" --listen "$EP_C" --threads 1 --ctx 512 --max-seqs 2 "${serve_plain[@]}" \
    2>"$tmp/serve.log" &
c_pid=$!
pids+=($c_pid)
wait_log "$tmp/expertd.log" "serving " "$e_pid"
wait_log "$tmp/serve.log" "serving" "$c_pid"

# kind | expertd: expect code | coordinator: expect code ("-": any errno).
# A part past ZMQ_MAXMSGSIZE makes ZeroMQ drop the connection: no reply by design.
# expertd keeps no per-request state: a duplicate id or an old epoch is answered
# (the epoch echoed), and the coordinator drops the late reply by (id, epoch).
# The coordinator refuses expert-protocol kinds as not client messages (EPROTO).
table="
truncated-header     error EPROTO            error EPROTO
oversize-header      error EMSGSIZE          error EPROTO
oversize-frame       drop  -                 drop  -
wrong-version        error EPROTONOSUPPORT   error EPROTO
wrong-dtype          error EPROTO            error EPROTO
dims-mismatch        error EPROTO            error EPROTO
unknown-expert       error EINVAL            error EPROTO
layer-out-of-range   error EINVAL            error EPROTO
duplicate-request-id reply -                 error EEXIST
stale-epoch          reply -                 reply -
garbage-frames       error EPROTO            error EPROTO
too-many-parts       error EMSGSIZE          error EPROTO
empty-message        error EPROTO            error EPROTO
"

probe() { # DAEMON EP PID KIND EXPECT CODE [extra args]
    local daemon=$1 ep=$2 pid=$3 kind=$4 expect=$5 code=$6
    shift 6
    local args=(--endpoint "$ep" --daemon "$daemon" --kind "$kind" --expect "$expect" --timeout-ms $PROBE_TIMEOUT_MS)
    [ "$code" != - ] && args+=(--code "$code")
    timeout --kill-after=5 $T "$BIN/wireprobe" "${args[@]}" "$@" >>"$tmp/probe-$daemon.out" 2>&1 \
        || fail "$daemon, $kind: $(tail -n 3 "$tmp/probe-$daemon.out")"
    kill -0 "$pid" 2>/dev/null || fail "$daemon exited after $kind"
    echo "ok    $daemon $kind: $expect $code"
}

while read -r kind e_expect e_code c_expect c_code; do
    [ -z "$kind" ] && continue
    probe expertd "$EP_E" "$e_pid" "$kind" "$e_expect" "$e_code"
    probe coordinator "$EP_C" "$c_pid" "$kind" "$c_expect" "$c_code"
done <<<"$table"

# random byte strings: a warm-up batch, then the measured one
for d in expertd coordinator; do
    if [ $d = expertd ]; then ep=$EP_E pid=$e_pid; else ep=$EP_C pid=$c_pid; fi
    probe $d "$ep" "$pid" random error-or-drop - --count 1000 --seed 1
    before=$(rss_kib "$pid")
    probe $d "$ep" "$pid" random error-or-drop - --count $RANDOM_COUNT --seed $RANDOM_SEED
    after=$(rss_kib "$pid")
    echo "      $d RSS ${before} KiB -> ${after} KiB after $RANDOM_COUNT random messages"
    [ $((after - before)) -le "$RSS_GROWTH_KIB" ] || fail "$d RSS grew by $((after - before)) KiB (bound $RSS_GROWTH_KIB)"
done

# both still stop cleanly
for p in $e_pid $c_pid; do
    kill -TERM "$p"
    rc=0
    timeout 20 tail --pid="$p" -f /dev/null || fail "pid $p did not stop on SIGTERM"
    wait "$p" || rc=$?
    [ $rc -eq 0 ] || fail "pid $p exited $rc on SIGTERM"
done
pids=()
echo "hostile input: every kind refused or dropped, both daemons up and answering"
