//! Installing kube-balancer, against the real helm, kubectl and API server (docs/testenv.md): the
//! chart lints and renders exactly manifests/, `helm install` creates every object and the API
//! server admits its pod under the "restricted" Pod Security Standard, and the chart's
//! ServiceAccount is enough to run the real `kube-balancer` binary with the chart's own arguments
//! (out of cluster, with a token of that ServiceAccount) and nothing more.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::backend::Backend;
use crate::support::client::{Answer, get_at};
use crate::support::controlplane::{BIN_ENV, ControlPlane};
use crate::support::pods::{self, FakePod};
use crate::support::process::Process;
use crate::support::{netns, wait};
use kube_balancer::api::BalancerCluster;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kube-balancer");
const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/kube-balancer.yaml");
const NAMESPACE_MANIFEST: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/00-namespace.yaml");
const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/balancerclusters.kubebalancer.io.yaml"
);
const CHART_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/kube-balancer/crds/balancerclusters.kubebalancer.io.yaml"
);
/// How manifests/kube-balancer.yaml is made (docs/install.md says the same).
const RENDER: [&str; 8] = [
    "template",
    "kube-balancer",
    "charts/kube-balancer",
    "--namespace",
    "kube-balancer",
    "--include-crds",
    "--set",
    "admin.tokenSecret=kube-balancer-admin-token",
];

/// Runs a built tool (`helm`, `kubectl`) against the test control plane and returns its output,
/// whatever its exit status (`kubectl auth can-i` answers "no" with status 1).
async fn tool(name: &str, args: &[&str]) -> Output {
    let cp = ControlPlane::shared();
    let bin = std::env::var_os(BIN_ENV).expect("the control plane checked KB_TESTENV_BIN");
    let helm_home = helm_home();
    let mut command = Command::new(Path::new(&bin).join(name));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KUBECONFIG", cp.kubeconfig())
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .stdin(Stdio::null());
    let shown = format!("{name} {}", args.join(" "));
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the thread running the tool")
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

/// `tool`, which must succeed; its standard output.
async fn ok(name: &str, args: &[&str]) -> String {
    let output = tool(name, args).await;
    assert!(
        output.status.success(),
        "`{name} {}` failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn helm_home() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a directory for helm's caches"))
        .path()
}

/// The YAML documents of a stream, as JSON (empty documents left out).
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_and_name(doc: &Value) -> String {
    let namespace = doc["metadata"]["namespace"].as_str();
    format!(
        "{}/{}{}",
        doc["kind"].as_str().unwrap_or("?"),
        namespace.map(|n| format!("{n}/")).unwrap_or_default(),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[tokio::test]
async fn the_chart_lints_renders_exactly_manifests_and_ships_the_crd_of_crds() {
    let lint = ok("helm", &["lint", "--strict", CHART]).await;
    assert!(
        lint.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{lint}"
    );
    let lint = ok(
        "helm",
        &[
            "lint",
            "--strict",
            CHART,
            "--set",
            "watchNamespaces={shop,blog}",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "service.type=NodePort",
            "--set",
            "gatewayAPI.enabled=true",
            "--set",
            "gatewayAPI.installCRDs=true",
            "--set",
            "gatewayAPI.service.ports={80,443,8080}",
        ],
    )
    .await;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let rendered = ok("helm", &RENDER).await;
    let checked_in = std::fs::read_to_string(MANIFEST).expect("manifests/kube-balancer.yaml");
    assert!(
        rendered == checked_in,
        "manifests/kube-balancer.yaml is stale: run `helm {} > manifests/kube-balancer.yaml`",
        RENDER.join(" ")
    );

    // The chart installs crds/ as it is: a change of the Rust types reaches both or fails here.
    let crd = std::fs::read_to_string(CRD).expect("crds/");
    let chart_crd = std::fs::read_to_string(CHART_CRD).expect("the chart's crds/");
    assert!(
        crd == chart_crd,
        "charts/kube-balancer/crds/ differs from crds/: run `cp crds/balancerclusters.kubebalancer.io.yaml charts/kube-balancer/crds/`"
    );

    // Every object of the plain manifests lives in the namespace that 00-namespace.yaml makes.
    let namespace = documents(&std::fs::read_to_string(NAMESPACE_MANIFEST).expect("00-namespace"));
    assert_eq!(
        namespace.iter().map(kind_and_name).collect::<Vec<_>>(),
        ["Namespace/kube-balancer"]
    );
    let objects: Vec<String> = documents(&checked_in).iter().map(kind_and_name).collect();
    assert_eq!(
        objects,
        [
            "CustomResourceDefinition/balancerclusters.kubebalancer.io",
            "PodDisruptionBudget/kube-balancer/kube-balancer",
            "ServiceAccount/kube-balancer/kube-balancer",
            "ClusterRole/kube-balancer",
            "ClusterRoleBinding/kube-balancer",
            "Role/kube-balancer/kube-balancer-leader",
            "RoleBinding/kube-balancer/kube-balancer-leader",
            "Service/kube-balancer/kube-balancer-admin",
            "Service/kube-balancer/kube-balancer",
            "Deployment/kube-balancer/kube-balancer",
        ]
    );

    // The schema refuses what would otherwise be installed and then misbehave.
    for (set, says) in [
        ("replicaCount=-1", "minimum"),
        ("service.type=Ingress", "value must be one of"),
        ("statusInterval=ten", "does not match pattern"),
        ("clas=internal", "additional properties 'clas' not allowed"),
    ] {
        let output = tool("helm", &["template", "x", CHART, "--set", set]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(says),
            "--set {set}: {stderr}"
        );
    }
    // A loopback admin address would fail every probe and hide the replicas from each other.
    let output = tool(
        "helm",
        &["template", "x", CHART, "--set", "admin.address=127.0.0.1"],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("admin.address must not be a loopback address"),
        "{output:?}"
    );
}

/// `kubectl apply -f manifests/` on a fresh cluster: the namespace comes first, then the rest.
#[tokio::test]
async fn the_plain_manifests_apply_with_kubectl() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/");
    let applied = ok("kubectl", &["apply", "-f", dir]).await;
    let lines: Vec<&str> = applied.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"namespace/kube-balancer created"),
        "{applied}"
    );
    for object in [
        "serviceaccount/kube-balancer created",
        "clusterrole.rbac.authorization.k8s.io/kube-balancer created",
        "service/kube-balancer created",
        "service/kube-balancer-admin created",
        "deployment.apps/kube-balancer created",
        "poddisruptionbudget.policy/kube-balancer created",
    ] {
        assert!(lines.contains(&object), "{object}: {applied}");
    }
    let listed = ok("kubectl", &["get", "-f", dir, "-o", "name"]).await;
    assert_eq!(listed.lines().count(), 11, "{listed}");
}

