#!/usr/bin/env bash
# Runs the Gateway API conformance suite against kube-balancer (tests/gateway/conformance.rs: the core
# tests of the GATEWAY-HTTP profile at the pinned release and the extended tests of the features
# claimed in src/gateway/mod.rs, SUPPORTED_FEATURES; the real `kube-balancer run
# --gateway-address ...` as the implementation, inside the test network namespace) and, when it
# passes, copies the suite's report to conformance/<date>-<release>-report.yaml.
#
# The report of a failed run stays in target/conformance-report.yaml.
# KB_CONFORMANCE_RUN_TEST=NAME runs one test of the suite, to debug it; such a run writes no
# report into conformance/.
set -euo pipefail
cd "$(dirname "$0")/.."

release=$(bash scripts/testenv.sh versions | awk '$1 == "gateway-api" { print $2 }')
report="$PWD/target/conformance-report.yaml"
rm -f "$report"

# The namespace has no network: build outside it.
cargo test --locked --no-run --test gateway
start=$(date +%s)
KB_CONFORMANCE_REPORT="$report" bash scripts/testenv.sh run \
    cargo test --locked --offline --test gateway gateway::conformance:: -- --nocapture
echo "conformance: the suite passed in $(( $(date +%s) - start )) s" >&2

if [[ -n "${KB_CONFORMANCE_RUN_TEST:-}" ]]; then
    echo "conformance: one test only ($KB_CONFORMANCE_RUN_TEST): no report written to conformance/" >&2
    exit 0
fi
mkdir -p conformance
out="conformance/$(date -u +%Y-%m-%d)-${release}-report.yaml"
cp "$report" "$out"
echo "conformance: report written to $out" >&2
