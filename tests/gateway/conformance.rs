//! The Gateway API conformance suite (v1.6.3, docs/testenv.md) against the real `kube-balancer
//! run --gateway-address ...`: every core test of the GATEWAY-HTTP profile must pass, and every
//! extended test of the features claimed (`kube_balancer::gateway::SUPPORTED_FEATURES`). The suite
//! runs only the tests whose features are claimed (`--supported-features`), and skips nothing
//! else; its report goes where `KB_CONFORMANCE_REPORT` says (scripts/conformance.sh copies it
//! into conformance/), else into the run's directory.
//!
//! The suite's namespaces and GatewayClass are fixed names, and its controller serves every class
//! of `kubebalancer.io/gateway-controller`: the test takes its turn (`exclusive`) with the other
//! tests of the tier that use either.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::controlplane::{ControlPlane, die_with_parent};
use crate::support::fixtures::install_crd;
use crate::support::netns;
use crate::support::podrunner::PodRunner;
use crate::support::podrunner::conformance::{
    Suite, exclusive, install_crds, until_suite_namespaces_gone,
};
use kube_balancer::gateway::api::GatewayClass;
use kube_balancer::gateway::{CONTROLLER_NAME, SUPPORTED_FEATURES};

/// The GatewayClass the suite runs against.
const CLASS: &str = "kube-balancer";

/// The Gateways the suite has at once (its four base ones and those of the tests running in
/// parallel: the five of GatewayInvalidTLSBackendConfiguration among them) each get an address
/// of their own. Had they to share the last one, listener isolation would break where they meet
/// (GatewayHTTPListenerIsolation failed so, with 16).
const ADDRESSES: usize = 32;

/// Another number of addresses, to see what passes when Gateways share them (`1`: all share one).
const ADDRESSES_ENV: &str = "KB_CONFORMANCE_ADDRESSES";

/// The core features of GATEWAY-HTTP; the others of `SUPPORTED_FEATURES` are extended ones.
const CORE_FEATURES: [&str; 3] = ["Gateway", "HTTPRoute", "ReferenceGrant"];

/// The core tests of GATEWAY-HTTP (v1.6.3), all run.
const CORE_TESTS: u64 = 36;

/// The extended tests of GATEWAY-HTTP (v1.6.3) that the claimed features select. The suite has
/// one test of retries (HTTPRouteRetry); HTTPRouteRetryBackendTimeout and
/// HTTPRouteRetryConnectionError select none of its tests at v1.6.3.
const EXTENDED_TESTS: u64 = 44;

/// The extended features of GATEWAY-HTTP (v1.6.3) not claimed, as the report lists them;
/// docs/gateway.md ("Conformance") says why each is left out.
const LEFT_OUT: [&str; 2] = ["GatewayInfrastructure", "ListenerSet"];

/// Where the report goes (scripts/conformance.sh sets it).
const REPORT_ENV: &str = "KB_CONFORMANCE_REPORT";

/// One test of the suite instead of all, to debug it (`--run-test`); never set for a report.
const RUN_TEST_ENV: &str = "KB_CONFORMANCE_RUN_TEST";