/// The image runs what the chart asks of it: the same binary, the same user, the Rust version the
/// crate needs. Checked by reading, since there is no container engine here.
#[test]
fn the_image_and_the_chart_agree() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    let values: Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/kube-balancer/values.yaml"
        ))
        .expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/kube-balancer/Chart.yaml"
        ))
        .expect("Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");

    let line = |prefix: &str| {
        dockerfile
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("the Dockerfile has a line {prefix}..."))
            .trim_start_matches(prefix)
            .trim()
            .to_owned()
    };
    assert_eq!(
        line("ARG RUST_VERSION="),
        env!("CARGO_PKG_RUST_VERSION"),
        "the builder's Rust is the crate's rust-version"
    );
    let uid = values["podSecurityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    assert_eq!(line("USER "), format!("{uid}:{uid}"));
    assert_eq!(
        line("ENTRYPOINT "),
        "[\"/usr/local/bin/kube-balancer\"]",
        "the chart's args start with `run`: the entrypoint is the binary itself"
    );
    // The builder runs the release build (profile-guided unless PGO=0), which builds the one
    // binary from the locked dependencies.
    assert!(dockerfile.contains("scripts/build-release.sh"));
    let build = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-release.sh"
    ))
    .expect("scripts/build-release.sh");
    assert_eq!(
        build
            .matches("cargo build --release --locked --quiet --bin kube-balancer")
            .count(),
        3,
        "the plain, instrumented and optimized builds"
    );
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        values["image"]["tag"].as_str(),
        Some(""),
        "the tag defaults to appVersion"
    );

    // What the builder copies is what .dockerignore lets through.
    let ignore = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore"))
        .expect(".dockerignore");
    let allowed: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let copied: BTreeSet<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[1..words.len() - 1].to_vec()
        })
        .collect();
    assert_eq!(copied, allowed);
}

/// A release of the chart in its own namespace.
struct Release {
    name: String,
    namespace: String,
    /// The name of its objects.
    fullname: String,
}

impl Release {
    async fn install(client: &Client, name: &str, sets: &[&str]) -> Release {
        let namespace = pods::namespace(client, name).await;
        let mut args = vec!["install", name, CHART, "--namespace", &namespace];
        for set in sets {
            args.extend(["--set", set]);
        }
        let notes = ok("helm", &args).await;
        assert!(
            notes.contains("kubectl apply -f -") && notes.contains("kubectl balancer members web"),
            "NOTES tell what to do next: {notes}"
        );
        Release {
            name: name.to_owned(),
            namespace,
            fullname: format!("{name}-kube-balancer"),
        }
    }

