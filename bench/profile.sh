#!/usr/bin/env bash
# Profiles kube-balancer's hot path: one worker pinned to LB_CPU, the two members and the load on
# LOAD_CPU, keep-alive requests for a 12-byte body (the same setup as run.sh's "small" figure).
#
#   bench/profile.sh callgrind   # user-space instructions per request (repeatable: valgrind);
#                                # SATURATED=1 for wrk's 32 connections instead of one (DURATION s)
#   bench/profile.sh perf        # perf record (cpu-clock), top symbols, user/kernel split;
#                                # CALLERS=symbol for who calls that symbol (dwarf call graphs)
#   bench/profile.sh syscalls    # system calls per request, by call (perf trace -s); STAT=1
#                                # for perf stat counts, SYSCALL=write for who calls write. perf and syscalls take RATE=5000 for
#                                # the latency run's fixed-rate load instead of wrk's
#   bench/profile.sh latency     # the fixed-rate latency run alone, ROUNDS times
#   bench/profile.sh cpu         # user and system CPU per request under wrk, ROUNDS times,
#                                # then each thread's ticks
#   bench/profile.sh segments    # TCP segments per request (nstat, machine-wide)
#   bench/profile.sh copies      # every memcpy/memmove per request, by size and calling line
#                                # (uprobes on glibc's copy routine; bench/copies.py sums them)
#   FLOOR=1 bench/profile.sh ... # the same for bench/floor, the least a tokio proxy can do
#   KB_EXTRA="--flag ..." bench/profile.sh ...  # the same with more kube-balancer flags
#   CLOSE=1 bench/profile.sh perf|syscalls|segments|cpu  # a new connection per request (callgrind: with SATURATED=1)
#
# KB_BIN=path profiles that binary instead of building this tree. Every load run is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
MODE=${1:-callgrind}
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PORT_BASE=${PORT_BASE:-19000}
REQUESTS=${REQUESTS:-20000}       # callgrind: requests measured (after a warm-up)
DURATION=${DURATION:-8}           # perf: seconds recorded

A=$((PORT_BASE + 81)) B=$((PORT_BASE + 82)) PORT=$((PORT_BASE + 100)) ADMIN=$((PORT_BASE + 109))
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

if [ -n "${FLOOR:-}" ]; then
    (cd "$HERE/floor" && cargo build --release --quiet --target-dir "$REPO/target/bench")
    KB_BIN=$REPO/target/bench/release/kb-floor
elif [ -z "${KB_BIN:-}" ]; then
    # As bench/run.sh measures it: profile-guided, or PGO=0 for a plain release build.
    KB_BIN=$("$REPO/scripts/build-release.sh")
fi
(cd "$REPO/tools/loadgen" && cargo build --release --locked --quiet --target-dir "$REPO/target/bench")
LOADGEN=$REPO/target/bench/release/kb-loadgen

RUN=$(mktemp -d -t kb-profile.XXXXXX)
PIDS=()
trap end_run EXIT
trap 'exit 130' INT TERM

mkdir -p "$RUN/www" "$RUN/backends-tmp"
sed -e "s|@RUN@|$RUN|g" -e "s|@BACKEND_A_PORT@|$A|g" -e "s|@BACKEND_B_PORT@|$B|g" \
    "$HERE/conf/backends.nginx.conf" >"$RUN/backends.conf"
sed -e "s|@BACKEND_A_PORT@|$A|g" -e "s|@BACKEND_B_PORT@|$B|g" \
    "$HERE/conf/kube-balancer.yaml" >"$RUN/kb.yaml"
taskset -c "$LOAD_CPU" nginx -c "$RUN/backends.conf" -e "$RUN/backends-error.log" >"$RUN/backends.out" 2>&1 &
PIDS+=($!)
wait_port "$A" 300 && wait_port "$B" 300

# Starts the proxy (not under valgrind) pinned to LB_CPU; its pid is KB.
start_kb() {
    taskset -c "$LB_CPU" env "${IMAGE_ENV[@]}" "$KB_BIN" "${KB_ARGS[@]}" >"$RUN/kb.out" 2>&1 &
    KB=$!
    PIDS+=("$KB")
    wait_port "$PORT" 300
}

