//! Nodes and Pods without a kubelet.
//!
//! Nothing runs the Pods: a test creates a Node object and Pods bound to it (`spec.nodeName`), then
//! writes each Pod's status itself (phase Running, Ready, a pod IP), as a kubelet would. The real
//! EndpointSlice controller in kube-controller-manager then publishes them; it skips a Pod whose
//! Node does not exist or which has no pod IP. The helpers below also move a Pod to not-ready, to
//! terminating and away, which is what the controller tests need to observe.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::{netns, wait};

/// The Node that every fake Pod is bound to.
pub const NODE_NAME: &str = "kb-test-node";

/// Creates a namespace with a fresh name that starts with `prefix`, and returns the name. Tests
/// share one control plane, so each works in its own namespace.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    name
}

/// Creates the Node that fake Pods run on, if it is not there yet.
pub async fn ensure_node(client: &Client) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": NODE_NAME,
            "labels": {"kubernetes.io/hostname": NODE_NAME},
        },
    }))
    .expect("a Node");
    let nodes = Api::<Node>::all(client.clone());
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("create node {NODE_NAME}: {e}"),
    }
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": netns::NODE_IP.to_string()}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("mark node {NODE_NAME} ready: {e}"));
}

/// A Pod as a kubelet would report it once its container runs. Build it, then `create` it.
#[derive(Clone, Debug)]
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    ports: Vec<(String, u16)>,
}

impl FakePod {
    pub fn new(namespace: &str, name: &str, ip: Ipv4Addr) -> Self {
        FakePod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            ports: Vec::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// A named container port, which a Service's `targetPort` can refer to.
    pub fn port(mut self, name: &str, port: u16) -> Self {
        self.ports.push((name.to_owned(), port));
        self
    }

    /// Creates the Pod on the fake Node and reports it Running and Ready at its IP.
    pub async fn create(&self, client: &Client) -> Pod {
        ensure_node(client).await;
        let ports: Vec<_> = self
            .ports
            .iter()
            .map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
            },
            "spec": {
                "nodeName": NODE_NAME,
                "containers": [{"name": "app", "image": "kube-balancer.test/backend:0", "ports": ports}],
            },
        }))
        .expect("a Pod");
        self.api(client)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {}/{}: {e}", self.namespace, self.name));
        let ip = self.ip.to_string();
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": netns::NODE_IP.to_string(),
            "hostIPs": [{"ip": netns::NODE_IP.to_string()}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now(),
            "conditions": [
                condition("PodScheduled", true),
                condition("Initialized", true),
                condition("ContainersReady", true),
                condition("Ready", true),
            ],
        }});
        self.patch_status(client, &status).await
    }

    /// Reports the Pod's readiness, as a kubelet does when a readiness probe flips.
    pub async fn set_ready(&self, client: &Client, ready: bool) -> Pod {
        let status = json!({"status": {
            "conditions": [condition("ContainersReady", ready), condition("Ready", ready)],
        }});
        self.patch_status(client, &status).await
    }

    /// Deletes the Pod gracefully. Without a kubelet to finish the deletion it stays, terminating
    /// (`metadata.deletionTimestamp` set), until `delete`.
    pub async fn terminate(&self, client: &Client) -> Pod {
        let params = DeleteParams {
            grace_period_seconds: Some(600),
            ..DeleteParams::default()
        };
        self.api(client)
            .delete(&self.name, &params)
            .await
            .unwrap_or_else(|e| panic!("terminate pod {}/{}: {e}", self.namespace, self.name));
        wait::until_object(
            self.api(client),
            &self.name,
            "the pod to be terminating",
            |pod: &Pod| pod.metadata.deletion_timestamp.is_some(),
        )
        .await
    }

    /// Deletes the Pod at once (grace period 0, what a kubelet does last) and waits until it is gone.
    pub async fn delete(&self, client: &Client) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match self.api(client).delete(&self.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(e) => panic!("delete pod {}/{}: {e}", self.namespace, self.name),
        }
        wait::until_gone(self.api(client), &self.name, "the pod to be deleted").await;
    }

    fn api(&self, client: &Client) -> Api<Pod> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    // A strategic merge patch, so that conditions merge by type rather than replace the list.
    async fn patch_status(&self, client: &Client, status: &serde_json::Value) -> Pod {
        self.api(client)
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(status),
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "write the status of pod {}/{}: {e}",
                    self.namespace, self.name
                )
            })
    }
}

fn condition(kind: &str, ok: bool) -> serde_json::Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now()})
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