    fn service_account(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.fullname)
    }

    /// Its objects of these kinds, as `kind/name` (kubectl's `-o name`), sorted.
    async fn objects(&self, kinds: &str, namespace: Option<&str>) -> Vec<String> {
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let mut args = vec!["get", kinds, "-l", &selector, "-o", "name"];
        match namespace {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        let mut names: Vec<String> = ok("kubectl", &args)
            .await
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// The rendered objects of the release, as the API server holds them.
    async fn manifest(&self) -> Vec<Value> {
        documents(
            &ok(
                "helm",
                &["get", "manifest", &self.name, "-n", &self.namespace],
            )
            .await,
        )
    }

    /// The container's arguments, as the chart rendered them.
    async fn args(&self, client: &Client) -> Vec<String> {
        let deployment = Api::<Deployment>::namespaced(client.clone(), &self.namespace)
            .get(&self.fullname)
            .await
            .expect("the Deployment");
        let spec = deployment
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod spec");
        spec.containers[0].args.clone().expect("args")
    }

    /// Whether its ServiceAccount may do `verb` on `resource` (kubectl auth can-i). A resource
    /// `TYPE/NAME` is one object; `TYPE#SUBRESOURCE` a subresource.
    async fn can(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        let who = self.service_account();
        let (resource, subresource) = match resource.split_once('#') {
            Some((r, s)) => (r, Some(format!("--subresource={s}"))),
            None => (resource, None),
        };
        let mut args = vec!["auth", "can-i", verb, resource, "--as", &who];
        if let Some(s) = &subresource {
            args.push(s);
        }
        match namespace {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        let output = tool("kubectl", &args).await;
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        match answer.as_str() {
            "yes" => true,
            "no" => false,
            other => panic!(
                "kubectl auth can-i {verb} {resource}: {other:?} {}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// A kubeconfig that authenticates as the release's ServiceAccount, with a token from the API
    /// server's TokenRequest (what a pod's projected token is).
    async fn token_kubeconfig(&self, dir: &Path) -> PathBuf {
        let token = ok(
            "kubectl",
            &[
                "create",
                "token",
                &self.fullname,
                "-n",
                &self.namespace,
                "--duration",
                "1h",
            ],
        )
        .await;
        let admin: Value = serde_json::from_str(
            &std::fs::read_to_string(ControlPlane::shared().kubeconfig()).expect("kubeconfig"),
        )
        .expect("the test kubeconfig is JSON");
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": "sa", "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}],
            "current-context": "sa",
        });
        let path = dir.join(format!("{}.kubeconfig", self.name));
        std::fs::write(&path, kubeconfig.to_string()).expect("write the kubeconfig");
        path
    }
}

/// One `kube-balancer` process, as a replica of the release would run it, killed when dropped.
struct Replica {
    name: String,
    process: Process,
    traffic: SocketAddr,
    admin: SocketAddr,
}

impl Replica {
    /// Runs the real binary with the chart's `args`, except that it listens on loopback and on a
    /// pod IP (ephemeral ports) and authenticates with `kubeconfig`; the downward API's variables
    /// are set as the chart sets them.
    async fn start(release: &Release, args: &[String], kubeconfig: &Path, name: &str) -> Replica {
        let pod_ip = netns::next_pod_ip();
        let mut replaced = 0;
        let mut args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("--listen=") {
                    replaced += 1;
                    "--listen=127.0.0.1:0".to_owned()
                } else if a.starts_with("--listen-tls=") {
                    // Two replicas run in one network namespace: not both on the chart's port.
                    replaced += 1;
                    "--listen-tls=127.0.0.1:0".to_owned()
                } else if a.starts_with("--admin=") {
                    replaced += 1;
                    format!("--admin={pod_ip}:0")
                } else if a.starts_with("--admin-token-file=") {
                    // The Secret the chart mounts there: one token for the release's replicas.
                    replaced += 1;
                    let token = kubeconfig.with_file_name("admin-token");
                    std::fs::write(&token, "chart-made-token-for-these-replicas\n")
                        .expect("write the admin token");
                    format!("--admin-token-file={}", token.display())
                } else {
                    a.clone()
                }
            })
            .collect();
        assert_eq!(
            replaced, 4,
            "the chart passes --listen, --listen-tls, --admin and --admin-token-file: {args:?}"
        );
        args.push(format!("--kubeconfig={}", kubeconfig.display()));
        let env = [
            ("POD_NAME", name),
            ("POD_NAMESPACE", release.namespace.as_str()),
            ("RUST_LOG", "info"),
        ];
        let process = Process::start(name, &args, &env);
        let traffic = process.address_in("data plane listening").await;
        let admin = process.address_in("admin server listening").await;
        Replica {
            name: name.to_owned(),
            process,
            traffic,
            admin,
        }
    }

    /// A Pod for this replica, as the Deployment would make it: the chart's labels and the named
    /// admin port, so that the admin Service's EndpointSlices list it for the leader.
    async fn register(&self, client: &Client, release: &Release) {
        let ip = match self.admin.ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("a pod IP is IPv4: {other}"),
        };
        FakePod::new(&release.namespace, &self.name, ip)
            .label("app.kubernetes.io/name", "kube-balancer")
            .label("app.kubernetes.io/instance", &release.name)
            .port("admin", self.admin.port())
            .create(client)
            .await;
    }
}

