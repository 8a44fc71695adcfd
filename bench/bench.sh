#!/usr/bin/env bash
# Performance figures for one machine, all from one run: memory bandwidth,
# load throughput of the io_uring loader against dd, prefill and decode speed
# on the generated Mixtral-shaped bench model (weights read into memory, and
# with --mmap), the decode roofline, the decode products alone by shape
# (mmbench) and peak memory, and the same generation with the experts on 2
# expertd on loopback. The decode runs alternate with bandwidth reads, and the
# roofline's target figure compares each run with the reads on its two sides.
# What `make bench` runs; see docs/performance.md.
#
# Environment: BUILD (default build), MS_BENCH_DIR (default /var/tmp/moeshard-bench,
# outside the repository: the model is ~1.8 GB), MS_BENCH_THREADS (default: all cores),
# MS_BENCH_RUNS (generation runs per configuration, default 5).
set -euo pipefail

BUILD=${BUILD:-build}
BIN="$BUILD/bin"
MS_BENCH_DIR=${MS_BENCH_DIR:-/var/tmp/moeshard-bench}
THREADS=${MS_BENCH_THREADS:-$(nproc)}
N_PROMPT=128
N_DECODE=64
LOAD_RUNS=3
RUNS=${MS_BENCH_RUNS:-5} # generation runs per configuration; the fastest decode is reported
DROP_CACHES=/proc/sys/vm/drop_caches
RSS_SLACK_MB=67.108864 # 64 MiB in MB (1e6 bytes): code, tokenizer, scratch buffers
MODEL="$MS_BENCH_DIR/bench-mixtral-q8_0.gguf"
GEN_ARGS=(--arch llama --shape bench --type q8_0)
# The same shape in Q4_K, the k-quant downloaded GGUFs use most (~1 GB).
MODEL_Q4K="$MS_BENCH_DIR/bench-mixtral-q4_k.gguf"
GEN_ARGS_Q4K=(--arch llama --shape bench --type q4_k)
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
    echo "bench: error: $*" >&2
    exit 1
}

say() {
    echo "bench: $*" >&2
}

need_bin() {
    [ -x "$BIN/$1" ] || die "$BIN/$1 is missing: build it first (make BUILD=$BUILD all)"
}

CLUSTER_HOSTS=2
PACK="$MS_BENCH_DIR/packed-$CLUSTER_HOSTS"
PY=/usr/bin/python3
HOST_PIDS=()

