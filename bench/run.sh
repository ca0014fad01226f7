#!/usr/bin/env bash
# kube-balancer side by side with nginx, HAProxy and Apache httpd, in one run on this machine.
#
#   bench/run.sh                       # everything, 3 rounds of 10 s per figure
#   ROUNDS=1 DURATION=5 bench/run.sh   # a quick look
#   BALANCERS="kube-balancer nginx" TESTS="small latency" bench/run.sh
#   KB_BIN=/path/to/kube-balancer bench/run.sh   # measure that build instead of this tree's
#                                                 # (KB_BUILD="source abc123, profile-guided"
#                                                 # says what it is in the table's version line)
#   PGO=0 bench/run.sh                 # this tree without profile-guided optimization
#   KB_BIN_BEFORE=/path/to/old BALANCERS="kube-balancer kube-balancer-before nginx" bench/run.sh
#                                                 # A/B: two builds in the same run, interleaved
#   BALANCERS="kube-balancer floor nginx" TESTS="small latency" bench/run.sh
#                                                 # with the floor (bench/floor): keep-alive figures only
#   TESTS="idle pooled" BALANCERS="kube-balancer nginx haproxy" bench/run.sh
#                                                 # memory per idle connection, client and member side
#   BALANCERS="kube-balancer kube-balancer:2 nginx nginx:2 haproxy haproxy:2" TESTS=latency bench/run.sh
#                                                 # NAME:2 runs NAME with two workers (on LB_CPUS)
#   CONF=dir PROBE_PATH=/x PROBE_HEADER="X-A: 1" WRK_ARGS="-s dir/x.lua" bench/run.sh
#                                                 # other configurations and requests (bench/routes.sh)
#
# Each balancer runs with one worker pinned to LB_CPU (NAME:N: N workers on LB_CPUS); the load
# generators and the two members (one nginx worker on two ports) share LOAD_CPU. Only loopback addresses; every load run is
# bounded in time. Results go to bench/results/latest.md (with latest.tsv and a PNG chart), and
# a dated copy of each to bench/results/archive/.
# docs/benchmarks.md says what each figure means and how it is measured. gRPC (h2c to members,
# nginx's grpc_pass, HAProxy's proto h2) has its own driver: bench/grpc.sh.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}          # seconds per load run
WARMUP=${WARMUP:-2}               # seconds of unrecorded load after each start
CONNS=${CONNS:-32}
RATE=${RATE:-5000}                # offered rate of the latency run, requests/s
IDLE_CONNS=${IDLE_CONNS:-1000,5000,10000}   # idle client connections, opened in these steps
POOLED_CONNS=${POOLED_CONNS:-1000,5000,10000} # idle pooled member connections, in these steps
HOLD_MEMBERS=${HOLD_MEMBERS:-40}  # the pooled figure's members (kube-balancer pools 256 per member)
SETTLE=${SETTLE:-3}               # seconds between a step of the memory figures and its reading
H2_STREAMS=${H2_STREAMS:-10}      # concurrent streams per HTTP/2 connection
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
LB_CPUS=${LB_CPUS:-$LB_CPU,$LOAD_CPU}   # for balancers with more than one worker (NAME:N)
PORT_BASE=${PORT_BASE:-18000}
BALANCERS=${BALANCERS:-"kube-balancer nginx haproxy apache"}
TESTS=${TESTS:-"small 1k 64k close h2 latency idle"}
RESULTS=${RESULTS:-$HERE/results}
CONF=${CONF:-$HERE/conf}          # the configuration files' folder
PROBE_PATH=${PROBE_PATH:-/}       # the request each balancer must answer "hello world" to
PROBE_HEADER=${PROBE_HEADER:-}    # ... with this field, if any
WRK_ARGS=${WRK_ARGS:-}            # more arguments for every wrk run (a Lua script: -s FILE)

BACKEND_A_PORT=$((PORT_BASE + 81))
BACKEND_B_PORT=$((PORT_BASE + 82))
KB_PORT=$((PORT_BASE + 100))
KB_ADMIN_PORT=$((PORT_BASE + 109))
NGINX_PORT=$((PORT_BASE + 200))
NGINX_H2_PORT=$((PORT_BASE + 201))
HAPROXY_PORT=$((PORT_BASE + 300))
APACHE_PORT=$((PORT_BASE + 400))
HOLD_PORT_BASE=$((PORT_BASE + 600)) # the pooled figure's members: HOLD_MEMBERS ports from here
IDLE_MAX=$(tr ',' '\n' <<<"$IDLE_CONNS" | sort -n | tail -1)

