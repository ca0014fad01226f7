#!/usr/bin/env bash
# Builds the real Kubernetes control plane that the end-to-end tests run against (docs/testenv.md):
# kube-apiserver, kube-controller-manager and kubectl from k8s.io/kubernetes, etcd, and helm, all
# from pinned Go module versions, into a version-keyed cache outside the repository. From the Gateway
# API module at its pinned release it also builds the conformance suite's test binary and its
# echo-basic backend, and keeps the standard and experimental channels' CRDs and the suite's base
# manifests. For the
# observability tests it builds an OpenTelemetry Collector (a distribution of its own: the OTLP
# receiver and the file exporter) and Prometheus, each from its pinned Go modules.
#
#   scripts/testenv.sh build     build what is missing (default); a warm run takes a second
#   scripts/testenv.sh env       build what is missing, then print shell exports (KB_TESTENV_BIN,
#                                KB_TESTENV_ECHO_BASIC, KB_TESTENV_GATEWAY_CONFORMANCE, ...)
#   scripts/testenv.sh bin-dir   print the bin directory (without building)
#   scripts/testenv.sh versions  print the pinned versions
#   scripts/testenv.sh run CMD... build what is missing, then run CMD inside a network namespace
#                                made for it (and deleted after it), with the exports of `env` and
#                                KB_TESTENV_NETNS set: how the Kubernetes tests run (needs root)
#
# Progress goes to stderr, so `eval "$(scripts/testenv.sh env)"` sees only the exports.
set -euo pipefail

K8S_VERSION=v1.35.4   # matches k8s-openapi's v1_35 feature in Cargo.toml
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.20.2  # built against client-go v0.35, like the apiserver
GATEWAY_API_VERSION=v1.6.3  # sigs.k8s.io/gateway-api: the conformance suite, echo-basic, the CRDs
# go.opentelemetry.io/collector at one release, with the contrib repository's file exporter at the
# same one (its newer releases do not resolve with this Go).
OTELCOL_VERSION=v0.161.0
PROMETHEUS_VERSION=v0.316.0  # github.com/prometheus/prometheus: Prometheus v3.16.0
# Bump when a build recipe below changes, so that caches built by an older recipe are not reused.
# The control plane, the Gateway API artifacts and the observability tools are cached apart: a
# change to one does not rebuild the others.
RECIPE=1
GATEWAY_RECIPE=2  # 2: the experimental channel's CRDs too
OBSERVABILITY_RECIPE=2

BINARIES=(kube-apiserver kube-controller-manager kubectl etcd helm)
GATEWAY_BINARIES=(echo-basic gateway-conformance.test)
# Kept beside the Gateway API binaries, from its module: the standard and the experimental channel's
# CRDs (each in the order of the module's kustomization of that channel) and the conformance
# suite's base manifests.
GATEWAY_FILES=(standard-crds.yaml experimental-crds.yaml base-manifests.yaml)
OBSERVABILITY_BINARIES=(otelcol-kb prometheus)

say() { echo "testenv: $*" >&2; }
die() { echo "testenv: error: $*" >&2; exit 1; }

# Where this set of versions lives in the cache.
locate() {
    command -v go >/dev/null || die "the Go toolchain (go) is not on PATH; it builds the control plane"
    local goos_arch
    goos_arch="$(go env GOOS)-$(go env GOARCH)" || die "\`go env\` failed"
    VERSION_KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_r${RECIPE}_${goos_arch}"
    GATEWAY_KEY="gateway-api-${GATEWAY_API_VERSION}_r${GATEWAY_RECIPE}_${goos_arch}"
    OBSERVABILITY_KEY="otelcol-${OTELCOL_VERSION}_prometheus-${PROMETHEUS_VERSION}_r${OBSERVABILITY_RECIPE}_${goos_arch}"
    CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/kube-balancer/testenv"
    KEY_DIR="$CACHE_ROOT/$VERSION_KEY"
    BIN_DIR="$KEY_DIR/bin"
    GATEWAY_DIR="$CACHE_ROOT/$GATEWAY_KEY"
    OBSERVABILITY_DIR="$CACHE_ROOT/$OBSERVABILITY_KEY"
}

complete() {
    control_plane_complete && gateway_complete && observability_complete
}

