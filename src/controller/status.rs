//! `.status` as the balancer-manager page: computed as a pure function of the resource, the
//! served snapshot and the peers' traffic, and written (server-side apply, one field manager) by
//! the leader only, at most once per cluster per interval and only when it changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};

use super::leader::Leadership;
use super::peers::{PeerSource, Traffic};
use crate::api::{
    BalancerCluster, BalancerClusterStatus, CertificateStatus, Condition, MemberStatus,
};
use crate::clock;
use crate::plane::DataPlane;
use crate::plane::{Cluster, RouteConflict, Snapshot, UnresolvedMirror};
use crate::tls::ClusterTls;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "kube-balancer";
/// Members listed in `.status.members`; the totals count all of them.
pub const MAX_MEMBERS_IN_STATUS: usize = 100;

/// Condition types and reasons, in one place.
pub mod reasons {
    pub const READY: &str = "Ready";
    pub const ACCEPTED: &str = "Accepted";
    pub const DEGRADED: &str = "Degraded";
    pub const MEMBERS_AVAILABLE: &str = "MembersAvailable";
    pub const NO_MEMBERS_AVAILABLE: &str = "NoMembersAvailable";
    pub const ROUTE_CONFLICT: &str = "RouteConflict";
    pub const NOT_SERVED: &str = "NotServed";
    /// A route that cannot be served as written (a regular expression that does not compile,
    /// two routes of the cluster claiming the same requests): the others are served.
    pub const INVALID_ROUTE: &str = "InvalidRoute";
    /// A route's mirror names a BalancerCluster that is not served here: no copies are sent.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const MEMBERS_UNAVAILABLE: &str = "MembersUnavailable";
    pub const ALL_MEMBERS_USABLE: &str = "AllMembersUsable";
    /// Whether every certificate the cluster names is loaded and served; the reasons are
    /// `crate::tls::reasons`.
    pub const TLS_READY: &str = "TLSReady";
}

/// At most this many characters of problems in the `TLSReady` and `Accepted` messages.
const MAX_TLS_MESSAGE: usize = 1000;

/// What the snapshot says of the routes beyond each cluster's own: claims lost to older
/// clusters, mirrors naming clusters not served.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteReports<'a> {
    pub conflicts: &'a [RouteConflict],
    pub unresolved_mirrors: &'a [UnresolvedMirror],
}

impl<'a> RouteReports<'a> {
    pub fn of(snapshot: &'a Snapshot) -> Self {
        RouteReports {
            conflicts: &snapshot.conflicts,
            unresolved_mirrors: &snapshot.unresolved_mirrors,
        }
    }
}

