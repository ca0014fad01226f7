//! The seam between the sources of configuration and the data plane: what is served at one
//! moment (clusters, their balancers and the routing table), published as one immutable
//! snapshot and swapped atomically, and the per-member counters that outlive snapshots.
//!
//! Sources (the standalone file, the controller, the demo) call [`DataPlane::publish`], or
//! [`DataPlane::publish_with`] with the TLS material they resolved; the proxy, the admin server,
//! the health checker and the status writer read from here. Nothing here does I/O or knows how
//! requests are carried.

pub mod filters;
pub mod fronts;
pub mod matching;
pub mod metrics;
pub mod routes;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::api::{LbMethod, MemberState};
use crate::balancer::budget::RetryBudget;
use crate::balancer::{Affinity, BalancedMember, Balancer, MemberStats, Settings, hash, sticky};
use crate::clock;
use crate::discovery::ClusterConfig;
use crate::tls::{self, TlsState, material::Material};
use filters::Filters;
use fronts::{Front, FrontConfig};
use matching::RequestView;
use routes::{Backend, ListenerRoutes, Matched, RouteEntry, RouteTable, Rule};

/// One served cluster.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    /// `namespace/name`.
    pub key: String,
    pub balancer: Balancer,
    /// Milliseconds a failed member stays in error.
    pub retry_ms: u64,
    /// Bounds the retries of requests that reached a member and failed there.
    pub retry_budget: RetryBudget,
    /// How its `https://` members are reached; `None` when it has none, or when what its
    /// `upstreamTLS` names could not be loaded (then they cannot be reached: see `tls`).
    pub upstream_tls: Option<Arc<tls::Upstream>>,
}

impl Cluster {
    /// Whether the cluster reads a request's fields: to choose its member (sticky sessions,
    /// hashing) or to send it again (`failOnStatus`).
    pub fn reads_fields(&self) -> bool {
        self.config.policy.sticky.is_some()
            || self.config.lb_method == LbMethod::Hash
            || !self.config.fail_on_status.is_empty()
    }

    /// What the request brings to the choice of its member: its sticky route and hash key.
    pub fn affinity(&self, headers: &http::HeaderMap, uri: &http::Uri, client: IpAddr) -> Affinity {
        let policy = &self.config.policy;
        Affinity {
            sticky: policy
                .sticky
                .as_ref()
                .and_then(|s| sticky::sticky_value(s, headers, uri)),
            key: (self.config.lb_method == LbMethod::Hash)
                .then(|| hash::request_key(&policy.hash, headers, uri, client))
                .flatten(),
        }
    }
}

/// A route that lost to an older claim on the same host and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConflict {
    pub cluster: String,
    pub host: Option<String>,
    pub path_prefix: String,
    pub held_by: String,
}

/// A route's mirror that names a cluster this snapshot does not serve: no copies are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnresolvedMirror {
    /// The key of the cluster whose route mirrors.
    pub cluster: String,
    /// The route's place in the cluster's `spec.routes`.
    pub route: usize,
    /// The key of the cluster it names.
    pub target: String,
}

/// Clusters and routes, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub clusters: Vec<Arc<Cluster>>,
    /// The BalancerClusters' routes, served on `--listen` and `--listen-tls`.
    pub routes: RouteTable,
    /// Other ports and their routes (a Gateway's listeners), by port.
    pub fronts: Vec<Front>,
    pub conflicts: Vec<RouteConflict>,
    pub unresolved_mirrors: Vec<UnresolvedMirror>,
    /// Counts publications, starting at 1 for the first.
    pub generation: u64,
    /// The certificates served by name, and each cluster's TLS as shown and reported.
    pub tls: TlsState,
}