# Starts the load for perf and syscalls: wrk as fast as it goes, or with RATE set, the latency
# run's open-loop load at that fixed rate. Its pid is WRK.
load() {
    if [ -n "${RATE:-}" ]; then
        taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) "$LOADGEN" rate "127.0.0.1:$PORT" / "$RATE" $((DURATION + 2)) 32 >"$RUN/wrk.out" &
    else
        taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) wrk -t1 -c32 -d$((DURATION + 2))s "${WRK_CLOSE[@]}" "http://127.0.0.1:$PORT/" >"$RUN/wrk.out" &
    fi
    WRK=$!
    PIDS+=("$WRK")
}

# CLOSE=1: a new connection per request (wrk sends Connection: close), as run.sh's "close".
WRK_CLOSE=()
[ -n "${CLOSE:-}" ] && WRK_CLOSE=(-H "Connection: close")

KB_ARGS=(standalone -f "$RUN/kb.yaml" --workers 1 --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --shutdown-grace 1s)
# KB_EXTRA: more kube-balancer flags, e.g. "--access-log --access-log-file /dev/null"
# (bench/telemetry.sh measures the telemetry's cost this way).
if [ -n "${KB_EXTRA:-}" ]; then
    read -r -a extra <<<"$KB_EXTRA"
    KB_ARGS+=("${extra[@]}")
fi
[ -n "${FLOOR:-}" ] && KB_ARGS=("127.0.0.1:$PORT" "127.0.0.1:$A" "127.0.0.1:$B")

case $MODE in
callgrind)
    command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
    # Instrumentation starts switched off; only the measured requests are counted.
    # CACHE=1 also simulates the caches (first-level and last-level misses per function).
    # CALLGRIND_ARGS: more valgrind options, e.g. --dump-instr=yes or --I1=65536,8,64.
    read -r -a options <<<"${CALLGRIND_ARGS:-}"
    [ -n "${CACHE:-}" ] && options+=(--cache-sim=yes)
    taskset -c "$LB_CPU" valgrind --tool=callgrind --instr-atstart=no "${options[@]}" \
        --callgrind-out-file="$RUN/callgrind.out" "$KB_BIN" "${KB_ARGS[@]}" >"$RUN/kb.out" 2>&1 &
    KB=$!
    PIDS+=("$KB")
    wait_port "$PORT" 300
    # Warm up: fill the member pool and the allocator's caches.
    taskset -c "$LOAD_CPU" timeout 120 "$LOADGEN" rate "127.0.0.1:$PORT" / 500 2 32 >/dev/null
    callgrind_control -i on "$KB" >/dev/null
    if [ -n "${SATURATED:-}" ]; then
        # wrk's 32 connections as fast as the proxy (slowed down by valgrind) goes: requests
        # batch as they do under load, so the event loop's own work is spread over many of them.
        # Less repeatable than the default.
        taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) wrk -t1 -c32 -d"${DURATION}s" "${WRK_CLOSE[@]}" "http://127.0.0.1:$PORT/" >"$RUN/wrk.out"
    else
        rate=500
        # One connection, requests one after another: every request takes the same path through
        # the event loop, so the count repeats from run to run (with many connections it depends
        # on how requests happen to batch).
        taskset -c "$LOAD_CPU" timeout 300 "$LOADGEN" rate "127.0.0.1:$PORT" / "$rate" $((REQUESTS / rate)) 1 >"$RUN/load.out"
    fi
    callgrind_control -i off "$KB" >/dev/null
    kill "$KB"
    wait "$KB" 2>/dev/null || true
    if [ -n "${SATURATED:-}" ]; then
        served=$(awk '/requests in/ { print $1 }' "$RUN/wrk.out")
    else
        served=$(awk -F= '$1 == "requests" { print $2 }' "$RUN/load.out")
    fi
    ir=$(callgrind_annotate "$RUN/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(/,/, "", $1); print $1 }' || true)
    echo "requests=$served"
    echo "instructions=$ir"
    echo "instructions_per_request=$((ir / served))"
    if [ -n "${TOP:-}" ]; then
        callgrind_annotate "$RUN/callgrind.out" 2>/dev/null | grep -E '^ *[0-9,]+ ' | head -n "$TOP" || true
    fi
    ;;
perf)
    start_kb
    load
    sleep 1
    if [ -n "${CALLERS:-}" ]; then
        # Who calls the symbol CALLERS names (e.g. __memmove_avx512_unaligned_erms).
        perf record -q -e cpu-clock -F 1000 --call-graph dwarf,16384 -p "$KB" -o "$RUN/perf.data" -- sleep 3 2>/dev/null
    else
        perf record -q -e cpu-clock -F 2000 -p "$KB" -o "$RUN/perf.data" -- sleep "$DURATION" 2>/dev/null
    fi
    wait "$WRK" || true
    grep -E 'Requests/sec|requests=' "$RUN/wrk.out"
    if [ -n "${CALLERS:-}" ]; then
        perf report -i "$RUN/perf.data" --no-children -S "$CALLERS" -g caller,0.5,callee --stdio 2>/dev/null |
            grep -E '[0-9]+\.[0-9]+%' | head -n "${TOP:-40}"
        exit 0
    fi
    perf report -i "$RUN/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6
    perf report -i "$RUN/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -n "${TOP:-40}"
    ;;
