#!/usr/bin/env bash
# Regenerates everything derived from the Rust types and the chart, in order:
#   crds/  <- `kube-balancer crd`
#   charts/kube-balancer/crds/  <- crds/
#   charts/kube-balancer/files/gateway-api-{standard,experimental}-crds.yaml  <- the Gateway
#       API's standard and experimental channels at the release the test environment pins
#       (scripts/testenv.sh)
#   manifests/kube-balancer.yaml  <- `helm template` of the chart (helm from scripts/testenv.sh),
#       naming the admin token's Secret rather than making a random one (docs/install.md)
# Tests fail when any of them is stale (tests/kube/crd.rs, tests/kube/install.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

crd=crds/balancerclusters.kubebalancer.io.yaml
cargo run --quiet --bin kube-balancer -- crd > "$crd"
cp "$crd" charts/kube-balancer/crds/
bash scripts/testenv.sh build
eval "$(bash scripts/testenv.sh env)"
cp "$KB_TESTENV_GATEWAY_CRDS" charts/kube-balancer/files/gateway-api-standard-crds.yaml
"$KB_TESTENV_BIN/helm" template kube-balancer charts/kube-balancer --namespace kube-balancer --include-crds \
    --set admin.tokenSecret=kube-balancer-admin-token \
    > manifests/kube-balancer.yaml
echo "generate: crds/, the chart's CRDs and manifests/ are up to date" >&2
