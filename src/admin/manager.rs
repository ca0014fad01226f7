//! The balancer-manager's figures: one read of the current snapshot and the live counters, shaped
//! for the JSON answer, the HTML page and the metrics alike.
//!
//! The member rows come from [`crate::status::member_rows`], the same rows the controller writes
//! to `.status`, so the page, the metrics and the resource never disagree on what a member is.
//! The JSON shape is also what a leader reads from its peers to sum their traffic figures: each
//! member carries every field of [`MemberStatus`] under the same names.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rates::{Counts, Rates};
use crate::api::{MemberStatus, RouteSpec};
use crate::balancer::traffic::{TrafficRead, slot_labels};
use crate::balancer::{BalancedMember, GRPC_STATUS_NAMES, MemberStats};
use crate::plane::{DataPlane, Snapshot};
use crate::status;

/// Everything the balancer-manager shows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagerView {
    /// Snapshot generation: counts publications, 0 before the first.
    pub generation: u64,
    /// A first configuration has been published.
    pub ready: bool,
    /// Configuration loads refused since start.
    pub rejected_configs: u64,
    pub clusters: Vec<ClusterView>,
}

/// One balancer: Apache's `balancer://` block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// `namespace/name`.
    pub name: String,
    pub lb_method: String,
    /// The sticky-session cookie and/or parameter, as Apache shows it (`COOKIE|param`).
    pub sticky_session: Option<String>,
    pub max_attempts: u32,
    pub no_failover: bool,
    pub fail_on_status: Vec<u16>,
    pub retry_after_error_ms: u64,
    pub timeouts: TimeoutsView,
    pub routes: Vec<RouteSpec>,
    /// Routes this balancer claims but does not get, because an earlier one holds them.
    pub route_conflicts: Vec<ConflictView>,
    /// Members that take new requests now.
    pub ready_members: usize,
    pub total_members: usize,
    pub members: Vec<MemberView>,
    /// The certificates the balancer uses: served for its names, and for its members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateRow>,
    /// Why part of its TLS is not served as configured (refused or missing certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_problems: Vec<String>,
}

/// One certificate: what it is for, where it comes from, whom it names and when it expires.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRow {
    /// `server`, `client` or `ca`.
    pub role: String,
    pub source: String,
    pub hosts: Vec<String>,
    /// Served to clients that ask for a name no certificate is served for.
    #[serde(default)]
    pub default: bool,
    pub issuer: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
    /// Seconds until it expires; negative once it has.
    pub expires_in_seconds: i64,
}

/// Timeouts in milliseconds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsView {
    pub connect_ms: u64,
    pub response_ms: u64,
    pub idle_ms: u64,
}

/// A route lost to another balancer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConflictView {
    pub host: Option<String>,
    pub path_prefix: String,
    pub held_by: String,
}

/// One member: its status row plus the figures only the data plane has.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    #[serde(flatten)]
    pub status: MemberStatus,
    /// Apache's Load column (`lbstatus`): where the member stands in the byrequests rotation.
    pub load: i64,
    /// Failures: refused or broken connections, `failOnStatus` answers.
    pub errors: u64,
    /// Why the member does or does not take requests as far as health goes: `Ok`, `Error`,
    /// `HealthCheckFailed` or `Ejected` (passive health checking).
    #[serde(default)]
    pub health: String,
    /// Times passive health checking ejected the member, and active checks it failed.
    #[serde(default)]
    pub ejections: u64,
    #[serde(default)]
    pub health_check_failures: u64,
    /// Seconds since the member's state last changed.
    #[serde(default)]
    pub state_age_seconds: u64,
    /// Its traffic: rates over the last minute, answer times, answers by status class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficView>,
    /// The active health check and where the member stands in it; none without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckView>,
    /// How the member is spoken to: `http1`, `h2c` or `h2`.
    #[serde(default)]
    pub protocol: String,
    /// gRPC calls the member served or failed, by the status their client got (`OK`,
    /// `UNAVAILABLE`, ...); only the statuses seen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc_status: BTreeMap<String, u64>,
}

/// Apache's health-check columns (HC Method, Interval, Passes, Fails, URI) for one member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckView {
    pub method: String,
    pub interval_ms: u64,
    /// Checks in a row a failed member must pass, and how many it has passed so far.
    pub passes: u32,
    pub passed_in_a_row: u32,
    /// Checks in a row a member must fail to go out, and how many it has failed so far.
    pub fails: u32,
    pub failed_in_a_row: u32,
    pub uri: String,
    pub expect_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Checks run on this member.
    pub checks: u64,
}

/// A member's traffic as the page shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficView {
    /// The span the rates and answer times cover: the last minute, or less when the admin
    /// server has read the member's counters for less long (`None`: not read yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<f64>,
    /// Answers per second and 5xx answers per second over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_per_second: Option<f64>,
    /// Answer times over the window (request sent to answer head), in milliseconds, from the
    /// same histogram as `/metrics` (`None` without answers in the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Answers since start by status class (`2xx`, `5xx`, ...), only the classes seen.
    pub by_class: BTreeMap<String, u64>,
}

