#!/usr/bin/env bash
# The deployment files: `systemd-analyze verify` on both units (with their
# ExecStart pointed at this build); `make install` into a staging folder
# (units for PREFIX, configs never overwritten); the example configs
# document every key the daemons accept. Then each unit's ExecStart command
# line, exactly as written (only the binary folder and the config path
# substituted), runs on loopback with a config made from the example:
# expertd serves, the coordinator answers status and generates. sd_notify:
# READY=1 and watchdog pings arrive on a NOTIFY_SOCKET this test listens on;
# the coordinator stops pinging while a model step is stuck (its expert host
# stopped) and pings again once the step has failed; SIGTERM sends
# STOPPING=1 and exits 0.
# Exit 77 when systemd-analyze is absent (after the rest has passed).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
UNIT_BIN=/usr/local/bin # the units' binary folder (make install rewrites it for PREFIX)

# ---- systemd-analyze verify ----
verified=0
if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir -p "$tmp/units"
    for u in moeshard-expertd moeshard-coordinator; do
        sed "s|^ExecStart=$UNIT_BIN/|ExecStart=$BIN/|" "$ROOT/deploy/$u.service" >"$tmp/units/$u.service"
    done
    (cd "$tmp/units" && systemd-analyze verify ./moeshard-expertd.service ./moeshard-coordinator.service) \
        >"$tmp/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$tmp/verify.log")"
    # unknown keys and bad values are only warnings: any line about our units fails
    ! grep -q "moeshard" "$tmp/verify.log" || fail "systemd-analyze verify: $(cat "$tmp/verify.log")"
    echo "systemd-analyze verify: both units clean"
    verified=1
fi

# ---- make install into a staging folder (the build as it is: -o all) ----
stage=$tmp/stage
make -s -C "$ROOT" -o all BUILD="$(dirname "$BIN")" install DESTDIR="$stage" PREFIX=/usr >"$tmp/install.log" 2>&1 \
    || fail "make install: $(cat "$tmp/install.log")"
for f in usr/bin/moeshard usr/bin/expertd usr/lib/systemd/system/moeshard-expertd.service \
    usr/lib/systemd/system/moeshard-coordinator.service usr/lib/sysusers.d/moeshard.conf \
    usr/share/doc/moeshard/operations.md etc/moeshard/expertd.conf etc/moeshard/coordinator.conf; do
    [ -f "$stage/$f" ] || fail "make install did not write /$f"
done
grep -q '^ExecStart=/usr/bin/expertd --config /etc/moeshard/expertd.conf$' \
    "$stage/usr/lib/systemd/system/moeshard-expertd.service" || fail "installed expertd unit: wrong ExecStart"
grep -q '^ExecStart=/usr/bin/moeshard serve --config /etc/moeshard/coordinator.conf$' \
    "$stage/usr/lib/systemd/system/moeshard-coordinator.service" || fail "installed coordinator unit: wrong ExecStart"
! grep -rq /usr/local "$stage/usr/lib/systemd/system" || fail "installed units still name /usr/local"
echo "# the operator's edit" >>"$stage/etc/moeshard/expertd.conf"
make -s -C "$ROOT" -o all BUILD="$(dirname "$BIN")" install DESTDIR="$stage" PREFIX=/usr >"$tmp/install.log" 2>&1 \
    || fail "make install again: $(cat "$tmp/install.log")"
tail -1 "$stage/etc/moeshard/expertd.conf" | grep -q "the operator's edit" || fail "make install overwrote a config"
cmp -s "$ROOT/deploy/expertd.conf" "$stage/etc/moeshard/expertd.conf.example" || fail "no expertd.conf.example beside it"
[ ! -e "$stage/etc/moeshard/coordinator.conf.example" ] || fail "an unchanged config got an .example"
echo "make install: binaries, units for /usr/bin, sysusers, docs, configs kept"

