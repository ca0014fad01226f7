//! The Kubernetes front door: watches BalancerClusters, the EndpointSlices and Services they
//! name, and the pods' `kubebalancer.io/*` annotations, and publishes the member lists to the
//! data plane whenever they change. The leader (a Lease) also writes `.status`.
//!
//! Watches are kube-runtime reflectors with backoff; when the API server goes away the stores
//! keep their last contents and the data plane keeps serving the last member lists.
//!
//! Secrets are watched one by one, by name (a field selector), and only those a served cluster
//! names in `spec.tls` or `spec.upstreamTLS`: the controller never lists or holds any other
//! Secret, and logs none of their content.

pub mod index;
pub mod leader;
pub mod peers;
pub mod secrets;
pub mod status;

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use crate::api::BalancerCluster;
use crate::discovery::endpoints::SERVICE_NAME_LABEL;
use crate::gateway;
use crate::plane::DataPlane;
use index::{Scope, World};

/// Errors of the controller's start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub scope: Scope,
    /// How often the leader may write each cluster's status.
    pub status_interval: Duration,
    /// Write status at all (not in sidecar mode).
    pub write_status: bool,
    /// This replica's name (the pod name in a cluster).
    pub identity: String,
    /// Where the leader Lease lives, and its name.
    pub lease_namespace: String,
    pub lease_name: String,
    /// How long a leader's Lease lasts without renewal: the time a new leader needs to take over.
    pub lease_duration: Duration,
    /// The controller's own Service (`namespace/name`), to sum the replicas' figures.
    pub peers_service: Option<(String, String)>,
    /// The peers' admin port when their EndpointSlices name none `admin`.
    pub admin_port: u16,
    /// The admin token the peers ask for (`--admin-token-file`), if any.
    pub admin_token: Option<std::sync::Arc<str>>,
    /// Serve the Gateway API too (`run --gateway`): GatewayClasses of
    /// `kubebalancer.io/gateway-controller`, their Gateways and HTTPRoutes.
    pub gateway: Option<crate::gateway::Options>,
}

/// A client from `--kubeconfig`, or the in-cluster / default configuration.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// The stores the controller reads, one per watched namespace (or one for all).
struct Stores {
    clusters: Vec<Store<BalancerCluster>>,
    slices: Vec<Store<EndpointSlice>>,
    services: Vec<Store<Service>>,
    pods: Vec<Store<PartialObjectMeta<Pod>>>,
    /// With `--gateway`: the Gateway API's kinds, and what translation needs besides them.
    gateway: Option<(gateway::watch::Stores, gateway::Options)>,
}