. "$HERE/lib.sh"
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools

install_missing() {
    local need=()
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
    [ -x /usr/sbin/apache2 ] || need+=(apache2)
    command -v wrk >/dev/null || need+=(wrk)
    command -v h2load >/dev/null || need+=(nghttp2-client)
    command -v gnuplot >/dev/null || need+=(gnuplot-nox)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v python3 >/dev/null || need+=(python3)
    [ ${#need[@]} -eq 0 ] && return
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    say "installing ${need[*]}"
    "${sudo[@]}" apt-get update -qq
    # h2load and gnuplot are optional: go on without them if they cannot be installed.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
}

install_missing
export PATH="$PATH:/usr/sbin:/sbin"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((IDLE_MAX + 1000)) ] || say "warning: ulimit -n is $(ulimit -n), the idle test may fall short"
[ "$(nproc)" -ge 2 ] || say "warning: one CPU only: the balancer and the load share it"

# KB_BIN=path measures that binary instead of building this tree (to compare two builds).
# The tree is built as the image is: profile-guided (scripts/build-release.sh); PGO=0 for a
# plain `cargo build --release`.
BUILD="profile-guided (scripts/build-release.sh)"
[ "${PGO:-1}" = 0 ] && BUILD="cargo build --release, no PGO"
GIVEN=${KB_BIN:-}
if [ -z "$GIVEN" ]; then
    say "building kube-balancer: $BUILD"
    KB_BIN=$("$REPO/scripts/build-release.sh")
else
    BUILD=${KB_BUILD:-"given (KB_BIN): $(basename "$KB_BIN")"}
fi
(cd "$REPO/tools/loadgen" && cargo build --release --locked --quiet --target-dir "$REPO/target/bench")
LOADGEN=$REPO/target/bench/release/kb-loadgen
case " $BALANCERS " in
*" floor "*)
    (cd "$HERE/floor" && cargo build --release --quiet --target-dir "$REPO/target/bench")
    FLOOR=$REPO/target/bench/release/kb-floor
    ;;
esac

# ---------------------------------------------------------------- processes

RUN=$(mktemp -d -t kb-bench.XXXXXX)
chmod 755 "$RUN"
PIDS=()  # everything started here, ended by PID on exit

trap end_run EXIT
trap 'exit 130' INT TERM

# Proportional set size of a process tree, KiB (shared pages split between its processes).
pss_kib() {
    local total=0 pid kib
    for pid in $(tree "$1"); do
        kib=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null) || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------- configuration

# render FILE [WORKERS]: fills in a configuration's @NAMES@; the member lists of the pooled
# figure's configurations are a line per holding member.
render() {
    local workers=${2:-1} port i
    local kb_members="" nginx_servers="" haproxy_servers=""
    for i in $(seq 0 $((HOLD_MEMBERS - 1))); do
        port=$((HOLD_PORT_BASE + i))
        kb_members+="    - url: http://127.0.0.1:$port\n"
        nginx_servers+="        server 127.0.0.1:$port;\n"
        haproxy_servers+="    server h$i 127.0.0.1:$port\n"
    done
    sed -e "s|@RUN@|$RUN|g" -e "s|@WORKERS@|$workers|g" \
        -e "s|@BACKEND_A_PORT@|$BACKEND_A_PORT|g" -e "s|@BACKEND_B_PORT@|$BACKEND_B_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@NGINX_H2_PORT@|$NGINX_H2_PORT|g" \
        -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" -e "s|@APACHE_PORT@|$APACHE_PORT|g" \
        -e "s|^@KB_HOLD_MEMBERS@\$|${kb_members%\\n}|" \
        -e "s|^@NGINX_HOLD_SERVERS@\$|${nginx_servers%\\n}|" \
        -e "s|^@HAPROXY_HOLD_SERVERS@\$|${haproxy_servers%\\n}|" \
        "$CONF/$1" >"$RUN/${3:-$1}"
}