impl Snapshot {
    /// The rule serving a request for `host` (without port), and the cluster its backend
    /// names: the only one for a BalancerCluster's route.
    pub fn route(&self, host: &[u8], req: &dyn RequestView) -> Option<Matched<'_>> {
        self.routes.lookup(host, req)
    }

    /// The front serving `port`, if a source asked for one.
    pub fn front(&self, port: u16) -> Option<&Front> {
        self.fronts.iter().find(|f| f.port == port)
    }

    /// The front listening on `address` (`None`: every address) and `port`.
    pub fn front_at(&self, address: Option<IpAddr>, port: u16) -> Option<&Front> {
        self.fronts
            .iter()
            .find(|f| f.address == address && f.port == port)
    }

    /// The cluster a rule's backend names.
    pub fn backend(&self, backend: &Backend) -> Option<&Arc<Cluster>> {
        backend.cluster.and_then(|i| self.clusters.get(i))
    }

    pub fn cluster(&self, namespace: &str, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters
            .iter()
            .find(|c| c.config.namespace == namespace && c.config.name == name)
    }
}

/// The data plane's shared state: the current snapshot and the per-member counters that
/// outlive snapshots.
#[derive(Debug, Default)]
pub struct DataPlane {
    snapshot: ArcSwap<Snapshot>,
    stats: Mutex<HashMap<(String, String), Arc<MemberStats>>>,
    generation: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Configuration loads refused (invalid files or resources).
    pub rejected_configs: AtomicU64,
    /// What is counted besides the members' figures.
    pub metrics: metrics::PlaneMetrics,
    /// Tells who waits for a new snapshot (the proxy's fronts) the generation just published.
    published: Published,
}

/// A `watch` channel of generations, which needs no lock to send from `publish`.
#[derive(Debug)]
struct Published(tokio::sync::watch::Sender<u64>);

impl Default for Published {
    fn default() -> Self {
        Published(tokio::sync::watch::Sender::new(0))
    }
}

impl DataPlane {
    pub fn new() -> Arc<Self> {
        Arc::new(DataPlane::default())
    }