/// A Service `web` over pods with a backend each, and a BalancerCluster `web` of `class` in front.
async fn web_app(
    client: &Client,
    ns: &str,
    class: &str,
    names: &[&str],
) -> Vec<(FakePod, Backend)> {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    let mut pods = Vec::new();
    for name in names {
        let ip = netns::next_pod_ip();
        let backend = Backend::start_on(name, ip).await;
        let pod = FakePod::new(ns, name, ip)
            .label("app", "web")
            .port("http", backend.addr.port());
        pod.create(client).await;
        pods.push((pod, backend));
    }
    let bc = json!({"apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"className": class, "service": {"name": "web", "port": "http"}}});
    Api::<BalancerCluster>::namespaced(client.clone(), ns)
        .patch(
            "web",
            &PatchParams::apply("install-tests").force(),
            &Patch::Apply(&bc),
        )
        .await
        .expect("apply the BalancerCluster");
    pods
}

/// Sends requests until the data plane at `addr` has answered from every one of `want` (its
/// member list is complete).
async fn until_served(addr: SocketAddr, want: &[&str]) {
    let deadline = Instant::now() + wait::TIMEOUT;
    let mut seen = BTreeSet::new();
    let mut every = tokio::time::interval(Duration::from_millis(50));
    loop {
        every.tick().await;
        let Answer { status, body, .. } = get_at(addr, "/").await;
        if status == 200 {
            seen.insert(body);
        }
        if want.iter().all(|w| seen.contains(*w)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never served from all of {want:?}; saw {seen:?}"
        );
    }
}

/// The rendered RBAC objects grant no wildcard.
fn assert_no_wildcards(manifest: &[Value]) {
    let mut roles = 0;
    for doc in manifest {
        if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        roles += 1;
        for rule in doc["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                for item in rule[field]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    assert_ne!(
                        item,
                        "*",
                        "{} grants a wildcard {field}",
                        kind_and_name(doc)
                    );
                }
            }
            assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        }
    }
    assert!(roles > 0, "the release renders roles");
}

#[tokio::test]
async fn helm_install_creates_every_object_and_the_pod_meets_the_restricted_standard() {
    let client = ControlPlane::shared().client();
    let release = Release::install(&client, "kb-install", &[]).await;
    let ns = release.namespace.clone();
    let status = ok("helm", &["status", "kb-install", "-n", &ns]).await;
    assert!(status.contains("STATUS: deployed"), "{status}");

    ok(
        "kubectl",
        &[
            "wait",
            "--for=condition=Established",
            "crd/balancerclusters.kubebalancer.io",
            "--timeout=60s",
        ],
    )
    .await;
    let f = &release.fullname;
    assert_eq!(
        release
            .objects(
                "deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
                Some(&ns)
            )
            .await,
        [
            format!("deployment.apps/{f}"),
            format!("poddisruptionbudget.policy/{f}"),
            format!("role.rbac.authorization.k8s.io/{f}-leader"),
            format!("rolebinding.rbac.authorization.k8s.io/{f}-leader"),
            format!("service/{f}"),
            format!("service/{f}-admin"),
            format!("serviceaccount/{f}"),
        ]
    );
    assert_eq!(
        release
            .objects("clusterroles,clusterrolebindings", None)
            .await,
        [
            format!("clusterrole.rbac.authorization.k8s.io/{f}"),
            format!("clusterrolebinding.rbac.authorization.k8s.io/{f}"),
        ]
    );
    // The admin server's token, random, in a Secret the pods mount.
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .get(&format!("{f}-admin-token"))
        .await
        .expect("the admin token's Secret");
    let token = secret.data.expect("data").remove("token").expect("a token");
    assert_eq!(token.0.len(), 40, "the chart's token is 40 characters");
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let traffic = services.get(f).await.expect("the traffic Service");
    let spec = traffic.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let admin = services
        .get(&format!("{f}-admin"))
        .await
        .expect("admin Service");
    let ports = admin.spec.expect("spec").ports.expect("ports");
    assert_eq!(ports[0].name.as_deref(), Some("admin"));

    // The API server's PodSecurity admission, enforcing "restricted", admits the chart's pod...
    let namespaces = Api::<Namespace>::all(client.clone());
    let label =
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label the namespace");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(f)
        .await
        .expect("the Deployment");
    let template = deployment.spec.expect("spec").template;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("from-the-chart".into()),
            ..template.metadata.unwrap_or_default()
        },
        spec: template.spec,
        status: None,
    };
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    pods_api
        .create(&PostParams::default(), &pod)
        .await
        .expect("a restricted namespace admits the chart's pod");
    // ...and refuses one without the chart's security settings, so the check above means something.
    let mut bare = pod.clone();
    bare.metadata.name = Some("bare".into());
    let spec = bare.spec.as_mut().expect("spec");
    spec.security_context = None;
    spec.containers[0].security_context = None;
    match pods_api.create(&PostParams::default(), &bare).await {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("violates PodSecurity"), "{e:?}"),
        other => panic!("a pod without securityContext was admitted: {other:?}"),
    }

    // Uninstalling leaves only the CRD (Helm never deletes crds/), so BalancerClusters survive.
    ok("helm", &["uninstall", "kb-install", "-n", &ns]).await;
    assert!(
        release
            .objects(
                "deployments,services,serviceaccounts,roles,rolebindings",
                Some(&ns)
            )
            .await
            .is_empty()
    );
    ok(
        "kubectl",
        &["get", "crd", "balancerclusters.kubebalancer.io"],
    )
    .await;
}

