#!/usr/bin/env bash
# Installs what the tests need beyond Rust and Go, when it is missing: the Go modules of the gRPC
# peer (tests/support/grpc-peer, built by the gRPC tests when they run, which may be where there is no
# network), and headless Chromium for the balancer-manager page test (tests/dataplane/admin.rs),
# a Debian package, so it needs root and apt-get.
set -euo pipefail

say() { printf 'test-deps: %s\n' "$*" >&2; }

# The module cache keeps them: a warm run asks nothing of the network.
(cd "$(dirname "$0")/../tests/support/grpc-peer" && go mod download) || {
    say "could not fetch the Go modules of tests/support/grpc-peer"
    exit 1
}

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [[ -n "${CHROMIUM:-}" ]]; then
    exit 0
fi
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    say "chromium is missing and cannot be installed here (needs root and apt-get): install the chromium package"
    exit 1
fi
say "installing chromium (for the balancer-manager page test)"
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 || {
    say "could not install chromium with apt-get"
    exit 1
}
