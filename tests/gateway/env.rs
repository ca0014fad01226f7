//! The test environment for the Gateway API conformance suite (docs/testenv.md): the pod runner
//! runs the real echo-basic for the Pods that the real Deployment and ReplicaSet controllers create,
//! the real EndpointSlice controller publishes them, and the suite's own binary runs against the
//! control plane.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::support::client::{Answer, get_at};
use crate::support::controlplane::ControlPlane;
use crate::support::podrunner::conformance::{self, Suite};
use crate::support::podrunner::{GATEWAY_API_VERSION, NODE_NAME, PodRunner};
use crate::support::{pods, wait};

#[test]
fn the_pinned_gateway_api_version_is_the_one_testenv_builds() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/testenv.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg("versions")
        .output()
        .expect("run testenv.sh");
    assert!(output.status.success());
    let versions = String::from_utf8_lossy(&output.stdout);
    let line = format!("gateway-api {GATEWAY_API_VERSION}");
    assert_eq!(
        versions
            .lines()
            .filter(|l| l.starts_with("gateway-api "))
            .collect::<Vec<_>>(),
        [line.as_str()]
    );
}

/// An echo-basic Deployment and Service shaped as the suite's `infra-backend-v1`.
async fn echo_deployment(client: &Client, namespace: &str, name: &str, replicas: i32) {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"app": name},
            "ports": [
                {"name": "first-port", "protocol": "TCP", "port": 8080, "targetPort": 3000},
                {"name": "second-port", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c",
                 "port": 8081, "targetPort": 3001},
            ],
        },
    }))
    .expect("a Service");
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await
        .expect("create the Service");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": name,
                    "image": "registry.k8s.io/gateway-api/echo-basic:v1.5.1",
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    ],
                    "resources": {"requests": {"cpu": "10m"}},
                }]},
            },
        },
    }))
    .expect("a Deployment");
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Sends `GET /` to echo-basic at `ip:3000` and returns the pod and namespace it names.
async fn who_answers(ip: Ipv4Addr) -> (String, String) {
    let Answer { status, body, .. } = get_at(SocketAddr::from((ip, 3000)), "/").await;
    assert_eq!(
        status, 200,
        "echo-basic at {ip}:3000 answered {status}: {body}"
    );
    let echo: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("echo-basic's answer is JSON ({e}): {body}"));
    (
        echo["pod"].as_str().unwrap_or_default().to_owned(),
        echo["namespace"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Waits until the Service's EndpointSlices list exactly `ips`, each ready, and returns them.
async fn until_endpoints(client: &Client, namespace: &str, service: &str, ips: &BTreeSet<String>) {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
    let selector = format!("kubernetes.io/service-name={service}");
    wait::until_list(
        slices,
        watcher::Config::default().labels(&selector),
        &format!("the EndpointSlices of {service} to list exactly {ips:?}"),
        |slices| {
            let listed: Vec<(String, bool)> = slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .flat_map(|e| {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
                    e.addresses.iter().map(move |a| (a.clone(), ready))
                })
                .collect();
            listed.len() == ips.len() && listed.iter().all(|(ip, ready)| *ready && ips.contains(ip))
        },
    )
    .await;
}

#[tokio::test]
async fn an_echo_basic_deployment_runs_on_the_pod_runner_and_is_published() {
    let runner = PodRunner::shared();
    let client = ControlPlane::shared().client();
    let namespace = pods::namespace(&client, "gw-echo").await;
    echo_deployment(&client, &namespace, "infra-backend-v1", 2).await;

    let pod_api = Api::<Pod>::namespaced(client.clone(), &namespace);
    let two_ready = |pods: &[std::sync::Arc<Pod>]| {
        pods.len() == 2 && pods.iter().all(|p| is_ready(p) && pod_ip(p).is_some())
    };
    let first = wait::until_list(
        pod_api.clone(),
        watcher::Config::default().labels("app=infra-backend-v1"),
        "two ready echo-basic pods",
        two_ready,
    )
    .await;
    let ips: BTreeSet<String> = first
        .iter()
        .map(|p| pod_ip(p).expect("a pod IP").to_string())
        .collect();
    assert_eq!(ips.len(), 2, "the pods have distinct IPs: {ips:?}");
    for pod in &first {
        let spec = pod.spec.as_ref().expect("a spec");
        assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
        let ip = pod_ip(pod).expect("a pod IP");
        assert!(
            ip.octets()[..3] == [10, 244, 1],
            "{ip} is in the runner's range"
        );
    }
    until_endpoints(&client, &namespace, "infra-backend-v1", &ips).await;

    // Each pod IP is answered by echo-basic naming that pod and namespace.
    for pod in &first {
        let ip = pod_ip(pod).expect("a pod IP");
        assert_eq!(who_answers(ip).await, (pod.name_any(), namespace.clone()));
    }

    // Deleting a pod stops its process and removes its veth; the ReplicaSet's replacement runs.
    let victim = first[0].name_any();
    let running = runner
        .pod(&namespace, &victim)
        .expect("the runner runs the pod");
    let pid = running.pid.expect("an echo-basic process");
    let veth = running.veth.clone().expect("a veth");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(Path::new(&format!("/sys/class/net/{veth}")).exists());
    pod_api
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("delete the pod");
    wait::until_gone(pod_api.clone(), &victim, "the deleted pod to be gone").await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "echo-basic (pid {pid}) still runs after its pod was deleted"
    );
    assert!(
        !Path::new(&format!("/sys/class/net/{veth}")).exists(),
        "the veth {veth} is still there after its pod was deleted"
    );
    assert_eq!(runner.pod(&namespace, &victim), None);

    let second = wait::until_list(
        pod_api.clone(),
        watcher::Config::default().labels("app=infra-backend-v1"),
        "a ready replacement pod",
        |pods| two_ready(pods) && pods.iter().all(|p| p.name_any() != victim),
    )
    .await;
    let ips: BTreeSet<String> = second
        .iter()
        .map(|p| pod_ip(p).expect("a pod IP").to_string())
        .collect();
    assert_eq!(ips.len(), 2, "the pods have distinct IPs: {ips:?}");
    until_endpoints(&client, &namespace, "infra-backend-v1", &ips).await;
    for pod in &second {
        let ip = pod_ip(pod).expect("a pod IP");
        assert_eq!(who_answers(ip).await, (pod.name_any(), namespace.clone()));
    }

    // The namespace controller and the garbage collector take everything away; the runner stops it.
    let pids: Vec<u32> = second
        .iter()
        .map(|p| {
            runner
                .pod(&namespace, &p.name_any())
                .and_then(|r| r.pid)
                .expect("a process")
        })
        .collect();
    Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    wait::until_gone(
        Api::<Namespace>::all(client.clone()),
        &namespace,
        "the namespace to be deleted",
    )
    .await;
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still runs"
        );
    }
}