/// The default install (a ClusterRole): two replicas of the real binary, with the chart's
/// arguments and its ServiceAccount's token, balance the pods of another namespace in byrequests
/// order, elect one leader, and that leader writes status summed over both (through the chart's
/// admin Service) and records Events. The ServiceAccount may do nothing beyond that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_service_account_runs_the_controller_and_may_do_no_more() {
    netns::require();
    let client = ControlPlane::shared().client();
    let release = Release::install(
        &client,
        "kb-rbac",
        &["class=rbac-all", "statusInterval=500ms"],
    )
    .await;
    let app = pods::namespace(&client, "rbac-app").await;
    let pods = web_app(&client, &app, "rbac-all", &["web-a", "web-b"]).await;

    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = release.token_kubeconfig(dir.path()).await;
    let args = release.args(&client).await;
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--class=rbac-all".to_owned()), "{args:?}");
    assert!(
        args.contains(&format!(
            "--peers-service={}/{}-admin",
            release.namespace, release.fullname
        )),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );

    let mut replicas = Vec::new();
    for name in ["kb-rbac-0", "kb-rbac-1"] {
        let replica = Replica::start(&release, &args, &kubeconfig, name).await;
        replica.register(&client, &release).await;
        replicas.push(replica);
    }
    for r in &replicas {
        until_served(r.traffic, &["web-a", "web-b"]).await;
    }
    let warmup: Vec<u64> = pods.iter().map(|(_, b)| b.hits()).collect();

    // byrequests through each replica; 4 requests through one, 6 through the other.
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(get_at(replicas[0].traffic, "/").await.body);
    }
    for _ in 0..6 {
        assert_eq!(get_at(replicas[1].traffic, "/").await.status, 200);
    }
    let mut pair = order[..2].to_vec();
    pair.sort();
    assert_eq!(pair, ["web-a", "web-b"], "{order:?}");
    assert_eq!(order[2..], order[..2], "byrequests alternates: {order:?}");
    let total: u64 = pods.iter().map(|(_, b)| b.hits()).sum();
    assert_eq!(total - warmup.iter().sum::<u64>(), 10);

    // One leader holds the chart's Lease; it writes status with both replicas' figures.
    let leases = Api::<Lease>::namespaced(client.clone(), &release.namespace);
    let lease = wait::until_object(leases, "kube-balancer-rbac-all", "a leader", |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .is_some()
    })
    .await;
    let holder = lease.spec.and_then(|s| s.holder_identity).expect("holder");
    assert!(holder == "kb-rbac-0" || holder == "kb-rbac-1", "{holder}");
    let clusters = Api::<BalancerCluster>::namespaced(client.clone(), &app);
    let served: Vec<u64> = pods.iter().map(|(_, b)| b.hits()).collect();
    let bc = wait::until_object(
        clusters,
        "web",
        "status with the requests of both replicas",
        |bc: &BalancerCluster| {
            bc.status
                .as_ref()
                .is_some_and(|s| s.members.iter().map(|m| m.elected).collect::<Vec<_>>() == served)
        },
    )
    .await;
    assert_eq!(bc.status.expect("status").ready.as_deref(), Some("2/2"));

    // A membership change becomes an Event, recorded under the ServiceAccount.
    pods[1].0.set_ready(&client, false).await;
    let events = wait::until_list(
        Api::<Event>::namespaced(client.clone(), &app),
        kube::runtime::watcher::Config::default(),
        "a MembersChanged event",
        |list: &[Arc<Event>]| {
            list.iter()
                .any(|e| e.reason.as_deref() == Some("MembersChanged"))
        },
    )
    .await;
    let event = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("MembersChanged"))
        .expect("event");
    assert_eq!(event.reporting_controller.as_deref(), Some("kube-balancer"));

    // What it may do, and what it may not.
    let ns = Some(app.as_str());
    let home = Some(release.namespace.as_str());
    for (verb, resource, namespace) in [
        ("watch", "balancerclusters.kubebalancer.io", None),
        ("patch", "balancerclusters.kubebalancer.io#status", ns),
        ("list", "endpointslices.discovery.k8s.io", None),
        ("list", "pods", None),
        ("create", "events.events.k8s.io", ns),
        ("create", "leases.coordination.k8s.io", home),
        (
            "update",
            "leases.coordination.k8s.io/kube-balancer-rbac-all",
            home,
        ),
    ] {
        assert!(
            release.can(verb, resource, namespace).await,
            "may {verb} {resource}"
        );
    }
    for (verb, resource, namespace) in [
        ("get", "secrets", ns),
        ("list", "secrets", None),
        ("get", "configmaps", ns),
        ("delete", "pods", ns),
        ("create", "pods", ns),
        ("update", "pods", ns),
        ("update", "balancerclusters.kubebalancer.io", ns),
        ("update", "balancerclusters.kubebalancer.io#status", ns),
        ("patch", "balancerclusters.kubebalancer.io", ns),
        ("delete", "balancerclusters.kubebalancer.io", ns),
        ("update", "services", ns),
        ("update", "leases.coordination.k8s.io/someone-elses", home),
        ("get", "leases.coordination.k8s.io/someone-elses", home),
        ("create", "leases.coordination.k8s.io", ns),
        ("delete", "events.events.k8s.io", ns),
        ("create", "events", ns),
        // The Gateway API only with gatewayAPI.enabled.
        ("list", "gateways.gateway.networking.k8s.io", None),
        ("list", "namespaces", None),
    ] {
        assert!(
            !release.can(verb, resource, namespace).await,
            "may not {verb} {resource}"
        );
    }
    assert_no_wildcards(&release.manifest().await);
}