/// A running controller: its tasks, and whether it leads.
pub struct Controller {
    pub leadership: Option<leader::Leadership>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Controller {
    /// Stops watching, electing and writing (the data plane keeps its last snapshot).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs the controller: returns once the first member lists are published, leaving the watch
/// loop, the leader election and the status writer running as tasks.
pub async fn start(
    client: Client,
    options: Options,
    plane: Arc<DataPlane>,
) -> Result<Controller, Error> {
    let namespaces: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let mut events: SelectAll<BoxStream<'static, ()>> = SelectAll::new();
    let mut stores = Stores {
        clusters: Vec::new(),
        slices: Vec::new(),
        services: Vec::new(),
        pods: Vec::new(),
        gateway: None,
    };
    for ns in &namespaces {
        let cfg = watcher::Config::default().any_semantic();
        stores.clusters.push(watch(
            &mut events,
            api(&client, ns),
            cfg.clone(),
            "BalancerCluster",
        ));
        stores.slices.push(watch(
            &mut events,
            api(&client, ns),
            cfg.clone().labels(SERVICE_NAME_LABEL),
            "EndpointSlice",
        ));
        stores
            .services
            .push(watch(&mut events, api(&client, ns), cfg.clone(), "Service"));
        // Metadata only: the annotations are all we need of a pod.
        stores.pods.push(watch_with(
            &mut events,
            api::<PartialObjectMeta<Pod>>(&client, ns),
            cfg,
            "Pod",
            keep_only_our_annotations,
            our_annotations_digest,
        ));
    }
    if let Some(gateway_options) = &options.gateway {
        let watched = gateway::watch::Stores::watch(&client, &namespaces, &mut events);
        stores.gateway = Some((watched, gateway_options.clone()));
    }

    // The first publication waits for every store, so that a start never serves a partial list.
    {
        let ready = async {
            for s in &stores.clusters {
                let _ = s.wait_until_ready().await;
            }
            for s in &stores.slices {
                let _ = s.wait_until_ready().await;
            }
            for s in &stores.services {
                let _ = s.wait_until_ready().await;
            }
            for s in &stores.pods {
                let _ = s.wait_until_ready().await;
            }
        };
        tokio::pin!(ready);
        loop {
            tokio::select! {
                _ = &mut ready => break,
                Some(()) = events.next() => {}
            }
        }
    }
    // The Gateway API's stores too, for a while: without its CRDs, their watches keep failing.
    if let Some((watched, _)) = &stores.gateway {
        let ready = tokio::time::timeout(
            gateway::watch::FIRST_LIST_TIMEOUT,
            watched.wait_until_ready(),
        );
        tokio::pin!(ready);
        loop {
            tokio::select! {
                result = &mut ready => {
                    if result.is_err() {
                        tracing::warn!("the Gateway API resources cannot be listed yet (are the Gateway API CRDs installed, and may kube-balancer read them?); serving without them until they can");
                    }
                    break;
                }
                Some(()) = events.next() => {}
            }
        }
    }
    let mut secrets = secrets::SecretWatches::new(client.clone());
    // The Secrets the clusters name at start are read before the first publication, so that a
    // start serves their certificates at once; a watch that fails (no permission) ends the wait,
    // and a slow API server holds it up for a few seconds at most.
    {
        let wanted = desired(&stores, &options.scope);
        let sources = tls_sources(&stores, &wanted.clusters);
        secrets.sync(&secrets::named(&sources), &mut events);
        let ready = tokio::time::timeout(secrets::FIRST_READ_TIMEOUT, secrets.wait_until_settled());
        tokio::pin!(ready);
        loop {
            tokio::select! {
                _ = &mut ready => break,
                Some(()) = events.next() => {}
            }
        }
    }
    let mut tls = secrets::Tls::default();
    let (gateway_statuses, gateway_status_reader) =
        tokio::sync::watch::channel(Arc::new(gateway::translate::Statuses::default()));
    let mut last = publish_if_changed(
        &stores,
        &options.scope,
        &plane,
        None,
        &mut tls,
        &mut secrets,
        &mut events,
        &gateway_statuses,
    );

    let writer_stores = (stores.clusters.clone(), stores.slices.clone());
    let scope = options.scope.clone();
    let loop_plane = plane.clone();
    let mut tasks = Vec::new();
    let watch_loop = tokio::spawn(async move {
        while events.next().await.is_some() {
            // Take every event that is already waiting before recomputing once.
            while let Some(Some(())) = events.next().now_or_never() {}
            last = publish_if_changed(
                &stores,
                &scope,
                &loop_plane,
                last.take(),
                &mut tls,
                &mut secrets,
                &mut events,
                &gateway_statuses,
            );
        }
    });
    tasks.push(watch_loop.abort_handle());
    let mut leadership = None;

    if options.write_status {
        let elector = leader::Elector::new(
            client.clone(),
            &options.lease_namespace,
            &options.lease_name,
            &options.identity,
            options.lease_duration,
        );
        let leads = elector.leadership();
        leadership = Some(leads.clone());
        tasks.push(tokio::spawn(elector.run()).abort_handle());
        if options.gateway.is_some() {
            let writer = gateway::status::Writer {
                client: client.clone(),
                leadership: leads.clone(),
                statuses: gateway_status_reader,
            };
            tasks.push(tokio::spawn(writer.run()).abort_handle());
        }
        let reporter = Reporter {
            controller: "kube-balancer".into(),
            instance: Some(options.identity.clone()),
        };
        let writer = status::Writer {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            plane,
            clusters: writer_stores.0,
            scope: options.scope.clone(),
            leadership: leads,
            interval: options.status_interval,
            peers: peers::PeerSource {
                service: options.peers_service.clone(),
                admin_port: options.admin_port,
                admin_token: options.admin_token.clone(),
                identity: options.identity.clone(),
                slices: writer_stores.1,
            },
        };
        tasks.push(tokio::spawn(writer.run()).abort_handle());
    }
    Ok(Controller { leadership, tasks })
}

/// An Api of a namespaced kind in `namespace`, or in all of them.
pub(crate) fn namespaced_api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    api(client, namespace)
}

/// Watches `api` into a store whose changes wake the watch loop through `events`.
pub(crate) fn watch_kind<K>(
    events: &mut SelectAll<BoxStream<'static, ()>>,
    api: Api<K>,
    cfg: watcher::Config,
    kind: &'static str,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watch(events, api, cfg, kind)
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn watch<K>(
    events: &mut SelectAll<BoxStream<'static, ()>>,
    api: Api<K>,
    cfg: watcher::Config,
    kind: &'static str,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watch_with(events, api, cfg, kind, |_| {}, |_| None)
}

/// Watches `api` into a store, keeping of each object what `trim` leaves (and never its
/// managedFields, which the controller does not read and which are often most of an object).
/// When `digest` sums up all the controller reads of an object, an update that leaves the sum
/// as it was changes the store but wakes nobody: a pod's status changes on every readiness
/// flip, its annotations (all the controller reads of it) seldom.
fn watch_with<K>(
    events: &mut SelectAll<BoxStream<'static, ()>>,
    api: Api<K>,
    cfg: watcher::Config,
    kind: &'static str,
    trim: fn(&mut K),
    digest: fn(&K) -> Option<u64>,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let trimmed = watcher(api, cfg).modify(move |object: &mut K| {
        object.meta_mut().managed_fields = None;
        trim(object);
    });
    let mut seen = Seen::default();
    let stream = reflector::reflector(writer, trimmed)
        .default_backoff()
        .filter_map(move |e| {
            let metrics = &crate::plane::metrics::CONTROLLER;
            let wakes = match &e {
                Ok(event) => {
                    metrics.watch_event(kind);
                    seen.wakes(event, digest)
                }
                Err(_) => {
                    metrics
                        .watch_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    true
                }
            };
            std::future::ready(wakes.then(|| log_watch_error(kind, e.map(|_| ()))))
        });
    events.push(stream.boxed());
    reader
}

/// The digest of each object seen, by namespace and name.
#[derive(Default)]
struct Seen(HashMap<(Option<String>, Option<String>), u64>);

impl Seen {
    /// Whether `event` can change what the controller computes, given `digest`.
    fn wakes<K: kube::Resource>(
        &mut self,
        event: &watcher::Event<K>,
        digest: fn(&K) -> Option<u64>,
    ) -> bool {
        let key = |object: &K| (object.meta().namespace.clone(), object.meta().name.clone());
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let Some(sum) = digest(object) else {
                    return true;
                };
                let changed = self.0.insert(key(object), sum) != Some(sum);
                // A relist wakes once, at its end (InitDone), whatever it brought.
                changed && matches!(event, watcher::Event::Apply(_))
            }
            watcher::Event::Delete(object) => {
                self.0.remove(&key(object));
                true
            }
            watcher::Event::Init => true,
            watcher::Event::InitDone => true,
        }
    }
}

