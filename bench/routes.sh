#!/usr/bin/env bash
# Routing with matches and filters (issue 20): kube-balancer and nginx, each with ROUTES routes
# of a regular expression on the path and a header match, and two filters (a request field
# set, an answer field added), in one run of bench/run.sh.
#
#   bench/routes.sh                        # 3 rounds of 10 s, CPU per request and throughput
#   ROUNDS=1 DURATION=5 bench/routes.sh    # a quick look
#   ROUTES=50 TESTS="small latency" bench/routes.sh
#   PGO=0 bench/routes.sh                  # and run.sh's other knobs (KB_BIN, CPUs, ports)
#
# kube-balancer: one BalancerCluster whose routes are each
#   match: {path: {type: RegularExpression, value: '/svcNN/[a-z]+/[0-9]+'},
#           headers: [{name: X-Tenant, value: tNN}]}
#   filters: RequestHeaderModifier (set X-Route: rNN), ResponseHeaderModifier (add X-Served-By: rNN)
# nginx: the same as `location ~ ^/svcNN/[a-z]+/[0-9]+$` blocks, each with
#   if ($http_x_tenant != "tNN") { return 404; }, proxy_set_header X-Route rNN (with the
#   forwarding fields run.sh's nginx sets) and add_header X-Served-By rNN.
# wrk sends GET /svcNN/items/N with X-Tenant: tNN, NN going round all the routes, so that on
# average half of the expressions are tried per request by both. The members answer
# "hello world" on every path. Results: bench/results/routes/latest.md (a dated copy in
# bench/results/routes/archive/); docs/benchmarks.md says how to read them.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROUTES=${ROUTES:-50}

CONF_DIR=$(mktemp -d -t kb-routes.XXXXXX)
trap 'rm -rf "$CONF_DIR"' EXIT
chmod 755 "$CONF_DIR"

# The peers run.sh also renders, unused here.
cp "$HERE/conf/haproxy.cfg" "$HERE/conf/apache.conf" "$CONF_DIR/"

# The members: "hello world" on every path.
sed -e 's|location = / { return 200 "hello world\\n"; }|location / { return 200 "hello world\\n"; }|' \
    "$HERE/conf/backends.nginx.conf" >"$CONF_DIR/backends.nginx.conf"
grep -q 'location / { return 200' "$CONF_DIR/backends.nginx.conf" ||
    { echo "routes.sh: bench/conf/backends.nginx.conf changed shape" >&2; exit 1; }

{
    cat <<'EOF'
# bench/routes.sh: ROUTES routes of a path expression and a header match, two filters each.
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata:
  name: bench
spec:
  members:
    - url: http://127.0.0.1:@BACKEND_A_PORT@
    - url: http://127.0.0.1:@BACKEND_B_PORT@
  lbMethod: byrequests
  routes:
EOF
    for n in $(seq 1 "$ROUTES"); do
        i=$(printf %02d "$n")
        cat <<EOF
    - match:
        path: {type: RegularExpression, value: '/svc$i/[a-z]+/[0-9]+'}
        headers: [{name: X-Tenant, value: t$i}]
      filters:
        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Route, value: r$i}]}}
        - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Served-By, value: r$i}]}}
EOF
    done
} >"$CONF_DIR/kube-balancer.yaml"

{
    # run.sh's nginx, its one location replaced by the routes.
    awk '/^        location \/ \{/ { exit } { print }' "$HERE/conf/nginx.conf"
    for n in $(seq 1 "$ROUTES"); do
        i=$(printf %02d "$n")
        cat <<EOF
        location ~ ^/svc$i/[a-z]+/[0-9]+\$ {
            if (\$http_x_tenant != "t$i") { return 404; }
            proxy_pass http://members;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Route r$i;
            add_header X-Served-By r$i;
        }
EOF
    done
    echo "    }"
    echo "}"
} >"$CONF_DIR/nginx.conf"

# wrk: the requests, prepared once, sent in turn.
cat >"$CONF_DIR/routes.lua" <<EOF
local requests = {}
local n = 0
init = function(args)
   for i = 1, $ROUTES do
      local id = string.format("%02d", i)
      requests[i] = wrk.format("GET", "/svc" .. id .. "/items/" .. i, { ["X-Tenant"] = "t" .. id })
   end
end
request = function()
   n = n % $ROUTES + 1
   return requests[n]
end
EOF

CONF=$CONF_DIR \
    PROBE_PATH=/svc01/items/1 PROBE_HEADER="X-Tenant: t01" \
    WRK_ARGS="-s $CONF_DIR/routes.lua" \
    BALANCERS=${BALANCERS:-"kube-balancer nginx"} \
    TESTS=${TESTS:-small} \
    RESULTS=${RESULTS:-$HERE/results/routes} \
    "$HERE/run.sh"
