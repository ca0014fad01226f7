//! The Gateway API conformance suite against the test environment (docs/testenv.md): the pinned
//! experimental channel's CRDs, the suite's base manifests, and `run`, which starts the suite's test
//! binary (scripts/testenv.sh builds it with `go test -c`) against the test control plane.
//!
//! The suite runs inside the run's network namespace like everything else, so it reaches a Gateway
//! at any address there: the data plane listens on one of 10.244.0.0/24 (local on `lo`), ports 80
//! and 443, and the controller writes that address into the Gateway's status. The suite's backends
//! run on the pod runner (`PodRunner::shared`, which `run` starts).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::runtime::watcher;

use super::super::controlplane::{ControlPlane, die_with_parent};
use super::super::wait;
use super::{BASE_MANIFESTS_ENV, CONFORMANCE_ENV, EXPERIMENTAL_CRDS_ENV, PodRunner, testenv_file};

/// The suite's namespaces: fixed names, one set per control plane.
pub const SUITE_NAMESPACES: [&str; 3] = [
    "gateway-conformance-infra",
    "gateway-conformance-app-backend",
    "gateway-conformance-web-backend",
];

/// Held by a test that uses the suite's namespaces or runs a controller of
/// `kubebalancer.io/gateway-controller`: both are one per control plane, so such tests of one
/// binary take turns.
pub type ExclusiveGuard = tokio::sync::MutexGuard<'static, ()>;

/// Waits for the turn of a test that needs the suite's namespaces or the controller name alone.
pub async fn exclusive() -> ExclusiveGuard {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Waits until none of the suite's namespaces exists (a test before deleted them; deleting a
/// namespace takes a while), so that the suite creates them afresh.
pub async fn until_suite_namespaces_gone() {
    let client = ControlPlane::shared().client();
    wait::until_list(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client),
        watcher::Config::default(),
        "the suite's namespaces to be gone",
        |all| {
            all.iter()
                .all(|n| !SUITE_NAMESPACES.contains(&n.metadata.name.as_deref().unwrap_or("")))
        },
    )
    .await;
}

/// The placeholder for the GatewayClass's name in the suite's base manifests, which the suite
/// replaces when it applies them.
pub const GATEWAY_CLASS_PLACEHOLDER: &str = "{GATEWAY_CLASS_NAME}";

/// The Gateway API CRDs of the pinned release's experimental channel, as one file: a superset of
/// the standard channel, and at v1.6.3 the only one with HTTPRoute `rules[].retry`.
pub fn experimental_crds() -> PathBuf {
    testenv_file(EXPERIMENTAL_CRDS_ENV)
}

/// The suite's base manifests (13 echo-basic Deployments, a CoreDNS one, Services, Gateways).
pub fn base_manifests() -> PathBuf {
    testenv_file(BASE_MANIFESTS_ENV)
}

/// The suite's test binary.
pub fn suite_binary() -> PathBuf {
    testenv_file(CONFORMANCE_ENV)
}

/// Installs the experimental channel's CRDs (server-side apply: they are too large for the
/// annotation that client-side apply keeps) and waits until the API server serves every one of
/// them. Every test of a control plane installs the same channel: the release's admission policy
/// refuses experimental CRDs over standard ones, and the suite refuses to run on a mix.
pub async fn install_crds() -> Vec<String> {
    let control_plane = ControlPlane::shared();
    let crds = experimental_crds();
    let output = control_plane
        .run(
            "kubectl",
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=kb-testenv",
                "-f",
                &crds.display().to_string(),
                "-o",
                "name",
            ],
        )
        .await;
    let names: Vec<String> = output
        .lines()
        .filter_map(|l| l.strip_prefix("customresourcedefinition.apiextensions.k8s.io/"))
        .map(str::to_owned)
        .collect();
    let api = Api::<CustomResourceDefinition>::all(control_plane.client());
    wait::until_list(
        api,
        watcher::Config::default(),
        "the Gateway API CRDs to be established",
        |all| {
            names.iter().all(|name| {
                all.iter().any(|crd| {
                    crd.metadata.name.as_deref() == Some(name.as_str())
                        && crd
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter()
                                    .any(|c| c.type_ == "Established" && c.status == "True")
                            })
                })
            })
        },
    )
    .await;
    names
}

