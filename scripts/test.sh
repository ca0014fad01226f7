#!/usr/bin/env bash
# The test command (README: "Test it"). CI runs exactly this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