/// What the controller reads of a (trimmed) pod: its `kubebalancer.io/` annotations.
fn our_annotations_digest(pod: &PartialObjectMeta<Pod>) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    // A BTreeMap: the same annotations always hash in the same order.
    pod.metadata.annotations.hash(&mut hasher);
    Some(hasher.finish())
}

/// Of a pod, the controller reads only its name and its `kubebalancer.io/` annotations.
fn keep_only_our_annotations(pod: &mut PartialObjectMeta<Pod>) {
    let meta = &mut pod.metadata;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k.starts_with(crate::api::annotations::PREFIX));
    }
}

fn log_watch_error(kind: &str, event: Result<(), watcher::Error>) {
    if let Err(e) = event {
        tracing::warn!(kind, error = %e, "watch failed; retrying with backoff, serving the last known members");
    }
}

fn desired(stores: &Stores, scope: &Scope) -> index::Desired {
    let clusters: Vec<_> = stores.clusters.iter().flat_map(|s| s.state()).collect();
    let slices: Vec<_> = stores.slices.iter().flat_map(|s| s.state()).collect();
    let services: Vec<_> = stores.services.iter().flat_map(|s| s.state()).collect();
    let pods: Vec<_> = stores.pods.iter().flat_map(|s| s.state()).collect();
    let world = World {
        clusters: &clusters,
        slices: &slices,
        services: &services,
        pods: &pods,
    };
    index::desired(&world, scope)
}

