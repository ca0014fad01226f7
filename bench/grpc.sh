#!/usr/bin/env bash
# gRPC unary calls through kube-balancer, nginx (grpc_pass) and HAProxy (proto h2), side by side
# in one run: calls per second and the balancer's CPU time per call.
#
#   bench/grpc.sh                          # 3 rounds of 10 s per balancer
#   ROUNDS=1 DURATION=5 bench/grpc.sh      # a quick look
#   KB_BIN=/path/to/kube-balancer bench/grpc.sh   # that build instead of this tree's release build
#
# The members are two real gRPC servers (grpc-go's TestService, tests/support/grpc-peer); the load is
# h2load sending gRPC-like POSTs (/grpc.testing.TestService/UnaryCall, application/grpc, one
# framed message) over CONNS h2c connections with STREAMS streams each. Before measuring, a real
# gRPC client (grpc-peer call) checks each balancer answers a call with status OK. Each balancer
# runs one worker pinned to LB_CPU; members and h2load share LOAD_CPU. Only loopback addresses;
# every run is bounded in time. The table goes to stdout and bench/results/grpc-latest.md (a
# dated copy to bench/results/archive/).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-8}
STREAMS=${STREAMS:-16}
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BALANCERS=${BALANCERS:-"kube-balancer nginx haproxy"}
RESULTS=${RESULTS:-$HERE/results}

. "$HERE/lib.sh"
die() { say "error: $*"; exit 1; }

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
fi
export PATH="$PATH:/usr/sbin:/sbin"

RUN=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

KB_BIN=${KB_BIN:-}
if [ -z "$KB_BIN" ]; then
    say "building the release binary"
    (cd "$REPO" && cargo build --release --quiet --bin kube-balancer)
    KB_BIN=$REPO/target/release/kube-balancer
fi
PEER=$RUN/grpc-peer
(cd "$REPO/tests/support/grpc-peer" && go build -o "$PEER" .)

# A free loopback port (the kernel's pick; closed again at once).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start CPU COMMAND...: runs COMMAND pinned to CPU in the background; sets STARTED.
start() {
    local cpu=$1
    shift
    taskset -c "$cpu" "$@" &
    STARTED=$!
    PIDS+=("$STARTED")
}

# The two members.
MEMBERS=()
for name in a b; do
    port=$(free_port)
    mkfifo "$RUN/stdin-$name"
    taskset -c "$LOAD_CPU" "$PEER" serve -listen "127.0.0.1:$port" -name "$name" \
        <"$RUN/stdin-$name" >/dev/null &
    PIDS+=("$!")
    exec {fd}>"$RUN/stdin-$name" # held open: the peer exits when its stdin closes
    wait_port "$port" || die "nothing listens on $port"
    MEMBERS+=("$port")
done

KB_PORT=$(free_port)
NGINX_PORT=$(free_port)
HAPROXY_PORT=$(free_port)

cat >"$RUN/kube-balancer.yaml" <<EOF
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {name: grpc}
spec:
  protocol: h2c
  members:
    - url: http://127.0.0.1:${MEMBERS[0]}
    - url: http://127.0.0.1:${MEMBERS[1]}
EOF
cat >"$RUN/nginx.conf" <<EOF
worker_processes 1;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    # Connections are not closed after 1000 requests (both defaults), as kube-balancer's and
    # HAProxy's are not.
    keepalive_requests 100000000;
    upstream members {
        server 127.0.0.1:${MEMBERS[0]};
        server 127.0.0.1:${MEMBERS[1]};
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT http2;
        http2_max_concurrent_streams 256;
        location / { grpc_pass grpc://members; }
    }
}
EOF
cat >"$RUN/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc
    bind 127.0.0.1:$HAPROXY_PORT proto h2
    default_backend members
backend members
    balance roundrobin
    http-reuse always
    server a 127.0.0.1:${MEMBERS[0]} proto h2
    server b 127.0.0.1:${MEMBERS[1]} proto h2
EOF

# One gRPC message: an empty SimpleRequest (uncompressed flag, length 0).
printf '\0\0\0\0\0' >"$RUN/call.bin"

declare -A PORT PID
start "$LB_CPU" "$KB_BIN" standalone -f "$RUN/kube-balancer.yaml" --listen "127.0.0.1:$KB_PORT" \
    --admin 127.0.0.1:0 --workers 1
PID[kube-balancer]=$STARTED PORT[kube-balancer]=$KB_PORT
start "$LB_CPU" nginx -c "$RUN/nginx.conf"
PID[nginx]=$STARTED PORT[nginx]=$NGINX_PORT
start "$LB_CPU" haproxy -db -f "$RUN/haproxy.cfg"
PID[haproxy]=$STARTED PORT[haproxy]=$HAPROXY_PORT

for lb in $BALANCERS; do
    wait_port "${PORT[$lb]}" || die "nothing listens on ${PORT[$lb]}"
    checked=$("$PEER" call -target "127.0.0.1:${PORT[$lb]}" -kind unary | tail -1)
    case $checked in
    "done code=0 "*) say "$lb answers a real gRPC call: $checked" ;;
    *) die "$lb did not answer a gRPC call with OK: $checked" ;;
    esac
done

declare -A CALLS CPU
for round in $(seq "$ROUNDS"); do
    for lb in $BALANCERS; do
        out=$RUN/$lb.$round.txt
        load=(h2load -c "$CONNS" -m "$STREAMS" -d "$RUN/call.bin"
            -H 'content-type: application/grpc' -H 'te: trailers'
            "http://127.0.0.1:${PORT[$lb]}/grpc.testing.TestService/UnaryCall")
        # Unmeasured warm-up, then the measured run: CPU time over exactly its calls.
        taskset -c "$LOAD_CPU" timeout $((WARMUP + 30)) "${load[@]}" -D "$WARMUP" >/dev/null 2>&1 || true
        t0=$(cpu_ticks "${PID[$lb]}")
        taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) "${load[@]}" -D "$DURATION" >"$out" 2>&1 ||
            say "$lb: h2load exited with $?"
        t1=$(cpu_ticks "${PID[$lb]}")
        done_calls=$(awk '/^requests:/ { print $8 }' "$out")
        ok=$(awk '/^status codes:/ { gsub(/,/, ""); print $3 }' "$out")
        [ -n "$done_calls" ] && [ "$done_calls" -gt 0 ] || { sed 's/^/    /' "$out" >&2; die "$lb: no calls"; }
        rate=$(awk '/^finished in/ { print $4 }' "$out")
        us=$(awk -v t=$((t1 - t0)) -v n="$done_calls" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')
        say "$lb round $round: $rate calls/s, $us us CPU/call, $ok of $done_calls 2xx"
        CALLS[$lb]+="$rate " CPU[$lb]+="$us "
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

mkdir -p "$RESULTS"
{
    echo "gRPC unary calls, $ROUNDS rounds of ${DURATION}s, $CONNS h2c connections x $STREAMS streams, one worker each"
    echo "($(date -u +%Y-%m-%dT%H:%MZ), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) x $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    echo "| balancer | calls/s (median) | CPU µs per call (median) | rounds (µs per call) |"
    echo "|---|---:|---:|---|"
    for lb in $BALANCERS; do
        echo "| $lb | $(echo "${CALLS[$lb]}" | median) | $(echo "${CPU[$lb]}" | median) | ${CPU[$lb]% } |"
    done
} | tee "$RESULTS/grpc-latest.md"
mkdir -p "$RESULTS/archive"
cp "$RESULTS/grpc-latest.md" "$RESULTS/archive/grpc-$(date -u +%Y-%m-%d-%H%M).md"