control_plane_complete() {
    local b
    [[ -f "$KEY_DIR/complete" ]] || return 1
    for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

gateway_complete() {
    local b f
    [[ -f "$GATEWAY_DIR/complete" ]] || return 1
    for b in "${GATEWAY_BINARIES[@]}"; do [[ -x "$GATEWAY_DIR/bin/$b" ]] || return 1; done
    for f in "${GATEWAY_FILES[@]}"; do [[ -s "$GATEWAY_DIR/$f" ]] || return 1; done
}

observability_complete() {
    local b
    [[ -f "$OBSERVABILITY_DIR/complete" ]] || return 1
    for b in "${OBSERVABILITY_BINARIES[@]}"; do [[ -x "$OBSERVABILITY_DIR/bin/$b" ]] || return 1; done
}

# Runs one build step with its output in the log; on failure names the step and shows the log's tail.
step() {
    local what="$1"
    shift
    say "$what"
    {
        printf '+'
        printf ' %q' "$@"
        echo
    } >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "testenv: error: $what failed: \`$*\`; the end of $LOG:" >&2
        tail -n 40 "$LOG" | sed 's/^/    /' >&2
        exit 1
    fi
}

# Prints the path of MODULE@VERSION's go.mod in the module cache, downloading the module; exits
# the script, saying why, when the module proxy does not have it.
go_mod_of() {
    local json path
    if ! json="$(go mod download -json "$1" 2>&1)"; then
        echo "testenv: error: cannot download $1:" >&2
        sed 's/^/    /' <<<"$json" >&2
        exit 1
    fi
    path="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
    [[ -f "$path" ]] || die "go mod download -json $1 named no go.mod"
    echo "$path"
}

# Prints the directory of MODULE@VERSION's files in the module cache, downloading the module.
go_dir_of() {
    local json path
    if ! json="$(go mod download -json "$1" 2>&1)"; then
        echo "testenv: error: cannot download $1:" >&2
        sed 's/^/    /' <<<"$json" >&2
        exit 1
    fi
    path="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
    [[ -d "$path" ]] || die "go mod download -json $1 named no directory"
    echo "$path"
}

# The go.mod of k8s.io/kubernetes replaces each staging module (k8s.io/api, k8s.io/client-go, ...)
# with ./staging/..., so `go install` of its commands is refused. A wrapper module that requires
# k8s.io/kubernetes and points each of those modules at its published v0.x release builds them.
write_kubernetes_wrapper() {
    local dir="$1" upstream_mod
    upstream_mod="$(go_mod_of "k8s.io/kubernetes@$K8S_VERSION")"
    local staging_version="v0.${K8S_VERSION#v1.}"
    {
        echo "module kube-balancer.test/kubernetes-wrapper"
        echo
        # The main module's go and godebug lines decide the language and runtime defaults.
        grep -E '^(go|godebug) ' "$upstream_mod"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*$|\1|p' \
            "$upstream_mod" | sort -u | while read -r module; do
            echo "	$module => $module $staging_version"
        done
        echo ")"
    } >"$dir/go.mod"
    grep -q "k8s.io/client-go => k8s.io/client-go $staging_version" "$dir/go.mod" ||
        die "found no staging replace directives in the go.mod of k8s.io/kubernetes@$K8S_VERSION"
}

build_kubernetes() {
    local dir="$WORK/kubernetes" major minor ldflags="" pkg
    mkdir -p "$dir"
    write_kubernetes_wrapper "$dir"
    major="${K8S_VERSION#v}"
    major="${major%%.*}"
    minor="${K8S_VERSION#v*.}"
    minor="${minor%%.*}"
    # Without these the binaries report v0.0.0-master, and helm's kubeVersion checks misfire.
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done
    local cmds=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
        k8s.io/kubernetes/cmd/kubectl)
    (
        cd "$dir"
        step "resolving k8s.io/kubernetes $K8S_VERSION" go get "${cmds[@]/%/@$K8S_VERSION}"
        step "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (the long part)" \
            env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w$ldflags" -o "$STAGE_BIN/" "${cmds[@]}"
    )
}

# etcd's server module also replaces its sibling modules with relative paths; a two-line main that
# calls etcdmain.Main (what etcd's own main does) builds from the published modules.
build_etcd() {
    local dir="$WORK/etcd"
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module kube-balancer.test/etcd-wrapper

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
    cat >"$dir/main.go" <<'EOF'
// Command etcd is etcd's own entry point, built from the published go.etcd.io/etcd/server/v3 module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    (
        cd "$dir"
        step "resolving go.etcd.io/etcd/server/v3 $ETCD_VERSION" go mod tidy
        step "building etcd $ETCD_VERSION" \
            env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$STAGE_BIN/etcd" .
    )
}

