#!/usr/bin/env bash
# The global connection limit under overload (issue 21): opens OPENED client connections (default
# 15,000) at the release binary run with `--max-connections LIMIT` (default 10,000), and prints
# what the proxy did with them and the memory it held:
#
#   bench/overload.sh                      # builds target/release/kube-balancer if needed
#   KB_BIN=path/to/kube-balancer bench/overload.sh
#   OPENED=3000 LIMIT=2000 bench/overload.sh
#
# Phases, each measured from /proc (RSS and PSS from smaps_rollup, the peak from VmHWM):
#   1. idle: the binary started, one member, nothing open;
#   2. open: OPENED connections opened, none sending anything. LIMIT are held, the rest get
#      503 + Retry-After and are closed (each checked);
#   3. used: each held connection sends one keep-alive request and reads its answer, so every
#      one has been through a request and is idle again;
#   4. closed: every connection closed, the proxy's count back to 0.
# The member is a small HTTP/1.1 server in this script, limited by memberLimits to 64 connections
# (so 10,000 requests at once queue for it instead of opening 10,000 member connections).
# Everything runs on 127.0.0.1. Needs python3, and an open-files limit (ulimit -n, raised to the
# hard limit here) above OPENED + a few hundred for this script and LIMIT * 2 for the binary.
# Takes about a minute; docs/reliability.md ("Overload") has the figures of a run.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OPENED=${OPENED:-15000}
LIMIT=${LIMIT:-10000}
BIN=${KB_BIN:-$REPO/target/release/kube-balancer}
say() { printf 'overload: %s\n' "$*" >&2; }

if [[ -z "${KB_BIN:-}" ]]; then
    say "building the release binary"
    (cd "$REPO" && cargo build --release --quiet --bin kube-balancer)
fi
ulimit -n "$(ulimit -Hn)"
say "open-files limit $(ulimit -n); $OPENED connections against --max-connections $LIMIT"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

exec python3 - "$BIN" "$OPENED" "$LIMIT" "$WORK" <<'PY'
import http.server, json, os, re, selectors, socket, subprocess, sys, threading, time

binary, opened, limit, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

class Member(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

member = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Member)
member.daemon_threads = True
threading.Thread(target=member.serve_forever, daemon=True).start()

config = os.path.join(work, "web.yaml")
with open(config, "w") as f:
    f.write(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web}\n"
        "spec:\n  members:\n    - url: http://127.0.0.1:%d\n"
        "  memberLimits: {maxConnections: 64, maxPendingRequests: 100000, queueTimeout: 60s}\n"
        % member.server_address[1])

log = open(os.path.join(work, "kb.log"), "w+")
proxy = subprocess.Popen(
    [binary, "standalone", "-f", config, "--listen=127.0.0.1:0", "--admin=127.0.0.1:0",
     "--workers=2", "--max-connections=%d" % limit, "--header-read-timeout=300s",
     "--log-format=json"],
    stdout=subprocess.DEVNULL, stderr=log)

def address(needle):
    deadline = time.time() + 30
    while time.time() < deadline:
        log.seek(0)
        for line in log:
            if needle in line:
                m = re.search(r'"address":"([0-9.]+):(\d+)"', line)
                if m:
                    return (m.group(1), int(m.group(2)))
        time.sleep(0.05)
    sys.exit("overload: no %r in the log:\n%s" % (needle, open(log.name).read()))