# ---- the example configs document every key ----
printf 'no-such-key = 1\n' >"$tmp/probe.conf"
set +e
"$BIN/expertd" --config "$tmp/probe.conf" --listen tcp://127.0.0.1:1 --model x >/dev/null 2>"$tmp/probe.err"
set -e
keys=$(sed -n "s/.*unknown key 'no-such-key' (\(.*\)).*/\1/p" "$tmp/probe.err" | tr -d ',')
[ -n "$keys" ] || fail "expertd did not list its config keys: $(cat "$tmp/probe.err")"
for k in $keys; do
    grep -Eq "^#?$k = " "$ROOT/deploy/expertd.conf" || fail "deploy/expertd.conf does not document '$k'"
done
skeys=$("$BIN/moeshard" serve --help | grep -oE -- '^ +(-[a-zA-Z], )?--[a-z][a-z0-9-]+' | sed 's/.*--//' | sort -u \
    | grep -vx 'config\|help')
[ -n "$skeys" ] || fail "moeshard serve --help lists no options"
for k in $skeys; do
    grep -Eq "^#?$k( = |$)" "$ROOT/deploy/coordinator.conf" || fail "deploy/coordinator.conf does not document '$k'"
done
echo "example configs document: $keys / $(echo $skeys)"

# ---- a tiny model, packed for one host ----
"$BIN/genmodel" --arch qwen2moe --type f32 --out "$tmp/m.gguf" >/dev/null 2>&1 || fail "genmodel"
"$BIN/moeshard" pack "$tmp/m.gguf" --hosts 1 --out "$tmp/pack" >/dev/null 2>&1 || fail "pack"
read -r p_exp p_coord < <(free_ports 2)

# conf_set FILE KEY VALUE: the example's (possibly commented) KEY line becomes KEY = VALUE.
conf_set() {
    grep -Eq "^#?$2 = " "$1" || fail "$1 has no '$2' line"
    sed -i -E "s|^#?$2 = .*|$2 = $3|" "$1"
}
conf_unset() { sed -i -E "s|^($2 = .*)|#\1|" "$1"; }
# plain_conf FILE KEYS: loopback without keys, plaintext where the daemon knows it.
plain_conf() {
    if echo " $2 " | grep -q ' plaintext '; then
        conf_unset "$1" key
        conf_unset "$1" allow
        conf_unset "$1" host-keys
        conf_set "$1" plaintext true
    fi
}
CLIENT_OPTS=()
if "$BIN/moeshard" status --help 2>&1 | grep -q -- '--plaintext'; then CLIENT_OPTS=(--plaintext); fi

cp "$ROOT/deploy/expertd.conf" "$tmp/expertd.conf"
conf_set "$tmp/expertd.conf" listen "tcp://127.0.0.1:$p_exp"
conf_set "$tmp/expertd.conf" model "$tmp/pack/host-0.gguf"
conf_set "$tmp/expertd.conf" threads 1
plain_conf "$tmp/expertd.conf" "$keys"
cp "$ROOT/deploy/coordinator.conf" "$tmp/coordinator.conf"
conf_set "$tmp/coordinator.conf" model "$tmp/pack"
conf_set "$tmp/coordinator.conf" hosts "tcp://127.0.0.1:$p_exp"
conf_set "$tmp/coordinator.conf" listen "tcp://127.0.0.1:$p_coord"
conf_set "$tmp/coordinator.conf" threads 1
conf_set "$tmp/coordinator.conf" deadline-ms 5000
plain_conf "$tmp/coordinator.conf" "$(echo $skeys)"

