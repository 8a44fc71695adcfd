#!/usr/bin/env bash
# expertd holding 2 of 16 experts of a 216 MB model: its resident set stays
# within the slices it holds + its working buffers + 64 MiB, far below the
# file, i.e. it never reads the rest of a full GGUF's expert data.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WAIT_LOG_SECONDS=30 # loading the 216 MB model

"$BIN/genmodel" --arch llama --type q8_0 --hidden 512 --layers 8 --experts 16 --top-k 2 --ff 1024 \
    --heads 8 --kv-heads 2 --out "$tmp/m.gguf" 2>/dev/null
file_mib=$(( $(stat -c %s "$tmp/m.gguf") / 1048576 ))
port=$((30000 + RANDOM % 20000))
"$BIN/expertd" --listen "tcp://127.0.0.1:$port" --model "$tmp/m.gguf" --experts 0-1 --threads 2 --plaintext 2>"$tmp/expertd.log" &
pid=$!
pids+=($pid)
wait_log "$tmp/expertd.log" "serving " "$pid"
held_mib=$(sed -n 's/.*serving [0-9]* slices (\([0-9.]*\) MiB).*/\1/p' "$tmp/expertd.log")
rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
# working buffers: activations and outputs for a full batch, expert scratch; 16 MiB is ample at hidden 512
bound_kib=$(awk -v h="$held_mib" 'BEGIN { printf "%d", (h + 16 + 64) * 1024 }')
echo "model file ${file_mib} MiB, slices held ${held_mib} MiB, RSS $((rss_kib / 1024)) MiB, bound $((bound_kib / 1024)) MiB"
[ "$rss_kib" -le "$bound_kib" ] || fail "RSS ${rss_kib} KiB exceeds ${bound_kib} KiB"
[ "$rss_kib" -lt $((file_mib * 1024 / 2)) ] || fail "RSS ${rss_kib} KiB is not far below the file's ${file_mib} MiB"
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
pids=()
[ $rc -eq 0 ] || fail "expertd exited $rc on SIGTERM"
echo "expertd memory: within bound"