syscalls)
    start_kb
    load
    sleep 1
    if [ -n "${STAT:-}" ]; then
        perf stat -e task-clock,context-switches,page-faults,raw_syscalls:sys_enter -p "$KB" -o "$RUN/trace.out" -- sleep "$DURATION" 2>/dev/null || true
    elif [ -n "${SYSCALL:-}" ]; then
        # Who makes the system call SYSCALL names (e.g. write): its callers, from dwarf stacks.
        perf record -q -e "syscalls:sys_enter_$SYSCALL" --call-graph dwarf,16384 -p "$KB" -o "$RUN/perf.data" -- sleep 2 2>/dev/null || true
        perf report -i "$RUN/perf.data" --no-children -g caller,0.5,callee --stdio 2>/dev/null |
            grep -E '[0-9]+\.[0-9]+%|--' | head -n "${TOP:-40}" >"$RUN/trace.out"
    else
        timeout $((DURATION + 10)) perf trace -s -p "$KB" -o "$RUN/trace.out" -- sleep "$DURATION" 2>/dev/null || true
    fi
    wait "$WRK" || true
    grep -E 'Requests/sec|requests=' "$RUN/wrk.out"
    cat "$RUN/trace.out"
    ;;
copies)
    # Every memcpy/memmove the worker makes, by size and by the first of our frames that calls
    # it (uprobes on glibc's copy routines), at a low fixed rate on one connection.
    libc=$(ldd "$KB_BIN" | awk '/libc.so/ { print $3 }')
    probes=()
    # memcpy and memmove are one routine in glibc; which one runs depends on the CPU.
    for sym in __memmove_avx512_unaligned_erms __memmove_evex_unaligned_erms __memmove_avx_unaligned_erms; do
        perf probe -q -x "$libc" -a "kb_${sym#__}=$sym len=%dx:u64" 2>/dev/null && probes+=("probe_libc:kb_${sym#__}")
    done
    [ ${#probes[@]} -gt 0 ] || { echo "no probe could be placed on glibc's copy routines" >&2; exit 1; }
    trap 'perf probe -q -d "probe_libc:kb_*" 2>/dev/null || true; end_run' EXIT
    start_kb
    taskset -c "$LOAD_CPU" timeout 60 "$LOADGEN" rate "127.0.0.1:$PORT" / 500 2 32 >/dev/null
    events=$(IFS=,; echo "${probes[*]}")
    taskset -c "$LOAD_CPU" timeout 60 "$LOADGEN" rate "127.0.0.1:$PORT" / 500 4 1 >"$RUN/load.out" &
    PIDS+=($!)
    sleep 1
    # Recorded in a folder of its own: the proxy watches the folder of its configuration file,
    # and perf's writes there would wake its watcher thread, whose copies would count too.
    mkdir -p "$RUN/out"
    perf record -q -e "$events" --call-graph dwarf,8192 -p "$KB" -o "$RUN/out/perf.data" -- sleep 2 2>/dev/null
    # 500 requests a second for the 2 s recorded: per request is per 1,000 (to within one).
    perf script -i "$RUN/out/perf.data" -F event,trace,ip,sym,symoff --no-inline --no-demangle 2>/dev/null |
        python3 "$HERE/copies.py" 1000 "$KB_BIN"
    ;;
segments)
    # TCP segments per request, machine-wide (the client's, the proxy's and the members'):
    # `nstat` counters around one wrk run. A proxy that makes the kernel send more segments
    # (pure ACKs, split writes) shows here.
    start_kb
    taskset -c "$LOAD_CPU" timeout 30 wrk -t1 -c32 -d2s "${WRK_CLOSE[@]}" "http://127.0.0.1:$PORT/" >/dev/null
    nstat -n >/dev/null
    taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) wrk -t1 -c32 -d"${DURATION}s" "${WRK_CLOSE[@]}" "http://127.0.0.1:$PORT/" >"$RUN/wrk.out"
    nstat -z >"$RUN/nstat.out"
    n=$(awk '/requests in/ { print $1 }' "$RUN/wrk.out")
    awk -v n="$n" '$1 ~ /^(TcpInSegs|TcpOutSegs|TcpExtDelayedACKs|TcpExtTCPPureAcks|TcpExtTCPHPAcks|TcpExtTCPHPHits|TcpRetransSegs|TcpExtTCPLossProbes|TcpExtTCPBacklogCoalesce)$/ { printf "%s=%.3f per request\n", $1, $2 / n }' "$RUN/nstat.out"
    echo "requests=$n"
    ;;
