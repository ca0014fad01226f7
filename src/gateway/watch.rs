//! The reflectors over the Gateway API kinds and over Namespaces (whose labels a listener's
//! `allowedRoutes.namespaces.selector` reads). Services, EndpointSlices and pods come from the
//! controller's own stores; the ConfigMaps that BackendTLSPolicies name are watched one by one,
//! by name, with the Secrets (`crate::controller::secrets`).

use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};

use super::api::{BackendTLSPolicy, Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use crate::controller::{namespaced_api, watch_kind};

/// How long a start waits for the Gateway API stores before serving without them (when the
/// cluster lacks the CRDs, their watches keep failing and retrying).
pub const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the Gateway watches hold.
pub struct Stores {
    pub classes: Store<GatewayClass>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// One per watched namespace (or one for all).
    pub gateways: Vec<Store<Gateway>>,
    pub routes: Vec<Store<HTTPRoute>>,
    pub grants: Vec<Store<ReferenceGrant>>,
    pub policies: Vec<Store<BackendTLSPolicy>>,
}

impl Stores {
    /// Starts the watches: each pushes a wake-up into `events` when its store changes.
    pub fn watch(
        client: &Client,
        namespaces: &[Option<String>],
        events: &mut SelectAll<BoxStream<'static, ()>>,
    ) -> Stores {
        let cfg = watcher::Config::default().any_semantic();
        let mut stores = Stores {
            classes: watch_kind(
                events,
                Api::all(client.clone()),
                cfg.clone(),
                "GatewayClass",
            ),
            namespaces: watch_kind(events, Api::all(client.clone()), cfg.clone(), "Namespace"),
            gateways: Vec::new(),
            routes: Vec::new(),
            grants: Vec::new(),
            policies: Vec::new(),
        };
        for ns in namespaces {
            stores.gateways.push(watch_kind(
                events,
                namespaced_api(client, ns),
                cfg.clone(),
                "Gateway",
            ));
            stores.routes.push(watch_kind(
                events,
                namespaced_api(client, ns),
                cfg.clone(),
                "HTTPRoute",
            ));
            stores.grants.push(watch_kind(
                events,
                namespaced_api(client, ns),
                cfg.clone(),
                "ReferenceGrant",
            ));
            stores.policies.push(watch_kind(
                events,
                namespaced_api(client, ns),
                cfg.clone(),
                "BackendTLSPolicy",
            ));
        }
        stores
    }

    /// Waits until every store has listed once.
    pub async fn wait_until_ready(&self) {
        let _ = self.classes.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        for s in &self.gateways {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.routes {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.grants {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.policies {
            let _ = s.wait_until_ready().await;
        }
    }
}
