#!/usr/bin/env bash
# The test command (README: "Test it"). CI runs exactly this through .ci/run.
#
# The Kubernetes tests run against a real control plane that scripts/testenv.sh builds (the first
# time takes minutes; later runs reuse it), inside a network namespace made for this run, where pod
# IPs are local addresses (docs/testenv.md). Creating it needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

bash scripts/test-deps.sh
bash scripts/testenv.sh build
# Build outside the namespace, which has no network; then run every test inside it.
cargo test --locked --no-run
bash scripts/testenv.sh run cargo test --locked --offline
# The data-plane tier again with hyper's HTTP/1 server and client for every request
# (--http1 hyper): the fast path is an optimisation, and both must pass the same tests.
KB_TEST_HTTP1=hyper cargo test --locked --offline --test dataplane