/// With watchNamespaces, Roles in those namespaces (and the release's) replace the ClusterRole:
/// the controller serves the watched namespace and can read nothing elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespaces_gives_roles_there_and_nothing_cluster_wide() {
    netns::require();
    let client = ControlPlane::shared().client();
    let app = pods::namespace(&client, "rbacns-app").await;
    let other = pods::namespace(&client, "rbacns-other").await;
    let watch = format!("watchNamespaces={{{app}}}");
    let release = Release::install(
        &client,
        "kb-ns",
        &[
            "class=rbac-ns",
            "statusInterval=500ms",
            "replicaCount=1",
            &watch,
        ],
    )
    .await;
    let f = &release.fullname;
    assert!(
        release
            .objects("clusterroles,clusterrolebindings", None)
            .await
            .is_empty()
    );
    assert_eq!(
        release.objects("roles", Some(&app)).await,
        [format!("role.rbac.authorization.k8s.io/{f}")]
    );
    assert_eq!(
        release.objects("roles", Some(&release.namespace)).await,
        [
            format!("role.rbac.authorization.k8s.io/{f}"),
            format!("role.rbac.authorization.k8s.io/{f}-leader"),
        ]
    );
    let args = release.args(&client).await;
    assert!(
        args.contains(&format!("--namespace={app},{}", release.namespace)),
        "{args:?}"
    );

    let pods = web_app(&client, &app, "rbac-ns", &["web-a", "web-b"]).await;
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = release.token_kubeconfig(dir.path()).await;
    let replica = Replica::start(&release, &args, &kubeconfig, "kb-ns-0").await;
    replica.register(&client, &release).await;
    until_served(replica.traffic, &["web-a", "web-b"]).await;
    for _ in 0..4 {
        assert_eq!(get_at(replica.traffic, "/").await.status, 200);
    }
    let served: Vec<u64> = pods.iter().map(|(_, b)| b.hits()).collect();
    wait::until_object(
        Api::<BalancerCluster>::namespaced(client.clone(), &app),
        "web",
        "status written under the namespaced Roles",
        |bc: &BalancerCluster| {
            bc.status
                .as_ref()
                .is_some_and(|s| s.members.iter().map(|m| m.elected).collect::<Vec<_>>() == served)
        },
    )
    .await;

    assert!(release.can("list", "pods", Some(&app)).await);
    assert!(
        release
            .can(
                "patch",
                "balancerclusters.kubebalancer.io#status",
                Some(&app)
            )
            .await
    );
    for (verb, resource, namespace) in [
        ("list", "pods", Some(other.as_str())),
        (
            "list",
            "balancerclusters.kubebalancer.io",
            Some(other.as_str()),
        ),
        ("list", "balancerclusters.kubebalancer.io", None),
        ("list", "endpointslices.discovery.k8s.io", None),
        ("create", "events.events.k8s.io", Some(other.as_str())),
        ("get", "secrets", Some(app.as_str())),
    ] {
        assert!(
            !release.can(verb, resource, namespace).await,
            "may not {verb} {resource} in {namespace:?}"
        );
    }
    assert_no_wildcards(&release.manifest().await);
}

