//! Writes the status translation computed (GatewayClasses, Gateways, HTTPRoutes,
//! BackendTLSPolicies), while this replica holds the leader Lease, and only what changed.
//!
//! Status is written as a JSON merge patch of the status subresource. A GatewayClass's and a
//! Gateway's status are wholly kube-balancer's. An HTTPRoute's `status.parents` (a
//! BackendTLSPolicy's `status.ancestors`) is one list shared with other controllers, so the patch carries the resourceVersion
//! it was computed from (the API server refuses it when another writer came first, and the next
//! translation, from the newer object, writes again) and the other controllers' entries as
//! they were.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{BackendTLSPolicy, Gateway, GatewayClass, HTTPRoute};
use super::translate::{Desired, Statuses};
use crate::controller::leader::Leadership;

/// How often a replica that does not lead looks again whether it does, and how soon a write
/// that failed is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The status writer's inputs.
pub struct Writer {
    pub client: Client,
    pub leadership: Leadership,
    /// The latest translation's statuses, from the controller's watch loop.
    pub statuses: tokio::sync::watch::Receiver<Arc<Statuses>>,
}

impl Writer {
    pub async fn run(mut self) {
        // What this replica wrote last, by kind and key: a status is not written twice while
        // the watch has not brought back the object that carries it.
        let mut written: HashMap<String, serde_json::Value> = HashMap::new();
        loop {
            if self.leadership.is_leader() {
                let statuses = self.statuses.borrow_and_update().clone();
                let mut failed = false;
                for d in &statuses.classes {
                    let api: Api<GatewayClass> = Api::all(self.client.clone());
                    failed |= !write(&api, d, false, &mut written).await;
                }
                for d in &statuses.gateways {
                    let api: Api<Gateway> = self.namespaced(d);
                    failed |= !write(&api, d, false, &mut written).await;
                }
                for d in &statuses.routes {
                    let api: Api<HTTPRoute> = self.namespaced(d);
                    failed |= !write(&api, d, true, &mut written).await;
                }
                for d in &statuses.policies {
                    let api: Api<BackendTLSPolicy> = self.namespaced(d);
                    failed |= !write(&api, d, true, &mut written).await;
                }
                if !failed {
                    // Wait for the next translation (or a while, to see leadership change).
                    let _ = tokio::time::timeout(RETRY * 5, self.statuses.changed()).await;
                    continue;
                }
            } else {
                written.clear();
            }
            tokio::select! {
                _ = self.statuses.changed() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    fn namespaced<K, S>(&self, desired: &Desired<S>) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(
            self.client.clone(),
            desired.namespace.as_deref().unwrap_or("default"),
        )
    }
}

/// Writes one object's status if it changed; false when the write failed.
async fn write<K, S>(
    api: &Api<K>,
    desired: &Desired<S>,
    with_version: bool,
    written: &mut HashMap<String, serde_json::Value>,
) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    let key = format!(
        "{}/{}/{}",
        K::kind(&()),
        desired.namespace.as_deref().unwrap_or(""),
        desired.name
    );
    if !desired.changed() {
        written.remove(&key);
        return true;
    }
    let Ok(status) = serde_json::to_value(&desired.status) else {
        return true;
    };
    if written.get(&key) == Some(&status) {
        return true;
    }
    let mut patch = serde_json::json!({ "status": status });
    if with_version && let Some(version) = &desired.resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    match api
        .patch_status(
            &desired.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(object = %key, "status written");
            written.insert(key, status);
            true
        }
        // Changed since it was read: the watch brings the new object, and a new translation.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(object = %key, "status not written: the object changed meanwhile");
            true
        }
        Err(kube::Error::Api(e)) if e.code == 404 => true,
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "cannot write status");
            false
        }
    }
}