mkdir -p "$RUN/www" "$RUN/nginx-tmp" "$RUN/backends-tmp" "$RUN/apache-run"
head -c 1024 /dev/zero | tr '\0' 'a' >"$RUN/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' >"$RUN/www/64k"
chmod -R a+rX "$RUN"
for f in backends.nginx.conf apache.conf kube-balancer.yaml; do render "$f"; done
# The pooled figure's configuration, where the configuration folder has one (CONF).
[ ! -f "$CONF/kube-balancer.pooled.yaml" ] || render kube-balancer.pooled.yaml
[ "$(id -u)" -eq 0 ] && chown www-data: "$RUN/apache-run" 2>/dev/null || true

# start_balancer NAME[:WORKERS] [pooled]: sets STARTED (its PID), PORT and H2_PORT. With
# `pooled`, it forwards to the holding members instead (the pooled figure's configuration).
start_balancer() {
    local name=${1%%:*} workers=1 variant=${2:-}
    [ "$name" = "$1" ] || workers=${1#*:}
    local cpu=$LB_CPU
    [ "$workers" = 1 ] || cpu=$LB_CPUS
    local suffix=${variant:+.$variant}
    case $name in
    kube-balancer | kube-balancer-before)
        PORT=$KB_PORT H2_PORT=$KB_PORT
        # This tree's build runs with the image's environment; the other build as it is given
        # (a wrapper script can set its environment).
        local bin=$KB_BIN envs=("${IMAGE_ENV[@]}")
        if [ "$name" != kube-balancer ]; then
            bin=${KB_BIN_BEFORE:?KB_BIN_BEFORE names the other build} envs=()
        fi
        start "$1" "$cpu" env "${envs[@]}" "$bin" standalone -f "$RUN/kube-balancer$suffix.yaml" --workers "$workers" \
            --listen "127.0.0.1:$KB_PORT" --admin "127.0.0.1:$KB_ADMIN_PORT" --shutdown-grace 1s \
            --header-read-timeout 300s
        ;;
    floor)
        PORT=$((PORT_BASE + 500)) H2_PORT=
        start floor "$cpu" "$FLOOR" "127.0.0.1:$PORT" "127.0.0.1:$BACKEND_A_PORT" "127.0.0.1:$BACKEND_B_PORT"
        ;;
    nginx)
        PORT=$NGINX_PORT H2_PORT=$NGINX_H2_PORT
        render "nginx$suffix.conf" "$workers" "nginx.run.conf"
        start "$1" "$cpu" nginx -c "$RUN/nginx.run.conf" -e "$RUN/nginx-error.log"
        ;;
    haproxy)
        PORT=$HAPROXY_PORT H2_PORT=$HAPROXY_PORT
        render "haproxy$suffix.cfg" "$workers" "haproxy.run.cfg"
        start "$1" "$cpu" haproxy -db -f "$RUN/haproxy.run.cfg"
        ;;
    apache)
        PORT=$APACHE_PORT H2_PORT=$APACHE_PORT
        start "$1" "$cpu" apache2 -f "$RUN/apache.conf" -DFOREGROUND
        ;;
    *) die "unknown balancer $1" ;;
    esac
}

version_of() {
    case ${1%%:*} in
    # A given binary (KB_BIN) need not be this tree's: only KB_BUILD can say what it is.
    kube-balancer)
        local env="environment ${IMAGE_ENV[*]:-none} (the image's)"
        if [ -n "$GIVEN" ]; then echo "kube-balancer: $BUILD, $env"; else
            echo "kube-balancer $(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown), build: $BUILD, $env"
        fi ;;
    kube-balancer-before) echo "kube-balancer-before: $(basename "$KB_BIN_BEFORE")" ;;
    floor) echo "floor: bench/floor, a tokio proxy doing only what no proxy can skip" ;;
    nginx) nginx -v 2>&1 | sed 's|.*/||; s|^|nginx |' ;;
    haproxy) haproxy -v | awk 'NR == 1 { print "HAProxy " $3 }' ;;
    apache) apache2 -v | awk -F'[/ ]' '/version/ { print "Apache httpd " $4 }' ;;
    esac
}

# ---------------------------------------------------------------- measurements

RAW=$RUN/raw.tsv
: >"$RAW"
record() { printf '%s\t%s\t%s\t%s\n' "$ROUND" "$LB" "$1" "$2" >>"$RAW"; }

