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

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use crate::api::BalancerCluster;
use crate::discovery::endpoints::SERVICE_NAME_LABEL;
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
    let mut secrets = secrets::SecretWatches::new(client.clone());
    // The Secrets the clusters name at start are read before the first publication, so that a
    // start serves their certificates at once; a watch that fails (no permission) ends the wait,
    // and a slow API server holds it up for a few seconds at most.
    {
        let wanted = desired(&stores, &options.scope);
        secrets.sync(&secrets::named(&wanted.clusters), &mut events);
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
    let mut last = publish_if_changed(
        &stores,
        &options.scope,
        &plane,
        None,
        &mut tls,
        &mut secrets,
        &mut events,
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
                identity: options.identity.clone(),
                slices: writer_stores.1,
            },
        };
        tasks.push(tokio::spawn(writer.run()).abort_handle());
    }
    Ok(Controller { leadership, tasks })
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

/// What was published last: the clusters, and the version of the TLS material.
type Published = (Vec<crate::discovery::ClusterConfig>, u64);

fn publish_if_changed(
    stores: &Stores,
    scope: &Scope,
    plane: &DataPlane,
    last: Option<Published>,
    tls: &mut secrets::Tls,
    secrets: &mut secrets::SecretWatches,
    events: &mut SelectAll<BoxStream<'static, ()>>,
) -> Option<Published> {
    let started = std::time::Instant::now();
    let published = reconcile(stores, scope, plane, last, tls, secrets, events);
    crate::plane::metrics::CONTROLLER.reconciled(started.elapsed());
    published
}

/// Computes the member lists from the watched objects, and publishes them when they changed.
fn reconcile(
    stores: &Stores,
    scope: &Scope,
    plane: &DataPlane,
    last: Option<Published>,
    tls: &mut secrets::Tls,
    secrets: &mut secrets::SecretWatches,
    events: &mut SelectAll<BoxStream<'static, ()>>,
) -> Option<Published> {
    let desired = desired(stores, scope);
    for (cluster, p) in &desired.problems {
        tracing::warn!(%cluster, pod = %p.pod, annotation = p.annotation, value = %p.value, "pod annotation ignored: not a valid value");
    }
    secrets.sync(&secrets::named(&desired.clusters), events);
    tls.read(&desired.clusters, secrets);
    let version = tls.loader.version();
    if let Some((clusters, v)) = &last
        && *clusters == desired.clusters
        && *v == version
    {
        return last;
    }
    let names: Vec<String> = desired
        .clusters
        .iter()
        .map(|c| format!("{} ({} members)", c.key(), c.members.len()))
        .collect();
    let snapshot = plane.publish_with(desired.clusters.clone(), &tls.loader.material());
    tracing::info!(clusters = %names.join(", "), generation = snapshot.generation, "member lists published");
    Some((desired.clusters, version))
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