/// The status a cluster should have now. `previous` keeps condition transition times.
pub fn desired_status(
    bc: &BalancerCluster,
    served: Option<&Cluster>,
    tls: Option<&ClusterTls>,
    reports: RouteReports<'_>,
    peers: &HashMap<(String, String), Traffic>,
    now_ms: u64,
    now: Timestamp,
) -> BalancerClusterStatus {
    let key = format!("{}/{}", bc.namespace().unwrap_or_default(), bc.name_any());
    let mut status = BalancerClusterStatus {
        observed_generation: bc.metadata.generation,
        lb_method: Some(bc.spec.lb_method.as_str().to_owned()),
        routes: bc.spec.routes.first().map(crate::api::RouteSpec::describe),
        ..BalancerClusterStatus::default()
    };
    let mut conditions = Vec::new();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
        observed_generation: bc.metadata.generation,
    };

    conditions.push(match served {
        None => condition(
            reasons::ACCEPTED,
            false,
            reasons::NOT_SERVED,
            "not served: see the controller's log".into(),
        ),
        Some(cluster) => match route_problems(cluster, &key, reports).as_slice() {
            [] => condition(reasons::ACCEPTED, true, reasons::ACCEPTED, "served".into()),
            problems => {
                let message: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
                condition(
                    reasons::ACCEPTED,
                    false,
                    problems[0].0,
                    cut_message(message.join("; ")),
                )
            }
        },
    });

    if let Some(cluster) = served {
        let (ready, total) = crate::status::ready_counts(cluster, now_ms);
        let mut rows: Vec<MemberStatus> = crate::status::member_rows(cluster, now_ms);
        for row in &mut rows {
            if let Some(t) = peers.get(&(key.clone(), row.url.clone())) {
                row.elected += t.elected;
                row.busy += t.busy;
                row.sent_bytes += t.sent_bytes;
                row.received_bytes += t.received_bytes;
            }
        }
        let unusable: Vec<String> = rows
            .iter()
            .filter(|r| !matches!(r.state.as_str(), "Ok" | "HotStandby" | "HotSpare"))
            .map(|r| r.pod.clone().unwrap_or_else(|| r.url.clone()))
            .collect();
        rows.sort_by(|a, b| a.pod.cmp(&b.pod).then_with(|| a.url.cmp(&b.url)));
        rows.truncate(MAX_MEMBERS_IN_STATUS);
        status.members = rows;
        status.ready_members = u32::try_from(ready).unwrap_or(u32::MAX);
        status.total_members = u32::try_from(total).unwrap_or(u32::MAX);
        status.ready = Some(format!("{ready}/{total}"));
        conditions.push(if ready > 0 {
            condition(
                reasons::READY,
                true,
                reasons::MEMBERS_AVAILABLE,
                format!("{ready} of {total} members usable"),
            )
        } else {
            condition(
                reasons::READY,
                false,
                reasons::NO_MEMBERS_AVAILABLE,
                format!("0 of {total} members usable"),
            )
        });
        conditions.push(if unusable.is_empty() {
            condition(
                reasons::DEGRADED,
                false,
                reasons::ALL_MEMBERS_USABLE,
                "every member takes requests".into(),
            )
        } else {
            let mut names = unusable
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if unusable.len() > 10 {
                names.push_str(", ...");
            }
            condition(
                reasons::DEGRADED,
                true,
                reasons::MEMBERS_UNAVAILABLE,
                format!(
                    "{} of {total} members take no new requests: {names}",
                    unusable.len()
                ),
            )
        });
    }
    if let Some(tls) = tls {
        conditions.push(tls_condition(tls, condition));
        status.certificates = tls
            .certificates
            .iter()
            .map(|c| CertificateStatus {
                role: c.role.as_str().to_owned(),
                source: c.source.clone(),
                hosts: c.hosts.clone(),
                issuer: c.info.issuer.clone(),
                serial: c.info.serial.clone(),
                not_after: Time(
                    Timestamp::from_second(c.info.not_after).unwrap_or(Timestamp::UNIX_EPOCH),
                ),
                days_left: c.info.days_left(now.as_second()),
            })
            .collect();
    }
    status.conditions = conditions;
    status
}

/// Why part of a served cluster's routes is not served as written, most serious first: routes
/// that cannot be served, claims lost to older clusters, mirrors naming clusters not served.
fn route_problems(
    cluster: &Cluster,
    key: &str,
    reports: RouteReports<'_>,
) -> Vec<(&'static str, String)> {
    let invalid = cluster.config.route_problems.iter().map(|p| {
        (
            reasons::INVALID_ROUTE,
            format!("{}: {}; the route is not served", p.field, p.message),
        )
    });
    let conflicts = reports
        .conflicts
        .iter()
        .filter(|c| c.cluster == key)
        .map(|c| {
            let gap = if c.path_prefix.starts_with('/') {
                ""
            } else {
                " "
            };
            (
                reasons::ROUTE_CONFLICT,
                format!(
                    "{}{gap}{} is already served by {}, which is older",
                    c.host.as_deref().unwrap_or("*"),
                    c.path_prefix,
                    c.held_by
                ),
            )
        });
    let mirrors = reports
        .unresolved_mirrors
        .iter()
        .filter(|m| m.cluster == key)
        .map(|m| {
            (
                reasons::BACKEND_NOT_FOUND,
                format!(
                    "spec.routes[{}]: requestMirror names the BalancerCluster {}, which is not served here (missing, or of another className): no copies are sent",
                    m.route, m.target
                ),
            )
        });
    invalid.chain(conflicts).chain(mirrors).collect()
}