# Records KEY: the least-squares slope of PSS (KiB) over connections held, from CONNS:KIB
# points; nothing with fewer than two.
slope() {
    local key=$1
    shift
    [ $# -ge 2 ] || return 0
    record "$key" "$(tr ' ' '\n' <<<"$*" | awk -F: '
        { n++; x[n] = $1; y[n] = $2; sx += $1; sy += $2 }
        END {
            mx = sx / n; my = sy / n
            for (i = 1; i <= n; i++) { sxy += (x[i] - mx) * (y[i] - my); sxx += (x[i] - mx) ^ 2 }
            printf "%.3f", (sxx > 0 ? sxy / sxx : 0)
        }')"
}

# Samples the tree's PSS every second while PID $2 (a load generator) runs; keeps the maximum.
PEAK=0
sample_pss() {
    local lb=$1 gen=$2 kib
    while kill -0 "$gen" 2>/dev/null; do
        kib=$(pss_kib "$lb")
        [ "$kib" -gt "$(cat "$RUN/peak")" ] && echo "$kib" >"$RUN/peak"
        sleep 1
    done
}

# measure TEST NAME KIND ARGS...: runs a load generator and records requests/s and CPU per request.
measure() {
    local test=$1 kind=$2
    shift 2
    local out=$RUN/$test.$LB.$ROUND.txt
    local t0 b0 t1 b1 gen
    t0=$(cpu_ticks "$LBPID") b0=$(cpu_busy "$LB_CPU")
    taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) "$@" >"$out" 2>&1 &
    gen=$!
    sample_pss "$LBPID" "$gen" &
    local sampler=$!
    wait "$gen" || say "$LB $test: load generator exited with $?"
    wait "$sampler" 2>/dev/null || true
    t1=$(cpu_ticks "$LBPID") b1=$(cpu_busy "$LB_CPU")
    local requests rps errors
    if [ "$kind" = wrk ]; then
        requests=$(awk '/requests in/ { print $1 }' "$out")
        rps=$(awk '/^Requests\/sec/ { print $2 }' "$out")
        errors=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    else
        requests=$(awk '/^requests:/ { print $8 }' "$out")
        rps=$(awk '/^finished in/ { print $4 }' "$out")
        errors=$(awk '/^requests:/ { print $10 + $12 }' "$out")
    fi
    if [ -z "$requests" ] || [ "$requests" -eq 0 ]; then
        say "$LB $test: no requests served"; sed 's/^/    /' "$out" >&2
        record "errors_$test" 1
        return
    fi
    record "rps_$test" "$rps"
    record "cpu_$test" "$(awk -v t=$((t1 - t0)) -v n="$requests" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')"
    record "core_$test" "$(awk -v t=$((b1 - b0)) -v n="$requests" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')"
    record "errors_$test" "$errors"
    say "$LB $test: $rps req/s, $(awk -v t=$((t1 - t0)) -v n="$requests" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }') us CPU/request, $errors errors"
}

url() { echo "http://127.0.0.1:$PORT$1"; }

# Established connections to the holding members.
held_connections() {
    ss -Htn state established "( sport >= :$HOLD_PORT_BASE and sport < :$((HOLD_PORT_BASE + HOLD_MEMBERS)) )" | wc -l
}

