#!/usr/bin/env bash
# Faults under load, and slow clients, at the issue's sizes (docs/reliability.md, section "Faults"):
# the tests of tests/dataplane/faults.rs and tests/kube/faults.rs, which CI runs small (the control
# plane's outage only here), run with KB_FAULTS=long: a member killed with SIGKILL and started
# again 20 times, 100 configuration rewrites, 100 member-set updates with 50 WebSockets open,
# SIGTERM with 50 WebSockets open and 20 requests in flight, 1,000 slow clients (500 dripping
# their heads, 500 their bodies), a rolling update of 10 pods at 2,000 requests/s, and the control
# plane down for 5 minutes. Each asserts what CI asserts (every request sent gets a 2xx answer,
# every WebSocket is kept and closed as expected) and prints its row; when all pass, the rows
# replace the section between its markers in docs/reliability.md. Nothing else of the file is
# touched (other sections belong to other suites).
#
#   scripts/faults.sh                   # the issue's sizes: about 25 minutes on 2 cores
#   FILTER=a_rolling scripts/faults.sh  # only the tests whose name starts so (no table written)
#   KB_FAULTS_OUTAGE=60 KB_FAULTS_PODS=5 scripts/faults.sh   # smaller
#
# Sizes (each KB_FAULTS_<NAME> overrides the long size; see the tests):
#   KILLS (20) member kills; RATE (1000) req/s of the data-plane tests' load; RELOADS (100)
#   file rewrites; UPDATES (100) member-set updates; SOCKETS (50) and IN_FLIGHT (20) for SIGTERM;
#   SLOW_CLIENTS (1000), SLOW_HEADER_TIMEOUT_MS (3000), SLOW_BODY_BYTES (30); PODS (10),
#   POD_RATE (2000), POD_CONNECTIONS (50) for the rolling update; OUTAGE (300) seconds and
#   OUTAGE_RATE (300) req/s for the control plane's outage.
#
# The tests are built optimised (PROFILE=release, the default: the release profile without LTO,
# in target/faults, so that the load generator, the members and the proxy in the test process
# are not what limits the rate), or PROFILE=debug to reuse the test build. Needs root, like
# scripts/test.sh (the Kubernetes tests run in the test environment's network namespace).
# Every load is bounded in requests and in time; so is the whole run (TIMEOUT, default 1h).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
FILTER=${FILTER:-}
TIMEOUT=${TIMEOUT:-3600}
DOC=docs/reliability.md
BEGIN='<!-- faults:begin (scripts/faults.sh writes this section) -->'
END='<!-- faults:end -->'
say() { printf '%s faults: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case "$PROFILE" in
release)
    # Optimised, but without the release profile's LTO and single codegen unit, which only make
    # the build longer; in a target directory of its own, beside the image's release build.
    export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
    export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/faults}
    BUILD=(--release)
    ;;
debug) BUILD=() ;;
*) echo "PROFILE must be release or debug, not $PROFILE" >&2; exit 2 ;;
esac

say "building the tests ($PROFILE)"
bash scripts/testenv.sh build
cargo test --locked --no-run "${BUILD[@]}" --test dataplane --test kube
LOG=$(mktemp -t kb-faults.XXXXXX)
trap 'rm -f "$LOG"' EXIT
say "running the fault tests at their long sizes (log: $LOG)"
started=$(date +%s)
set +e
# One test at a time: each has the machine to itself.
KB_FAULTS=long timeout "$TIMEOUT" bash scripts/testenv.sh run \
    cargo test --locked --offline "${BUILD[@]}" --test dataplane --test kube -- \
    "faults::$FILTER" --include-ignored --test-threads=1 --nocapture 2>&1 | tee "$LOG" | grep --line-buffered -E 'faults-row|^test |panicked|FAILED|test result'
status=${PIPESTATUS[0]}
set -e
minutes=$(( ($(date +%s) - started + 59) / 60 ))
# With --nocapture a row may follow the test's name on its line.
ROWS=$(grep -o 'faults-row |.*' "$LOG" | sed 's/^faults-row //' || true)
if [[ $status -ne 0 ]]; then
    say "a fault test failed (exit $status): the table is left as it was; see the log above"
    exit "$status"
fi
if [[ -n "$FILTER" ]]; then
    printf '%s\n' "$ROWS"
    say "FILTER given: the table is left as it was"
    exit 0
fi
count=$(printf '%s\n' "$ROWS" | grep -c '|' || true)
if [[ $count -ne 7 ]]; then
    say "expected 7 rows, got $count: the table is left as it was"
    exit 1
fi

