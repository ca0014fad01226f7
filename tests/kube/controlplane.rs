//! The test control plane itself (docs/testenv.md): our CRD on a real API server, the real
//! EndpointSlice controller publishing kubelet-less pods, traffic to a pod IP inside the test
//! network namespace, and the real kubectl and helm at the pinned versions.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Api, Client, CustomResourceExt};
use serde_json::json;

use crate::support::backend::Backend;
use crate::support::client::{Answer, get_at};
use crate::support::controlplane::{self, ControlPlane};
use crate::support::pods::{self, FakePod};
use crate::support::{netns, wait};

#[test]
fn the_pinned_versions_are_the_ones_testenv_builds() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/testenv.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg("versions")
        .output()
        .expect("run testenv.sh");
    assert!(
        output.status.success(),
        "testenv.sh versions: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = format!(
        "kubernetes {}\netcd {}\nhelm {}\ngateway-api {}\nopentelemetry-collector {}\nprometheus {}\n",
        controlplane::KUBERNETES_VERSION,
        controlplane::ETCD_VERSION,
        controlplane::HELM_VERSION,
        crate::support::podrunner::GATEWAY_API_VERSION,
        controlplane::OTELCOL_VERSION,
        controlplane::PROMETHEUS_VERSION
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
}

#[tokio::test]
async fn the_api_server_establishes_our_crd() {
    let client = ControlPlane::shared().client();
    let crd = kube_balancer::api::BalancerCluster::crd();
    let name = crd.metadata.name.clone().expect("the CRD has a name");
    assert_eq!(name, "balancerclusters.kubebalancer.io");
    let crds = Api::<CustomResourceDefinition>::all(client);
    crds.patch(
        &name,
        &PatchParams::apply("kube-balancer-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("the API server refused our CRD: {e}"));

    let established = tokio::time::timeout(
        wait::TIMEOUT,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("the CRD is established in time")
    .expect("the CRD watch works")
    .expect("the CRD exists");
    let accepted = established
        .status
        .expect("a status")
        .accepted_names
        .expect("accepted names");
    assert_eq!(accepted.kind, "BalancerCluster");
    assert_eq!(accepted.plural, "balancerclusters");
    assert_eq!(
        accepted.short_names,
        Some(vec!["bc".to_string(), "balancer".to_string()])
    );
}

#[tokio::test]
async fn the_endpointslice_controller_publishes_a_fake_pod_whose_backend_answers() {
    let control_plane = ControlPlane::shared();
    let client = control_plane.client();
    let namespace = pods::namespace(&client, "publish").await;
    let ip = netns::next_pod_ip();
    let backend = Backend::start_on("web-0", ip).await;
    create_service(&client, &namespace, "web").await;

    let pod = FakePod::new(&namespace, "web-0", ip)
        .label("app", "web")
        .port("http", backend.addr.port());
    pod.create(&client).await;

    let endpoint = published_endpoint(&client, &namespace, "web", "ready", |e| {
        ready(e) == Some(true)
    })
    .await;
    assert_eq!(endpoint.addresses, vec![ip.to_string()]);
    let conditions = endpoint.conditions.clone().expect("conditions");
    assert_eq!(
        (conditions.ready, conditions.serving, conditions.terminating),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(endpoint.node_name.as_deref(), Some(pods::NODE_NAME));
    let target = endpoint.target_ref.expect("a target reference");
    assert_eq!(
        (target.kind.as_deref(), target.name.as_deref()),
        (Some("Pod"), Some("web-0"))
    );
    let slice = only_slice(&client, &namespace, "web").await;
    assert_eq!(slice.address_type, "IPv4");
    let port = slice
        .ports
        .expect("ports")
        .into_iter()
        .next()
        .expect("one port");
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (
            Some("http"),
            Some(i32::from(backend.addr.port())),
            Some("TCP")
        )
    );

    // The address the controller published reaches the backend, inside the test namespace.
    let published: IpAddr = endpoint.addresses[0].parse().expect("an IP address");
    let Answer { status, body, .. } = get_at((published, backend.addr.port()).into(), "/").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "web-0"));
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn the_pod_helpers_move_an_endpoint_through_not_ready_terminating_and_gone() {
    let client = ControlPlane::shared().client();
    let namespace = pods::namespace(&client, "lifecycle").await;
    create_service(&client, &namespace, "web").await;
    let pod = FakePod::new(&namespace, "web-0", netns::next_pod_ip())
        .label("app", "web")
        .port("http", 8080);
    pod.create(&client).await;
    published_endpoint(&client, &namespace, "web", "ready", |e| {
        ready(e) == Some(true)
    })
    .await;

    pod.set_ready(&client, false).await;
    let endpoint = published_endpoint(&client, &namespace, "web", "not ready", |e| {
        ready(e) == Some(false)
    })
    .await;
    let conditions = endpoint.conditions.expect("conditions");
    assert_eq!(
        (conditions.ready, conditions.serving, conditions.terminating),
        (Some(false), Some(false), Some(false))
    );

    pod.set_ready(&client, true).await;
    published_endpoint(&client, &namespace, "web", "ready again", |e| {
        ready(e) == Some(true)
    })
    .await;

    let terminating = pod.terminate(&client).await;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let endpoint = published_endpoint(&client, &namespace, "web", "terminating", |e| {
        e.conditions.as_ref().and_then(|c| c.terminating) == Some(true)
    })
    .await;
    let conditions = endpoint.conditions.expect("conditions");
    // A terminating pod is not ready, but still serving while its readiness holds.
    assert_eq!(
        (conditions.ready, conditions.serving, conditions.terminating),
        (Some(false), Some(true), Some(true))
    );

    pod.delete(&client).await;
    let slices = wait::until_list(
        Api::<EndpointSlice>::namespaced(client.clone(), &namespace),
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
        "the endpoint to be withdrawn",
        |slices| slices.iter().all(|s| s.endpoints.is_empty()),
    )
    .await;
    assert_eq!(slices.len(), 1, "the Service keeps one empty slice");
}

#[tokio::test]
async fn kubectl_and_helm_are_the_pinned_versions_and_see_the_server_as_such() {
    let control_plane = ControlPlane::shared();

    let versions: serde_json::Value = serde_json::from_str(
        &control_plane
            .run("kubectl", &["version", "--output=json"])
            .await,
    )
    .expect("JSON");
    for side in ["clientVersion", "serverVersion"] {
        assert_eq!(
            versions[side]["gitVersion"],
            controlplane::KUBERNETES_VERSION,
            "{side}"
        );
        assert_eq!(
            (&versions[side]["major"], &versions[side]["minor"]),
            (&json!("1"), &json!("35")),
            "{side}"
        );
    }

    let helm = control_plane.run("helm", &["version", "--short"]).await;
    assert_eq!(helm.trim(), controlplane::HELM_VERSION);

    // A chart that requires Kubernetes 1.35 and prints the version helm believes in: the server's
    // when validating against it, and helm's built-in default otherwise.
    let chart = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(chart.path().join("templates")).expect("templates/");
    std::fs::write(
        chart.path().join("Chart.yaml"),
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: \">= 1.35.0-0\"\n",
    )
    .expect("Chart.yaml");
    std::fs::write(
        chart.path().join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  \
         kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n",
    )
    .expect("configmap.yaml");
    let chart_dir = chart.path().to_str().expect("a UTF-8 path");
    let from_server = control_plane
        .run("helm", &["template", "probe", chart_dir, "--validate"])
        .await;
    assert!(
        from_server.contains("kubeVersion: \"v1.35.4\""),
        "{from_server}"
    );
    let built_in = control_plane
        .run("helm", &["template", "probe", chart_dir])
        .await;
    assert!(built_in.contains("kubeVersion: \"v1.35.0\""), "{built_in}");
}

/// A Service `name` selecting `app=<name>` pods, port 80 named http to their port named http.
async fn create_service(client: &Client, namespace: &str, name: &str) {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }))
    .expect("a Service");
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|e| panic!("create service {namespace}/{name}: {e}"));
}

fn ready(endpoint: &Endpoint) -> Option<bool> {
    endpoint.conditions.as_ref().and_then(|c| c.ready)
}

/// Waits until the Service's slices hold exactly one endpoint, for which `done` holds.
async fn published_endpoint(
    client: &Client,
    namespace: &str,
    service: &str,
    what: &str,
    mut done: impl FnMut(&Endpoint) -> bool,
) -> Endpoint {
    let slices = wait::until_list(
        Api::<EndpointSlice>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}")),
        &format!("the endpoint of {namespace}/{service} to be published {what}"),
        |slices| {
            let endpoints: Vec<&Endpoint> = slices.iter().flat_map(|s| &s.endpoints).collect();
            endpoints.len() == 1 && done(endpoints[0])
        },
    )
    .await;
    slices
        .iter()
        .flat_map(|s| s.endpoints.clone())
        .next()
        .expect("one endpoint")
}

async fn only_slice(client: &Client, namespace: &str, service: &str) -> EndpointSlice {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("kubernetes.io/service-name={service}")),
        )
        .await
        .expect("list slices");
    assert_eq!(slices.items.len(), 1, "one slice for {namespace}/{service}");
    slices.items.into_iter().next().expect("one slice")
}
