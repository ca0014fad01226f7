#!/usr/bin/env bash
# What the telemetry costs the hot path: user-space instructions per keep-alive request
# (bench/profile.sh callgrind: one worker, one connection, requests one after another, so the
# count repeats from run to run), side by side in one run:
#
#   counters off       --request-metrics false: only the balancer-manager's own figures
#   counters (default) answers by status, answer and connect times, failovers for /metrics
#   + access log       --access-log --access-log-format json, written to /dev/null
#   + traces           --otlp-endpoint to a real OpenTelemetry Collector (scripts/testenv.sh
#                      builds it), every request sampled (--trace-sampling 1)
#
# Prints a Markdown table (docs/benchmarks.md, "Telemetry"). KB_BIN=path measures that binary
# (default: scripts/build-release.sh's); REQUESTS=N requests per row (default 20000).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
KB_BIN=${KB_BIN:-$("$REPO/scripts/build-release.sh")}
export KB_BIN REQUESTS=${REQUESTS:-20000}
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

RUN=$(mktemp -d -t kb-telemetry.XXXXXX)
COLLECTOR=
cleanup() {
    if [ -n "$COLLECTOR" ]; then
        kill "$COLLECTOR" 2>/dev/null || true
        wait "$COLLECTOR" 2>/dev/null || true
    fi
    rm -rf "$RUN"
}
trap cleanup EXIT

# The collector of the test environment: OTLP over HTTP in, a file out.
eval "$("$REPO/scripts/testenv.sh" env)"
OTLP_PORT=${OTLP_PORT:-19417}
cat >"$RUN/otelcol.yaml" <<EOF
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$OTLP_PORT
exporters:
  file:
    path: $RUN/traces.json
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
EOF
"$KB_TESTENV_OTELCOL" --config="$RUN/otelcol.yaml" >"$RUN/otelcol.log" 2>&1 &
COLLECTOR=$!
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$OTLP_PORT") 2>/dev/null && break
    sleep 0.1
done

measure() {
    local name=$1 extra=$2 out
    say "$name"
    out=$(KB_EXTRA="$extra" "$HERE/profile.sh" callgrind)
    awk -F= -v name="$name" '$1 == "instructions_per_request" { print name "\t" $2 }' <<<"$out"
}

ROWS=$(
    measure "counters off" "--request-metrics false"
    measure "counters (default)" ""
    measure "counters + access log (json)" "--access-log --access-log-format json --access-log-file /dev/null"
    measure "counters + access log + traces (all sampled)" "--access-log --access-log-format json --access-log-file /dev/null --otlp-endpoint http://127.0.0.1:$OTLP_PORT --trace-sampling 1"
)
spans=$(grep -o '"spanId"' "$RUN/traces.json" 2>/dev/null | wc -l || true)

base=$(awk -F'\t' 'NR == 1 { print $2 }' <<<"$ROWS")
echo "| telemetry | instructions per request | vs counters off |"
echo "|---|---:|---:|"
awk -F'\t' -v base="$base" '{ printf "| %s | %d | %+.1f%% |\n", $1, $2, ($2 - base) * 100 / base }' <<<"$ROWS"
echo
echo "$REQUESTS requests per row; the collector received $spans spans."
