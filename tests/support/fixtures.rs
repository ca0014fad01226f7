//! Kubernetes fixtures shared by the end-to-end tests: our CRD installed, a Service `web` over
//! kubelet-less pods that each run a backend on their pod IP, a BalancerCluster in front, and the
//! controller's options for a test namespace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt};
use serde_json::json;

use kube_balancer::api::BalancerCluster;
use kube_balancer::controller::{self, Options, index::Scope};
use kube_balancer::discovery::MemberConfig;
use kube_balancer::plane::DataPlane;
use kube_balancer::proxy::Server;

use super::backend::Backend;
use super::netns;
use super::pods::FakePod;
use super::{proxy, wait};

/// Installs (or updates) the BalancerCluster CRD and waits until it is established.
pub async fn install_crd(client: &Client) {
    let crd = BalancerCluster::crd();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd.metadata.name.clone().expect("name");
    crds.patch(
        &name,
        &PatchParams::apply("kube-balancer-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server takes our CRD");
    tokio::time::timeout(
        wait::TIMEOUT,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("established in time")
    .expect("watch");
}

/// A Service `web` in `ns` selecting `app=web` pods on their port named `http`.
pub async fn web_service(client: &Client, ns: &str) {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
}

/// Pods with the given names, labelled `app=web`, each running a backend on its own pod IP.
pub async fn web_pods(client: &Client, ns: &str, names: &[&str]) -> Vec<(FakePod, Backend)> {
    let mut out = Vec::new();
    for name in names {
        let ip = netns::next_pod_ip();
        let backend = Backend::start_on(name, ip).await;
        let pod = FakePod::new(ns, name, ip)
            .label("app", "web")
            .port("http", backend.addr.port());
        pod.create(client).await;
        out.push((pod, backend));
    }
    out
}

pub async fn apply_cluster(client: &Client, ns: &str, spec: serde_json::Value) {
    let bc = json!({"apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster", "metadata": {"name": "web", "namespace": ns}, "spec": spec});
    Api::<BalancerCluster>::namespaced(client.clone(), ns)
        .patch(
            "web",
            &PatchParams::apply("kube-balancer-tests").force(),
            &Patch::Apply(&bc),
        )
        .await
        .expect("apply the BalancerCluster");
}

/// The controller's options for one test namespace: status every 500 ms, a 3 s Lease.
pub fn options(ns: &str, identity: &str) -> Options {
    Options {
        kubeconfig: None,
        namespaces: vec![ns.to_owned()],
        scope: Scope {
            class: "default".into(),
            only: None,
        },
        status_interval: Duration::from_millis(500),
        write_status: true,
        identity: identity.to_owned(),
        lease_namespace: ns.to_owned(),
        lease_name: "kube-balancer".to_owned(),
        lease_duration: Duration::from_secs(3),
        peers_service: None,
        admin_port: 9901,
        admin_token: None,
        gateway: None,
    }
}

/// A controller and a data plane (`proxy::options`) fed by it, as `run` starts them.
/// Stopped when dropped.
pub struct Balancer {
    pub plane: Arc<DataPlane>,
    pub controller: controller::Controller,
    server: Option<Server>,
    /// Active health checks, as `run` starts them next to the data plane.
    _checker: kube_balancer::health::Checker,
}

impl Balancer {
    pub async fn start(client: &Client, options: Options) -> Balancer {
        let plane = DataPlane::new();
        let controller = controller::start(client.clone(), options, plane.clone())
            .await
            .expect("the controller starts");
        let server = Server::start(plane.clone(), proxy::options()).expect("the data plane starts");
        let _checker = kube_balancer::health::Checker::start(plane.clone()).expect("checks start");
        Balancer {
            _checker,
            plane,
            controller,
            server: Some(server),
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().expect("running").local_addr()
    }

    /// Whether this replica holds the leader Lease now.
    pub fn leads(&self) -> bool {
        self.controller
            .leadership
            .as_ref()
            .is_some_and(|l| l.is_leader())
    }

    /// The members the data plane serves for `ns/web` now.
    pub fn member_configs(&self, ns: &str) -> Vec<MemberConfig> {
        self.plane
            .snapshot()
            .cluster(ns, "web")
            .map(|c| c.config.members.clone())
            .unwrap_or_default()
    }

    /// Waits until `show` of the served members equals `want`; returns the time it took.
    pub async fn wait_members_shown(
        &self,
        ns: &str,
        want: &[&str],
        show: impl Fn(&MemberConfig) -> String,
    ) -> Duration {
        let start = Instant::now();
        let deadline = start + wait::TIMEOUT;
        loop {
            let now: Vec<String> = self.member_configs(ns).iter().map(&show).collect();
            if now == want {
                return start.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for members {want:?}; last seen {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until the members, shown as `pod:State`, are `want`; returns the time it took.
    pub async fn wait_members(&self, ns: &str, want: &[&str]) -> Duration {
        self.wait_members_shown(ns, want, |m| {
            format!("{}:{:?}", m.pod.clone().unwrap_or_default(), m.state)
        })
        .await
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.controller.stop();
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_millis(100));
        }
    }
}