/// The TLS sources to read: those the clusters name, the Secrets the Gateways' HTTPS listeners
/// and `tls.backend` name, the ConfigMaps of their `tls.frontend` and of BackendTLSPolicies.
fn tls_sources(
    stores: &Stores,
    clusters: &[crate::discovery::ClusterConfig],
) -> Vec<(crate::discovery::TlsSource, bool)> {
    let mut sources = secrets::sources(clusters);
    if let Some((watched, options)) = &stores.gateway {
        let parts = GatewayParts::read(stores, watched);
        let settings = gateway_settings(options, &parts.services);
        let none = BTreeSet::new();
        let world = parts.world(&none);
        sources.extend(
            gateway::translate::certificate_sources(&world, &settings)
                .into_iter()
                .map(|s| (s, false)),
        );
        sources.extend(
            gateway::translate::frontend_ca_sources(&world, &settings)
                .into_iter()
                .map(|s| (s, true)),
        );
        sources.extend(
            gateway::backend_tls::ca_sources(&parts.policies)
                .into_iter()
                .map(|s| (s, true)),
        );
    }
    sources
}

/// The stores' contents, held for one translation.
struct GatewayParts {
    classes: Vec<Arc<gateway::api::GatewayClass>>,
    gateways: Vec<Arc<gateway::api::Gateway>>,
    routes: Vec<Arc<gateway::api::HTTPRoute>>,
    grants: Vec<Arc<gateway::api::ReferenceGrant>>,
    policies: Vec<Arc<gateway::api::BackendTLSPolicy>>,
    namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    pods: gateway::translate::PodAnnotations,
}

impl GatewayParts {
    fn read(stores: &Stores, watched: &gateway::watch::Stores) -> GatewayParts {
        let pods: Vec<_> = stores.pods.iter().flat_map(|s| s.state()).collect();
        GatewayParts {
            classes: watched.classes.state(),
            gateways: watched.gateways.iter().flat_map(|s| s.state()).collect(),
            routes: watched.routes.iter().flat_map(|s| s.state()).collect(),
            grants: watched.grants.iter().flat_map(|s| s.state()).collect(),
            policies: watched.policies.iter().flat_map(|s| s.state()).collect(),
            namespaces: watched.namespaces.state(),
            services: stores.services.iter().flat_map(|s| s.state()).collect(),
            slices: stores.slices.iter().flat_map(|s| s.state()).collect(),
            pods: index::pod_annotations(&pods),
        }
    }

    fn world<'a>(
        &'a self,
        balancer_clusters: &'a BTreeSet<String>,
    ) -> gateway::translate::World<'a> {
        gateway::translate::World {
            classes: &self.classes,
            gateways: &self.gateways,
            routes: &self.routes,
            grants: &self.grants,
            namespaces: &self.namespaces,
            services: &self.services,
            slices: &self.slices,
            pods: &self.pods,
            balancer_clusters,
            policies: &self.policies,
        }
    }
}

