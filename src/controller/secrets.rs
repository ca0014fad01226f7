//! The Secrets that served clusters name (`spec.tls[].secretName`, `spec.upstreamTLS.caSecret`
//! and `clientCertSecret`), and the ConfigMaps that BackendTLSPolicies name
//! (`validation.caCertificateRefs`), each watched alone through a field selector on its name,
//! and read into the TLS material the data plane serves.
//!
//! Only named Secrets are watched, so the controller holds no other Secret's keys; a stored
//! Secret keeps its `data` and nothing else of its metadata but the name (an annotation such as
//! kubectl's last-applied-configuration would hold the keys a second time). Nothing here logs a
//! Secret's content.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::discovery::{ClusterConfig, TlsSource};
use crate::tls::material::Loader;

/// How long a start waits for the Secrets its clusters name before serving without them.
pub const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Every TLS source `clusters` name, with whether it holds a CA bundle (`ca.crt`) rather than
/// a key pair.
pub fn sources(clusters: &[ClusterConfig]) -> Vec<(TlsSource, bool)> {
    clusters
        .iter()
        .flat_map(|c| c.tls.sources())
        .map(|(s, is_ca)| (s.clone(), is_ca))
        .collect()
}

/// The Secrets and ConfigMaps among `sources`, by `(namespace, name)`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub secrets: BTreeSet<(String, String)>,
    pub config_maps: BTreeSet<(String, String)>,
}

/// The Secrets and ConfigMaps among `sources`.
pub fn named(sources: &[(TlsSource, bool)]) -> Named {
    let mut named = Named::default();
    for (source, _) in sources {
        match source {
            TlsSource::Secret { namespace, name } => {
                named.secrets.insert((namespace.clone(), name.clone()));
            }
            TlsSource::ConfigMap { namespace, name } => {
                named.config_maps.insert((namespace.clone(), name.clone()));
            }
            TlsSource::Files { .. } => {}
        }
    }
    named
}

/// A kind watched by name: what of it is kept.
trait Stripped:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn strip(&mut self);
}

impl Stripped for Secret {
    /// Of a Secret, only its name, namespace, type and data are kept.
    fn strip(&mut self) {
        let meta = &mut self.metadata;
        meta.managed_fields = None;
        meta.annotations = None;
        meta.labels = None;
        meta.owner_references = None;
        self.string_data = None;
    }
}

impl Stripped for ConfigMap {
    fn strip(&mut self) {
        let meta = &mut self.metadata;
        meta.managed_fields = None;
        meta.annotations = None;
        meta.labels = None;
        meta.owner_references = None;
        self.binary_data = None;
    }
}

struct SecretWatch<K: kube::Resource<DynamicType = ()> + 'static = Secret> {
    store: Store<K>,
    /// The watch's last error, until its first list succeeds (e.g. no permission).
    error: Arc<Mutex<Option<String>>>,
    /// True once the watch listed its Secret or failed: what a start waits for.
    settled: tokio::sync::watch::Receiver<bool>,
    /// Dropping it ends the watch's stream.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// What is known of a named Secret (or ConfigMap).
enum Read<K = Secret> {
    Found(Arc<K>),
    Missing,
    /// Not listed yet; with the watch's error when it failed.
    Unknown(Option<String>),
}

/// One watch per named Secret, and per named ConfigMap.
pub struct SecretWatches {
    client: Client,
    watches: HashMap<(String, String), SecretWatch>,
    config_maps: HashMap<(String, String), SecretWatch<ConfigMap>>,
}

impl SecretWatches {
    pub fn new(client: Client) -> Self {
        SecretWatches {
            client,
            watches: HashMap::new(),
            config_maps: HashMap::new(),
        }
    }

    /// Watches exactly the `wanted` Secrets and ConfigMaps: new watches push their events into
    /// `events`, watches of those no longer named end.
    pub fn sync(&mut self, wanted: &Named, events: &mut SelectAll<BoxStream<'static, ()>>) {
        sync_kind(
            &self.client,
            &mut self.watches,
            &wanted.secrets,
            events,
            "Secret",
        );
        sync_kind(
            &self.client,
            &mut self.config_maps,
            &wanted.config_maps,
            events,
            "ConfigMap",
        );
    }

    /// Waits until every watch has listed its Secret once, or failed (a Secret the controller
    /// may not read must not hold the start up).
    pub async fn wait_until_settled(&self) {
        for w in self.watches.values() {
            let _ = w.settled.clone().wait_for(|s| *s).await;
        }
        for w in self.config_maps.values() {
            let _ = w.settled.clone().wait_for(|s| *s).await;
        }
    }

    fn read(&self, namespace: &str, name: &str) -> Read {
        read_kind(&self.watches, namespace, name)
    }

    fn read_config_map(&self, namespace: &str, name: &str) -> Read<ConfigMap> {
        read_kind(&self.config_maps, namespace, name)
    }
}