SECTION=$(mktemp -t kb-faults-section.XXXXXX)
trap 'rm -f "$LOG" "$SECTION"' EXIT
# (No KB_FAULTS_ variable set, at the issue's sizes, is no error.)
command="$( (env | grep -E '^KB_FAULTS_[A-Z_]+=' || true) | sort | tr '\n' ' ')PROFILE=$PROFILE scripts/faults.sh"
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tests || echo ' + uncommitted changes')
{
    echo "$BEGIN"
    echo
    echo "## Faults"
    echo
    echo "Faults under load, and slow clients. Made by"
    echo
    echo '```sh'
    echo "$command"
    echo '```'
    echo
    echo "on $(date -u +%Y-%m-%d) (commit $commit, $(nproc) CPUs shared with other work, tests built"
    echo "\`$PROFILE\`, $minutes minutes; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))."
    echo "Each row is one test of \`tests/dataplane/faults.rs\` or \`tests/kube/faults.rs\` at the sizes"
    echo "it shows; CI runs the same tests smaller (\`scripts/test.sh\`), all but the control plane's"
    echo "outage. Answer times count from the moment each request was due, so a late send counts too."
    echo "A row is only written when its test passed: every request sent got a 2xx answer (\"failed\""
    echo "counts requests without one: refused, reset, cut short, or another status), and every"
    echo "WebSocket was kept and closed as the row says. The load is keep-alive HTTP/1.1 GETs at a fixed"
    echo "rate (open loop), never retried by the client."
    echo
    echo "| fault | size | load | requests | 2xx | failed | WebSockets | also checked |"
    echo "|---|---|---|---:|---:|---:|---|---|"
    printf '%s\n' "$ROWS"
    echo
    cat <<'EOF'
How each fault is made, and what the proxy does:

- **A member killed.** The member is a process of its own (`kube-balancer demo` with one backend),
  killed with SIGKILL while it serves keep-alive load, then started again at the same address.
  Requests it was answering are sent again to another member (a GET whose member breaks off
  before a whole answer head, nothing of it having reached the client); the member is out at once
  (`Error`), and active health checks bring it back as soon as it answers them.
- **A rolling update**, as a Deployment makes it, through the real kube-apiserver, etcd and the
  EndpointSlice controller: a new pod comes up and is ready, then an old pod is deleted
  gracefully. Its endpoint turns terminating but still serving, which the data plane drains: no
  new request (but sticky ones), those under way finish. Its container stops only once it has
  nothing left to answer, then the pod goes. An application should do the same (keep serving for
  a moment after SIGTERM, a `preStop` sleep if it cannot), since the endpoint change reaches every
  proxy a little after the pod is deleted.
- **A configuration file rewritten** while `standalone -f` serves it, half of the time written to
  a new file renamed over it, half of the time truncated and written in place, each rewrite
  changing the members (one comes and goes) or a load factor. Each is served before the next.
- **Member sets replaced with WebSockets open.** The member set changes on every update; a tunnel
  is never closed by a change. A tunnel whose member leaves the set stays open and carries
  messages both ways until one of its ends closes it (as nginx, whose old workers keep their
  connections, and Envoy, which drains a removed host's connections rather than closing them);
  new WebSockets no longer go to that member.
- **SIGTERM** (the binary with `--shutdown-grace`): listeners close, requests in flight finish,
  and every WebSocket gets a Close frame, 1001 "going away", at the next frame boundary of what
  its member sends; the client's answering Close goes on to the member, whose own Close ends the
  tunnel. Other upgraded connections run until they close, or until the grace period ends.
- **The control plane down**: kube-apiserver and kube-controller-manager are killed while
  requests flow, and started again after the outage. The data plane serves its last member list
  throughout (nothing is published meanwhile). When the API server is back, the controller's
  watches, backing off (from 0.8 s, doubling, up to 30 s), list again: a pod taken out of the
  Service as soon as the API server is back reaches the data plane, and the leader writes status
  again. Much of the time to that is the control plane's own: the controller manager, started
  again, waits for its old leader lease to run out before it updates EndpointSlices.
- **Slow clients** (slowloris), all connecting at once while the load runs: half send a request
  head a byte every 100 ms and never end it; the header-read timeout (`--header-read-timeout`,
  set short here) closes each, and none reaches a member. The other half send a whole head, then
  their body a byte every 100 ms: each is answered once its body is whole, as a slow but honest
  upload should be. How many such clients one proxy holds at most is the subject of "Overload".
  All of them connect at once, to the one worker of the tests' data plane: the real clients'
  answer times rise while the drippers connect and drip (the row shows by how much, in the build
  it names); none of their requests fails.
EOF
    echo
    echo "$END"
} >"$SECTION"

if [[ ! -f "$DOC" ]]; then
    {
        echo "# Reliability"
        echo
        echo "What kube-balancer does when the world around it fails or misbehaves, and the runs that show it."
        echo
        cat "$SECTION"
    } >"$DOC"
elif grep -qF "$BEGIN" "$DOC"; then
    # Replace the section between the markers, and nothing else.
    awk -v begin="$BEGIN" -v end="$END" -v section="$SECTION" '
        $0 == begin { while ((getline line < section) > 0) print line; skipping = 1; next }
        $0 == end && skipping { skipping = 0; next }
        !skipping { print }
    ' "$DOC" >"$DOC.new"
    mv "$DOC.new" "$DOC"
else
    { echo; cat "$SECTION"; } >>"$DOC"
fi
say "wrote the section \"Faults\" of $DOC ($count rows)"