build_helm() {
    local client_go_minor ldflags
    # helm assumes Kubernetes 1.20 for .Capabilities unless told the version of its client-go.
    client_go_minor="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' \
        "$(go_mod_of "helm.sh/helm/v3@$HELM_VERSION")")"
    [[ -n "$client_go_minor" ]] || die "could not read the client-go version of helm $HELM_VERSION"
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
    ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$client_go_minor"
    ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
    ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$client_go_minor"
    step "building helm $HELM_VERSION" env CGO_ENABLED=0 GOBIN="$STAGE_BIN" \
        go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# One channel's CRDs as one multi-document file OUT, in the order of the KUSTOMIZATION of that
# channel (its resource lines that match PATTERN, relative to its folder), checked to be of the
# pinned release and of that channel.
channel_crds() {
    local channel="$1" kustomization="$2" pattern="$3" out="$4" resource
    while read -r resource; do
        [[ -s "$(dirname "$kustomization")/$resource" ]] ||
            die "gateway-api $GATEWAY_API_VERSION has no $resource next to $kustomization"
        echo "---"
        cat "$(dirname "$kustomization")/$resource"
    done < <(sed -n "s|^[[:space:]]*-[[:space:]]*\\($pattern\\)[[:space:]]*\$|\\1|p" "$kustomization") >"$out"
    grep -q "gateway.networking.k8s.io/bundle-version: $GATEWAY_API_VERSION" "$out" ||
        die "found no $channel channel CRDs of gateway-api $GATEWAY_API_VERSION"
    grep -q "gateway.networking.k8s.io/channel: $channel" "$out" ||
        die "the CRDs of $kustomization are not of the $channel channel"
}

# The conformance suite and echo-basic live in the module sigs.k8s.io/gateway-api/conformance, whose
# go.mod replaces sigs.k8s.io/gateway-api with ../ (so `go install` is refused). A wrapper module
# requires it and points sigs.k8s.io/gateway-api at the same published release.
build_gateway_api() {
    local dir="$WORK/gateway-api" files="$WORK/gateway-api-files" api_dir conformance_dir resource
    mkdir -p "$dir" "$files"
    cat >"$dir/go.mod" <<EOF
module kube-balancer.test/gateway-api-wrapper

go 1.26.0

replace sigs.k8s.io/gateway-api => sigs.k8s.io/gateway-api $GATEWAY_API_VERSION
EOF
    api_dir="$(go_dir_of "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
    conformance_dir="$(go_dir_of "sigs.k8s.io/gateway-api/conformance@$GATEWAY_API_VERSION")"
    (
        cd "$dir"
        step "resolving sigs.k8s.io/gateway-api/conformance $GATEWAY_API_VERSION" \
            go get -t "sigs.k8s.io/gateway-api/conformance@$GATEWAY_API_VERSION" \
            "sigs.k8s.io/gateway-api/conformance/echo-basic@$GATEWAY_API_VERSION"
        step "building echo-basic $GATEWAY_API_VERSION" env CGO_ENABLED=0 go build -trimpath \
            -ldflags "-s -w" -o "$STAGE_BIN/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic
        step "building the Gateway API conformance suite $GATEWAY_API_VERSION (go test -c)" \
            env CGO_ENABLED=0 go test -c -trimpath -ldflags "-s -w" \
            -o "$STAGE_BIN/gateway-conformance.test" sigs.k8s.io/gateway-api/conformance
    )
    channel_crds standard "$api_dir/config/crd/kustomization.yaml" 'standard/[^[:space:]]*\.yaml' \
        "$files/standard-crds.yaml"
    channel_crds experimental "$api_dir/config/crd/experimental/kustomization.yaml" \
        '[^[:space:]/]*\.yaml' "$files/experimental-crds.yaml"
    install -m 0644 "$conformance_dir/base/manifests.yaml" "$files/base-manifests.yaml"
}

# The collector is a distribution of its own, as its builder (ocb) would write one: a main that
# runs the collector with the OTLP receiver and the file exporter, all at OTELCOL_VERSION.
build_otelcol() {
    local dir="$WORK/otelcol"
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module kube-balancer.test/otelcol-kb

go 1.26.0
EOF
    cat >"$dir/main.go" <<GO
// Command otelcol-kb is an OpenTelemetry Collector with the OTLP receiver and the file exporter.
package main

import (
	"log"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func components() (otelcol.Factories, error) {
	var factories otelcol.Factories
	var err error
	if factories.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
		return factories, err
	}
	if factories.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](fileexporter.NewFactory()); err != nil {
		return factories, err
	}
	factories.Telemetry = otelconftelemetry.NewFactory()
	return factories, nil
}

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol-kb",
			Description: "OpenTelemetry Collector: OTLP receiver, file exporter",
			Version:     "$OTELCOL_VERSION",
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{envprovider.NewFactory(), fileprovider.NewFactory()},
				DefaultScheme:     "env",
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatal(err)
	}
}
GO
    (
        cd "$dir"
        step "resolving the OpenTelemetry Collector $OTELCOL_VERSION" go get \
            "go.opentelemetry.io/collector/otelcol@$OTELCOL_VERSION" \
            "go.opentelemetry.io/collector/receiver/otlpreceiver@$OTELCOL_VERSION" \
            "go.opentelemetry.io/collector/service@$OTELCOL_VERSION" \
            "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$OTELCOL_VERSION"
        step "tidying the collector's module" go mod tidy
        step "building the OpenTelemetry Collector $OTELCOL_VERSION (otelcol-kb)" \
            env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$STAGE_BIN/otelcol-kb" .
    )
}