impl TrafficView {
    fn of(read: &TrafficRead, rate: Option<super::rates::Rate>) -> TrafficView {
        let mut by_class = BTreeMap::new();
        for (slot, &n) in read.responses.iter().enumerate() {
            if n > 0 {
                *by_class.entry(slot_labels(slot).1.to_owned()).or_insert(0) += n;
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        TrafficView {
            window_seconds: rate.as_ref().map(|r| r.seconds),
            requests_per_second: rate.as_ref().map(|r| r.answers_per_second),
            errors_per_second: rate.as_ref().map(|r| r.errors_per_second),
            p50_ms: rate.as_ref().and_then(|r| r.p50).map(ms),
            p99_ms: rate.as_ref().and_then(|r| r.p99).map(ms),
            by_class,
        }
    }
}

impl MemberView {
    /// Takes new requests as far as its own state and health go.
    pub fn usable(&self) -> bool {
        matches!(self.status.state.as_str(), "Ok" | "HotStandby" | "HotSpare")
    }
}

/// Reads the plane's current snapshot and counters at `now_ms` (process clock), without rates.
pub fn view(plane: &DataPlane, now_ms: u64) -> ManagerView {
    view_with_rates(plane, None, now_ms)
}

/// Reads the plane's current snapshot and counters at `now_ms` (process clock); with `rates`,
/// each member's traffic too.
pub fn view_with_rates(plane: &DataPlane, rates: Option<&Rates>, now_ms: u64) -> ManagerView {
    let snapshot = plane.snapshot_full();
    ManagerView {
        generation: snapshot.generation,
        ready: plane.is_ready(),
        rejected_configs: plane.rejected_configs.load(Relaxed),
        clusters: clusters(&snapshot, rates, now_ms, crate::tls::unix_now()),
    }
}

/// A member's traffic figures: its totals by class, and its rates when they are kept.
fn traffic(
    rates: Option<&Rates>,
    cluster: &str,
    member: &BalancedMember,
    now_ms: u64,
) -> Option<TrafficView> {
    let rates = rates?;
    let read = member.stats.traffic.read();
    let rate = rates.rate(cluster, &member.url, &Counts::of(&read), now_ms);
    Some(TrafficView::of(&read, rate))
}

fn clusters(
    snapshot: &Snapshot,
    rates: Option<&Rates>,
    now_ms: u64,
    now_secs: i64,
) -> Vec<ClusterView> {
    snapshot
        .clusters
        .iter()
        .map(|cluster| {
            let config = &cluster.config;
            let rows = status::member_rows(cluster, now_ms);
            let load = cluster.balancer.lbstatus();
            let members =
                rows.into_iter()
                    .zip(cluster.balancer.members())
                    .enumerate()
                    .map(|(i, (row, live))| MemberView {
                        status: row,
                        load: load.get(i).copied().unwrap_or(0),
                        errors: live.stats.errors.load(Relaxed),
                        ejections: live.stats.ejections_total.load(Relaxed),
                        health_check_failures: live.stats.hc_failures.load(Relaxed),
                        state_age_seconds: now_ms
                            .saturating_sub(live.stats.state_changed_ms(now_ms))
                            / 1000,
                        traffic: traffic(rates, &cluster.key, live, now_ms),
                        health: live.stats.health(now_ms).as_str().to_owned(),
                        health_check: config.policy.health_check.as_ref().map(|hc| {
                            HealthCheckView {
                                method: hc.method.as_str().to_owned(),
                                interval_ms: millis(hc.interval),
                                passes: hc.passes,
                                passed_in_a_row: live.stats.hc_passes.load(Relaxed),
                                fails: hc.fails,
                                failed_in_a_row: live.stats.hc_fails.load(Relaxed),
                                uri: hc.path.clone(),
                                expect_status: hc
                                    .expect_status
                                    .iter()
                                    .map(|&(low, high)| {
                                        if low == high {
                                            low.to_string()
                                        } else {
                                            format!("{low}-{high}")
                                        }
                                    })
                                    .collect::<Vec<_>>()
                                    .join(","),
                                body_contains: hc.body_contains.clone(),
                                checks: live.stats.hc_checks.load(Relaxed),
                            }
                        }),
                        protocol: config
                            .members
                            .get(i)
                            .map(|m| m.protocol.as_str().to_owned())
                            .unwrap_or_default(),
                        grpc_status: grpc_statuses(&live.stats),
                    })
                    .collect();
            let (ready_members, total_members) = status::ready_counts(cluster, now_ms);
            let tls = snapshot.tls.clusters.get(&cluster.key);
            ClusterView {
                name: cluster.key.clone(),
                lb_method: config.lb_method.as_str().to_owned(),
                sticky_session: config.policy.sticky.as_ref().map(|s| s.describe()),
                max_attempts: config.max_attempts,
                no_failover: config.no_failover,
                fail_on_status: config.fail_on_status.clone(),
                retry_after_error_ms: millis(config.retry_after_error),
                timeouts: TimeoutsView {
                    connect_ms: millis(config.connect_timeout),
                    response_ms: millis(config.response_timeout),
                    idle_ms: millis(config.idle_timeout),
                },
                routes: config.routes.clone(),
                route_conflicts: snapshot
                    .conflicts
                    .iter()
                    .filter(|c| c.cluster == cluster.key)
                    .map(|c| ConflictView {
                        host: c.host.clone(),
                        path_prefix: c.path_prefix.clone(),
                        held_by: c.held_by.clone(),
                    })
                    .collect(),
                ready_members,
                total_members,
                members,
                certificates: tls
                    .map(|t| {
                        t.certificates
                            .iter()
                            .map(|c| CertificateRow {
                                role: c.role.as_str().to_owned(),
                                source: c.source.clone(),
                                hosts: c.hosts.clone(),
                                default: c.default,
                                issuer: c.info.issuer.clone(),
                                serial: c.info.serial.clone(),
                                not_after: crate::tls::cert::timestamp(c.info.not_after),
                                days_left: c.info.days_left(now_secs),
                                expires_in_seconds: c.info.seconds_left(now_secs),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                tls_problems: tls
                    .map(|t| t.problems.iter().map(|p| p.message.clone()).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The gRPC statuses counted for a member, by name; those never seen left out.
fn grpc_statuses(stats: &MemberStats) -> BTreeMap<String, u64> {
    GRPC_STATUS_NAMES
        .iter()
        .zip(&stats.grpc_status)
        .map(|(name, count)| ((*name).to_owned(), count.load(Relaxed)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LbMethod, MemberState};
    use crate::discovery::{ClusterConfig, MemberConfig};

    fn member(port: u16, state: MemberState) -> MemberConfig {
        MemberConfig {
            url: format!("http://127.0.0.1:{port}"),
            authority: format!("127.0.0.1:{port}"),
            pod: None,
            load_factor: 1,
            lbset: 0,
            route: None,
            state,
            protocol: Default::default(),
        }
    }

    fn cluster(name: &str, members: Vec<MemberConfig>) -> ClusterConfig {
        ClusterConfig {
            namespace: "shop".into(),
            name: name.into(),
            routes: crate::api::default_routes(),
            route_configs: vec![crate::discovery::routes::RouteConfig::everything()],
            route_problems: Vec::new(),
            lb_method: LbMethod::ByRequests,
            max_attempts: 1,
            no_failover: false,
            fail_on_status: vec![503],
            retry_after_error: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            members,
            policy: Default::default(),
            tls: Default::default(),
        }
    }

    #[test]
    fn view_before_the_first_publication_is_empty_and_not_ready() {
        let plane = DataPlane::new();
        let v = view(&plane, 0);
        assert!(!v.ready);
        assert_eq!(v.generation, 0);
        assert!(v.clusters.is_empty());
    }

    #[test]
    fn view_shows_every_member_with_live_figures_and_conflicts() {
        let plane = DataPlane::new();
        plane.publish(vec![
            cluster(
                "web",
                vec![
                    member(1, MemberState::Enabled),
                    member(2, MemberState::Stopped),
                ],
            ),
            cluster("shadow", vec![member(3, MemberState::Enabled)]),
        ]);
        let snapshot = plane.snapshot_full();
        let web = &snapshot.clusters[0];
        let stats = &web.balancer.members()[0].stats;
        stats.elected.store(7, Relaxed);
        stats.sent_bytes.store(100, Relaxed);
        web.balancer.mark_error(0, 0, 1_000, "refused".into());

        let v = view(&plane, 10);
        assert!(v.ready);
        assert_eq!(v.generation, 1);
        let c = &v.clusters[0];
        assert_eq!(c.name, "shop/web");
        assert_eq!(c.lb_method, "byrequests");
        assert_eq!(c.retry_after_error_ms, 60_000);
        assert_eq!(c.timeouts.idle_ms, 90_000);
        assert_eq!((c.ready_members, c.total_members), (0, 2));
        let m = &c.members[0];
        assert_eq!(m.status.elected, 7);
        assert_eq!(m.status.sent_bytes, 100);
        assert_eq!(m.status.state, "Error");
        assert_eq!(m.errors, 1);
        assert!(!m.usable());
        assert_eq!(c.members[1].status.state, "Stopped");
        // The second cluster claims the same default route and loses it.
        let lost = &v.clusters[1].route_conflicts;
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].held_by, "shop/web");
    }

    #[test]
    fn json_members_carry_the_status_fields_under_their_names() {
        let plane = DataPlane::new();
        plane.publish(vec![cluster("web", vec![member(1, MemberState::Enabled)])]);
        let json = serde_json::to_value(view(&plane, 0)).expect("serializes");
        let m = &json["clusters"][0]["members"][0];
        for key in [
            "url",
            "loadFactor",
            "lbset",
            "state",
            "elected",
            "busy",
            "sentBytes",
            "receivedBytes",
            "load",
            "errors",
        ] {
            assert!(m.get(key).is_some(), "member JSON lacks {key}: {m}");
        }
        let back: ManagerView = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.clusters[0].members[0].status.url, "http://127.0.0.1:1");
    }
}