/// What to run the suite with: the flags of docs/testenv.md.
#[derive(Clone, Debug)]
pub struct Suite {
    pub gateway_class: String,
    /// `--supported-features`, comma-separated in the flag.
    pub supported_features: Vec<String>,
    /// `--conformance-profiles`, e.g. `GATEWAY-HTTP`.
    pub conformance_profiles: Vec<String>,
    /// `--report-output`; the suite writes its report there.
    pub report_output: PathBuf,
    /// `--run-test`: one test instead of all.
    pub run_test: Option<String>,
    /// The report's `implementation`: `--organization`, `--project`, `--url`, `--version`,
    /// `--contact`, in that order. The suite refuses to write a report when one is empty.
    pub implementation: [String; 5],
    /// Further flags, passed as they are (`--timeout-config-overrides=...`).
    pub extra: Vec<String>,
}

impl Suite {
    pub fn new(gateway_class: &str, report_output: &Path) -> Suite {
        Suite {
            gateway_class: gateway_class.to_owned(),
            supported_features: Vec::new(),
            conformance_profiles: Vec::new(),
            report_output: report_output.to_owned(),
            run_test: None,
            // The URL is a stand-in until the project has a public home.
            implementation: [
                "kube-balancer".to_owned(),
                "kube-balancer".to_owned(),
                "https://kubebalancer.io".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
                "kube-balancer maintainers".to_owned(),
            ],
            extra: Vec::new(),
        }
    }

    /// The suite binary's arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            // Anchored: the package's other tests (TestConformanceOptions...) start with the same name.
            "-test.run=^TestConformance$".to_owned(),
            "-test.v".to_owned(),
            "-test.timeout=90m".to_owned(),
            format!("--gateway-class={}", self.gateway_class),
            format!("--report-output={}", self.report_output.display()),
        ];
        let [organization, project, url, version, contact] = &self.implementation;
        args.extend([
            format!("--organization={organization}"),
            format!("--project={project}"),
            format!("--url={url}"),
            format!("--version={version}"),
            format!("--contact={contact}"),
        ]);
        if !self.supported_features.is_empty() {
            args.push(format!(
                "--supported-features={}",
                self.supported_features.join(",")
            ));
        }
        if !self.conformance_profiles.is_empty() {
            args.push(format!(
                "--conformance-profiles={}",
                self.conformance_profiles.join(",")
            ));
        }
        if let Some(test) = &self.run_test {
            args.push(format!("--run-test={test}"));
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Runs the suite against the test control plane, with the pod runner up and the CRDs
    /// installed, and returns what it printed and its report. Its output goes to
    /// `conformance-suite.log` in the pod runner's directory as it runs.
    pub async fn run(&self) -> SuiteRun {
        let runner = PodRunner::shared();
        install_crds().await;
        // Written as it runs, so that a long run can be followed (`tail -f`).
        let log_path = runner.dir().join("conformance-suite.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_too = log.try_clone().expect("a second handle on the log");
        let mut command = Command::new(suite_binary());
        command
            .args(self.args())
            .env("KUBECONFIG", ControlPlane::shared().kubeconfig())
            // Its own working directory; the suite reads its manifests from the binary itself.
            .current_dir(runner.dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too);
        die_with_parent(&mut command);
        let shown = format!("{} {}", suite_binary().display(), self.args().join(" "));
        let status = tokio::task::spawn_blocking(move || command.status())
            .await
            .expect("the thread running the suite")
            .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
        SuiteRun {
            status,
            output: std::fs::read_to_string(&log_path).unwrap_or_default(),
            report: std::fs::read_to_string(&self.report_output).ok(),
        }
    }
}

/// What one run of the suite printed, and its report (when it wrote one).
#[derive(Debug)]
pub struct SuiteRun {
    pub status: ExitStatus,
    pub output: String,
    pub report: Option<String>,
}

impl SuiteRun {
    /// The Go test result lines of the suite's tests, without their durations, e.g.
    /// `--- FAIL: TestConformance/HTTPRouteSimpleSameNamespace`.
    pub fn results(&self) -> Vec<&str> {
        self.output
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("--- PASS") || l.starts_with("--- FAIL") || l.starts_with("--- SKIP")
            })
            .map(|l| l.split(" (").next().unwrap_or(l))
            .collect()
    }
}