/// A self-signed certificate Secret (`kubernetes.io/tls`), as the suite's Setup makes.
async fn tls_secret(client: &Client, namespace: &str, name: &str, host: &str) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("a certificate");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create secret {namespace}/{name}: {e}"));
}

#[tokio::test]
async fn the_suites_base_manifests_come_up_ready() {
    let _exclusive = conformance::exclusive().await;
    conformance::until_suite_namespaces_gone().await;
    let runner = PodRunner::shared();
    let control_plane = ControlPlane::shared();
    let client = control_plane.client();
    conformance::install_crds().await;

    // As the suite applies them: its GatewayClass name in place of the placeholder.
    let manifests = std::fs::read_to_string(conformance::base_manifests())
        .expect("read the base manifests")
        .replace(conformance::GATEWAY_CLASS_PLACEHOLDER, "kb-env-check");
    let applied = runner.dir().join("base-manifests.yaml");
    std::fs::write(&applied, &manifests).expect("write the manifests");
    let path = applied.display().to_string();
    control_plane.run("kubectl", &["apply", "-f", &path]).await;
    // The Secrets that the suite's Setup creates and the TLS backends mount.
    tls_secret(
        &client,
        conformance::SUITE_NAMESPACES[0],
        "tls-checks-certificate",
        "abc.example.com",
    )
    .await;
    for namespace in conformance::SUITE_NAMESPACES[..2].iter() {
        tls_secret(
            &client,
            namespace,
            "tls-passthrough-checks-certificate",
            "abc.example.com",
        )
        .await;
    }

    let mut expected = 0;
    let mut deployments = 0;
    for namespace in conformance::SUITE_NAMESPACES {
        for deployment in Api::<Deployment>::namespaced(client.clone(), namespace)
            .list(&Default::default())
            .await
            .expect("list the Deployments")
        {
            deployments += 1;
            expected += deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
        }
    }
    assert_eq!(
        deployments, 14,
        "13 echo-basic Deployments and a CoreDNS one"
    );

    let pod_api = Api::<Pod>::all(client.clone());
    let in_suite = |p: &Pod| {
        conformance::SUITE_NAMESPACES.contains(&p.namespace().unwrap_or_default().as_str())
    };
    let pods = wait::until_list(
        pod_api,
        watcher::Config::default(),
        &format!("{expected} ready pods in the suite's namespaces"),
        |pods| {
            let suite: Vec<_> = pods.iter().filter(|p| in_suite(p)).collect();
            suite.len() == expected as usize && suite.iter().all(|p| is_ready(p))
        },
    )
    .await;
    let suite: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| in_suite(p))
        .collect();

    // Every echo-basic runs and answers as its pod; CoreDNS alone is a placeholder, and says so.
    let mut placeholders = Vec::new();
    for pod in &suite {
        let running = runner
            .pod(&pod.namespace().unwrap_or_default(), &pod.name_any())
            .unwrap_or_else(|| panic!("the runner runs {}", pod.name_any()));
        let image = pod.spec.as_ref().expect("a spec").containers[0]
            .image
            .clone()
            .unwrap_or_default();
        if running.pid.is_none() {
            placeholders.push(image);
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
                .expect("a Ready condition");
            assert_eq!(ready.reason.as_deref(), Some("PodRunnerPlaceholder"));
            continue;
        }
        let env = pod.spec.as_ref().expect("a spec").containers[0]
            .env
            .clone()
            .unwrap_or_default();
        // Plain HTTP on 3000 in echo-basic's HTTP mode; its gRPC and TCP modes answer otherwise.
        if env
            .iter()
            .any(|e| e.name == "GRPC_ECHO_SERVER" || e.name == "TCP_ECHO_SERVER")
        {
            continue;
        }
        let ip = pod_ip(pod).expect("a pod IP");
        assert_eq!(
            who_answers(ip).await,
            (pod.name_any(), pod.namespace().unwrap_or_default())
        );
    }
    assert_eq!(placeholders, ["registry.k8s.io/coredns/coredns:v1.12.2"]);

    for namespace in conformance::SUITE_NAMESPACES {
        Api::<Namespace>::all(client.clone())
            .delete(namespace, &DeleteParams::default())
            .await
            .expect("delete the namespace");
    }
}

