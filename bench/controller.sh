#!/usr/bin/env bash
# The controller at scale: EndpointSlice change -> data plane latency (p50/p90/p99 over many
# changes), the first member list, memory and CPU, with 10, 1,000 and 5,000 endpoints, against the
# real test control plane (scripts/testenv.sh builds it; root is needed for its network namespace).
#
#   bench/controller.sh                      # sizes 10,1000,5000; 200 changes each
#   SIZES=1000 CHANGES=500 VIA=slices bench/controller.sh
#
# VIA: slices (the benchmark writes the EndpointSlices: the controller's own latency), pods (pods'
# readiness flips and the real EndpointSlice controller writes them: end to end), or both.
#
# Writes bench/results/controller-latest.md, and a dated copy to bench/results/archive/. See
# docs/benchmarks.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SIZES=${SIZES:-10,1000,5000}
CHANGES=${CHANGES:-200}
VIA=${VIA:-both}
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cd "$REPO"
say "building the release binary and the bench"
cargo build --release --quiet --bin kube-balancer
cargo bench --no-run --quiet --bench controller
STAMP=$(date -u +%Y-%m-%d-%H%M)
mkdir -p "$HERE/results/archive"
OUT=$HERE/results/archive/controller-$STAMP.md
TABLE=$(mktemp -t kb-controller-bench.XXXXXX)
trap 'rm -f "$TABLE"' EXIT
bash scripts/testenv.sh run cargo bench --quiet --bench controller -- \
    --binary "$REPO/target/release/kube-balancer" --sizes "$SIZES" --changes "$CHANGES" --via "$VIA" >"$TABLE"
{
    echo "# Controller at scale, $STAMP UTC"
    echo
    echo "\`bench/controller.sh\` (SIZES=$SIZES, CHANGES=$CHANGES, VIA=$VIA), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' + uncommitted changes'),"
    echo "$(nproc) CPUs, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Latency: from just before the change is written to the API server (the EndpointSlice itself, or"
    echo "the pod's Ready condition, which the EndpointSlice controller turns into a slice change) until the"
    echo "binary has swapped the data plane's member list (its log line, read through a pipe)."
    echo "Nearest-rank percentiles."
    echo "Memory: the binary's PSS at the end of the changes and its peak RSS; CPU: its user + system"
    echo "time over the changes."
    echo
    cat "$TABLE"
} >"$OUT"
cp "$OUT" "$HERE/results/controller-latest.md"
cat "$OUT"
say "wrote $OUT"
