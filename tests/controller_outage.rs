//! The API server goes away: the data plane keeps serving the last member lists. In a test binary
//! of its own, since it takes the control plane down for good.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, CustomResourceExt};
use serde_json::json;

use kube_balancer::api::BalancerCluster;
use kube_balancer::controller::{self, Options, index::Scope};
use kube_balancer::proxy::{DataPlane, ProxyOptions, Server};
use support::backend::{self, Backend};
use support::controlplane::ControlPlane;
use support::pods::{self, FakePod};
use support::{netns, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_keeps_serving_when_the_api_server_is_gone() {
    netns::require();
    let cp = ControlPlane::shared();
    let client = cp.client();
    let crd = BalancerCluster::crd();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd.metadata.name.clone().expect("name");
    crds.patch(
        &name,
        &PatchParams::apply("kube-balancer-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD");
    tokio::time::timeout(
        wait::TIMEOUT,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("in time")
    .expect("watch");
    let ns = pods::namespace(&client, "outage").await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("service");
    let mut backends = Vec::new();
    for name in ["web-a", "web-b"] {
        let ip = netns::next_pod_ip();
        let b = Backend::start(name, ip).await;
        FakePod::new(&ns, name, ip)
            .label("app", "web")
            .port("http", b.addr.port())
            .create(&client)
            .await;
        backends.push(b);
    }
    let bc = json!({"apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "web", "namespace": ns}, "spec": {"service": {"name": "web", "port": "http"}}});
    Api::<BalancerCluster>::namespaced(client.clone(), &ns)
        .patch(
            "web",
            &PatchParams::apply("kube-balancer-tests").force(),
            &Patch::Apply(&bc),
        )
        .await
        .expect("apply");

    let plane = DataPlane::new();
    let options = Options {
        kubeconfig: None,
        namespaces: vec![ns.clone()],
        scope: Scope {
            class: "default".into(),
            only: None,
        },
        status_interval: Duration::from_millis(500),
        write_status: true,
        identity: "replica-1".into(),
        lease_namespace: ns.clone(),
        lease_name: "kube-balancer".into(),
        lease_duration: Duration::from_secs(3),
        peers_service: None,
        admin_port: 9901,
    };
    let _controller = controller::start(client.clone(), options, plane.clone())
        .await
        .expect("start");
    let mut proxy = ProxyOptions::new("127.0.0.1:0".parse().expect("addr"));
    proxy.workers = 1;
    let server = Server::start(plane.clone(), proxy).expect("data plane");
    let deadline = tokio::time::Instant::now() + wait::TIMEOUT;
    while plane
        .snapshot()
        .cluster(&ns, "web")
        .map_or(0, |c| c.config.members.len())
        != 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "members never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    cp.stop_apiserver();
    // The watches now fail and back off; for the next 3 seconds every request is still served,
    // alternating between the last known members.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut served = Vec::new();
    while tokio::time::Instant::now() < until {
        let (status, body) = backend::get(server.local_addr(), "/").await;
        assert_eq!(
            status,
            200,
            "request {} failed with the API server gone",
            served.len()
        );
        served.push(body);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served.len() > 20);
    for (i, body) in served.iter().enumerate() {
        assert_eq!(body, ["web-a", "web-b"][i % 2]);
    }
    assert!(plane.is_ready());
    tokio::task::spawn_blocking(move || server.shutdown(Duration::from_millis(100)))
        .await
        .expect("join");
}