/// What translation is told besides the resources: the controller name, and the Gateways'
/// addresses (the pool of `--gateway-address`, or the data plane's Service's).
fn gateway_settings(
    options: &gateway::Options,
    services: &[Arc<Service>],
) -> gateway::translate::Settings {
    let service_addresses = options
        .service
        .as_ref()
        .and_then(|(ns, name)| {
            services.iter().find(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata.name.as_deref() == Some(name)
            })
        })
        .map(|s| service_addresses(s))
        .unwrap_or_default();
    gateway::translate::Settings {
        controller_name: gateway::CONTROLLER_NAME.to_owned(),
        addresses: options.addresses.clone(),
        service_addresses,
    }
}

/// A Service's addresses as a Gateway reports them: its load balancer's (IPs, host names),
/// else its cluster IPs.
fn service_addresses(service: &Service) -> Vec<gateway::api::GatewayAddress> {
    let address = |type_: &str, value: &str| gateway::api::GatewayAddress {
        type_: Some(type_.to_owned()),
        value: value.to_owned(),
    };
    let ingress: Vec<_> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| match (&i.ip, &i.hostname) {
            (Some(ip), _) => Some(address("IPAddress", ip)),
            (None, Some(host)) => Some(address("Hostname", host)),
            (None, None) => None,
        })
        .collect();
    if !ingress.is_empty() {
        return ingress;
    }
    service
        .spec
        .as_ref()
        .and_then(|s| {
            s.cluster_ips
                .clone()
                .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
        })
        .unwrap_or_default()
        .iter()
        .filter(|ip| ip.as_str() != "None" && !ip.is_empty())
        .map(|ip| address("IPAddress", ip))
        .collect()
}

/// What was published last: the clusters, the fronts and the version of the TLS material.
type Published = (
    Vec<crate::discovery::ClusterConfig>,
    Vec<crate::plane::fronts::FrontConfig>,
    u64,
);

#[allow(clippy::too_many_arguments)]
fn publish_if_changed(
    stores: &Stores,
    scope: &Scope,
    plane: &DataPlane,
    last: Option<Published>,
    tls: &mut secrets::Tls,
    secrets: &mut secrets::SecretWatches,
    events: &mut SelectAll<BoxStream<'static, ()>>,
    gateway_statuses: &tokio::sync::watch::Sender<Arc<gateway::translate::Statuses>>,
) -> Option<Published> {
    let started = std::time::Instant::now();
    let published = reconcile(
        stores,
        scope,
        plane,
        last,
        tls,
        secrets,
        events,
        gateway_statuses,
    );
    crate::plane::metrics::CONTROLLER.reconciled(started.elapsed());
    published
}