# Scratch files (logs) live outside the repository and go away on exit, and
# so do the expert daemons this script started.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moeshard-bench.XXXXXX")
cleanup() {
    local pid
    for pid in "${HOST_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the bench model: generated once, reused while the generator is unchanged ----

# A generator fingerprint: its source when the tree is at hand (a rebuild of
# the same source makes the same file), else the binary itself.
generator_version() {
    local src="$REPO_DIR/tools/genmodel.c"
    if [ -f "$src" ]; then
        echo "src-$(sha256sum "$src" | cut -c1-16)"
    else
        echo "bin-$(sha256sum "$BIN/genmodel" | cut -c1-16)"
    fi
}

ensure_model() {
    local stamp="$MODEL.stamp" want have=""
    want="generator=$(generator_version) args=${GEN_ARGS[*]}"
    if [ -f "$MODEL" ] && [ -f "$stamp" ]; then
        have=$(head -n 1 "$stamp")
        local size_now size_then
        size_now=$(stat -c %s "$MODEL")
        size_then=$(sed -n 's/^bytes=//p' "$stamp")
        if [ "$have" = "$want" ] && [ "$size_now" = "$size_then" ]; then
            say "reusing $MODEL ($want)"
            return 0
        fi
        say "the bench model is stale or incomplete; generating it again"
    fi
    mkdir -p "$MS_BENCH_DIR" || die "cannot create $MS_BENCH_DIR (set MS_BENCH_DIR to a writable folder)"
    local free_kb
    free_kb=$(df -Pk "$MS_BENCH_DIR" | awk 'NR == 2 { print $4 }')
    [ "${free_kb:-0}" -ge 2500000 ] ||
        die "$MS_BENCH_DIR has $((${free_kb:-0} / 1024)) MiB free; the bench model needs ~1.8 GB (set MS_BENCH_DIR elsewhere)"
    say "generating the bench model $MODEL (once; ~1.8 GB) ..."
    rm -f "$stamp"
    "$BIN/genmodel" "${GEN_ARGS[@]}" --out "$MODEL.tmp" ||
        { rm -f "$MODEL.tmp"; die "genmodel failed (see its message above)"; }
    mv -f "$MODEL.tmp" "$MODEL"
    # Write-back of 1.8 GB of dirty pages would otherwise share the memory
    # bus with the bandwidth measurement that follows.
    sync "$MODEL"
    printf '%s\nbytes=%s\n' "$want" "$(stat -c %s "$MODEL")" >"$stamp"
}

# Reads the model once so that the run measures memory, not the disk.
warm_model() {
    say "reading the model into the page cache ..."
    cat "$MODEL" >/dev/null || die "cannot read $MODEL"
}

# ---- memory bandwidth ----

max2() {
    awk -v a="$1" -v b="${2:-0}" 'BEGIN { print (a + 0 > b + 0) ? a : b }'
}

# run_membw WHEN (before, after): measured on both sides of the decode runs,
# which the roofline compares with the faster of the two (a shared machine's
# bandwidth can sag for seconds; a sag during one measurement must not make
# the decode look closer to the roofline than it is). Each time membw reads
# twice: touching each page ahead as the decode kernels do, and as a plain
# loop (--touch-ahead 0). Which is faster depends on the machine (the touch
# gains up to 40 % on one, costs up to 20 % on another: docs/performance.md,
# Pages), and the roofline takes the faster: what the memory can give.
run_membw() {
    local when=$1 m1 mn mm touch out mn_touch=0 mn_plain=0
    say "measuring memory read bandwidth (1 and $THREADS threads), $when the decode runs ..."
    for touch in default 0; do
        # default: membw's own distance, the kernels' MS_PAGE_AHEAD
        local args=(--threads "$THREADS")
        [ "$touch" = default ] || args+=(--touch-ahead "$touch")
        out="$WORK/membw-$touch.out"
        "$BIN/membw" "${args[@]}" >"$out" 2>"$WORK/membw.err" ||
            { cat "$WORK/membw.err" >&2; die "membw ${args[*]} failed"; }
        m1=$(sed -n 's/^membw_threads=1 gbps=\([0-9.]*\) .*/\1/p' "$out")
        mn=$(sed -n "s/^membw_threads=$THREADS gbps=\\([0-9.]*\\) .*/\\1/p" "$out")
        mm=$(sed -n "s/^membw_threads=$THREADS gbps=.* median_gbps=//p" "$out")
        if [ -z "$m1" ] || [ -z "$mn" ] || [ -z "$mm" ]; then
            die "membw ${args[*]} printed no bandwidth lines: $(cat "$out")"
        fi
        MEMBW_ISA=$(sed -n 's/^membw_isa=//p' "$out")
        if [ "$touch" = 0 ]; then mn_plain=$mn; else mn_touch=$mn; fi
        MEMBW_1=$(max2 "$m1" "${MEMBW_1:-}")
        MEMBW_N_MEDIAN=$(max2 "$mm" "${MEMBW_N_MEDIAN:-}")
    done
    mn=$(max2 "$mn_touch" "$mn_plain")
    if [ "$when" = before ]; then
        MEMBW_N_BEFORE=$mn
    else
        MEMBW_N_AFTER=$mn
    fi
    MEMBW_N=$(max2 "$mn" "${MEMBW_N:-}")
    MEMBW_N_TOUCH=$(max2 "$mn_touch" "${MEMBW_N_TOUCH:-}")
    MEMBW_N_PLAIN=$(max2 "$mn_plain" "${MEMBW_N_PLAIN:-}")
    run_cpu_speed "$when"
}

# bracket_bw: the memory's read bandwidth right now, for the decode run
# next to it. A shared machine's bandwidth moves in spells of seconds (one
# process reading 1 GiB passes over a minute: 9-23 GB/s, docs/performance.md,
# Paired with the bandwidth around it), so a decode run is also compared
# with what the memory gave just before and just after it: the same reads
# as the roofline's (membw touching pages and plain, the decode kernel's
# long product), fewer passes. Sets BRACKET_GBPS.
BRACKET_PASSES=4
bracket_bw() {
    local out="$WORK/bracket.out" g best=0 args
    "$BIN/mmbench" --rows 0 --passes "$BRACKET_PASSES" --threads "$THREADS" >"$out" 2>&1 ||
        { cat "$out" >&2; die "mmbench --rows 0 (bandwidth next to a decode run) failed"; }
    g=$(sed -n 's/^mmbench_gbps=//p' "$out")
    [ -n "$g" ] || die "mmbench printed no rate: $(cat "$out")"
    best=$(max2 "$g" "$best")
    for args in "" "--touch-ahead 0"; do
        # shellcheck disable=SC2086 # args is empty or two words
        "$BIN/membw" --threads "$THREADS" --passes "$BRACKET_PASSES" $args >"$out" 2>&1 ||
            { cat "$out" >&2; die "membw $args (bandwidth next to a decode run) failed"; }
        g=$(sed -n "s/^membw_threads=$THREADS gbps=\\([0-9.]*\\) .*/\\1/p" "$out")
        [ -n "$g" ] || die "membw printed no bandwidth line: $(cat "$out")"
        best=$(max2 "$g" "$best")
    done
    BRACKET_GBPS=$best
}

# The CPUs this process may run on, one id per line ("0-3,6" -> 0 1 2 3 6).
allowed_cpus() {
    sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status | tr ',' '\n' |
        awk -F- '{ for (c = $1; c <= ($2 == "" ? $1 : $2); c++) print c }'
}

# run_cpu_speed WHEN: the one-token row kernel on weights that stay in L1
# (mmbench --in-cache --layout rows: the kernel --mmap decodes with, the
# figure comparable with runs before the 16-row layout), on each CPU in turn:
# what the cores compute at the time, which memory's bandwidth does not show. A shared machine's cores slow
# down in spells with the neighbours' load; the products, which compute as
# well as read, then stream below membw's rate (docs/performance.md).
run_cpu_speed() {
    local when=$1 c g list=""
    for c in $(allowed_cpus); do
        taskset -c "$c" "$BIN/mmbench" --in-cache --layout rows --threads 1 --passes 20 >"$WORK/cpu.out" 2>&1 ||
            { cat "$WORK/cpu.out" >&2; die "mmbench --in-cache on CPU $c failed"; }
        g=$(sed -n 's/^mmbench_gbps=//p' "$WORK/cpu.out")
        [ -n "$g" ] || die "mmbench --in-cache printed no rate: $(cat "$WORK/cpu.out")"
        list="$list${list:+ }$g"
    done
    [ -n "$list" ] || die "no CPU found in /proc/self/status (Cpus_allowed_list)"
    if [ "$when" = before ]; then
        CPU_SPEED_BEFORE=$list
    else
        CPU_SPEED_AFTER=$list
    fi
}

# The decode products alone, as a step issues them on the bench model (d =
# FF = 1024): Q, K and V (1536 rows), the output projection (1024 rows), the
# 4 chosen experts' gate and up (8 x 1024) and down (4 x 1024) matrices, the
# output head (4096 rows); and one product over 256 MiB (a long stream).
# PRODUCTS_US is what a token's products would take at those rates.
MMB_SHAPES=("0 1" "1536 1" "1024 1" "1024 8" "1024 4" "4096 1")
MMB_KEYS=(long qkv wo gate_up down output)
MMB_BYTES=(0 1671168 1114112 8912896 4456448 4456448) # per layer (output: per token), 1088 B a row
run_mmbench() {
    say "timing the decode products by shape (mmbench) ..."
    local i rows jobs g
    PRODUCTS_US=0
    for i in "${!MMB_SHAPES[@]}"; do
        read -r rows jobs <<<"${MMB_SHAPES[$i]}"
        "$BIN/mmbench" --rows "$rows" --jobs "$jobs" --threads "$THREADS" >"$WORK/mmbench.out" 2>&1 ||
            { cat "$WORK/mmbench.out" >&2; die "mmbench --rows $rows --jobs $jobs failed"; }
        g=$(sed -n 's/^mmbench_gbps=//p' "$WORK/mmbench.out")
        [ -n "$g" ] || die "mmbench printed no rate: $(cat "$WORK/mmbench.out")"
        MMB_GBPS[$i]=$g
        case ${MMB_KEYS[$i]} in
        long) MMB_LONG_MEAN=$(sed -n 's/^mmbench_mean_gbps=//p' "$WORK/mmbench.out") ;;
        output) PRODUCTS_US=$(calc "$PRODUCTS_US + ${MMB_BYTES[$i]} / ($g * 1e3)" 1) ;;
        *) PRODUCTS_US=$(calc "$PRODUCTS_US + 16 * ${MMB_BYTES[$i]} / ($g * 1e3)" 1) ;;
        esac
    done
}

# ---- load throughput: the io_uring loader against dd iflag=direct ----

# Writes back dirty pages and empties the page cache, so that each read comes
# from the disk; fails where the file is not writable (not root, a container).
drop_page_cache() {
    sync
    { echo 3 >"$DROP_CACHES"; } 2>/dev/null
}