# unit_argv UNIT CONF: the unit's ExecStart words into argv, with only the
# binary folder and the --config path replaced.
unit_argv() {
    local unit=$1 conf=$2 line i
    [ "$(grep -c '^ExecStart=' "$unit")" -eq 1 ] || fail "$unit: expected one ExecStart= line"
    line=$(sed -n 's/^ExecStart=//p' "$unit")
    case $line in *[\"\'%\\$]*) fail "$unit: ExecStart uses quoting or specifiers this test does not parse: $line" ;; esac
    read -r -a argv <<<"$line"
    [ "$(dirname "${argv[0]}")" = "$UNIT_BIN" ] || fail "$unit: ExecStart binary not in $UNIT_BIN: ${argv[0]}"
    argv[0]="$BIN/$(basename "${argv[0]}")"
    local replaced=0
    for ((i = 1; i < ${#argv[@]}; i++)); do
        if [ "${argv[i - 1]}" = --config ]; then
            [ "${argv[i]}" = "/etc/moeshard/$(basename "$conf")" ] || fail "$unit: config path ${argv[i]}"
            argv[i]=$conf
            replaced=1
        fi
    done
    [ $replaced -eq 1 ] || fail "$unit: ExecStart has no --config"
}

# listen NAME: a datagram socket $tmp/NAME.sock; each message becomes one
# line "TIME MESSAGE" (newlines as \n) in $tmp/NAME.notify.
listen_notify() {
    "$PY" - "$tmp/$1.sock" "$tmp/$1.notify" <<'PYEOF' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
open(sys.argv[2] + ".up", "w").close()
end = time.time() + 120
with open(sys.argv[2], "w") as f:
    while time.time() < end:
        s.settimeout(1.0)
        try:
            d = s.recv(4096)
        except socket.timeout:
            continue
        f.write("%.3f %s\n" % (time.time(), d.decode(errors="replace").replace("\n", "\\n")))
        f.flush()
PYEOF
    pids+=($!)
    local i
    for ((i = 0; i < 50; i++)); do [ -e "$tmp/$1.notify.up" ] && return 0; sleep 0.1; done
    fail "notify listener $1 did not start"
}

# wait_for NAME PATTERN COUNT SECONDS [PID]: until COUNT lines match (while PID lives).
wait_for() {
    local i n
    for ((i = 0; i < $4 * 10; i++)); do
        n=$(grep -c -- "$2" "$tmp/$1.notify" 2>/dev/null || true)
        [ "${n:-0}" -ge "$3" ] && return 0
        [ -z "${5:-}" ] || kill -0 "$5" 2>/dev/null || break
        sleep 0.1
    done
    fail "$1: $3 x '$2' not seen within $4 s; got: $(cat "$tmp/$1.notify" 2>/dev/null); log: $(tail -5 "$tmp/$1.log")"
}

# start_unit NAME UNIT CONF WHAT: UNIT's command line with CONF, as systemd would
# run it (notify socket $tmp/NAME.sock, watchdog 2 s), stderr in $tmp/NAME.log;
# its timeout wrapper's pid in unit_tpid.
start_unit() {
    listen_notify "$1"
    unit_argv "$ROOT/deploy/$2.service" "$3"
    echo "$4: ${argv[*]}"
    NOTIFY_SOCKET="$tmp/$1.sock" WATCHDOG_USEC=2000000 timeout 120 "${argv[@]}" 2>"$tmp/$1.log" &
    unit_tpid=$!
    pids+=($unit_tpid)
}

# Pings after READY=1: WATCHDOG_USEC 2 s, so one each second.
start_unit expertd moeshard-expertd "$tmp/expertd.conf" expertd
exp_tpid=$unit_tpid
wait_for expertd 'READY=1' 1 20 "$exp_tpid"
grep -q 'READY=1\\nSTATUS=holding .* serving on tcp://127.0.0.1:' "$tmp/expertd.notify" \
    || fail "expertd READY without its STATUS: $(cat "$tmp/expertd.notify")"
grep -q 'STATUS=loading' "$tmp/expertd.notify" || fail "expertd sent no loading STATUS: $(cat "$tmp/expertd.notify")"
wait_for expertd 'WATCHDOG=1' 2 10 "$exp_tpid"

start_unit coord moeshard-coordinator "$tmp/coordinator.conf" coordinator
coord_tpid=$unit_tpid
wait_for coord 'READY=1' 1 30 "$coord_tpid"
wait_for coord 'WATCHDOG=1' 2 10 "$coord_tpid"
SERVER="tcp://127.0.0.1:$p_coord"
timeout 20 "$BIN/moeshard" status --server "$SERVER" "${CLIENT_OPTS[@]}" >"$tmp/status.txt" 2>&1 \
    || fail "status: $(cat "$tmp/status.txt")"
grep -q "experts    on 1 hosts" "$tmp/status.txt" || fail "status: $(cat "$tmp/status.txt")"
grep -Eq "^tcp://127.0.0.1:$p_exp +(up +)?[1-9]" "$tmp/status.txt" || fail "status lists no slices on the host: $(cat "$tmp/status.txt")"
timeout 30 "$BIN/moeshard" generate --server "$SERVER" "${CLIENT_OPTS[@]}" -n 8 --temp 0 "Hello there" \
    >"$tmp/gen.txt" 2>"$tmp/gen.err" || fail "generate: $(cat "$tmp/gen.err")"
echo "status and generate answered through the units' command lines"

# max_gap NAME FROM TO: the longest time between WATCHDOG=1 pings in [FROM, TO].
max_gap() {
    "$PY" - "$tmp/$1.notify" "$2" "$3" <<'PYEOF'
import sys
lo, hi = float(sys.argv[2]), float(sys.argv[3])
t = [float(l.split()[0]) for l in open(sys.argv[1]) if "WATCHDOG=1" in l]
t = [lo] + [x for x in t if lo <= x <= hi] + [hi]
print("%.2f" % max(b - a for a, b in zip(t, t[1:])))
PYEOF
}
now() { date +%s.%N; }

# A stuck step: the expert host stopped, the request waits deadline-ms (5 s)
# for its reply. The coordinator must not ping meanwhile; afterwards it must.
# It counts a step finished within the scheduler's 5 s tokens/s window as
# progress, so the idle wait first lets the generate above leave that window.
exp_pid=$(pgrep -P "$exp_tpid" | head -1)
[ -n "$exp_pid" ] || fail "expertd's pid not found"
t0=$(now)
sleep 6
t1=$(now)
idle_gap=$(max_gap coord "$t0" "$t1")
kill -STOP "$exp_pid"
set +e
timeout 30 "$BIN/moeshard" generate --server "$SERVER" "${CLIENT_OPTS[@]}" -n 4 "stuck" >/dev/null 2>"$tmp/stuck.err"
rc=$?
set -e
t2=$(now)
kill -CONT "$exp_pid"
[ $rc -ne 0 ] && grep -q "no reply within 5000 ms" "$tmp/stuck.err" \
    || fail "stuck host: rc $rc: $(cat "$tmp/stuck.err")"
stuck_gap=$(max_gap coord "$t1" "$t2")
echo "coordinator pings: longest gap idle $idle_gap s, during the stuck step $stuck_gap s (watchdog 2 s)"
"$PY" -c "import sys; sys.exit(0 if $idle_gap < 2.0 else 1)" || fail "idle coordinator pinged too rarely ($idle_gap s)"
"$PY" -c "import sys; sys.exit(0 if $stuck_gap >= 3.0 else 1)" \
    || fail "the coordinator kept pinging while its step was stuck (longest gap $stuck_gap s)"
n_before=$(grep -c 'WATCHDOG=1' "$tmp/coord.notify")
wait_for coord 'WATCHDOG=1' $((n_before + 2)) 10

# SIGTERM, as systemctl stop sends it: STOPPING=1 and exit 0 (no restart).
for name in coord expertd; do
    tpid=$coord_tpid
    [ $name = expertd ] && tpid=$exp_tpid
    kill -TERM "$tpid"
    set +e
    wait "$tpid"
    rc=$?
    set -e
    [ $rc -eq 0 ] || fail "$name: exit status $rc after SIGTERM: $(tail -5 "$tmp/$name.log")"
    wait_for $name 'STOPPING=1' 1 5
done
echo "both daemons: STOPPING=1 and exit 0 on SIGTERM"

if [ $verified -eq 0 ]; then
    echo "skipped: systemd-analyze is not installed (apt-get install systemd); everything else passed"
    exit 77
fi
echo "ok"