#[tokio::test]
async fn secrets_are_readable_only_with_tls_enabled_and_only_where_the_controller_watches() {
    let client = ControlPlane::shared().client();
    // Every namespace: a ClusterRole that reads Secrets, only with tls.enabled=true.
    let off = Release::install(&client, "kb-tls-off", &["replicaCount=0"]).await;
    assert!(!off.can("get", "secrets", None).await);
    assert!(!off.can("watch", "secrets", Some(&off.namespace)).await);
    let on = Release::install(
        &client,
        "kb-tls-on",
        &["replicaCount=0", "tls.enabled=true"],
    )
    .await;
    for verb in ["get", "list", "watch"] {
        assert!(on.can(verb, "secrets", None).await, "may {verb} secrets");
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !on.can(verb, "secrets", None).await,
            "may not {verb} secrets"
        );
    }
    assert_no_wildcards(&on.manifest().await);

    // watchNamespaces: Secrets in those namespaces only.
    let app = pods::namespace(&client, "tls-app").await;
    let other = pods::namespace(&client, "tls-other").await;
    let watch = format!("watchNamespaces={{{app}}}");
    let scoped = Release::install(
        &client,
        "kb-tls-ns",
        &["replicaCount=0", "tls.enabled=true", &watch],
    )
    .await;
    assert!(scoped.can("watch", "secrets", Some(&app)).await);
    assert!(scoped.can("get", "secrets", Some(&app)).await);
    assert!(!scoped.can("get", "secrets", Some(&other)).await);
    assert!(!scoped.can("list", "secrets", None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_chart_may_not_read_is_reported_and_read_once_tls_is_enabled() {
    netns::require();
    let client = ControlPlane::shared().client();
    let release = Release::install(
        &client,
        "kb-tls-rbac",
        &["class=tls-rbac", "statusInterval=500ms", "replicaCount=1"],
    )
    .await;
    let app = pods::namespace(&client, "tls-rbac-app").await;
    let _pods = web_app(&client, &app, "tls-rbac", &["web-a"]).await;
    let cert = rcgen::generate_simple_self_signed(vec!["shop.example.com".to_owned()])
        .expect("a certificate");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "web-tls", "namespace": app},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.cert.pem(), "tls.key": cert.signing_key.serialize_pem()},
    }))
    .expect("a Secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &app)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let bc = json!({"apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "web", "namespace": app},
        "spec": {"className": "tls-rbac", "service": {"name": "web", "port": "http"},
                 "tls": [{"hosts": ["shop.example.com"], "secretName": "web-tls"}]}});
    let clusters = Api::<BalancerCluster>::namespaced(client.clone(), &app);
    clusters
        .patch(
            "web",
            &PatchParams::apply("install-tests").force(),
            &Patch::Apply(&bc),
        )
        .await
        .expect("apply the BalancerCluster");

    // The chart's ServiceAccount may not read Secrets: the replica starts and serves anyway.
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = release.token_kubeconfig(dir.path()).await;
    let args = release.args(&client).await;
    let started = Instant::now();
    let replica = Replica::start(&release, &args, &kubeconfig, "kb-tls-rbac-0").await;
    replica.register(&client, &release).await;
    until_served(replica.traffic, &["web-a"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an unreadable Secret must not hold the start up: {:?}",
        started.elapsed()
    );
    let condition = |bc: &BalancerCluster| {
        bc.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "TLSReady").cloned())
    };
    wait::until_object(clusters.clone(), "web", "TLSReady=False, forbidden", |bc| {
        condition(bc).is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("CertificateNotFound")
                && c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("forbidden"))
        })
    })
    .await;

    // Enabled: the watch's retry reads the Secret, and the certificate is served.
    ok(
        "helm",
        &[
            "upgrade",
            &release.name,
            CHART,
            "--namespace",
            &release.namespace,
            "--reuse-values",
            "--set",
            "tls.enabled=true",
        ],
    )
    .await;
    let bc = wait::until_object(clusters, "web", "TLSReady=True", |bc| {
        condition(bc).is_some_and(|c| c.status == "True")
    })
    .await;
    let shown = &bc.status.expect("status").certificates;
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].hosts, ["shop.example.com"]);
    assert!(
        !replica.process.log().contains("PRIVATE KEY"),
        "no key material in the log"
    );
}

