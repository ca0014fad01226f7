#!/usr/bin/env bash
# Installs what the tests need beyond Rust and Go, when it is missing: headless Chromium for the
# balancer-manager page test (tests/dataplane/admin.rs). Debian packages, so it needs root and apt-get.
set -euo pipefail

say() { printf 'test-deps: %s\n' "$*" >&2; }

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
