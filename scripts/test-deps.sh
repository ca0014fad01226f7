#!/usr/bin/env bash
# Installs what the tests need beyond Rust and Go, when it is missing: the Go modules of the gRPC
# peer (tests/support/grpc-peer, built by the gRPC tests when they run, which may be where there is no
# network), and two Debian packages, so it needs root and apt-get: headless Chromium for the
# balancer-manager page test (tests/dataplane/admin.rs) and nginx, OpenSSL's side of the upstream
# TLS tests (tests/dataplane/upstream_tls.rs: an HTTPS member asking for a client certificate).
set -euo pipefail

say() { printf 'test-deps: %s\n' "$*" >&2; }

# The module cache keeps them: a warm run asks nothing of the network.
(cd "$(dirname "$0")/../tests/support/grpc-peer" && go mod download) || {
    say "could not fetch the Go modules of tests/support/grpc-peer"
    exit 1
}

missing=()
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [[ -z "${CHROMIUM:-}" ]]; then
    missing+=(chromium)
fi
if [[ ! -x /usr/sbin/nginx && ! -x /usr/bin/nginx ]]; then
    missing+=(nginx)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    say "missing and cannot be installed here (needs root and apt-get): install ${missing[*]}"
    exit 1
fi
say "installing ${missing[*]}"
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 || {
    say "could not install ${missing[*]} with apt-get"
    exit 1
}