/// gatewayAPI.enabled and installCRDs: the standard channel's CRDs (kept on uninstall), the
/// Gateway Service, the RBAC of the Gateway API, and a pod the restricted standard admits although
/// it may bind port 80. The real binary, with the chart's arguments and its ServiceAccount's
/// token, serves a Gateway and writes its status, with the Gateway Service's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_api_values_bring_crds_a_service_and_the_rights_to_serve_gateways() {
    netns::require();
    let client = ControlPlane::shared().client();
    let release = Release::install(
        &client,
        "kb-gw",
        &[
            "class=gw",
            "replicaCount=1",
            "statusInterval=500ms",
            "gatewayAPI.enabled=true",
            "gatewayAPI.installCRDs=true",
        ],
    )
    .await;
    let f = &release.fullname;
    let ns = release.namespace.clone();
    for crd in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "referencegrants",
        "grpcroutes",
    ] {
        let name = format!("crd/{crd}.gateway.networking.k8s.io");
        ok(
            "kubectl",
            &[
                "wait",
                "--for=condition=Established",
                &name,
                "--timeout=60s",
            ],
        )
        .await;
        let version = ok(
            "kubectl",
            &[
                "get",
                &name,
                "-o",
                "jsonpath={.metadata.annotations.gateway\\.networking\\.k8s\\.io/bundle-version} {.metadata.annotations.helm\\.sh/resource-policy}",
            ],
        )
        .await;
        assert_eq!(version, "v1.6.3 keep", "{crd}");
    }
    assert_eq!(
        release
            .objects("clusterroles,clusterrolebindings", None)
            .await,
        [
            format!("clusterrole.rbac.authorization.k8s.io/{f}"),
            format!("clusterrole.rbac.authorization.k8s.io/{f}-gateway-api"),
            format!("clusterrolebinding.rbac.authorization.k8s.io/{f}"),
            format!("clusterrolebinding.rbac.authorization.k8s.io/{f}-gateway-api"),
        ]
    );
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .get(&format!("{f}-gateway"))
        .await
        .expect("the Gateway Service");
    let spec = service.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<(i32, String)> = spec
        .ports
        .expect("ports")
        .iter()
        .map(|p| {
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                    s.clone()
                }
                other => format!("{other:?}"),
            };
            (p.port, target)
        })
        .collect();
    assert_eq!(
        ports,
        [
            (80, "gateway-80".to_owned()),
            (443, "gateway-443".to_owned())
        ]
    );
    let cluster_ip = spec.cluster_ip.expect("a cluster IP");
    let args = release.args(&client).await;
    assert!(
        args.contains(&format!("--gateway-service={ns}/{f}-gateway")),
        "{args:?}"
    );

    // The restricted standard admits the pod, whose one sysctl lets it bind ports below 1024.
    let namespaces = Api::<Namespace>::all(client.clone());
    let label =
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label the namespace");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(f)
        .await
        .expect("the Deployment");
    let template = deployment.spec.expect("spec").template;
    let pod_spec = template.spec.clone().expect("pod spec");
    let sysctls: Vec<(String, String)> = pod_spec
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect();
    assert_eq!(
        sysctls,
        [(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "0".to_owned()
        )]
    );
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("from-the-chart".into()),
            ..template.metadata.unwrap_or_default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("a restricted namespace admits the chart's pod");

    // The ServiceAccount serves a Gateway: reads it, its routes and namespaces, writes status.
    let app = pods::namespace(&client, "gw-app").await;
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = release.token_kubeconfig(dir.path()).await;
    let _replica = Replica::start(&release, &args, &kubeconfig, "kb-gw-0").await;
    let class = format!("kb-{app}");
    let apply = |kind: &str, value: Value| {
        let client = client.clone();
        let kind = kind.to_owned();
        async move {
            let resource = match kind.as_str() {
                "GatewayClass" => "gatewayclasses",
                "Gateway" => "gateways",
                _ => "httproutes",
            };
            let gvk = kube::api::ApiResource {
                group: "gateway.networking.k8s.io".into(),
                version: "v1".into(),
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: kind.clone(),
                plural: resource.into(),
            };
            let api: Api<kube::api::DynamicObject> = match value["metadata"]["namespace"].as_str() {
                Some(ns) => Api::namespaced_with(client, ns, &gvk),
                None => Api::all_with(client, &gvk),
            };
            let name = value["metadata"]["name"].as_str().expect("name").to_owned();
            api.patch(
                &name,
                &PatchParams::apply("install-tests").force(),
                &Patch::Apply(&value),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
        }
    };
    apply(
        "GatewayClass",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": class},
               "spec": {"controllerName": "kubebalancer.io/gateway-controller"}}),
    )
    .await;
    apply(
        "Gateway",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw", "namespace": app},
               "spec": {"gatewayClassName": class,
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await;
    apply(
        "HTTPRoute",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "web", "namespace": app},
               "spec": {"parentRefs": [{"name": "gw"}],
                        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    )
    .await;
    let gateways = Api::<kube_balancer::gateway::api::Gateway>::namespaced(client.clone(), &app);
    wait::until_object(
        gateways,
        "gw",
        "the Gateway programmed at the Service's address",
        |g| {
            g.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status == "True")
                    && s.addresses
                        .iter()
                        .map(|a| a.value.as_str())
                        .collect::<Vec<_>>()
                        == [cluster_ip.as_str()]
                    && s.listeners.first().is_some_and(|l| l.attached_routes == 1)
            })
        },
    )
    .await;
    let routes = Api::<kube_balancer::gateway::api::HTTPRoute>::namespaced(client.clone(), &app);
    wait::until_object(routes, "web", "the route's status", |r| {
        r.status.as_ref().is_some_and(|s| {
            s.parents.iter().any(|p| {
                p.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
                    && p.conditions
                        .iter()
                        .any(|c| c.type_ == "ResolvedRefs" && c.reason == "BackendNotFound")
            })
        })
    })
    .await;
    let classes = Api::<kube_balancer::gateway::api::GatewayClass>::all(client.clone());
    wait::until_object(classes, &class, "the class accepted", |c| {
        c.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "True")
        })
    })
    .await;

    let home = Some(app.as_str());
    for (verb, resource, namespace) in [
        ("watch", "gatewayclasses.gateway.networking.k8s.io", None),
        (
            "patch",
            "gatewayclasses.gateway.networking.k8s.io#status",
            None,
        ),
        ("list", "gateways.gateway.networking.k8s.io", None),
        ("patch", "gateways.gateway.networking.k8s.io#status", home),
        ("list", "httproutes.gateway.networking.k8s.io", None),
        ("patch", "httproutes.gateway.networking.k8s.io#status", home),
        ("watch", "referencegrants.gateway.networking.k8s.io", None),
        ("watch", "namespaces", None),
    ] {
        assert!(
            release.can(verb, resource, namespace).await,
            "may {verb} {resource}"
        );
    }
    for (verb, resource, namespace) in [
        ("create", "gatewayclasses.gateway.networking.k8s.io", None),
        ("patch", "gatewayclasses.gateway.networking.k8s.io", None),
        ("patch", "gateways.gateway.networking.k8s.io", home),
        ("delete", "httproutes.gateway.networking.k8s.io", home),
        (
            "patch",
            "referencegrants.gateway.networking.k8s.io#status",
            home,
        ),
        ("create", "referencegrants.gateway.networking.k8s.io", home),
        ("delete", "namespaces", None),
        ("get", "secrets", home),
    ] {
        assert!(
            !release.can(verb, resource, namespace).await,
            "may not {verb} {resource}"
        );
    }
    assert_no_wildcards(&release.manifest().await);

    // Uninstalled: the CRDs stay, and with them the Gateways.
    ok("helm", &["uninstall", "kb-gw", "-n", &ns]).await;
    ok(
        "kubectl",
        &["get", "crd", "gateways.gateway.networking.k8s.io"],
    )
    .await;
    ok("kubectl", &["get", "gateway", "gw", "-n", &app]).await;
}