cpu)
    # User and system CPU time per request (the process's own accounting), ROUNDS runs of wrk.
    start_kb
    taskset -c "$LOAD_CPU" timeout 30 wrk -t1 -c32 -d2s "${WRK_CLOSE[@]}" "http://127.0.0.1:$PORT/" >/dev/null
    ticks() { awk '{ print $14, $15 }' "/proc/$KB/stat"; }
    for _ in $(seq "${ROUNDS:-3}"); do
        read -r u0 s0 < <(ticks)
        taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) wrk -t1 -c32 -d"${DURATION}s" "${WRK_CLOSE[@]}" "http://127.0.0.1:$PORT/" >"$RUN/wrk.out"
        read -r u1 s1 < <(ticks)
        n=$(awk '/requests in/ { print $1 }' "$RUN/wrk.out")
        hz=$(getconf CLK_TCK)
        awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$hz" \
            'BEGIN { printf "requests=%d user_us=%.2f system_us=%.2f total_us=%.2f\n", n, u / hz / n * 1e6, s / hz / n * 1e6, (u + s) / hz / n * 1e6 }'
    done
    # Where the process's time went, thread by thread, since it started (clock ticks).
    for task in /proc/"$KB"/task/*; do
        awk '{ sub(/^[0-9]+ \(/, ""); split($0, f, /\) /); split(f[2], v, " "); printf "thread=%s user_ticks=%d system_ticks=%d\n", f[1], v[12], v[13] }' "$task/stat"
    done
    ;;
latency)
    # The latency run alone (RATE, default 5000 req/s, over 32 connections), ROUNDS times.
    start_kb
    for _ in $(seq "${ROUNDS:-3}"); do
        taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) "$LOADGEN" rate "127.0.0.1:$PORT" / "${RATE:-5000}" "$DURATION" 32 | tr '\n' ' '
        echo
    done
    ;;
*)
    echo "usage: bench/profile.sh callgrind|perf|syscalls|latency|cpu|copies|segments" >&2
    exit 2
    ;;
esac