# Prometheus without its service discovery plugins (the remove_all_sd tag: the tests scrape static
# targets) and without its web UI's assets (the tests read its API).
build_prometheus() {
    local dir="$WORK/prometheus" minor
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module kube-balancer.test/prometheus-wrapper

go 1.26.0
EOF
    # Module v0.316.0 is Prometheus v3.16.0.
    minor="${PROMETHEUS_VERSION#v0.3}"
    (
        cd "$dir"
        step "resolving Prometheus $PROMETHEUS_VERSION" \
            go get "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"
        step "building Prometheus $PROMETHEUS_VERSION" env CGO_ENABLED=0 go build -trimpath \
            -tags remove_all_sd \
            -ldflags "-s -w -X github.com/prometheus/common/version.Version=3.$((10#${minor%%.*})).${minor#*.}" \
            -o "$STAGE_BIN/prometheus" github.com/prometheus/prometheus/cmd/prometheus
    )
}

build() {
    locate
    complete && return 0
    mkdir -p "$CACHE_ROOT"
    # One build at a time per cache; a second caller waits, then finds the build complete.
    exec 9>"$CACHE_ROOT/.lock"
    flock 9
    control_plane_complete || build_part control_plane "$VERSION_KEY" "$KEY_DIR" \
        "the test control plane" "7 to 11"
    gateway_complete || build_part gateway "$GATEWAY_KEY" "$GATEWAY_DIR" \
        "the Gateway API conformance suite and echo-basic" "3 to 7"
    observability_complete || build_part observability "$OBSERVABILITY_KEY" "$OBSERVABILITY_DIR" \
        "the OpenTelemetry Collector and Prometheus" "5 to 10"
}

