#!/usr/bin/env bash
# TLS termination: kube-balancer side by side with nginx and HAProxy, in one run on this machine.
# Two figures: full TLS handshakes (a new connection per request, no session resumption) per
# second and the balancer's CPU per handshake; and requests over TLS keep-alive connections per
# second and the balancer's CPU per request.
#
#   bench/tls.sh                           # 3 rounds of 10 s per figure (about 4 min)
#   ROUNDS=1 DURATION=5 bench/tls.sh       # a quick look
#   KB_BIN=target/release/kube-balancer bench/tls.sh   # that build instead of building this tree
#                                          # (KB_BUILD="..." says what it is in the table)
#   PGO=0 bench/tls.sh                     # this tree without profile-guided optimization
#   BALANCERS="kube-balancer nginx" TESTS=handshake bench/tls.sh
#   KB_BIN_BEFORE=/path/to/other BALANCERS="kube-balancer kube-balancer-before nginx" bench/tls.sh
#                                          # A/B: two builds in the same run, interleaved
#
# TLS 1.3 only, an ECDSA P-256 certificate made for the run (openssl), the key exchange group
# X25519 and the cipher suite TLS_AES_128_GCM_SHA256 for all three: the clients offer only those
# (kb-tls-client by its configuration, wrk through an OpenSSL configuration file), and nginx and
# HAProxy are also configured to accept only those. Before measuring, openssl s_client checks
# what each balancer negotiates; the table says it.
#
# - handshake: bench/tls-client (kb-tls-client, rustls with resumption off) keeps HS_CONNS
#   connections going, each a new TCP connection, a full handshake, one GET / with
#   Connection: close. It counts full and resumed handshakes itself, and each balancer's own
#   count is read too (kube-balancer's tls_handshakes, HAProxy's CumSslConns, nginx's accepted
#   connections): the table shows the balancer's count per request the client saw answered.
# - keepalive: wrk -t1 -cCONNS over https, keep-alive, the 12-byte body.
#
# The members are run.sh's (bench/conf/backends.nginx.conf: one nginx worker on two ports,
# plain HTTP). Each balancer runs one worker pinned to LB_CPU; the clients and the members share
# LOAD_CPU. CPU per request is the balancer's user + system time (/proc) over the measured run
# divided by the requests answered, as in run.sh. Only loopback addresses; every load run is
# bounded in time. Results: bench/results/tls/latest.md, a dated copy in bench/results/archive/
# (tls-DATE.md); docs/benchmarks.md ("TLS") says how to read them.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}          # seconds per load run
WARMUP=${WARMUP:-2}               # seconds of unrecorded load after each start
CONNS=${CONNS:-32}                # keep-alive connections (wrk)
HS_CONNS=${HS_CONNS:-32}          # handshakes in flight (kb-tls-client)
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PORT_BASE=${PORT_BASE:-18600}
BALANCERS=${BALANCERS:-"kube-balancer nginx haproxy"}
TESTS=${TESTS:-"handshake keepalive"}
RESULTS=${RESULTS:-$HERE/results}
NAME=bench.test                   # the certificate's name, sent as SNI

BACKEND_A_PORT=$((PORT_BASE + 81))
BACKEND_B_PORT=$((PORT_BASE + 82))
KB_PORT=$((PORT_BASE + 100))
KB_TLS_PORT=$((PORT_BASE + 101))
KB_ADMIN_PORT=$((PORT_BASE + 109))
NGINX_PORT=$((PORT_BASE + 200))
NGINX_STATUS_PORT=$((PORT_BASE + 209))
HAPROXY_PORT=$((PORT_BASE + 300))
HAPROXY_STATS_PORT=$((PORT_BASE + 309))

. "$HERE/lib.sh"
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    say "installing ${need[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
fi
export PATH="$PATH:/usr/sbin:/sbin"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# As run.sh: KB_BIN measures that binary; else this tree, built as the image is (PGO=0: plain).
BUILD="profile-guided (scripts/build-release.sh)"
[ "${PGO:-1}" = 0 ] && BUILD="cargo build --release, no PGO"
GIVEN=${KB_BIN:-}
if [ -z "$GIVEN" ]; then
    say "building kube-balancer: $BUILD"
    KB_BIN=$("$REPO/scripts/build-release.sh")
else
    BUILD=${KB_BUILD:-"given (KB_BIN): $(basename "$KB_BIN")"}
fi
# The client's dependencies (rustls, ring, tokio) at the versions kube-balancer's lock file holds:
# built with a copy of it, which is not kept in the tree.
cp "$REPO/Cargo.lock" "$HERE/tls-client/Cargo.lock"
(cd "$HERE/tls-client" && cargo build --release --quiet --target-dir "$REPO/target/bench")
CLIENT=$REPO/target/bench/release/kb-tls-client

