#!/usr/bin/env bash
# Builds kube-balancer's release binary with profile-guided optimization (PGO), as the image is
# built (Dockerfile) and as bench/run.sh measures it:
#
#   scripts/build-release.sh           # prints the binary's path: target/pgo/kube-balancer
#   PGO=0 scripts/build-release.sh     # a plain `cargo build --release` instead
#
# 1. An instrumented build counts how often each branch of the code runs.
# 2. It serves a training mix for TRAIN_SECONDS (tools/loadgen/src/train.rs): two members, a
#    balancer with three clusters (round robin, sticky sessions, hashing), HTTP/1.1 clients
#    with small, large and chunked answers, request bodies, HEAD, new connections, and HTTP/2
#    clients from h2load.
# 3. The release build uses those counts: LLVM lays the hot paths out together and keeps
#    the rarely taken ones apart. The proxy's hot path is larger than the CPU's instruction
#    cache; laid out this way, it takes about a quarter less user time per request
#    (docs/benchmarks.md, "Profile-guided build").
#
# Needs rustup's llvm-tools component (added when missing) and h2load (Debian's
# nghttp2-client, installed when missing and run as root). Everything runs on loopback ports
# from TRAIN_PORT_BASE (default 19500). Two full builds: about 9 minutes on 2 cores.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${PGO_DIR:-$REPO/target/pgo}
TRAIN_SECONDS=${TRAIN_SECONDS:-20}
BASE=${TRAIN_PORT_BASE:-19500}
say() { printf 'build-release: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

cd "$REPO"
if [ "${PGO:-1}" = 0 ]; then
    cargo build --release --locked --quiet --bin kube-balancer >&2
    echo "$REPO/target/release/kube-balancer"
    exit 0
fi

host=$(rustc -vV | awk '/^host:/ { print $2 }')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    command -v rustup >/dev/null || die "llvm-profdata (rustup's llvm-tools component) is missing, and there is no rustup to add it; PGO=0 builds without"
    say "adding rustup's llvm-tools component (llvm-profdata)"
    rustup component add llvm-tools >&2
fi
if ! command -v h2load >/dev/null; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
        die "h2load is missing (Debian: apt-get install nghttp2-client); PGO=0 builds without"
    say "installing h2load (nghttp2-client)"
    apt-get install -y -qq nghttp2-client >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq nghttp2-client >/dev/null; }
fi

mkdir -p "$OUT"
rm -rf "$OUT/profiles"
say "1/3 instrumented build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$OUT/profiles" \
    cargo build --release --locked --quiet --bin kube-balancer --target-dir "$OUT/instrumented" >&2
(cd tools/loadgen && cargo build --release --locked --quiet --target-dir "$OUT/tools" >&2)
loadgen=$OUT/tools/release/kb-loadgen

say "2/3 training for ${TRAIN_SECONDS}s"
A=127.0.0.1:$((BASE + 1)) B=127.0.0.1:$((BASE + 2))
LISTEN=127.0.0.1:$((BASE + 10)) ADMIN=127.0.0.1:$((BASE + 11))
RUN=$(mktemp -d -t kb-train.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT
cat >"$RUN/train.yaml" <<EOF
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {name: web}
spec:
  members: [{url: "http://$A"}, {url: "http://$B"}]
  healthCheck: {path: /, interval: 1s}
---
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {name: sticky}
spec:
  routes: [{host: sticky.train}]
  members: [{url: "http://$A", route: a}, {url: "http://$B", route: b}]
  stickySession: {cookie: KBROUTE, insert: true}
---
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {name: hash}
spec:
  routes: [{host: hash.train}]
  members: [{url: "http://$A"}, {url: "http://$B"}]
  lbMethod: hash
  hash: {key: QueryParam, name: user}
EOF
for m in "$A" "$B"; do
    "$loadgen" serve "$m" &
    PIDS+=($!)
done
"$OUT/instrumented/release/kube-balancer" standalone -f "$RUN/train.yaml" --workers 1 \
    --listen "$LISTEN" --admin "$ADMIN" --shutdown-grace 1s >"$RUN/kb.out" 2>&1 &
KB=$!
PIDS+=("$KB")
up=
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/${LISTEN%:*}/${LISTEN#*:}") 2>/dev/null && { up=1; break; }
    sleep 0.1
done
[ -n "$up" ] || die "the instrumented balancer did not start: $(cat "$RUN/kb.out")"
"$loadgen" train "$LISTEN" "$TRAIN_SECONDS" 4 >"$RUN/train.out" ||
    die "the training mix failed: $(cat "$RUN/train.out")"
h2load -n 100000 -c 4 -m 10 "http://$LISTEN/" >"$RUN/h2load.out" 2>&1 ||
    die "h2load failed: $(cat "$RUN/h2load.out")"
grep -q "100000 succeeded" "$RUN/h2load.out" || die "h2load: $(grep -E 'requests:' "$RUN/h2load.out")"
say "trained on $(awk -F'[= ]' '/^answered=/ { n += $2 } END { print n }' "$RUN/train.out") HTTP/1.1 requests of $(grep -c '^answered=' "$RUN/train.out") kinds and 100000 HTTP/2 requests"
# The counts are written as the balancer exits.
kill -TERM "$KB"
wait "$KB" || true
ls "$OUT"/profiles/*.profraw >/dev/null 2>&1 || die "the instrumented balancer wrote no profile"

say "3/3 optimized build"
"$profdata" merge -o "$OUT/merged.profdata" "$OUT/profiles"
# Named by its content: a new profile changes the flags, so that cargo rebuilds every crate
# with it rather than keeping dependencies built with an older one.
sum=$(sha256sum "$OUT/merged.profdata" | cut -c1-16)
mkdir -p "$OUT/profdata"
mv "$OUT/merged.profdata" "$OUT/profdata/$sum.profdata"
# Relative relocations are packed (`pack-relative-relocs`, glibc 2.36 and later): the loader
# reads about 1 MB less of the binary at start, which is that much less of the process's memory
# (docs/benchmarks.md, "Memory: huge pages, pooled buffers, the allocator").
LINK="-Clink-arg=-Wl,-z,pack-relative-relocs"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$OUT/profdata/$sum.profdata $LINK" \
    cargo build --release --locked --quiet --bin kube-balancer --target-dir "$OUT/optimized" >&2
cp "$OUT/optimized/release/kube-balancer" "$OUT/kube-balancer"
# The packed relocations are a memory figure: a linker that ignored the flag would lose it.
# (readelf's whole output first: `grep -q` stopping early would fail the pipe under pipefail.)
if command -v readelf >/dev/null; then
    sections=$(readelf -SW "$OUT/kube-balancer")
    grep -q '\.relr\.dyn' <<<"$sections" ||
        die "the binary has no packed relative relocations (.relr.dyn): the linker ignored -z pack-relative-relocs"
fi
find "$OUT/profdata" -name '*.profdata' ! -name "$sum.profdata" -delete
echo "$OUT/kube-balancer"