    /// A receiver that sees each publication's generation: for those who must act on a new
    /// snapshot (open the ports of new fronts) rather than read it per request.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.0.subscribe()
    }

    /// The snapshot requests are served from now.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The snapshot as an owned handle, for readers that keep it across awaits.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// True once a first configuration has been published.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// True once a stop has begun: `/readyz` fails so that load balancers in front stop sending.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// A configuration load was refused (an invalid file or resource).
    pub fn refused_config(&self) {
        self.rejected_configs.fetch_add(1, Relaxed);
        self.metrics.refused();
    }

    /// Builds a snapshot from `clusters` (in order of precedence for route conflicts: the first
    /// claim on a host and path keeps it) and makes it the one served. Requests in flight finish
    /// on the snapshot they started with. Counters of members that stay are kept, and a cluster
    /// whose configuration did not change is served on as it was: its balancer keeps its
    /// schedule (byrequests' turns, ewma's averages, hash's table).
    pub fn publish(&self, clusters: Vec<ClusterConfig>) -> Arc<Snapshot> {
        self.publish_with(clusters, &Material::default())
    }

    /// [`DataPlane::publish`], with the certificates and CA bundles the clusters' TLS settings
    /// name, as the source resolved them. A cluster whose client configuration for `https://`
    /// members changed is served anew; one whose certificates alone changed is not (the listener
    /// reads them from the snapshot on each handshake).
    pub fn publish_with(&self, clusters: Vec<ClusterConfig>, material: &Material) -> Arc<Snapshot> {
        self.publish_all(clusters, &[], material)
    }

    /// [`DataPlane::publish_with`], with fronts: ports served besides `--listen` and
    /// `--listen-tls`, and their routes (a Gateway's listeners), whose backends name `clusters`
    /// by key.
    pub fn publish_all(
        &self,
        clusters: Vec<ClusterConfig>,
        fronts: &[FrontConfig],
        material: &Material,
    ) -> Arc<Snapshot> {
        let started = std::time::Instant::now();
        let now = clock::now_ms();
        let previous = self.snapshot.load_full();
        let tls = TlsState::build(&clusters, material, |key| {
            previous
                .clusters
                .iter()
                .find(|c| c.key == key)
                .and_then(|c| c.upstream_tls.as_ref())
        });
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::with_capacity(stats.len());
        // Clusters served before: a member new to one of them has joined (slow start).
        let known: HashSet<String> = stats
            .keys()
            .map(|(cluster, _)| cluster)
            .collect::<HashSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        let mut snapshot = Snapshot {
            generation: self.generation.fetch_add(1, Relaxed) + 1,
            ..Snapshot::default()
        };
        let mut routes = Vec::new();
        for config in clusters {
            let key = config.key();
            let index = snapshot.clusters.len();
            routes.extend(route_entries(&config, &key, index));
            let upstream_tls = tls.upstream(&key).cloned();
            if let Some(same) = previous
                .cluster(&config.namespace, &config.name)
                .filter(|c| c.config == config)
                .filter(|c| match (&c.upstream_tls, &upstream_tls) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
            {
                for m in same.balancer.members() {
                    kept.insert((key.clone(), m.url.clone()), m.stats.clone());
                }
                snapshot.clusters.push(same.clone());
                continue;
            }
            // Each member's configured state in the snapshot served until now.
            let before: HashMap<&str, MemberState> = previous
                .cluster(&config.namespace, &config.name)
                .map(|c| {
                    c.balancer
                        .members()
                        .iter()
                        .map(|m| (m.url.as_str(), m.state))
                        .collect()
                })
                .unwrap_or_default();
            let members = config
                .members
                .iter()
                .map(|m| {
                    let id = (key.clone(), m.url.clone());
                    let s = match stats.get(&id) {
                        Some(s) => s.clone(),
                        None => {
                            let s = Arc::new(MemberStats::default());
                            s.state_since_ms.store(now.max(1), Relaxed);
                            if known.contains(&key) {
                                s.ramp_from_ms.store(now.max(1), Relaxed);
                            }
                            s
                        }
                    };
                    if before
                        .get(m.url.as_str())
                        .is_some_and(|&state| state != m.state)
                    {
                        s.state_since_ms.store(now.max(1), Relaxed);
                    }
                    if config.policy.health_check.is_none() || m.state == MemberState::Stopped {
                        // No checks run for it: a verdict from earlier checks must not stick.
                        s.forget_health_check();
                    }
                    kept.insert(id, s.clone());
                    BalancedMember {
                        url: m.url.clone(),
                        route: m.route.clone(),
                        lbset: m.lbset,
                        load_factor: m.load_factor,
                        state: m.state,
                        stats: s,
                    }
                })
                .collect();
            let retry_ms = u64::try_from(config.retry_after_error.as_millis()).unwrap_or(u64::MAX);
            snapshot.clusters.push(Arc::new(Cluster {
                key,
                balancer: Balancer::with_settings(members, Settings::from_config(&config), now),
                retry_ms,
                retry_budget: RetryBudget::default(),
                config,
                upstream_tls,
            }));
        }
        snapshot.tls = tls;
        for ((cluster, _), gone) in stats.iter().filter(|(id, _)| !kept.contains_key(*id)) {
            self.metrics.departed(cluster, &gone.traffic.read());
        }
        *stats = kept;
        let (table, shadowed) = RouteTable::build(vec![ListenerRoutes {
            hostname: None,
            routes,
        }]);
        snapshot.routes = table;
        let index: HashMap<&str, usize> = snapshot
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.as_str(), i))
            .collect();
        snapshot.unresolved_mirrors = snapshot
            .clusters
            .iter()
            .flat_map(|c| {
                c.config.route_configs.iter().flat_map(move |r| {
                    r.filters.mirrors.iter().map(move |m| UnresolvedMirror {
                        cluster: c.key.clone(),
                        route: r.index,
                        target: m.cluster.clone(),
                    })
                })
            })
            .filter(|m| !index.contains_key(m.target.as_str()))
            .collect();
        // Shadowed Gateway routes are the Gateway controller's to report (it sees them first).
        snapshot.fronts = fronts
            .iter()
            .map(|config| Front::build_with(config, &index, material).0)
            .collect();
        snapshot.conflicts = shadowed
            .into_iter()
            .map(|s| RouteConflict {
                cluster: s.rule,
                host: s.host,
                path_prefix: s.path,
                held_by: s.by,
            })
            .collect();
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        self.ready.store(true, Relaxed);
        self.published.0.send_replace(snapshot.generation);
        self.metrics.reloaded(started.elapsed());
        snapshot
    }
}