# ---------------------------------------------------------------- processes

RUN=$(mktemp -d -t kb-tls.XXXXXX)
chmod 755 "$RUN"
PIDS=()  # everything started here, ended by PID on exit

trap end_run EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- certificate and configuration

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$NAME" -addext "subjectAltName=DNS:$NAME" \
    -keyout "$RUN/bench.key" -out "$RUN/bench.crt" 2>/dev/null || die "openssl could not make the certificate"
cat "$RUN/bench.crt" "$RUN/bench.key" >"$RUN/bench.pem" # HAProxy's form: chain and key in one file

# The clients that use OpenSSL (wrk, s_client, curl) offer TLS 1.3, one group and one suite.
cat >"$RUN/client-openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
Ciphersuites = TLS_AES_128_GCM_SHA256
Groups = X25519
EOF

mkdir -p "$RUN/www" "$RUN/nginx-tmp" "$RUN/backends-tmp"
sed -e "s|@RUN@|$RUN|g" -e "s|@BACKEND_A_PORT@|$BACKEND_A_PORT|g" -e "s|@BACKEND_B_PORT@|$BACKEND_B_PORT|g" \
    "$HERE/conf/backends.nginx.conf" >"$RUN/backends.nginx.conf"

# kube-balancer: run.sh's cluster, with the certificate (relative paths: from this file's folder).
cat >"$RUN/kube-balancer.yaml" <<EOF
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata:
  name: bench
spec:
  routes:
    - pathPrefix: /
  members:
    - url: http://127.0.0.1:$BACKEND_A_PORT
    - url: http://127.0.0.1:$BACKEND_B_PORT
  lbMethod: byrequests
  tls:
    - certFile: bench.crt
      keyFile: bench.key
      default: true
EOF

# nginx: run.sh's (bench/conf/nginx.conf), listening with TLS; nginx's defaults otherwise
# (session tickets on, no session cache), as kube-balancer's (tickets on).
cat >"$RUN/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 15000; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $RUN/nginx-tmp/body;
    proxy_temp_path $RUN/nginx-tmp/proxy;
    upstream members {
        server 127.0.0.1:$BACKEND_A_PORT;
        server 127.0.0.1:$BACKEND_B_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl backlog=4096;
        ssl_certificate $RUN/bench.crt;
        ssl_certificate_key $RUN/bench.key;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        location / {
            proxy_pass http://members;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
    # Its count of accepted connections, read before and after each handshake run.
    server {
        listen 127.0.0.1:$NGINX_STATUS_PORT;
        location / { stub_status; }
    }
}
EOF

# HAProxy: run.sh's (bench/conf/haproxy.cfg), the frontend with TLS; its defaults otherwise
# (session tickets on, session cache on).
cat >"$RUN/haproxy.cfg" <<EOF
global
    nbthread 1
    pidfile $RUN/haproxy.pid
    # Its counters (CumSslConns), read before and after each handshake run.
    stats socket ipv4@127.0.0.1:$HAPROXY_STATS_PORT level operator
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    timeout http-request 10s
    option forwardfor
    http-reuse always
frontend bench
    bind 127.0.0.1:$HAPROXY_PORT ssl crt $RUN/bench.pem ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519 backlog 4096
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend members
backend members
    balance roundrobin
    server a 127.0.0.1:$BACKEND_A_PORT
    server b 127.0.0.1:$BACKEND_B_PORT
EOF

# start_balancer NAME: sets STARTED (its PID) and PORT (its TLS port).
start_balancer() {
    case $1 in
    kube-balancer | kube-balancer-before)
        PORT=$KB_TLS_PORT
        local bin=$KB_BIN
        [ "$1" = kube-balancer ] || bin=${KB_BIN_BEFORE:?KB_BIN_BEFORE names the other build}
        start "$1" "$LB_CPU" "$bin" standalone -f "$RUN/kube-balancer.yaml" --workers 1 \
            --listen "127.0.0.1:$KB_PORT" --listen-tls "127.0.0.1:$KB_TLS_PORT" \
            --admin "127.0.0.1:$KB_ADMIN_PORT" --shutdown-grace 1s
        ;;
    nginx)
        PORT=$NGINX_PORT
        start nginx "$LB_CPU" nginx -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log"
        ;;
    haproxy)
        PORT=$HAPROXY_PORT
        start haproxy "$LB_CPU" haproxy -db -f "$RUN/haproxy.cfg"
        ;;
    *) die "unknown balancer $1" ;;
    esac
}