#[tokio::test]
async fn the_conformance_suite_runs_against_the_environment_and_waits_for_its_gateway_class() {
    let _exclusive = conformance::exclusive().await;
    let runner = PodRunner::shared();
    // A GatewayClass that no controller accepts: the suite must start, find the CRDs of its own
    // release, and stop at its first wait, for the class to be accepted.
    conformance::install_crds().await;
    let class = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "kb-nobody"},
        "spec": {"controllerName": "kubebalancer.io/nobody"},
    });
    let path = runner.dir().join("gateway-class-kb-nobody.json");
    std::fs::write(&path, class.to_string()).expect("write the GatewayClass");
    ControlPlane::shared()
        .run("kubectl", &["apply", "-f", &path.display().to_string()])
        .await;

    let report = runner.dir().join("report-kb-nobody.yaml");
    let mut suite = Suite::new("kb-nobody", &report);
    suite.supported_features = vec!["Gateway".into(), "HTTPRoute".into()];
    suite.conformance_profiles = vec!["GATEWAY-HTTP".into()];
    suite.extra = vec!["--timeout-config-overrides=GWCMustBeAccepted:5".into()];
    let run = suite.run().await;

    assert!(
        !run.status.success(),
        "the suite passed with no implementation:\n{}",
        run.output
    );
    let said = |text: &str| run.output.contains(text);
    assert!(
        said("Test Setup: Ensuring GatewayClass has been accepted"),
        "the suite did not reach its setup:\n{}",
        run.output
    );
    assert!(
        said("error waiting for kb-nobody GatewayClass to have Accepted condition"),
        "the suite failed for another reason than the GatewayClass:\n{}",
        run.output
    );
    assert_eq!(
        run.results(),
        ["--- FAIL: TestConformance"],
        "{}",
        run.output
    );
    let report = run
        .report
        .unwrap_or_else(|| panic!("no report:\n{}", run.output));
    assert!(
        report.contains(&format!("gatewayAPIVersion: {GATEWAY_API_VERSION}")),
        "{report}"
    );
    assert!(
        report.contains("gatewayAPIChannel: experimental"),
        "{report}"
    );
}