/// Watches exactly the `wanted` objects of one kind.
fn sync_kind<K: Stripped>(
    client: &Client,
    watches: &mut HashMap<(String, String), SecretWatch<K>>,
    wanted: &BTreeSet<(String, String)>,
    events: &mut SelectAll<BoxStream<'static, ()>>,
    kind: &'static str,
) {
    watches.retain(|key, _| wanted.contains(key));
    for key in wanted {
        if watches.contains_key(key) {
            continue;
        }
        let (namespace, name) = key;
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let cfg = watcher::Config::default()
            .fields(&format!("metadata.name={name}"))
            .any_semantic();
        let (store, writer) = reflector::store();
        let error = Arc::new(Mutex::new(None));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let seen_error = error.clone();
        let (settle, settled) = tokio::sync::watch::channel(false);
        let secret = format!("{namespace}/{name}");
        let stream = reflector::reflector(writer, watcher(api, cfg).modify(K::strip))
            .default_backoff()
            .take_until(stopped)
            .filter_map(move |event| {
                let wakes = match event {
                    Ok(watcher::Event::InitDone) => {
                        *seen_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
                        settle.send_replace(true);
                        true
                    }
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => true,
                    Ok(_) => false,
                    Err(e) => {
                        // The error names the Secret and the API's answer, never its content.
                        tracing::warn!(object = %secret, kind, error = %e, "cannot watch an object named for TLS; retrying with backoff");
                        *seen_error.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(e.to_string());
                        settle.send_replace(true);
                        true
                    }
                };
                std::future::ready(wakes.then_some(()))
            });
        events.push(stream.boxed());
        watches.insert(
            key.clone(),
            SecretWatch {
                store,
                error,
                settled,
                _stop: stop,
            },
        );
    }
}

fn read_kind<K: Stripped>(
    watches: &HashMap<(String, String), SecretWatch<K>>,
    namespace: &str,
    name: &str,
) -> Read<K> {
    let Some(w) = watches.get(&(namespace.to_owned(), name.to_owned())) else {
        return Read::Unknown(None);
    };
    if !w.store_ready() {
        // Once listed, a later watch error leaves the store as it was: it is only news
        // while the Secret has never been read (no permission, for one).
        let error = w.error.lock().unwrap_or_else(PoisonError::into_inner);
        return Read::Unknown(error.clone());
    }
    match w
        .store
        .get(&reflector::ObjectRef::new(name).within(namespace))
    {
        Some(secret) => Read::Found(secret),
        None => Read::Missing,
    }
}

impl<K: Stripped> SecretWatch<K> {
    fn store_ready(&self) -> bool {
        use futures_util::FutureExt;
        self.store.wait_until_ready().now_or_never().is_some()
    }
}

/// The TLS material the controller resolved from Secrets.
#[derive(Default)]
pub struct Tls {
    pub loader: Loader,
}

impl Tls {
    /// Offers the loader the current content of every source (with whether it is a CA bundle),
    /// and forgets the others.
    pub fn read(&mut self, sources: &[(TlsSource, bool)], secrets: &SecretWatches) {
        let now = crate::tls::unix_now();
        let mut keypairs = HashSet::new();
        let mut cas = HashSet::new();
        for (source, is_ca) in sources {
            let is_ca = *is_ca;
            if is_ca {
                cas.insert(source.clone());
            } else {
                keypairs.insert(source.clone());
            }
            if let TlsSource::ConfigMap { namespace, name } = source {
                // A CA bundle only (the sources name no other).
                let pem = match secrets.read_config_map(namespace, name) {
                    Read::Found(map) => map
                        .data
                        .as_ref()
                        .and_then(|d| d.get("ca.crt"))
                        .map(|pem| pem.as_bytes().to_vec())
                        .ok_or_else(|| "the ConfigMap has no ca.crt".to_owned()),
                    Read::Missing => Err("no such ConfigMap".to_owned()),
                    Read::Unknown(Some(e)) => Err(format!("cannot read it: {e}")),
                    Read::Unknown(None) => continue,
                };
                self.loader
                    .offer_ca(source, pem.as_deref().map_err(Clone::clone), now);
                continue;
            }
            let content = match source {
                TlsSource::ConfigMap { .. } => continue,
                TlsSource::Files { .. } => Err(
                    "certFile, keyFile and caFile are read in standalone mode only; in a cluster, name a Secret".to_owned(),
                ),
                TlsSource::Secret { namespace, name } => match secrets.read(namespace, name) {
                    Read::Found(secret) => Ok(secret),
                    Read::Missing => Err("no such Secret".to_owned()),
                    Read::Unknown(Some(e)) => Err(format!("cannot read it: {e}")),
                    // Not listed yet: nothing to say until it is.
                    Read::Unknown(None) => continue,
                },
            };
            let field = |secret: &Secret, key: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone())
                    .ok_or_else(|| format!("the Secret has no {key}"))
            };
            if is_ca {
                let pem = content.and_then(|s| field(&s, "ca.crt"));
                self.loader
                    .offer_ca(source, pem.as_deref().map_err(Clone::clone), now);
            } else {
                let pair = content.and_then(|s| Ok((field(&s, "tls.crt")?, field(&s, "tls.key")?)));
                let pair = match &pair {
                    Ok((c, k)) => Ok((c.as_slice(), k.as_slice())),
                    Err(e) => Err(e.clone()),
                };
                self.loader.offer_keypair(source, pair, now);
            }
        }
        self.loader.retain(&keypairs, &cas);
    }
}