run_test() {
    # The floor forwards keep-alive GETs only: no Connection: close, no HTTP/2.
    if [ "$LB" = floor ] && { [ "$1" = close ] || [ "$1" = h2 ]; }; then return; fi
    case $1 in
    small) measure small wrk wrk -t1 -c"$CONNS" -d"${DURATION}s" $WRK_ARGS "$(url /)" ;;
    1k) measure 1k wrk wrk -t1 -c"$CONNS" -d"${DURATION}s" $WRK_ARGS "$(url /1k)" ;;
    64k) measure 64k wrk wrk -t1 -c"$CONNS" -d"${DURATION}s" $WRK_ARGS "$(url /64k)" ;;
    close) measure close wrk wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Connection: close" $WRK_ARGS "$(url /)" ;;
    h2)
        command -v h2load >/dev/null || { say "no h2load: HTTP/2 skipped"; return; }
        measure h2 h2load h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$DURATION" "http://127.0.0.1:$H2_PORT/"
        ;;
    latency)
        local out=$RUN/latency.$LB.$ROUND.txt
        # CPU per request at a fixed rate: what a worker more or less costs (NAME:2 against NAME).
        local t0 b0 t1 b1
        t0=$(cpu_ticks "$LBPID") b0=$(cpu_busy "$LB_CPU")
        taskset -c "$LOAD_CPU" timeout $((DURATION + 60)) \
            "$LOADGEN" rate "127.0.0.1:$PORT" / "$RATE" "$DURATION" "$CONNS" >"$out" 2>&1 ||
            { say "$LB latency: generator failed"; sed 's/^/    /' "$out" >&2; return; }
        t1=$(cpu_ticks "$LBPID") b1=$(cpu_busy "$LB_CPU")
        local key
        for key in p50_us p99_us p999_us max_us errors achieved_rate max_send_lag_us; do
            record "lat_$key" "$(awk -F= -v k="$key" '$1 == k { print $2 }' "$out")"
        done
        local requests
        requests=$(awk -F= '$1 == "requests" { print $2 }' "$out")
        if [ "${requests:-0}" -gt 0 ]; then
            record cpu_rate "$(awk -v t=$((t1 - t0)) -v n="$requests" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')"
        fi
        say "$LB latency at $RATE/s: $(tr '\n' ' ' <"$out")"
        ;;
    idle)
        # Idle keep-alive connections, opened in steps (IDLE_CONNS); the PSS SETTLE seconds after
        # each step, and the growth per connection: the slope of PSS over connections held,
        # fitted over every step (least squares), so that one step's reading does not decide it.
        local out=$RUN/idle.$LB.$ROUND.txt gen before steps
        before=$(pss_kib "$LBPID")
        steps=$(tr ',' ' ' <<<"$IDLE_CONNS")
        taskset -c "$LOAD_CPU" timeout 900 "$LOADGEN" idle "127.0.0.1:$PORT" / "$IDLE_CONNS" $((SETTLE + 2)) >"$out" 2>&1 &
        gen=$!
        local step=0 n kib open points="" line
        for n in $steps; do
            step=$((step + 1))
            for _ in $(seq 9000); do
                [ "$(grep -c '^open=' "$out")" -ge "$step" ] && break
                kill -0 "$gen" 2>/dev/null || break
                sleep 0.1
            done
            sleep "$SETTLE"
            kib=$(pss_kib "$LBPID")
            line=$(grep '^open=' "$out" | sed -n "${step}p")
            open=$(awk -F'[= ]' '{ print $2 }' <<<"$line")
            record "idle_pss_${n}_mib" "$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
            record "idle_open_$n" "${open:-0}"
            points="$points ${open:-0}:$kib"
            say "$LB idle: ${open:-0} connections open, PSS $((before / 1024)) MiB -> $((kib / 1024)) MiB"
        done
        wait "$gen" || true
        record idle_open "${open:-0}"
        record idle_alive "$(awk -F= '/^alive_after_hold=/ { print $2 }' "$out")"
        record idle_pss_mib "$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
        record idle_pss_before_mib "$(awk -v k="$before" 'BEGIN { printf "%.1f", k / 1024 }')"
        slope idle_kib_per_conn $points
        ;;
    pooled)
        # Idle pooled member connections: bursts of requests to the holding members, each burst
        # answered only once all its requests wait at the members, from HTTP/2 clients (100
        # streams each, so that 10,000 of them fit under the open-file limit); the clients then
        # leave, and what stays is the member connections in the balancer's pool.
        case ${LB%%:*} in kube-balancer | kube-balancer-before | nginx | haproxy) ;; *) return ;; esac
        command -v h2load >/dev/null || { say "no h2load: the pooled figure is skipped"; return; }
        stop "$LBPID"
        start_balancer "$LB" pooled
        LBPID=$STARTED
        wait_port "$H2_PORT" || die "$LB did not start for the pooled figure: $(cat "$RUN/$LB.out")"
        sleep 1
        local before n kib held points="" out
        before=$(pss_kib "$LBPID")
        for n in $(tr ',' ' ' <<<"$POOLED_CONNS"); do
            out=$RUN/pooled.$LB.$ROUND.$n.txt
            taskset -c "$LOAD_CPU" timeout 120 h2load -n "$n" -c $(((n + 99) / 100)) -m 100 \
                "http://127.0.0.1:$H2_PORT/hold/$n" >"$out" 2>&1 || say "$LB pooled $n: h2load exited with $?"
            sleep "$SETTLE"
            kib=$(pss_kib "$LBPID")
            held=$(held_connections)
            record "pooled_pss_${n}_mib" "$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
            record "pooled_held_$n" "$held"
            # A step whose burst did not complete (fewer held than asked) is not fitted.
            [ $((held * 100)) -lt $((n * 95)) ] || points="$points $held:$kib"
            say "$LB pooled: $(awk '/^requests:/ { print $8, "answered," }' "$out") $held member connections held, PSS $((before / 1024)) MiB -> $((kib / 1024)) MiB"
        done
        record pooled_held "$held"
        record pooled_pss_mib "$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
        slope pooled_kib_per_conn $points
        # Back to the run's own configuration for whatever test comes next.
        stop "$LBPID"
        start_balancer "$LB"
        LBPID=$STARTED
        wait_port "$PORT" || die "$LB did not restart: $(cat "$RUN/$LB.out")"
        ;;
    *) die "unknown test $1" ;;
    esac
}