/// Computes the member lists from the watched objects, and publishes them when they changed.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    stores: &Stores,
    scope: &Scope,
    plane: &DataPlane,
    last: Option<Published>,
    tls: &mut secrets::Tls,
    secrets: &mut secrets::SecretWatches,
    events: &mut SelectAll<BoxStream<'static, ()>>,
    gateway_statuses: &tokio::sync::watch::Sender<Arc<gateway::translate::Statuses>>,
) -> Option<Published> {
    let desired = desired(stores, scope);
    for (cluster, p) in &desired.problems {
        tracing::warn!(%cluster, pod = %p.pod, annotation = p.annotation, value = %p.value, "pod annotation ignored: not a valid value");
    }
    let sources = tls_sources(stores, &desired.clusters);
    secrets.sync(&secrets::named(&sources), events);
    tls.read(&sources, secrets);
    let version = tls.loader.version();
    let material = tls.loader.material();
    let mut clusters = desired.clusters;
    let mut fronts = Vec::new();
    if let Some((watched, options)) = &stores.gateway {
        let parts = GatewayParts::read(stores, watched);
        let served: BTreeSet<String> = clusters.iter().map(|c| c.key()).collect();
        let settings = gateway_settings(options, &parts.services);
        let translation = gateway::translate::translate(
            &parts.world(&served),
            &settings,
            &material,
            k8s_openapi::jiff::Timestamp::now(),
        );
        clusters.extend(translation.clusters);
        fronts = translation.fronts;
        let statuses = Arc::new(translation.status);
        gateway_statuses.send_if_modified(|current| {
            let modified = **current != *statuses;
            *current = statuses;
            modified
        });
    }
    if let Some((c, f, v)) = &last
        && *c == clusters
        && *f == fronts
        && *v == version
    {
        return last;
    }
    let names: Vec<String> = clusters
        .iter()
        .map(|c| format!("{} ({} members)", c.key(), c.members.len()))
        .collect();
    let snapshot = plane.publish_all(clusters.clone(), &fronts, &material);
    let ports: Vec<String> = fronts
        .iter()
        .map(|f| match f.address {
            Some(a) => std::net::SocketAddr::new(a, f.port).to_string(),
            None => format!("*:{}", f.port),
        })
        .collect();
    tracing::info!(clusters = %names.join(", "), fronts = %ports.join(", "), generation = snapshot.generation, "member lists published");
    Some((clusters, fronts, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_events_wake_the_controller_only_when_our_annotations_change() {
        let pod = |name: &str, drain: Option<&str>, version: &str| {
            let mut annotations = serde_json::json!({"other.io/x": version});
            if let Some(d) = drain {
                annotations["kubebalancer.io/drain"] = serde_json::json!(d);
            }
            let mut pod: PartialObjectMeta<Pod> = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "ns", "resourceVersion": version,
                             "annotations": annotations}
            }))
            .expect("a pod");
            keep_only_our_annotations(&mut pod);
            pod
        };
        let mut seen = Seen::default();
        let digest: fn(&PartialObjectMeta<Pod>) -> Option<u64> = our_annotations_digest;
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        // A relist wakes once, at its end.
        assert!(seen.wakes(&Init, digest));
        assert!(!seen.wakes(&InitApply(pod("a", None, "1")), digest));
        assert!(seen.wakes(&InitDone, digest));
        // Status or other annotations changed (a new resourceVersion): nothing we read.
        assert!(!seen.wakes(&Apply(pod("a", None, "2")), digest));
        // Our annotation set, changed, removed: each wakes.
        assert!(seen.wakes(&Apply(pod("a", Some("true"), "3")), digest));
        assert!(!seen.wakes(&Apply(pod("a", Some("true"), "4")), digest));
        assert!(seen.wakes(&Apply(pod("a", Some("false"), "5")), digest));
        assert!(seen.wakes(&Apply(pod("a", None, "6")), digest));
        // A new pod wakes; a deleted one too, and its name coming back wakes again.
        assert!(seen.wakes(&Apply(pod("b", None, "7")), digest));
        assert!(seen.wakes(&Delete(pod("b", None, "8")), digest));
        assert!(seen.wakes(&Apply(pod("b", None, "9")), digest));
        // Kinds without a digest always wake.
        let always: fn(&PartialObjectMeta<Pod>) -> Option<u64> = |_| None;
        assert!(seen.wakes(&Apply(pod("a", None, "10")), always));
    }

    #[test]
    fn a_stored_pod_keeps_its_name_and_only_our_annotations() {
        let mut pod: PartialObjectMeta<Pod> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-a",
                "namespace": "shop",
                "labels": {"app": "web"},
                "annotations": {
                    "kubebalancer.io/load-factor": "7",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a\": 1}",
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u"}],
                "finalizers": ["example.com/keep"],
            },
        }))
        .expect("a pod's metadata");
        keep_only_our_annotations(&mut pod);
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-a"));
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(
            meta.annotations.clone().unwrap_or_default(),
            [("kubebalancer.io/load-factor".to_owned(), "7".to_owned())].into()
        );
        assert_eq!(meta.labels, None);
        assert_eq!(meta.owner_references, None);
        assert_eq!(meta.finalizers, None);
    }
}