# The balancer's own count of handshakes (nginx: of accepted connections, on any port).
handshakes_seen() {
    case $1 in
    kube-balancer | kube-balancer-before)
        curl -s --max-time 5 "http://127.0.0.1:$KB_ADMIN_PORT/metrics" |
            awk '/^kube_balancer_tls_handshakes_total\{result="ok"\}/ { print $2 }'
        ;;
    nginx) curl -s --max-time 5 "http://127.0.0.1:$NGINX_STATUS_PORT/" | awk 'NR == 3 { print $1 }' ;;
    haproxy)
        { echo "show info"; sleep 0.5; } 2>/dev/null |
            timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$HAPROXY_STATS_PORT; cat >&3; cat <&3" |
            awk -F': ' '$1 == "CumSslConns" { print $2 }'
        ;;
    esac
}

version_of() {
    case $1 in
    kube-balancer) if [ -n "$GIVEN" ]; then echo "kube-balancer: $BUILD"; else
        echo "kube-balancer $(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown), build: $BUILD"; fi ;;
    kube-balancer-before) echo "kube-balancer-before: ${KB_BUILD_BEFORE:-$(basename "$KB_BIN_BEFORE")}" ;;
    nginx) nginx -V 2>&1 | awk '/^nginx version/ { sub(/.*\//, ""); v = $0 } /running with/ { sub(/.*running with /, ""); sub(/\)$/, ""); o = $0 } END { print "nginx " v ", " (o ? o : "OpenSSL") }' ;;
    haproxy) haproxy -vv | awk 'NR == 1 { v = $3 } /^Running on OpenSSL version/ { sub(/.*: /, ""); o = $0 } END { print "HAProxy " v ", " o }' ;;
    esac
}

# ---------------------------------------------------------------- measurements

RAW=$RUN/raw.tsv
: >"$RAW"
record() { printf '%s\t%s\t%s\t%s\n' "$ROUND" "$LB" "$1" "$2" >>"$RAW"; }
per_request() { awk -v t="$1" -v n="$2" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }'; }

measure_handshakes() {
    local out=$RUN/handshake.$LB.$ROUND.txt t0 t1 s0 s1
    s0=$(handshakes_seen "$LB") t0=$(cpu_ticks "$LBPID")
    taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) \
        "$CLIENT" "127.0.0.1:$PORT" "$NAME" / "$HS_CONNS" "$DURATION" >"$out" 2>&1 ||
        say "$LB handshake: the client exited with $?"
    t1=$(cpu_ticks "$LBPID") s1=$(handshakes_seen "$LB")
    local requests rate errors full resumed
    requests=$(awk -F= '$1 == "requests" { print $2 }' "$out")
    rate=$(awk -F= '$1 == "rate" { print $2 }' "$out")
    errors=$(awk -F= '$1 == "errors" { print $2 }' "$out")
    full=$(awk -F= '$1 == "full" { print $2 }' "$out")
    resumed=$(awk -F= '$1 == "resumed" { print $2 }' "$out")
    if [ -z "$requests" ] || [ "$requests" -eq 0 ]; then
        say "$LB handshake: no requests answered"; sed 's/^/    /' "$out" >&2
        record errors_hs 1
        return
    fi
    local cpu
    cpu=$(per_request $((t1 - t0)) "$requests")
    record rps_hs "$rate"
    record cpu_hs "$cpu"
    record errors_hs "$errors"
    record hs_resumed "$resumed"
    # What the balancer counted, per request the client saw answered: 1 when every request
    # was its own handshake (nginx's figure also counts the two status requests).
    [ -n "$s0" ] && [ -n "$s1" ] &&
        record hs_seen "$(awk -v a="$s0" -v b="$s1" -v n="$requests" 'BEGIN { printf "%.3f", (b - a) / n }')"
    say "$LB handshake: $rate/s, $cpu us CPU/handshake, $full full and $resumed resumed (client), $((${s1:-0} - ${s0:-0})) counted by $LB, $errors errors ($(awk -F= '$1 == "first_error" { print $2 }' "$out"))"
}

measure_keepalive() {
    local out=$RUN/keepalive.$LB.$ROUND.txt t0 t1
    t0=$(cpu_ticks "$LBPID")
    OPENSSL_CONF=$RUN/client-openssl.cnf taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" "https://127.0.0.1:$PORT/" >"$out" 2>&1 ||
        say "$LB keepalive: wrk exited with $?"
    t1=$(cpu_ticks "$LBPID")
    local requests rps errors cpu
    requests=$(awk '/requests in/ { print $1 }' "$out")
    rps=$(awk '/^Requests\/sec/ { print $2 }' "$out")
    errors=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    if [ -z "$requests" ] || [ "$requests" -eq 0 ]; then
        say "$LB keepalive: no requests answered"; sed 's/^/    /' "$out" >&2
        record errors_tls 1
        return
    fi
    cpu=$(per_request $((t1 - t0)) "$requests")
    record rps_tls "$rps"
    record cpu_tls "$cpu"
    record errors_tls "$errors"
    say "$LB keepalive: $rps req/s, $cpu us CPU/request, $errors errors"
}