/// A BalancerCluster's routes as rows of the route table: each route's host and match, and a
/// rule (named by the cluster's key) with the route's filters, timeouts and retries, whose only
/// backend is the cluster.
fn route_entries(config: &ClusterConfig, key: &str, index: usize) -> Vec<RouteEntry> {
    config
        .route_configs
        .iter()
        .map(|route| {
            let backend = Backend {
                cluster: Some(index),
                weight: 1,
                filters: Filters::default(),
            };
            let mut rule = Rule::new(key.to_owned(), route.filters.clone(), vec![backend]);
            rule.request_timeout = route.request_timeout;
            rule.backend_timeout = route.backend_timeout;
            rule.retry = route.retry.clone();
            RouteEntry {
                hostnames: route.host.iter().cloned().collect(),
                matches: vec![route.matched.clone()],
                rule: Arc::new(rule),
            }
        })
        .collect()
}

/// The certificates of one HTTPS front (a Gateway's listeners on one address and port), read from
/// the snapshot served at each handshake: `tls::acceptor(Arc::new(FrontCertificates { .. }))`.
#[derive(Debug)]
pub struct FrontCertificates {
    pub plane: Arc<DataPlane>,
    pub address: Option<IpAddr>,
    pub port: u16,
}

impl tls::CurrentCertificates for FrontCertificates {
    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.plane
            .snapshot()
            .front_at(self.address, self.port)
            .and_then(|f| f.certificates.resolve_key(server_name))
    }

    fn client_verifier(&self) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
        self.plane
            .snapshot()
            .front_at(self.address, self.port)
            .and_then(|f| f.client_verifier.clone())
    }
}