# Builds one cached part (control_plane or gateway) into its key's folder.
build_part() {
    local part="$1" key="$2" dir="$3" what="$4" minutes="$5"
    LOG="$CACHE_ROOT/$key.build.log"
    : >"$LOG"
    WORK="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
    STAGE_BIN="$WORK/bin"
    mkdir -p "$STAGE_BIN"
    # A build cache of its own, deleted with the work folder: it holds gigabytes of objects that
    # nothing reuses once the binaries are built.
    export GOCACHE="$WORK/go-build"
    trap 'rm -rf "$WORK"' EXIT
    local started=$SECONDS
    say "building $what into $dir (the first time takes $minutes minutes on 2 cores; log: $LOG)"
    case $part in
    control_plane)
        build_kubernetes
        build_etcd
        build_helm
        ;;
    gateway) build_gateway_api ;;
    observability)
        build_otelcol
        build_prometheus
        ;;
    esac
    # Publish only a complete set, so that an interrupted build is never mistaken for a finished one.
    rm -rf "$dir"
    mkdir -p "$dir"
    mv "$STAGE_BIN" "$dir/bin"
    case $part in
    control_plane)
        cp "$WORK/kubernetes/go.mod" "$dir/kubernetes-wrapper.go.mod"
        cp "$WORK/etcd/go.mod" "$dir/etcd-wrapper.go.mod"
        ;;
    gateway)
        cp "$WORK/gateway-api/go.mod" "$dir/gateway-api-wrapper.go.mod"
        mv "$WORK/gateway-api-files"/* "$dir/"
        ;;
    observability)
        cp "$WORK/otelcol/go.mod" "$dir/otelcol-kb.go.mod"
        cp "$WORK/otelcol/main.go" "$dir/otelcol-kb.main.go"
        cp "$WORK/prometheus/go.mod" "$dir/prometheus-wrapper.go.mod"
        ;;
    esac
    echo "$key built in $((SECONDS - started)) s with $(go version)" >"$dir/complete"
    rm -rf "$WORK"
    trap - EXIT
    say "built in $((SECONDS - started)) s"
}

# The pod network (docs/testenv.md): EndpointSlices refuse loopback pod IPs, so the tests use
# 10.244.0.0/24, made local by putting it on the `lo` of a network namespace of their own. A new
# namespace has no other interface and no route: traffic to a pod IP never leaves it.
POD_NETWORK=10.244.0.1/24
NETNS_PREFIX=kb-test-

need_ip() {
    command -v ip >/dev/null && return 0
    [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null ||
        die "the ip command (iproute2) is missing; install iproute2"
    say "installing iproute2 (for ip netns)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >&2 ||
        die "could not install iproute2 with apt-get"
}

# Namespaces of earlier runs whose script was killed before it could delete them; the name carries
# the creating script's PID.
delete_stale_namespaces() {
    local name pid
    while read -r name _; do
        [[ "$name" =~ ^${NETNS_PREFIX}([0-9]+)$ ]] || continue
        pid="${BASH_REMATCH[1]}"
        kill -0 "$pid" 2>/dev/null && continue
        say "deleting the stale network namespace $name"
        ip netns delete "$name" || true
    done < <(ip netns list)
}

run_in_namespace() {
    [[ $# -gt 0 ]] || die "run needs a command, e.g. scripts/testenv.sh run cargo test"
    [[ $EUID -eq 0 ]] || die "run needs root to create a network namespace (ip netns add)"
    build
    need_ip
    delete_stale_namespaces
    NETNS="${NETNS_PREFIX}$$"
    trap 'ip netns delete "$NETNS" 2>/dev/null || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    ip netns add "$NETNS" || die "could not create the network namespace $NETNS"
    ip -n "$NETNS" link set lo up || die "could not bring lo up in $NETNS"
    ip -n "$NETNS" addr add "$POD_NETWORK" dev lo || die "could not put $POD_NETWORK on lo in $NETNS"
    ip -n "$NETNS" route get 10.244.0.77 | grep -q '^local ' ||
        die "10.244.0.0/24 is not local in $NETNS"
    say "running in network namespace $NETNS: $*"
    local status=0
    eval "$(exports)"
    KB_TESTENV_NETNS="$NETNS" ip netns exec "$NETNS" "$@" || status=$?
    return "$status"
}

# The paths the tests read (docs/testenv.md), as shell exports.
exports() {
    printf 'export KB_TESTENV_BIN=%q\n' "$BIN_DIR"
    printf 'export KB_TESTENV_ECHO_BASIC=%q\n' "$GATEWAY_DIR/bin/echo-basic"
    printf 'export KB_TESTENV_GATEWAY_CONFORMANCE=%q\n' "$GATEWAY_DIR/bin/gateway-conformance.test"
    printf 'export KB_TESTENV_GATEWAY_CRDS=%q\n' "$GATEWAY_DIR/standard-crds.yaml"
    printf 'export KB_TESTENV_GATEWAY_EXPERIMENTAL_CRDS=%q\n' "$GATEWAY_DIR/experimental-crds.yaml"
    printf 'export KB_TESTENV_GATEWAY_BASE_MANIFESTS=%q\n' "$GATEWAY_DIR/base-manifests.yaml"
    printf 'export KB_TESTENV_OTELCOL=%q\n' "$OBSERVABILITY_DIR/bin/otelcol-kb"
    printf 'export KB_TESTENV_PROMETHEUS=%q\n' "$OBSERVABILITY_DIR/bin/prometheus"
}

case "${1:-build}" in
build)
    build
    say "ready: $BIN_DIR"
    ;;
env)
    build
    exports
    ;;
bin-dir)
    locate
    echo "$BIN_DIR"
    ;;
run)
    shift
    run_in_namespace "$@"
    ;;
versions)
    echo "kubernetes $K8S_VERSION"
    echo "etcd $ETCD_VERSION"
    echo "helm $HELM_VERSION"
    echo "gateway-api $GATEWAY_API_VERSION"
    echo "opentelemetry-collector $OTELCOL_VERSION"
    echo "prometheus $PROMETHEUS_VERSION"
    ;;
*)
    die "unknown command '$1' (expected build, env, bin-dir, versions or run)"
    ;;
esac