/// The real binary, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_gateway_http_profile_passes_with_every_claimed_feature() {
    netns::require();
    // The suite's namespaces and the controller name are this test's alone while it runs.
    let _exclusive = exclusive().await;
    until_suite_namespaces_gone().await;
    let control_plane = ControlPlane::shared();
    let client = control_plane.client();
    install_crd(&client).await;
    install_crds().await;
    let runner = PodRunner::shared();

    Api::<GatewayClass>::all(client.clone())
        .patch(
            CLASS,
            &PatchParams::apply("kube-balancer-tests").force(),
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": CLASS},
                "spec": {"controllerName": CONTROLLER_NAME},
            })),
        )
        .await
        .expect("create the GatewayClass");

    // Addresses of the run's namespace (10.244.0.0/24 is local on lo), one per Gateway.
    let count = std::env::var(ADDRESSES_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ADDRESSES);
    let addresses: Vec<String> = (0..count)
        .map(|_| IpAddr::V4(netns::next_pod_ip()).to_string())
        .collect();
    let log_path = runner.dir().join("kube-balancer.log");
    let log = std::fs::File::create(&log_path).expect("the log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kube-balancer"));
    command
        .args(["run", "--kubeconfig"])
        .arg(control_plane.kubeconfig())
        .args([
            "--gateway-address",
            &addresses.join(","),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--identity",
            "conformance",
            "--lease-namespace",
            "default",
            "--log-format",
            "text",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log);
    die_with_parent(&mut command);
    let mut balancer = Running(command.spawn().expect("start kube-balancer"));

    let report: PathBuf = std::env::var_os(REPORT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| runner.dir().join("conformance-report.yaml"));
    let mut suite = Suite::new(CLASS, &report);
    suite.supported_features = SUPPORTED_FEATURES.iter().map(|f| (*f).to_owned()).collect();
    suite.conformance_profiles = vec!["GATEWAY-HTTP".to_owned()];
    // The suite refuses to write a report without a url; kube-balancer has no public home yet,
    // so it says so rather than naming a site that is not its own.
    suite.implementation[2] = "none (kube-balancer has no public home yet)".to_owned();
    suite.run_test = std::env::var(RUN_TEST_ENV).ok();
    // GatewayStaticAddresses asks for an address kube-balancer serves (the pool's last, which
    // the other Gateways get only when all the others are taken) and for one it does not (an
    // address of the namespace outside the pool).
    let usable = addresses.last().expect("at least one address");
    let unusable = netns::next_pod_ip();
    suite.extra = vec![
        format!("--usable-address={usable}"),
        format!("--unusable-address={unusable}"),
    ];
    let started = std::time::Instant::now();
    let run = suite.run().await;
    let took = started.elapsed();

    let exited = balancer.0.try_wait().expect("poll kube-balancer");
    let results = run.results().join("\n");
    let failed: Vec<&str> = run
        .results()
        .into_iter()
        .filter(|l| l.starts_with("--- FAIL") && l.matches('/').count() == 1)
        .collect();
    println!(
        "the suite took {took:?}; its results:\n{results}\nkube-balancer's log: {}",
        log_path.display()
    );
    assert_eq!(exited, None, "kube-balancer exited during the run");
    let report_text = run
        .report
        .clone()
        .unwrap_or_else(|| panic!("the suite wrote no report at {}", report.display()));
    let parsed: serde_json::Value =
        serde_norway::from_str(&report_text).expect("the report is YAML");
    let profile = parsed["profiles"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "GATEWAY-HTTP"))
        .unwrap_or_else(|| panic!("no GATEWAY-HTTP profile in the report:\n{report_text}"));
    assert!(
        run.status.success() && failed.is_empty(),
        "the suite failed ({}): {} tests failed: {failed:#?}\nthe report:\n{report_text}",
        run.status,
        failed.len()
    );
    let core = &profile["core"];
    let extended = &profile["extended"];
    assert_eq!(core["statistics"]["Failed"], 0, "{report_text}");
    assert_eq!(extended["statistics"]["Failed"], 0, "{report_text}");
    // The features claimed beyond the core are the report's extended ones, and every other
    // extended feature of the profile is one that docs/gateway.md names as left out.
    let names = |list: &serde_json::Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect()
    };
    let claimed_extended: Vec<String> = SUPPORTED_FEATURES
        .iter()
        .filter(|f| !CORE_FEATURES.contains(f))
        .map(|f| (*f).to_owned())
        .collect();
    assert_eq!(
        names(&extended["supportedFeatures"]),
        claimed_extended,
        "{report_text}"
    );
    assert_eq!(
        names(&extended["unsupportedFeatures"]),
        LEFT_OUT,
        "{report_text}"
    );
    if let Some(test) = &suite.run_test {
        // One test (to debug it): it ran and passed; the others are skipped.
        let passed = format!("--- PASS: TestConformance/{test}");
        assert!(run.results().contains(&passed.as_str()), "{results}");
        return;
    }
    // The whole profile: every core test and every extended test of the claimed features
    // passed, none failed, none skipped.
    for (part, passed) in [(core, CORE_TESTS), (extended, EXTENDED_TESTS)] {
        assert_eq!(part["result"], "success", "{report_text}");
        assert_eq!(part["statistics"]["Passed"], passed, "{report_text}");
        assert_eq!(part["statistics"]["Failed"], 0, "{report_text}");
        assert_eq!(part["statistics"]["Skipped"], 0, "{report_text}");
    }
}