/// The HTTPS listener's certificates are the ones in the snapshot served at each handshake.
impl tls::CurrentCertificates for DataPlane {
    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.snapshot
            .load()
            .tls
            .certificates
            .resolve_key(server_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BalancerCluster;

    fn config(name: &str, members: &[&str]) -> ClusterConfig {
        let members: Vec<String> = members.iter().map(|m| format!("{{url: {m}}}")).collect();
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: {name}}}\nspec:\n  routes: [{{pathPrefix: /{name}}}]\n  members: [{}]\n",
            members.join(", ")
        );
        let bc: BalancerCluster = serde_norway::from_str(&yaml).expect("a BalancerCluster");
        crate::discovery::cluster_config(&bc, Vec::new()).expect("valid")
    }

    #[test]
    fn an_unchanged_cluster_is_served_on_as_it_was() {
        let plane = DataPlane::new();
        let first = plane.publish(vec![
            config("a", &["http://127.0.0.1:1"]),
            config("b", &["http://127.0.0.1:2"]),
        ]);
        let second = plane.publish(vec![
            config("a", &["http://127.0.0.1:1"]),
            config("b", &["http://127.0.0.1:3"]),
        ]);
        assert!(Arc::ptr_eq(&first.clusters[0], &second.clusters[0]));
        assert!(!Arc::ptr_eq(&first.clusters[1], &second.clusters[1]));
        assert_eq!(second.generation, 2);
        // Order still decides the route table: the same cluster at another index is found there.
        let third = plane.publish(vec![
            config("b", &["http://127.0.0.1:3"]),
            config("a", &["http://127.0.0.1:1"]),
        ]);
        assert!(Arc::ptr_eq(&third.clusters[1], &first.clusters[0]));
        struct Get(&'static str);
        impl RequestView for Get {
            fn method(&self) -> &http::Method {
                &http::Method::GET
            }
            fn path(&self) -> &str {
                self.0
            }
            fn query(&self) -> Option<&str> {
                None
            }
            fn any_header(&self, _: &http::HeaderName, _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
                false
            }
        }
        let routed = third
            .route(b"h", &Get("/a"))
            .and_then(|m| m.rule.pick())
            .and_then(|b| third.backend(b))
            .map(|c| c.key.clone());
        assert_eq!(routed.as_deref(), Some("default/a"));
        // The kept cluster's members keep their counters for the next publication too.
        let stats = third.clusters[1].balancer.members()[0].stats.clone();
        let fourth = plane.publish(vec![config(
            "a",
            &["http://127.0.0.1:1", "http://127.0.0.1:4"],
        )]);
        assert!(Arc::ptr_eq(
            &fourth.clusters[0].balancer.members()[0].stats,
            &stats
        ));
    }

    /// A cluster named `name` with `routes` (YAML flow).
    fn routed(name: &str, routes: &str) -> ClusterConfig {
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: {name}}}\nspec:\n  routes: {routes}\n  members: [{{url: 'http://127.0.0.1:1'}}]\n"
        );
        let bc: BalancerCluster = serde_norway::from_str(&yaml).expect("a BalancerCluster");
        crate::discovery::cluster_config(&bc, Vec::new()).expect("valid")
    }

    #[test]
    fn a_second_claim_on_the_same_host_and_match_is_a_conflict_and_another_match_is_not() {
        let claim = "[{host: a.example, match: {path: {type: RegularExpression, value: '/v[0-9]'}, headers: [{name: x-t, value: '1'}]}}]";
        let other = "[{host: a.example, match: {path: {type: RegularExpression, value: '/v[0-9]'}, headers: [{name: x-t, value: '2'}]}}]";
        let plane = DataPlane::new();
        let s = plane.publish(vec![
            routed("older", claim),
            routed("younger", claim),
            routed("third", other),
        ]);
        assert_eq!(
            s.conflicts,
            [RouteConflict {
                cluster: "default/younger".into(),
                host: Some("a.example".into()),
                path_prefix: "~ /v[0-9]".into(),
                held_by: "default/older".into(),
            }]
        );
        // An unchanged cluster with routes is served on as it was: its compiled routes compare
        // equal from one publication to the next.
        let again = plane.publish(vec![
            routed("older", claim),
            routed("younger", claim),
            routed("third", other),
        ]);
        assert!(Arc::ptr_eq(&s.clusters[0], &again.clusters[0]));
        assert!(Arc::ptr_eq(&s.clusters[2], &again.clusters[2]));
    }

    #[test]
    fn a_member_client_configuration_is_kept_until_what_it_was_built_from_changes() {
        use crate::discovery::TlsSource;
        use crate::tls::cert::testing::{NOW, ca};
        use crate::tls::material::Loader;
        let yaml = "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: tls}\nspec:\n  members: [{url: 'https://127.0.0.1:1'}]\n  upstreamTLS: {caFile: /ca.crt}\n";
        let bc: BalancerCluster = serde_norway::from_str(yaml).expect("a BalancerCluster");
        let tls = crate::discovery::cluster_config(&bc, Vec::new()).expect("valid");
        let source = TlsSource::Files {
            cert: "/ca.crt".into(),
            key: None,
        };
        let plane = DataPlane::new();
        // Named but not loaded: no configuration, so the https member is not reached at all.
        let first = plane.publish(vec![tls.clone(), config("plain", &["http://127.0.0.1:2"])]);
        assert!(first.clusters[0].upstream_tls.is_none());
        assert!(first.clusters[1].upstream_tls.is_none());
        assert_eq!(
            first.tls.clusters["default/tls"].problems[0].message,
            "file /ca.crt: not loaded yet"
        );
        assert!(!first.tls.clusters.contains_key("default/plain"));

        let mut loader = Loader::default();
        loader.offer_ca(&source, Ok(ca("CA one").pem.as_bytes()), NOW);
        let second = plane.publish_with(vec![tls.clone()], &loader.material());
        let built = second.clusters[0].upstream_tls.clone().expect("built");
        assert!(second.tls.clusters["default/tls"].problems.is_empty());
        // Published again with the same material: the same configuration and cluster.
        let third = plane.publish_with(vec![tls.clone()], &loader.material());
        assert!(Arc::ptr_eq(&second.clusters[0], &third.clusters[0]));
        // A new CA: a new configuration, in a new cluster whose members keep their counters.
        loader.offer_ca(&source, Ok(ca("CA two").pem.as_bytes()), NOW);
        let fourth = plane.publish_with(vec![tls], &loader.material());
        let rebuilt = fourth.clusters[0].upstream_tls.clone().expect("built");
        assert!(!Arc::ptr_eq(&built, &rebuilt));
        assert!(Arc::ptr_eq(
            &third.clusters[0].balancer.members()[0].stats,
            &fourth.clusters[0].balancer.members()[0].stats
        ));
    }
}