try:
    traffic = address("data plane listening")
    admin = address("admin server listening")

    def metric(name):
        s = socket.create_connection(admin)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        m = re.search(r"^%s(?:\{\})? (\S+)$" % re.escape(name), data.decode(), re.M)
        return float(m.group(1)) if m else 0.0

    def memory(phase):
        fields = {}
        with open("/proc/%d/smaps_rollup" % proxy.pid) as f:
            for line in f:
                parts = line.split()
                if parts[0] in ("Rss:", "Pss:"):
                    fields[parts[0][:-1]] = int(parts[1]) * 1024
        with open("/proc/%d/status" % proxy.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    fields["Peak"] = int(line.split()[1]) * 1024
        open_now = int(metric("kube_balancer_connections_open"))
        refused = int(metric("kube_balancer_connections_refused_total"))
        mib = lambda b: b / (1 << 20)
        print("%-7s RSS %7.1f MiB  PSS %7.1f MiB  peak %7.1f MiB  open %6d  refused %6d"
              % (phase, mib(fields["Rss"]), mib(fields["Pss"]), mib(fields["Peak"]), open_now, refused),
              flush=True)
        return fields

    def wait_for(what, check, seconds=120):
        deadline = time.time() + seconds
        while not check():
            if time.time() > deadline:
                sys.exit("overload: timed out waiting for " + what)
            time.sleep(0.1)

    idle = memory("idle")

    conns = []
    for _ in range(opened):
        conns.append(socket.create_connection(traffic))
    wait_for("every connection to be taken or refused",
             lambda: metric("kube_balancer_connections_open")
             + metric("kube_balancer_connections_refused_total") >= opened)
    # Each refused connection gets the whole 503 and its end; each held one gets nothing.
    sel = selectors.DefaultSelector()
    seen = {}
    for c in conns:
        c.setblocking(False)
        seen[c] = b""
        sel.register(c, selectors.EVENT_READ)
    closed = set()
    deadline = time.time() + 60
    while len(closed) < opened - limit and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            c = key.fileobj
            try:
                chunk = c.recv(4096)
            except ConnectionResetError:
                chunk = b""
                seen[c] += b"<reset>"
            if chunk:
                seen[c] += chunk
            else:
                sel.unregister(c)
                closed.add(c)
    refused = [c for c in conns if c in closed]
    held = [c for c in conns if c not in closed]
    bad = [seen[c] for c in refused
           if not (seen[c].startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 1\r\n" in seen[c])]
    stray = [seen[c] for c in held if seen[c]]
    print("        %d held, %d answered 503 with Retry-After and closed, %d otherwise, %d held ones got bytes"
          % (len(held), len(refused) - len(bad), len(bad), len(stray)), flush=True)
    if len(held) != limit or bad or stray:
        sys.exit("overload: wrong outcome: %r %r" % (bad[:3], stray[:3]))
    for c in refused:
        c.close()
    wait_for("the refused to be gone", lambda: metric("kube_balancer_connections_open") == limit)
    opened_mem = memory("open")

    # One request on each held connection, 1,000 at a time.
    answered = 0
    for start in range(0, len(held), 1000):
        batch = held[start:start + 1000]
        got = {}
        for c in batch:
            c.setblocking(True)
            c.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            c.setblocking(False)
            got[c] = b""
        pending = set(batch)
        deadline = time.time() + 60
        while pending and time.time() < deadline:
            for key, _ in sel.select(timeout=1):
                c = key.fileobj
                if c not in pending:
                    continue
                got[c] += c.recv(4096)
                if got[c].endswith(b"\r\n\r\nok"):
                    pending.discard(c)
                    answered += 1 if got[c].startswith(b"HTTP/1.1 200 ") else 0
        if pending:
            sys.exit("overload: %d requests unanswered" % len(pending))
    print("        %d of %d held connections served a request and stay open" % (answered, len(held)), flush=True)
    if answered != len(held):
        sys.exit("overload: not every request was answered 200")
    used = memory("used")

    for c in held:
        c.close()
    wait_for("every connection to close", lambda: metric("kube_balancer_connections_open") == 0)
    memory("closed")
    per = lambda f: (f["Pss"] - idle["Pss"]) / limit
    print("        PSS per held connection: %.0f bytes idle, %.0f bytes after a request"
          % (per(opened_mem), per(used)), flush=True)
finally:
    proxy.terminate()
    proxy.wait(timeout=30)
PY