# Prints the GB/s (1e9 bytes/s) of one cold dd pass over the model.
dd_gbps() {
    drop_page_cache || true
    local line
    line=$(LC_ALL=C dd if="$MODEL" of=/dev/null iflag=direct bs=4M 2>&1 | tail -n 1)
    LC_ALL=C awk '/ bytes .* copied, / { for (i = 1; i <= NF; i++) if ($i == "s,") { printf "%.3f", $1 / $(i - 1) / 1e9; exit } }' \
        <<<"$line" | grep . || die "dd iflag=direct failed on $MODEL: $line"
}

# Prints "gbps direct" of one cold loadbench pass (loadbench drops the cache
# itself, after the untimed digest pass of --sha256).
loadbench_run() {
    local out
    out=$("$BIN/loadbench" --drop-caches "$@" "$MODEL" 2>"$WORK/loadbench.err") ||
        { cat "$WORK/loadbench.err" >&2; die "loadbench failed"; }
    local g d
    g=$(sed -n 's/^load_gbps=\([0-9.]*\) .*/\1/p' <<<"$out")
    d=$(sed -n 's/.* direct=\([a-z]*\) .*/\1/p' <<<"$out")
    [ -n "$g" ] && [ -n "$d" ] || die "loadbench printed no load_gbps/direct: $out"
    echo "$g $d"
}