# ---------------------------------------------------------------- the run

{
    echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) x $(nproc)"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
    for b in $BALANCERS; do echo "version_$b=$(version_of "$b")"; done
    echo "wrk=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')"
    echo "h2load=$(h2load --version 2>/dev/null | awk '{ print $2 }')"
    echo "settings=rounds $ROUNDS, $DURATION s per run, $CONNS connections, latency at $RATE req/s, $IDLE_MAX idle connections (steps $IDLE_CONNS), pooled steps $POOLED_CONNS, h2 $H2_STREAMS streams per connection"
} >"$RUN/meta"

start backends "$LOAD_CPU" nginx -c "$RUN/backends.nginx.conf" -e "$RUN/backends-error.log"
wait_port "$BACKEND_A_PORT" && wait_port "$BACKEND_B_PORT" || die "the backends did not start: $(cat "$RUN/backends.out")"
case " $TESTS " in
*" pooled "*)
    hold_addrs=$(for i in $(seq 0 $((HOLD_MEMBERS - 1))); do printf '127.0.0.1:%d,' $((HOLD_PORT_BASE + i)); done)
    start hold "$LOAD_CPU" "$LOADGEN" hold "${hold_addrs%,}" 60
    wait_port "$HOLD_PORT_BASE" || die "the holding members did not start: $(cat "$RUN/hold.out")"
    ;;
esac

# Each round starts one balancer further down the list, so that none always runs right after
# the same one (what the previous balancer leaves behind, such as 10,000 closed idle
# connections, weighs on the next one's figures).
read -r -a ORDER <<<"$BALANCERS"
for ROUND in $(seq "$ROUNDS"); do
    shift_by=$(((ROUND - 1) % ${#ORDER[@]}))
    for LB in "${ORDER[@]:shift_by}" "${ORDER[@]:0:shift_by}"; do
        say "round $ROUND: $LB"
        start_balancer "$LB"
        LBPID=$STARTED
        wait_port "$PORT" || die "$LB did not start: $(cat "$RUN/$LB.out")"
        body=$(curl -s --max-time 5 ${PROBE_HEADER:+-H "$PROBE_HEADER"} "$(url "$PROBE_PATH")" || true)
        [ "$body" = "hello world" ] || die "$LB does not forward: got '$body'"
        echo 0 >"$RUN/peak"
        taskset -c "$LOAD_CPU" timeout 30 wrk -t1 -c"$CONNS" -d"${WARMUP}s" $WRK_ARGS "$(url /)" >/dev/null 2>&1 || true
        for t in $TESTS; do run_test "$t"; done
        record peak_pss_mib "$(awk -v k="$(cat "$RUN/peak")" 'BEGIN { printf "%.1f", k / 1024 }')"
        stop "$LBPID"
    done
done
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/meta"

mkdir -p "$RESULTS/archive"
stamp=$(date -u +%Y-%m-%d-%H%M)
# The same report twice, each with links right for its folder: latest.* and the dated record.
for prefix in "$RESULTS/archive/$stamp" "$RESULTS/latest"; do
    python3 "$HERE/report.py" "$RUN/meta" "$RAW" "$prefix" "$BALANCERS"
    if command -v gnuplot >/dev/null && [ -f "$prefix.gp" ]; then
        gnuplot "$prefix.gp" && rm "$prefix.gp"
    fi
done
say "results: $RESULTS/latest.md (kept as $RESULTS/archive/$stamp.md)"
cat "$RESULTS/latest.md"