/// A condition's message cut to [`MAX_TLS_MESSAGE`] bytes, on a character boundary.
fn cut_message(mut message: String) -> String {
    if message.len() > MAX_TLS_MESSAGE {
        let mut end = MAX_TLS_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// `TLSReady`: true when every certificate the cluster names is loaded and served as asked;
/// otherwise the first problem's reason, and every problem in the message.
fn tls_condition(
    tls: &ClusterTls,
    condition: impl Fn(&str, bool, &str, String) -> Condition,
) -> Condition {
    let Some(first) = tls.problems.first() else {
        let served = tls
            .certificates
            .iter()
            .filter(|c| c.role == crate::tls::Role::Server)
            .count();
        return condition(
            reasons::TLS_READY,
            true,
            crate::tls::reasons::LOADED,
            format!(
                "{served} certificate{} served; members' TLS ready",
                if served == 1 { "" } else { "s" }
            ),
        );
    };
    let message = tls
        .problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    condition(
        reasons::TLS_READY,
        false,
        first.reason,
        cut_message(message),
    )
}

/// Keeps a condition's transition time when its status did not change.
pub fn keep_transition_times(
    desired: &mut BalancerClusterStatus,
    previous: Option<&BalancerClusterStatus>,
) {
    let Some(previous) = previous else { return };
    for c in &mut desired.conditions {
        if let Some(old) = previous.conditions.iter().find(|o| o.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// Writes status for the clusters this installation serves, while this replica leads.
pub struct Writer {
    pub client: Client,
    pub plane: Arc<DataPlane>,
    pub clusters: Vec<Store<BalancerCluster>>,
    pub scope: super::index::Scope,
    pub leadership: Leadership,
    pub interval: Duration,
    pub peers: PeerSource,
    pub recorder: Recorder,
}

impl Writer {
    pub async fn run(self) {
        let mut written: HashMap<String, BalancerClusterStatus> = HashMap::new();
        let mut members_seen: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut tls_seen: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !self.leadership.is_leader() {
                written.clear();
                continue;
            }
            let snapshot = self.plane.snapshot_full();
            let peers = self.peers.traffic().await;
            let now_ms = clock::now_ms();
            let now = Timestamp::now();
            for store in &self.clusters {
                for bc in store.state() {
                    if !self.scope.serves(&bc) {
                        continue;
                    }
                    let namespace = bc.namespace().unwrap_or_default();
                    let key = format!("{namespace}/{}", bc.name_any());
                    let served = snapshot
                        .cluster(&namespace, &bc.name_any())
                        .map(|c| c.as_ref());
                    self.membership_events(&bc, served, &key, &mut members_seen)
                        .await;
                    let tls = snapshot.tls.clusters.get(&key);
                    self.tls_events(&bc, tls, &key, &mut tls_seen).await;
                    let mut desired = desired_status(
                        &bc,
                        served,
                        tls,
                        RouteReports::of(&snapshot),
                        &peers,
                        now_ms,
                        now,
                    );
                    let previous = written.get(&key).or(bc.status.as_ref());
                    keep_transition_times(&mut desired, previous);
                    if previous == Some(&desired) {
                        continue;
                    }
                    let api: Api<BalancerCluster> =
                        Api::namespaced(self.client.clone(), &namespace);
                    let patch = serde_json::json!({
                        "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
                        "kind": "BalancerCluster",
                        "status": desired,
                    });
                    match api
                        .patch_status(
                            &bc.name_any(),
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&patch),
                        )
                        .await
                    {
                        Ok(_) => {
                            written.insert(key, desired);
                        }
                        Err(e) => tracing::warn!(cluster = %key, error = %e, "cannot write status"),
                    }
                }
            }
        }
    }

    /// A Warning event for each new TLS problem (a refused certificate, a missing Secret), and
    /// a Normal one when the last problem is gone.
    async fn tls_events(
        &self,
        bc: &BalancerCluster,
        tls: Option<&ClusterTls>,
        key: &str,
        seen: &mut HashMap<String, BTreeSet<String>>,
    ) {
        let problems = tls.map(|t| t.problems.as_slice()).unwrap_or_default();
        let now: BTreeSet<String> = problems.iter().map(|p| p.message.clone()).collect();
        let before = seen.insert(key.to_owned(), now.clone());
        let mut events = Vec::new();
        for p in problems {
            if before.as_ref().is_none_or(|b| !b.contains(&p.message)) {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: p.reason.to_owned(),
                    note: Some(p.message.chars().take(1000).collect()),
                    action: "LoadCertificate".into(),
                    secondary: None,
                });
            }
        }
        if now.is_empty() && before.is_some_and(|b| !b.is_empty()) {
            events.push(Event {
                type_: EventType::Normal,
                reason: crate::tls::reasons::LOADED.into(),
                note: Some("every certificate the cluster names is loaded and served".into()),
                action: "LoadCertificate".into(),
                secondary: None,
            });
        }
        for event in events {
            if let Err(e) = self.recorder.publish(&event, &bc.object_ref(&())).await {
                tracing::warn!(cluster = %key, error = %e, "cannot publish an event");
            }
        }
    }

    async fn membership_events(
        &self,
        bc: &BalancerCluster,
        served: Option<&Cluster>,
        key: &str,
        seen: &mut HashMap<String, BTreeSet<String>>,
    ) {
        let now: BTreeSet<String> = served
            .map(|c| c.config.members.iter().map(|m| m.url.clone()).collect())
            .unwrap_or_default();
        let Some(before) = seen.insert(key.to_owned(), now.clone()) else {
            return;
        };
        if before == now {
            return;
        }
        let added: Vec<&String> = now.difference(&before).collect();
        let removed: Vec<&String> = before.difference(&now).collect();
        let note = format!(
            "{} members: added {}, removed {}",
            now.len(),
            if added.is_empty() {
                "none".to_owned()
            } else {
                added
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            if removed.is_empty() {
                "none".to_owned()
            } else {
                removed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
        let event = Event {
            type_: EventType::Normal,
            reason: "MembersChanged".into(),
            note: Some(note.chars().take(1000).collect()),
            action: "UpdateMembers".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &bc.object_ref(&())).await {
            // Warn: a missing permission would otherwise go unnoticed.
            tracing::warn!(cluster = %key, error = %e, "cannot publish an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemberState;
    use crate::discovery::MemberConfig;

    fn cluster_with(n: usize) -> (BalancerCluster, Arc<crate::plane::Snapshot>) {
        let mut bc = BalancerCluster::new(
            "web",
            serde_json::from_value(serde_json::json!({"service": {"name": "web", "port": "http"}}))
                .expect("spec"),
        );
        bc.metadata.namespace = Some("shop".into());
        bc.metadata.generation = Some(3);
        let mut config = crate::discovery::cluster_config(&bc, Vec::new()).expect("config");
        config.members = (0..n)
            .map(|i| {
                let authority = format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256);
                MemberConfig {
                    url: format!("http://{authority}"),
                    authority,
                    pod: Some(format!("web-7d9f8c6b5-{i:05}-with-a-long-generated-suffix")),
                    load_factor: 1,
                    lbset: 0,
                    route: Some(format!("route-{i}")),
                    state: if i % 10 == 0 {
                        MemberState::Drain
                    } else {
                        MemberState::Enabled
                    },
                    protocol: Default::default(),
                }
            })
            .collect();
        let plane = DataPlane::new();
        let snapshot = plane.publish(vec![config]);
        (bc, snapshot)
    }

    #[test]
    fn thousands_of_members_stay_far_under_the_object_size_limit() {
        let (bc, snapshot) = cluster_with(5000);
        let served = snapshot.cluster("shop", "web").map(|c| c.as_ref());
        let status = desired_status(
            &bc,
            served,
            None,
            RouteReports::default(),
            &HashMap::new(),
            0,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!((status.ready_members, status.total_members), (4500, 5000));
        assert_eq!(status.ready.as_deref(), Some("4500/5000"));
        assert_eq!(status.members.len(), MAX_MEMBERS_IN_STATUS);
        let size = serde_json::to_vec(&status).expect("json").len();
        assert!(size < 64 * 1024, "status is {size} bytes");
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == reasons::DEGRADED)
            .expect("Degraded");
        assert_eq!(degraded.status, "True");
        assert!(
            degraded
                .message
                .as_deref()
                .unwrap_or("")
                .starts_with("500 of 5000 members take no new requests: ")
        );
        assert!(degraded.message.as_deref().unwrap_or("").len() < 1200);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let (bc, snapshot) = cluster_with(3);
        let served = snapshot.cluster("shop", "web").map(|c| c.as_ref());
        let first = desired_status(
            &bc,
            served,
            None,
            RouteReports::default(),
            &HashMap::new(),
            0,
            Timestamp::UNIX_EPOCH,
        );
        let later = Timestamp::from_second(1_000).expect("time");
        let mut second = desired_status(
            &bc,
            served,
            None,
            RouteReports::default(),
            &HashMap::new(),
            0,
            later,
        );
        assert_ne!(first, second);
        keep_transition_times(&mut second, Some(&first));
        assert_eq!(first, second, "nothing changed, so nothing to write");
    }

    #[test]
    fn a_route_that_cannot_be_served_and_a_mirror_to_nowhere_are_reported() {
        let spec = serde_json::json!({
            "members": [{"url": "http://10.0.0.5:80"}],
            "routes": [
                {"pathPrefix": "/ok", "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone"}}}]},
                {"match": {"path": {"type": "RegularExpression", "value": "/(a"}}},
            ],
        });
        let mut bc = BalancerCluster::new("web", serde_json::from_value(spec).expect("spec"));
        bc.metadata.namespace = Some("shop".into());
        let config = crate::discovery::cluster_config(&bc, Vec::new()).expect("config");
        // The route that can be served is; the other is reported.
        assert_eq!(config.route_configs.len(), 1);
        let snapshot = DataPlane::new().publish(vec![config]);
        assert_eq!(
            snapshot.unresolved_mirrors,
            [UnresolvedMirror {
                cluster: "shop/web".into(),
                route: 0,
                target: "shop/gone".into()
            }]
        );
        let served = snapshot.cluster("shop", "web").map(|c| c.as_ref());
        let status = desired_status(
            &bc,
            served,
            None,
            RouteReports::of(&snapshot),
            &HashMap::new(),
            0,
            Timestamp::UNIX_EPOCH,
        );
        let accepted = status
            .conditions
            .iter()
            .find(|c| c.type_ == reasons::ACCEPTED)
            .expect("Accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_deref()),
            ("False", Some(reasons::INVALID_ROUTE))
        );
        assert_eq!(
            accepted.message.as_deref(),
            Some(
                "spec.routes[1].match.path.value: \"/(a\" is not a regular expression this proxy can run: unclosed group; the route is not served; \
                 spec.routes[0]: requestMirror names the BalancerCluster shop/gone, which is not served here (missing, or of another className): no copies are sent"
            )
        );
    }

    #[test]
    fn a_route_lost_to_an_older_cluster_is_not_accepted() {
        let (bc, snapshot) = cluster_with(1);
        let served = snapshot.cluster("shop", "web").map(|c| c.as_ref());
        let conflict = RouteConflict {
            cluster: "shop/web".into(),
            host: Some("shop.example.com".into()),
            path_prefix: "/".into(),
            held_by: "shop/older".into(),
        };
        let status = desired_status(
            &bc,
            served,
            None,
            RouteReports {
                conflicts: &[conflict],
                ..RouteReports::default()
            },
            &HashMap::new(),
            0,
            Timestamp::UNIX_EPOCH,
        );
        let accepted = status
            .conditions
            .iter()
            .find(|c| c.type_ == reasons::ACCEPTED)
            .expect("Accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_deref()),
            ("False", Some(reasons::ROUTE_CONFLICT))
        );
        assert_eq!(
            accepted.message.as_deref(),
            Some("shop.example.com/ is already served by shop/older, which is older")
        );
    }

    #[test]
    fn tls_ready_says_why_not_and_certificates_show_days_left() {
        use crate::tls::{CertInfo, CertificateView, Problem, Role};
        let (bc, snapshot) = cluster_with(1);
        let served = snapshot.cluster("shop", "web").map(|c| c.as_ref());
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let mut tls = ClusterTls {
            certificates: vec![CertificateView {
                role: Role::Server,
                source: "secret shop/web-tls".into(),
                hosts: vec!["shop.example.com".into()],
                default: false,
                info: CertInfo {
                    hosts: vec!["shop.example.com".into()],
                    subject: "CN=shop.example.com".into(),
                    issuer: "CN=Test CA".into(),
                    serial: "01".into(),
                    not_before: 1_790_000_000,
                    not_after: 1_800_000_000 + 30 * 86_400 + 5,
                },
            }],
            problems: vec![],
        };
        let status = |tls: &ClusterTls| {
            desired_status(
                &bc,
                served,
                Some(tls),
                RouteReports::default(),
                &HashMap::new(),
                0,
                now,
            )
        };
        let ready = status(&tls);
        let c = ready
            .conditions
            .iter()
            .find(|c| c.type_ == reasons::TLS_READY)
            .expect("TLSReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
            (
                "True",
                Some("CertificatesLoaded"),
                Some("1 certificate served; members' TLS ready")
            )
        );
        assert_eq!(ready.certificates.len(), 1);
        let row = &ready.certificates[0];
        assert_eq!(
            (row.role.as_str(), row.days_left, row.serial.as_str()),
            ("server", 30, "01")
        );
        assert_eq!(row.not_after.0.as_second(), 1_800_000_000 + 30 * 86_400 + 5);

        tls.problems.push(Problem {
            reason: crate::tls::reasons::CERTIFICATE_REFUSED,
            message: "secret shop/web-tls: the certificate expired on 2027-01-01T00:00:00Z; the certificate loaded before keeps serving".into(),
        });
        let refused = status(&tls);
        let c = refused
            .conditions
            .iter()
            .find(|c| c.type_ == reasons::TLS_READY)
            .expect("TLSReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("CertificateRefused"))
        );
        assert!(
            c.message
                .as_deref()
                .unwrap_or("")
                .contains("expired on 2027-01-01T00:00:00Z")
        );
        assert_eq!(
            refused.certificates.len(),
            1,
            "the served certificate is still shown"
        );
        // No TLS at all: no condition.
        let plain = desired_status(
            &bc,
            served,
            None,
            RouteReports::default(),
            &HashMap::new(),
            0,
            now,
        );
        assert!(
            plain
                .conditions
                .iter()
                .all(|c| c.type_ != reasons::TLS_READY)
        );
    }
}