median() {
    tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# LOAD_RUNS rounds of dd, loadbench and loadbench --sha256, each from a cold
# cache where it can be dropped; the medians go in the report.
run_load() {
    if drop_page_cache; then
        LOAD_COLD=yes
    else
        LOAD_COLD=no
        say "warning: cannot write $DROP_CACHES (run as root to drop the page cache): load figures come from a warm cache and measure memory, not the disk"
    fi
    local dd_all="" lb_all="" sha_all="" r g d out
    for ((r = 1; r <= LOAD_RUNS; r++)); do
        say "load round $r/$LOAD_RUNS: dd iflag=direct bs=4M, loadbench, loadbench --sha256 ..."
        g=$(dd_gbps)
        dd_all="$dd_all $g"
        out=$(loadbench_run)
        read -r g d <<<"$out"
        lb_all="$lb_all $g"
        LOAD_DIRECT=$d
        out=$(loadbench_run --sha256)
        read -r g d <<<"$out"
        sha_all="$sha_all $g"
    done
    say "load GB/s per round: dd$dd_all; loadbench$lb_all; loadbench --sha256$sha_all"
    LOAD_DD=$(median "$dd_all")
    LOAD_LB=$(median "$lb_all")
    LOAD_SHA=$(median "$sha_all")
    LOAD_PCT=$(calc "100 * $LOAD_LB / $LOAD_DD")
    LOAD_SHA_PCT=$(calc "100 * $LOAD_SHA / $LOAD_DD")
    [ "$LOAD_DIRECT" = yes ] || say "warning: O_DIRECT was refused on $MS_BENCH_DIR; loadbench read buffered"
}

# One cold start of expertd holding every expert of the bench model: the
# throughput it logs ("loaded ...: read in S s: G GB/s ...; memory allocated in
# A s; O GB/s overall"). Prints "G O". The daemon is stopped by its pid once it serves.
expertd_load_gbps() {
    drop_page_cache || true
    local port=$((20000 + RANDOM % 20000)) log="$WORK/expertd.log" pid g="" o=""
    "$BIN/expertd" --listen "tcp://127.0.0.1:$port" --model "$MODEL" --experts all --threads "$THREADS" \
        --plaintext 2>"$log" &
    pid=$!
    for ((i = 0; i < 600; i++)); do
        grep -q "serving " "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    g=$(sed -n 's/.*loaded .*: read in [0-9.]* s: \([0-9.]*\) GB\/s.*/\1/p' "$log" | tail -n 1)
    o=$(sed -n 's/.*loaded .* \([0-9.]*\) GB\/s overall.*/\1/p' "$log" | tail -n 1)
    [ -n "$g" ] && [ -n "$o" ] || { cat "$log" >&2; die "expertd did not report its load throughput"; }
    echo "$g $o"
}

run_expertd_load() {
    local all="" overall="" r g o
    for ((r = 1; r <= LOAD_RUNS; r++)); do
        say "expertd load round $r/$LOAD_RUNS: every expert of the bench model ..."
        read -r g o <<<"$(expertd_load_gbps)"
        all="$all $g"
        overall="$overall $o"
    done
    say "expertd load GB/s per round (reading):$all; with memory allocation:$overall"
    LOAD_EXPERTD=$(median "$all")
    LOAD_EXPERTD_ALL=$(median "$overall")
    LOAD_EXPERTD_PCT=$(calc "100 * $LOAD_EXPERTD / $LOAD_DD")
}

# ---- a prompt of exactly N_PROMPT tokens ----

# Plain English prose, long enough for N_PROMPT tokens with room to spare.
PROMPT_SOURCE="The old lighthouse keeper climbed the narrow stairs every evening before the sun went \
down, carrying a small lamp and a notebook in which he wrote the weather, the ships he had seen and \
the birds that rested on the railing. In winter the wind came from the north and the sea turned grey \
and heavy, and he would sit by the window for hours, listening to the waves break against the rocks \
below. His daughter lived in the town across the bay and visited him on Sundays, bringing bread, \
apples and news of the harbour: which boats had come in, who had married, which of the fishermen had \
finally sold his nets. She asked him every time whether he was lonely, and every time he said that a \
man with a light to keep is never alone, because somewhere out in the dark there is always someone \
looking for it. When the new electric beacon was installed, the engineers told him that his work was \
no longer needed, but he kept climbing the stairs each evening all the same, writing down the wind \
and the ships, because the habit of watching had become the shape of his days."

count_tokens() {
    local ids
    ids=$("$BIN/moeshard" tokenize --model "$MODEL" "$1" 2>"$WORK/tokenize.err") ||
        { cat "$WORK/tokenize.err" >&2; die "moeshard tokenize failed"; }
    wc -w <<<"$ids" | tr -d ' '
}

# Sets PROMPT and PROMPT_TOKENS: the shortest prefix of the source text with
# at least N_PROMPT tokens (binary search over words), trimmed inside its last
# word to exactly N_PROMPT where a cut gives that count.
build_prompt() {
    # Counts go through plain assignments so that a failing tokenize stops
    # the script (errexit does not look inside test conditions).
    local text="$PROMPT_SOURCE" reps=1 n
    n=$(count_tokens "$text")
    while [ "$n" -lt "$N_PROMPT" ]; do
        [ "$reps" -lt 16 ] || die "the built-in prompt text never reaches $N_PROMPT tokens"
        text="$text $PROMPT_SOURCE"
        reps=$((reps + 1))
        n=$(count_tokens "$text")
    done
    local -a words
    read -r -a words <<<"$text"
    local lo=1 hi=${#words[@]} mid
    while [ "$lo" -lt "$hi" ]; do
        mid=$(((lo + hi) / 2))
        n=$(count_tokens "${words[*]:0:mid}")
        if [ "$n" -ge "$N_PROMPT" ]; then hi=$mid; else lo=$((mid + 1)); fi
    done
    PROMPT="${words[*]:0:lo}"
    PROMPT_TOKENS=$(count_tokens "$PROMPT")
    [ "$PROMPT_TOKENS" -eq "$N_PROMPT" ] && return 0
    local head="${words[*]:0:lo-1}" last="${words[lo - 1]}" k cand
    for ((k = 1; k < ${#last}; k++)); do
        cand="$head ${last:0:k}"
        n=$(count_tokens "$cand")
        if [ "$n" -eq "$N_PROMPT" ]; then
            PROMPT=$cand PROMPT_TOKENS=$n
            return 0
        fi
    done
    say "warning: no cut of the text gives exactly $N_PROMPT tokens; using $PROMPT_TOKENS"
}

# ---- prefill and decode ----

# Value of "<key> <number>" in the run's summary line, e.g. field "prefill".
summary_field() {
    sed -n "s/.*[ ,]$1 \([0-9.][0-9.]*\) .*/\1/p" <<<"$SUMMARY" | head -n 1
}

# run_best NAME COMMAND...: runs the generation command RUNS times (a shared
# machine's speed moves from second to second, and the bandwidth it is
# compared with is the best of 20 passes) and keeps, as $WORK/NAME.out/.err
# and SUMMARY, the run with the highest decode rate. Sets RUN_DECODES and
# RUN_PREFILLS (every run's rates, in order), BEST_PREFILL, MEDIAN_DECODE and
# MAX_RSS (the largest peak RSS of the runs). With PAIRED=yes the memory's
# bandwidth is read before the first run and after each (bracket_bw): each
# run's weight stream as a percentage of the faster of the reads on its two
# sides in PAIRED_PCTS, their median in PAIRED_MEDIAN, the reads in BRACKETS.
run_best() {
    local name=$1 i best=-1 d p r w summary bw_before=0 paired
    shift
    RUN_DECODES=""
    RUN_PREFILLS=""
    BEST_PREFILL=0
    MAX_RSS=0
    BRACKETS=""
    PAIRED_PCTS=""
    if [ "${PAIRED:-no}" = yes ]; then
        bracket_bw
        bw_before=$BRACKET_GBPS
        BRACKETS=$BRACKET_GBPS
    fi
    for ((i = 1; i <= RUNS; i++)); do
        "$@" >"$WORK/$name-$i.out" 2>"$WORK/$name-$i.err" ||
            { tail -n 20 "$WORK/$name-$i.err" >&2; die "$name: $(basename "$1") run $i of $RUNS failed"; }
        summary=$(grep -E 'prefill [0-9.]+ tok/s' "$WORK/$name-$i.err" | tail -n 1) ||
            die "$name: run $i printed no summary line with 'prefill X tok/s'"
        SUMMARY=$summary
        d=$(summary_field decode)
        p=$(summary_field prefill)
        r=$(summary_field peak-rss)
        [ -n "$d" ] && [ -n "$p" ] && [ -n "$r" ] ||
            die "$name: could not read decode and prefill tok/s and peak-rss from: $summary"
        if [ "${PAIRED:-no}" = yes ]; then
            # this run against the faster of the reads just before and after it
            bracket_bw
            BRACKETS="$BRACKETS $BRACKET_GBPS"
            w=$(summary_field 'weights\/token')
            [ -n "$w" ] || die "$name: could not read weights/token from: $summary"
            paired=$(calc "100 * $d * $w / 1e3 / $(max2 "$bw_before" "$BRACKET_GBPS")")
            PAIRED_PCTS="${PAIRED_PCTS:+$PAIRED_PCTS }$paired"
            bw_before=$BRACKET_GBPS
        fi
        RUN_DECODES="${RUN_DECODES:+$RUN_DECODES }$d"
        RUN_PREFILLS="${RUN_PREFILLS:+$RUN_PREFILLS }$p"
        BEST_PREFILL=$(awk "BEGIN { print ($p > $BEST_PREFILL) ? $p : $BEST_PREFILL }")
        MAX_RSS=$(awk "BEGIN { print ($r > $MAX_RSS) ? $r : $MAX_RSS }")
        if awk "BEGIN { exit !($d > $best) }"; then
            best=$d
            cp "$WORK/$name-$i.out" "$WORK/$name.out"
            cp "$WORK/$name-$i.err" "$WORK/$name.err"
        fi
    done
    SUMMARY=$(grep -E 'prefill [0-9.]+ tok/s' "$WORK/$name.err" | tail -n 1)
    MEDIAN_DECODE=$(tr ' ' '\n' <<<"$RUN_DECODES" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    PAIRED_MEDIAN=""
    [ -z "$PAIRED_PCTS" ] || PAIRED_MEDIAN=$(median "$PAIRED_PCTS")
    say "$name: decode tok/s of the $RUNS runs: $RUN_DECODES"
    [ -z "$PAIRED_PCTS" ] ||
        say "$name: each run's decode against the reads next to it: $PAIRED_PCTS % (reads $BRACKETS GB/s)"
}

run_model() {
    say "running $RUNS x: moeshard run --model $MODEL --prompt <$PROMPT_TOKENS tokens> -n $N_DECODE --temp 0 --threads $THREADS"
    PAIRED=yes run_best run "$BIN/moeshard" run --model "$MODEL" --prompt "$PROMPT" -n "$N_DECODE" --temp 0 --threads "$THREADS"
    ROOF_PAIRED=$PAIRED_MEDIAN
    ROOF_PAIRED_RUNS=$PAIRED_PCTS
    ROOF_BRACKETS=$BRACKETS
    PREFILL=$BEST_PREFILL
    DECODE=$(summary_field decode)
    DECODES=$RUN_DECODES
    PREFILLS=$RUN_PREFILLS
    DECODE_MEDIAN=$MEDIAN_DECODE
    W_MB=$(summary_field 'weights\/token')
    RSS_MB=$MAX_RSS
    KV_MB=$(summary_field kv-cache)
    STEPS=$(sed -n 's/.*decode [0-9.]* tok\/s (\([0-9]*\) steps.*/\1/p' <<<"$SUMMARY")
    for v in PREFILL DECODE W_MB RSS_MB; do
        [ -n "${!v}" ] || die "could not read $v from the summary line: $SUMMARY"
    done
}

# The same runs with --mmap: the weights used from the file's mapping (the
# page cache, 4 KiB pages) instead of read into huge-page memory at start.
run_model_mmap() {
    local saved_summary=$SUMMARY
    say "running $RUNS x: the same with --mmap"
    run_best run_mmap "$BIN/moeshard" run --model "$MODEL" --prompt "$PROMPT" -n "$N_DECODE" --temp 0 \
        --threads "$THREADS" --mmap
    MMAP_DECODE=$(summary_field decode)
    MMAP_DECODES=$RUN_DECODES
    MMAP_PREFILL=$BEST_PREFILL
    [ -n "$MMAP_DECODE" ] || die "could not read decode tok/s from the --mmap summary line: $SUMMARY"
    SUMMARY=$saved_summary
}

# Decode on the Q4_K model: generated (and reused) like the Q8_0 one, the same
# prompt; the Q8_0 run's globals are restored afterwards.
run_model_q4k() {
    local saved_model=$MODEL saved_summary=$SUMMARY saved_args=("${GEN_ARGS[@]}")
    MODEL=$MODEL_Q4K
    GEN_ARGS=("${GEN_ARGS_Q4K[@]}")
    ensure_model
    warm_model
    say "running $RUNS x: moeshard run --model $MODEL --prompt <$PROMPT_TOKENS tokens> -n $N_DECODE --temp 0 --threads $THREADS"
    # paired as the Q8_0 runs are; its reads stay out of the Q8_0 whole-run figure
    PAIRED=yes run_best run_q4k "$BIN/moeshard" run --model "$MODEL" --prompt "$PROMPT" -n "$N_DECODE" --temp 0 --threads "$THREADS"
    Q4K_PAIRED=$PAIRED_MEDIAN
    Q4K_PAIRED_RUNS=$PAIRED_PCTS
    Q4K_DECODE=$(summary_field decode)
    Q4K_W_MB=$(summary_field 'weights\/token')
    [ -n "$Q4K_DECODE" ] && [ -n "$Q4K_W_MB" ] ||
        die "could not read decode tok/s and weights/token from the Q4_K summary line: $SUMMARY"
    MODEL=$saved_model
    SUMMARY=$saved_summary
    GEN_ARGS=("${saved_args[@]}")
}

# ---- the cluster: the same run with the experts on expertd on loopback ----

# A packer fingerprint: its sources when the tree is at hand, else the binary.
packer_version() {
    local f sums=""
    for f in coordinator/cli_pack.c common/shard.c common/placement.c common/gguf_write.c; do
        [ -f "$REPO_DIR/$f" ] && sums="$sums $(sha256sum "$REPO_DIR/$f" | cut -c1-16)"
    done
    if [ -n "$sums" ]; then
        echo "src-$(sha256sum <<<"$sums" | cut -c1-16)"
    else
        echo "bin-$(sha256sum "$BIN/moeshard" | cut -c1-16)"
    fi
}

# Packs the model for CLUSTER_HOSTS hosts into PACK once; reused while the
# model's stamp, the packer and the host count are unchanged. The pack is
# written beside PACK and renamed when complete, so PACK is never half written.
ensure_pack() {
    local stamp="$PACK/bench.stamp" want f k ok=yes
    want="model=$(tr '\n' ' ' <"$MODEL.stamp")packer=$(packer_version) hosts=$CLUSTER_HOSTS"
    for f in "$stamp" "$PACK/plan.json" "$PACK/dense.gguf"; do [ -f "$f" ] || ok=no; done
    for ((k = 0; k < CLUSTER_HOSTS; k++)); do [ -f "$PACK/host-$k.gguf" ] || ok=no; done
    if [ "$ok" = yes ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "reusing $PACK"
        return 0
    fi
    local free_kb
    free_kb=$(df -Pk "$MS_BENCH_DIR" | awk 'NR == 2 { print $4 }')
    [ "${free_kb:-0}" -ge 2500000 ] ||
        die "$MS_BENCH_DIR has $((${free_kb:-0} / 1024)) MiB free; the pack for $CLUSTER_HOSTS hosts needs ~1.8 GB (set MS_BENCH_DIR elsewhere)"
    say "packing the bench model for $CLUSTER_HOSTS hosts into $PACK (once; ~1.8 GB) ..."
    rm -rf "$PACK.tmp"
    "$BIN/moeshard" pack "$MODEL" --hosts "$CLUSTER_HOSTS" --out "$PACK.tmp" >"$WORK/pack.out" 2>"$WORK/pack.err" ||
        { tail -n 20 "$WORK/pack.err" >&2; rm -rf "$PACK.tmp"; die "moeshard pack failed"; }
    printf '%s\n' "$want" >"$PACK.tmp/bench.stamp"
    rm -rf "$PACK"
    mv "$PACK.tmp" "$PACK"
}

# N free TCP ports on 127.0.0.1, space separated (all bound at once, so distinct).
free_ports() {
    "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

# Starts one expertd per host shard of the pack and waits until each logs
# "serving"; sets HOSTS_EP (the --hosts list). The EXIT trap stops them.
start_hosts() {
    local -a ports
    read -r -a ports <<<"$(free_ports "$CLUSTER_HOSTS")"
    [ "${#ports[@]}" -eq "$CLUSTER_HOSTS" ] || die "could not find $CLUSTER_HOSTS free ports on 127.0.0.1"
    HOSTS_EP=""
    local k ep i
    for ((k = 0; k < CLUSTER_HOSTS; k++)); do
        ep="tcp://127.0.0.1:${ports[k]}"
        "$BIN/expertd" --listen "$ep" --model "$PACK/host-$k.gguf" --threads "$EXPERTD_THREADS" --plaintext \
            2>"$WORK/host-$k.log" &
        HOST_PIDS+=("$!")
        HOSTS_EP="${HOSTS_EP:+$HOSTS_EP,}$ep"
    done
    for ((k = 0; k < CLUSTER_HOSTS; k++)); do
        for ((i = 0; i < 600; i++)); do
            grep -q "serving " "$WORK/host-$k.log" && break
            kill -0 "${HOST_PIDS[k]}" 2>/dev/null ||
                { tail -n 20 "$WORK/host-$k.log" >&2; die "expertd for host-$k.gguf exited before serving"; }
            sleep 0.2
        done
        grep -q "serving " "$WORK/host-$k.log" ||
            { tail -n 20 "$WORK/host-$k.log" >&2; die "expertd for host-$k.gguf was not serving after 120 s"; }
    done
}

stop_hosts() {
    local pid
    for pid in "${HOST_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    HOST_PIDS=()
}

# Sets C_HIDDEN and C_TOP_K from `moeshard inspect`, and C_TOUCHED_PLAN: the
# most hosts one token can touch in a layer, min(top-k, hosts holding experts
# of that layer in plan.json), over all layers.
plan_hosts_touched() {
    local info
    info=$("$BIN/moeshard" inspect "$MODEL" 2>"$WORK/inspect.err") ||
        { cat "$WORK/inspect.err" >&2; die "moeshard inspect failed"; }
    C_HIDDEN=$(sed -n 's/^shape .* hidden \([0-9][0-9]*\),.*/\1/p' <<<"$info")
    C_TOP_K=$(sed -n 's/^experts .*, \([0-9][0-9]*\) per token,.*/\1/p' <<<"$info")
    C_LAYERS=$(sed -n 's/^shape *\([0-9][0-9]*\) layers,.*/\1/p' <<<"$info")
    [ -n "$C_HIDDEN" ] && [ -n "$C_TOP_K" ] && [ -n "$C_LAYERS" ] ||
        die "moeshard inspect printed no hidden size, top-k or layer count: $info"
    C_TOUCHED_PLAN=$("$PY" - "$PACK/plan.json" "$C_TOP_K" <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
k = int(sys.argv[2])
holders = {}
for hf in plan["host_files"]:
    for layer, experts in hf["slices"]:
        if experts:
            holders.setdefault(layer, set()).add(hf["host"])
print(max(min(k, len(h)) for h in holders.values()))
PYEOF
    ) || die "cannot read the placement from $PACK/plan.json"
}

# The embedded run's command with the experts on CLUSTER_HOSTS expertd. Same
# total threads: the coordinator keeps THREADS (it blocks, spin window 0,
# while the hosts compute) and each host gets THREADS / CLUSTER_HOSTS (at
# least 1), so the hosts together compute the experts on THREADS threads.
run_cluster() {
    ensure_pack
    EXPERTD_THREADS=$((THREADS / CLUSTER_HOSTS))
    [ "$EXPERTD_THREADS" -ge 1 ] || EXPERTD_THREADS=1
    plan_hosts_touched
    say "starting $CLUSTER_HOSTS expertd on 127.0.0.1 ($EXPERTD_THREADS threads each) ..."
    start_hosts
    # What a layer costs beyond the experts' computation: one dispatch whose
    # slots are all empty, to every host at once, on the same hosts.
    say "measuring the round trip of an empty dispatch to the $CLUSTER_HOSTS hosts (rttbench) ..."
    "$BIN/rttbench" --hosts "$HOSTS_EP" >"$WORK/rtt.out" 2>"$WORK/rtt.err" ||
        { cat "$WORK/rtt.err" >&2; die "rttbench failed"; }
    C_FLOOR_US=$(sed -n 's/.*rtt_us_mean=\([0-9.]*\).*/\1/p' "$WORK/rtt.out")
    C_FLOOR_MEDIAN_US=$(sed -n 's/.*rtt_us_median=\([0-9.]*\).*/\1/p' "$WORK/rtt.out")
    [ -n "$C_FLOOR_US" ] && [ -n "$C_FLOOR_MEDIAN_US" ] || die "rttbench printed no round trip: $(cat "$WORK/rtt.out")"
    say "running $RUNS x: moeshard run --model $PACK --hosts $HOSTS_EP --prompt <$PROMPT_TOKENS tokens> -n $N_DECODE --temp 0 --threads $THREADS"
    run_best cluster "$BIN/moeshard" run --model "$PACK" --hosts "$HOSTS_EP" --plaintext --prompt "$PROMPT" \
        -n "$N_DECODE" --temp 0 --threads "$THREADS"
    stop_hosts
    grep -q 'experts on' <<<"$SUMMARY" || die "moeshard run --hosts printed no summary line with 'experts on N hosts'"
    C_DECODES=$RUN_DECODES
    C_PREFILL=$BEST_PREFILL
    C_DECODE=$(summary_field decode)
    C_SENT=$(summary_field sent)
    C_RECV=$(summary_field received)
    C_RTT=$(summary_field rtt)
    C_TOUCHED=$(sed -n 's/.* \([0-9.][0-9.]*\) hosts, rtt .*/\1/p' <<<"$SUMMARY")
    C_STEPS=$(sed -n 's/.*decode [0-9.]* tok\/s (\([0-9]*\) steps.*/\1/p' <<<"$SUMMARY")
    for v in C_PREFILL C_DECODE C_SENT C_RECV C_RTT C_TOUCHED; do
        [ -n "${!v}" ] || die "could not read $v from the cluster summary line: $SUMMARY"
    done
    C_BYTES=$(calc "$C_SENT + $C_RECV" 0)
    C_BOUND=$((C_TOUCHED_PLAN * 2 * C_HIDDEN * 4 + 512)) # f32 wire: 4 bytes per value
    C_BYTES_OK=$(awk "BEGIN { print ($C_BYTES <= $C_BOUND) ? \"yes\" : \"no\" }")
    C_PCT=$(calc "100 * $C_DECODE / $DECODE")
    C_PCT_OK=$(awk "BEGIN { print ($C_PCT >= 85) ? \"yes\" : \"no\" }")
    # Time per decode step beyond the embedded run's, per layer; and the most
    # the cluster could reach if its experts ran as fast as the embedded run's
    # and each layer paid only the empty dispatch's round trip.
    C_EXTRA_US=$(calc "(1e6 / $C_DECODE - 1e6 / $DECODE) / $C_LAYERS" 0)
    C_CEILING=$(calc "100 * (1e6 / $DECODE) / (1e6 / $DECODE + $C_LAYERS * $C_FLOOR_US)")
    if cmp -s "$WORK/run.out" "$WORK/cluster.out"; then C_SAME=yes; else C_SAME=no; fi
}

# ---- derived figures and the report ----

calc() {
    awk "BEGIN { printf \"%.${2:-1}f\", $1 }"
}

report() {
    local model_bytes model_mb kv_mb budget rss_ok eff_gbps roofline roofline_median
    model_bytes=$(stat -c %s "$MODEL")
    model_mb=$(calc "$model_bytes / 1e6")
    kv_mb=${KV_MB:-0}
    [ -n "$KV_MB" ] || say "warning: the run printed no kv-cache size; the memory budget leaves it out"
    budget=$(calc "$model_mb + $kv_mb + $RSS_SLACK_MB")
    rss_ok=$(awk "BEGIN { print ($RSS_MB <= $budget) ? \"yes\" : \"no\" }")
    # The roofline's bandwidth is the most this run read memory at: membw's
    # best pass or the long product's, whichever is faster (the weights read
    # once by the decode kernel itself can stream faster than membw's loop),
    # the reads next to the decode runs included. The paired figure compares
    # each decode run with the reads just before and after it instead, and
    # takes the median run: the target's figure (docs/performance.md).
    local decode_ok prefill_ok
    decode_ok=$(awk "BEGIN { print ($ROOF_PAIRED >= 70) ? \"yes\" : \"no\" }")
    prefill_ok=$(awk "BEGIN { print ($PREFILL >= 200) ? \"yes\" : \"no\" }")
    local roof_gbps roof_median
    local next_max
    next_max=$(tr ' ' '\n' <<<"$ROOF_BRACKETS" | sort -g | tail -n 1)
    roof_gbps=$(max2 "$(max2 "$MEMBW_N" "${MMB_GBPS[0]}")" "$next_max")
    roof_median=$(max2 "$MEMBW_N_MEDIAN" "${MMB_LONG_MEAN:-0}")
    eff_gbps=$(calc "$DECODE * $W_MB / 1e3" 2)
    roofline=$(calc "100 * $eff_gbps / $roof_gbps")
    roofline_median=$(calc "100 * $DECODE_MEDIAN * $W_MB / 1e3 / $roof_median")
    local q4k_gbps q4k_roofline mmap_ratio products_tok products_pct step_us products_share
    products_tok=$(calc "1e6 / $PRODUCTS_US" 1)
    products_pct=$(calc "100 * $products_tok * $W_MB / 1e3 / $roof_gbps")
    step_us=$(calc "1e6 / $DECODE" 1)
    products_share=$(calc "100 * $PRODUCTS_US / $step_us")
    mmap_ratio=$(calc "$DECODE / $MMAP_DECODE" 2)
    q4k_gbps=$(calc "$Q4K_DECODE * $Q4K_W_MB / 1e3" 2)
    q4k_roofline=$(calc "100 * $q4k_gbps / $roof_gbps")
    local commit
    commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
    cat <<EOF
bench_date=$DATE
bench_cpu=$CPU
bench_cores=$(nproc)
bench_commit=$commit
bench_threads=$THREADS
model_file=$MODEL
model_bytes=$model_bytes
membw_isa=$MEMBW_ISA
membw_1t_gbps=$MEMBW_1
membw_${THREADS}t_gbps=$MEMBW_N
membw_${THREADS}t_median_gbps=$MEMBW_N_MEDIAN
membw_${THREADS}t_before_gbps=$MEMBW_N_BEFORE
membw_${THREADS}t_after_gbps=$MEMBW_N_AFTER
membw_${THREADS}t_touch_gbps=$MEMBW_N_TOUCH
membw_${THREADS}t_plain_gbps=$MEMBW_N_PLAIN
kernel_in_cache_gbps_before="$CPU_SPEED_BEFORE"
kernel_in_cache_gbps_after="$CPU_SPEED_AFTER"
roofline_gbps=$roof_gbps
roofline_median_gbps=$roof_median
load_runs=$LOAD_RUNS
load_cache_dropped=$LOAD_COLD
load_direct=$LOAD_DIRECT
load_dd_gbps=$LOAD_DD
load_gbps=$LOAD_LB
load_sha256_gbps=$LOAD_SHA
load_pct_of_dd=$LOAD_PCT
load_sha256_pct_of_dd=$LOAD_SHA_PCT
load_expertd_gbps=$LOAD_EXPERTD
load_expertd_pct_of_dd=$LOAD_EXPERTD_PCT
load_expertd_overall_gbps=$LOAD_EXPERTD_ALL
prompt_tokens=$PROMPT_TOKENS
prefill_tok_s=$PREFILL
decode_tokens=$N_DECODE
decode_steps=${STEPS:-unknown}
decode_tok_s=$DECODE
decode_runs_tok_s="$DECODES"
decode_median_tok_s=$DECODE_MEDIAN
prefill_runs_tok_s="$PREFILLS"
mmap_prefill_tok_s=$MMAP_PREFILL
mmap_decode_tok_s=$MMAP_DECODE
mmap_decode_runs_tok_s="$MMAP_DECODES"
decode_memory_over_mmap=$mmap_ratio
weights_per_token_mb=$W_MB
decode_weight_gbps=$eff_gbps
roofline_pct=$roofline
roofline_pct_median=$roofline_median
roofline_paired_pct=$ROOF_PAIRED
roofline_paired_runs_pct="$ROOF_PAIRED_RUNS"
membw_next_to_decode_gbps="$ROOF_BRACKETS"
decode_target_met=$decode_ok
prefill_target_met=$prefill_ok
q4k_model_file=$MODEL_Q4K
q4k_decode_tok_s=$Q4K_DECODE
q4k_weights_per_token_mb=$Q4K_W_MB
q4k_decode_weight_gbps=$q4k_gbps
q4k_roofline_pct=$q4k_roofline
q4k_roofline_paired_pct=$Q4K_PAIRED
q4k_roofline_paired_runs_pct="$Q4K_PAIRED_RUNS"
mmbench_long_gbps=${MMB_GBPS[0]}
mmbench_qkv_gbps=${MMB_GBPS[1]}
mmbench_wo_gbps=${MMB_GBPS[2]}
mmbench_gate_up_gbps=${MMB_GBPS[3]}
mmbench_down_gbps=${MMB_GBPS[4]}
mmbench_output_gbps=${MMB_GBPS[5]}
products_us_per_token=$PRODUCTS_US
products_ceiling_tok_s=$products_tok
products_ceiling_roofline_pct=$products_pct
products_share_of_decode_step_pct=$products_share
peak_rss_mb=$RSS_MB
kv_cache_mb=${KV_MB:-unknown}
rss_budget_mb=$budget
rss_within_budget=$rss_ok
cluster_hosts=$CLUSTER_HOSTS
cluster_coordinator_threads=$THREADS
cluster_expertd_threads=$EXPERTD_THREADS
cluster_wire=f32
cluster_prefill_tok_s=$C_PREFILL
cluster_decode_steps=${C_STEPS:-unknown}
cluster_decode_tok_s=$C_DECODE
cluster_decode_runs_tok_s="$C_DECODES"
cluster_decode_pct_of_embedded=$C_PCT
cluster_decode_target_met=$C_PCT_OK
cluster_sent_bytes_per_token_layer=$C_SENT
cluster_received_bytes_per_token_layer=$C_RECV
cluster_bytes_per_token_layer=$C_BYTES
cluster_hosts_touched_mean=$C_TOUCHED
cluster_hosts_touched_plan=$C_TOUCHED_PLAN
cluster_hidden=$C_HIDDEN
cluster_bytes_bound=$C_BOUND
cluster_bytes_within_bound=$C_BYTES_OK
cluster_rtt_ms=$C_RTT
cluster_layers=$C_LAYERS
cluster_extra_us_per_layer=$C_EXTRA_US
cluster_empty_dispatch_us_mean=$C_FLOOR_US
cluster_empty_dispatch_us_median=$C_FLOOR_MEDIAN_US
cluster_ceiling_pct_of_embedded=$C_CEILING
cluster_text_matches_embedded=$C_SAME

Summary ($DATE, $CPU, $THREADS threads):
  memory read bandwidth   $MEMBW_1 GB/s on 1 thread, $MEMBW_N GB/s on $THREADS threads (best pass; median pass $MEMBW_N_MEDIAN GB/s) ($MEMBW_ISA loads; the faster of a loop touching each 4 KiB page ahead as the decode kernels do, $MEMBW_N_TOUCH GB/s, and a plain one, $MEMBW_N_PLAIN GB/s; the faster of the measurements before and after the decode runs: $MEMBW_N_BEFORE and $MEMBW_N_AFTER GB/s)
  CPU speed               the row kernel on weights in L1 (one thread on each CPU): $CPU_SPEED_BEFORE GB/s before the decode runs, $CPU_SPEED_AFTER GB/s after
  load (median of $LOAD_RUNS)      $LOAD_LB GB/s ($LOAD_PCT% of dd iflag=direct bs=4M: $LOAD_DD GB/s), $LOAD_SHA GB/s with SHA-256 ($LOAD_SHA_PCT%); cache dropped: $LOAD_COLD, O_DIRECT: $LOAD_DIRECT
  expertd load            $LOAD_EXPERTD GB/s reading ($LOAD_EXPERTD_PCT% of dd), $LOAD_EXPERTD_ALL GB/s with allocating its memory; every expert, cold cache
  prefill                 $PREFILL tok/s over a $PROMPT_TOKENS-token prompt (best of $RUNS runs: $PREFILLS) (target >= 200: $prefill_ok)
  decode                  $DECODE tok/s (greedy, ${STEPS:-?} steps; best of $RUNS runs: $DECODES), reading $W_MB MB of weights per token
  decode --mmap           $MMAP_DECODE tok/s (best of $RUNS runs: $MMAP_DECODES), prefill $MMAP_PREFILL tok/s: weights from the file's mapping; read into memory decodes $mmap_ratio x as fast
  roofline                $ROOF_PAIRED% (target >= 70 %: $decode_ok): the median of the decode runs, each against the fastest read just before and after it ($ROOF_PAIRED_RUNS %; reads between the runs $ROOF_BRACKETS GB/s)
  roofline, whole run     $eff_gbps GB/s of weights streamed = $roofline% of $roof_gbps GB/s, the fastest read of the run (membw's best pass before or after the decode runs, a read between them, or the long product's: ${MMB_GBPS[0]} GB/s) (best run / best pass; median run / median pass: $roofline_median% of $roof_median GB/s)
  products alone          ${MMB_GBPS[0]} GB/s in one long stream; as a decode step issues them ${MMB_GBPS[1]} (Q, K, V), ${MMB_GBPS[2]} (output projection), ${MMB_GBPS[3]} (gate + up), ${MMB_GBPS[4]} (down), ${MMB_GBPS[5]} (head) GB/s: $PRODUCTS_US us a token, at most $products_tok tok/s = $products_pct% of the roofline; they are $products_share% of the measured decode step ($step_us us)
  decode Q4_K             $Q4K_DECODE tok/s (same shape and prompt), reading $Q4K_W_MB MB of weights per token
  roofline Q4_K           $Q4K_PAIRED% paired as above ($Q4K_PAIRED_RUNS %); whole run $q4k_gbps GB/s of weights streamed = $q4k_roofline% of $roof_gbps GB/s
  peak RSS                $RSS_MB MB against model $model_mb MB + KV cache $kv_mb MB + 64 MiB = $budget MB ($( [ "$rss_ok" = yes ] && echo within || echo OVER) budget)
  cluster                 $CLUSTER_HOSTS expertd on loopback ($EXPERTD_THREADS threads each, coordinator $THREADS): decode $C_DECODE tok/s = $C_PCT% of embedded (target >= 85 %: $C_PCT_OK), prefill $C_PREFILL tok/s
  cluster network         $C_BYTES B per token per layer ($C_SENT sent + $C_RECV received, $C_TOUCHED hosts touched on average) against $C_TOUCHED_PLAN x 2 x $C_HIDDEN x 4 + 512 = $C_BOUND ($( [ "$C_BYTES_OK" = yes ] && echo within || echo OVER)); round trip $C_RTT ms per layer
  cluster overhead        $C_EXTRA_US us per layer over the embedded run; an empty dispatch to the $CLUSTER_HOSTS hosts alone takes $C_FLOOR_US us (median $C_FLOOR_MEDIAN_US), so on this machine $C_LAYERS layers cap the cluster at $C_CEILING% of embedded decode
  cluster output          greedy text $( [ "$C_SAME" = yes ] && echo "identical to the embedded run" || echo "differs from the embedded run (partial sums added in another order, amplified by Q8_0 rounding on random weights: docs/performance.md, Cluster)")
EOF
    if [ -n "${STEPS:-}" ] && [ "$STEPS" -lt $((N_DECODE - 1)) ]; then
        say "warning: decode stopped after $STEPS steps (end-of-text); its rate covers those steps only"
    fi
}

main() {
    for b in genmodel membw mmbench moeshard loadbench expertd rttbench; do need_bin "$b"; done
    [[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "MS_BENCH_THREADS must be a positive integer, not '$THREADS'"
    [[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "MS_BENCH_RUNS must be a positive integer, not '$RUNS'"
    DATE=$(date -u '+%Y-%m-%dT%H:%M:%SZ')
    CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
    CPU=${CPU:-unknown}
    say "$DATE on $CPU ($(nproc) cores)"
    ensure_model
    run_load
    run_expertd_load
    warm_model
    say "building a $N_PROMPT-token prompt with moeshard tokenize ..."
    build_prompt
    run_membw before # next to the decode runs: the bandwidth moves with the neighbours' load
    run_mmbench
    run_model
    run_model_mmap
    run_membw after
    run_cluster
    run_model_q4k
    report
    # Not a failure here: this random-weight Q8_0 model turns float rounding into
    # different tokens (the embedded run itself prints other text with AVX2 instead
    # of AVX-512 kernels), and hosts add their partial sums in another order than
    # one process does. Equality is tested in make test on F32 models.
    [ "$C_SAME" = yes ] ||
        say "note: the cluster's greedy text differs from the embedded run's on this model (first difference: $(cmp "$WORK/run.out" "$WORK/cluster.out" 2>&1 | sed -n 's/.* differ: //p' | head -n 1)); see docs/performance.md, Cluster"
}

main "$@"
