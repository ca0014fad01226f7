//! crds/ is generated from the Rust types: this fails when it is stale.

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/balancerclusters.kubebalancer.io.yaml"
    );
    let checked_in = std::fs::read_to_string(path).expect("crds/ holds the CRD");
    let generated = kube_balancer::api::crd_yaml().expect("the CRD renders");
    assert!(
        checked_in == generated,
        "crds/ is stale: run scripts/generate.sh (crds/, the chart's copy and manifests/)"
    );
}