# What a client that offers only the configured version, group and suite gets, as
# openssl s_client prints it.
NEGOTIATED=()
negotiated() {
    local out
    out=$(OPENSSL_CONF=$RUN/client-openssl.cnf timeout 10 openssl s_client -connect "127.0.0.1:$PORT" \
        -servername "$NAME" -brief </dev/null 2>&1 || true)
    local protocol cipher group
    protocol=$(awk -F': ' '/^Protocol version/ { print $2 }' <<<"$out")
    cipher=$(awk -F': ' '/^Ciphersuite/ { print $2 }' <<<"$out")
    group=$(awk -F': ' '/^(Server Temp Key|Negotiated TLS1.3 group)/ { print $2; exit }' <<<"$out")
    [ -n "$protocol" ] || die "$LB: openssl s_client could not connect: $out"
    NEGOTIATED+=("$LB: $protocol, $cipher, $group")
}

# ---------------------------------------------------------------- the run

{
    echo "title=TLS termination side by side"
    echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) x $(nproc)"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
    for b in $BALANCERS; do echo "version_$b=$(version_of "$b")"; done
    echo "wrk=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') (keep-alive), with OpenSSL $(openssl version | awk '{ print $2 }')"
    echo "settings=rounds $ROUNDS, $DURATION s per run, full handshakes: $HS_CONNS in flight (bench/tls-client, rustls, resumption off), keep-alive: $CONNS connections (wrk), TLS 1.3, ECDSA P-256 certificate"
} >"$RUN/meta"

start backends "$LOAD_CPU" nginx -c "$RUN/backends.nginx.conf" -e "$RUN/backends-error.log"
wait_port "$BACKEND_A_PORT" && wait_port "$BACKEND_B_PORT" || die "the members did not start: $(cat "$RUN/backends.out")"

read -r -a ORDER <<<"$BALANCERS"
for ROUND in $(seq "$ROUNDS"); do
    # Each round starts one balancer further down the list, as run.sh's rounds do.
    shift_by=$(((ROUND - 1) % ${#ORDER[@]}))
    for LB in "${ORDER[@]:shift_by}" "${ORDER[@]:0:shift_by}"; do
        say "round $ROUND: $LB"
        start_balancer "$LB"
        LBPID=$STARTED
        wait_port "$PORT" || die "$LB did not start: $(cat "$RUN/$LB.out")"
        body=$(OPENSSL_CONF=$RUN/client-openssl.cnf curl -sk --max-time 5 \
            --resolve "$NAME:$PORT:127.0.0.1" "https://$NAME:$PORT/" || true)
        [ "$body" = "hello world" ] || die "$LB does not forward over TLS: got '$body' ($(tail -3 "$RUN/$LB.out"))"
        [ "$ROUND" = 1 ] && negotiated
        taskset -c "$LOAD_CPU" timeout 30 "$CLIENT" "127.0.0.1:$PORT" "$NAME" / "$HS_CONNS" 1 >/dev/null 2>&1 || true
        OPENSSL_CONF=$RUN/client-openssl.cnf taskset -c "$LOAD_CPU" timeout 30 \
            wrk -t1 -c"$CONNS" -d"${WARMUP}s" "https://127.0.0.1:$PORT/" >/dev/null 2>&1 || true
        for t in $TESTS; do
            case $t in
            handshake) measure_handshakes ;;
            keepalive) measure_keepalive ;;
            *) die "unknown test $t" ;;
            esac
        done
        stop "$LBPID"
    done
done
{
    echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "tls=what openssl s_client offering only TLS 1.3, X25519 and TLS_AES_128_GCM_SHA256 negotiated: $(IFS=';'; echo "${NEGOTIATED[*]}" | sed 's/;/; /g')"
} >>"$RUN/meta"

mkdir -p "$RESULTS/tls" "$RESULTS/archive"
stamp=$(date -u +%Y-%m-%d-%H%M)
for prefix in "$RESULTS/archive/tls-$stamp" "$RESULTS/tls/latest"; do
    python3 "$HERE/report.py" "$RUN/meta" "$RAW" "$prefix" "$BALANCERS"
    rm -f "$prefix.gp"
done
say "results: $RESULTS/tls/latest.md (kept as $RESULTS/archive/tls-$stamp.md)"
cat "$RESULTS/tls/latest.md"
