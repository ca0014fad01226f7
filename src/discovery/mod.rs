//! From a `BalancerCluster` (and, in a cluster, its endpoints) to the member list the data plane
//! serves. Pure: no I/O, no clock. Controller and standalone mode both feed their resources
//! through here, so a member looks the same whichever front door it came from.

pub mod endpoints;

use std::time::Duration;

use crate::api::{
    BalancerCluster, BalancerClusterSpec, HashKey, HealthCheckMethod, LbMethod, MemberOverride,
    MemberState, Protocol, RouteSpec, default_max_concurrent_streams,
};

/// A member as the data plane serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberConfig {
    /// `http://HOST:PORT`, the member's identity.
    pub url: String,
    /// `HOST:PORT` to connect to.
    pub authority: String,
    /// The pod behind the member, when it came from an EndpointSlice.
    pub pod: Option<String>,
    pub load_factor: u32,
    pub lbset: u32,
    pub route: Option<String>,
    pub state: MemberState,
    /// How the member is spoken to: its own `protocol`, else the cluster's, else (for a
    /// Service's endpoints) what the port's `appProtocol` says, else http1.
    pub protocol: Protocol,
}

/// A cluster as the data plane serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub namespace: String,
    pub name: String,
    pub routes: Vec<RouteSpec>,
    pub lb_method: LbMethod,
    pub max_attempts: u32,
    pub no_failover: bool,
    pub fail_on_status: Vec<u16>,
    pub retry_after_error: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub members: Vec<MemberConfig>,
    /// How requests choose their member beyond the method: sticky sessions, the hash key,
    /// health checks, outlier ejection, slow start and forced recovery.
    pub policy: Policy,
}

/// The parts of a cluster's configuration that go beyond Apache's byrequests basics, and how
/// requests are carried beyond HTTP/1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub sticky: Option<StickyConfig>,
    pub hash: HashConfig,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: Option<OutlierConfig>,
    /// Zero: no slow start.
    pub slow_start: Duration,
    pub force_recovery: bool,
    /// Requests in flight on one HTTP/2 connection to a member, at most.
    pub max_concurrent_streams: u32,
    /// gRPC methods that may run twice: `/package.Service/Method`, or `/package.Service/`
    /// for a whole service (the `*` left out).
    pub safe_grpc_methods: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            sticky: None,
            hash: HashConfig::default(),
            health_check: None,
            outlier: None,
            slow_start: Duration::ZERO,
            force_recovery: true,
            max_concurrent_streams: default_max_concurrent_streams(),
            safe_grpc_methods: Vec::new(),
        }
    }
}

impl Policy {
    /// Whether the gRPC method at `path` (`/package.Service/Method`) may run twice.
    pub fn is_safe_grpc_method(&self, path: &str) -> bool {
        self.safe_grpc_methods.iter().any(|m| {
            if m.ends_with('/') {
                path.starts_with(m.as_str()) && !path[m.len()..].contains('/')
            } else {
                path == m
            }
        })
    }
}

/// Sticky sessions: where a request's route is read from, and whether the balancer sets it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StickyConfig {
    pub cookie: Option<String>,
    pub param: Option<String>,
    pub insert: bool,
}

impl StickyConfig {
    /// Apache's way of naming it on the balancer-manager: `COOKIE|param`.
    pub fn describe(&self) -> String {
        match (&self.cookie, &self.param) {
            (Some(c), Some(p)) => format!("{c}|{p}"),
            (Some(c), None) => c.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => String::new(),
        }
    }
}

/// What `lbMethod: hash` hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashConfig {
    pub key: HashKey,
    /// Header (lower-case), cookie or query parameter name; empty for the client IP.
    pub name: String,
    /// Percentage of the average load a member may carry; `None` is unbounded.
    pub bounded_load: Option<u32>,
}

/// An active health check as the checker runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub method: HealthCheckMethod,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub passes: u32,
    pub fails: u32,
    /// Inclusive status ranges that pass.
    pub expect_status: Vec<(u16, u16)>,
    pub body_contains: Option<String>,
    /// `method: GRPC`: the service asked about; empty for the server as a whole.
    pub grpc_service: String,
}

impl HealthCheckConfig {
    /// Whether an answer with `status` passes.
    pub fn expects(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

/// Passive outlier ejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Zero: off.
    pub consecutive_failures: u32,
    pub failure_percent: Option<u32>,
    pub min_requests: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl ClusterConfig {
    /// `namespace/name`, the cluster's identity in logs, metrics and the balancer-manager.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A member URL that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct MemberError {
    pub field: String,
    pub message: String,
}

/// Builds the served cluster from a resource's spec, its static members plus `discovered` ones,
/// with `spec.memberOverrides` applied on top.
pub fn cluster_config(
    bc: &BalancerCluster,
    discovered: Vec<MemberConfig>,
) -> Result<ClusterConfig, MemberError> {
    let spec = &bc.spec;
    let mut members = static_members(spec)?;
    if spec.protocol == Some(Protocol::H2) {
        // Upstream TLS plugs in here: with it, `https://` members may speak h2.
        return Err(MemberError {
            field: "spec.protocol".to_owned(),
            message: "h2 is HTTP/2 over TLS, which needs https:// members (upstream TLS); \
                      h2c is HTTP/2 without TLS"
                .to_owned(),
        });
    }
    members.extend(discovered.into_iter().map(|mut m| {
        // The cluster's protocol, when given, wins over what the Service port says.
        if let Some(protocol) = spec.protocol {
            m.protocol = protocol;
        }
        m
    }));
    apply_overrides(&mut members, &spec.member_overrides);
    for m in &mut members {
        if m.route.is_none() {
            m.route = Some(default_route(m));
        }
    }
    let policy = policy(spec)?;
    Ok(ClusterConfig {
        namespace: bc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: bc.metadata.name.clone().unwrap_or_default(),
        routes: spec.routes.clone(),
        lb_method: spec.lb_method,
        max_attempts: spec.failover.max_attempts,
        no_failover: spec.failover.no_failover,
        fail_on_status: spec.failover.fail_on_status.clone(),
        retry_after_error: spec.failover.retry_after_error.into(),
        connect_timeout: spec.timeouts.connect.into(),
        response_timeout: spec.timeouts.response.into(),
        idle_timeout: spec.timeouts.idle.into(),
        members,
        policy,
    })
}

fn policy(spec: &BalancerClusterSpec) -> Result<Policy, MemberError> {
    let sticky = spec.sticky_session.as_ref().map(|s| StickyConfig {
        cookie: s.cookie.clone().filter(|c| !c.is_empty()),
        param: s.param.clone().filter(|p| !p.is_empty()),
        insert: s.insert,
    });
    let hash = spec
        .hash
        .as_ref()
        .map(|h| HashConfig {
            key: h.key,
            name: match h.key {
                HashKey::Header => h.name.clone().unwrap_or_default().to_ascii_lowercase(),
                HashKey::ClientIp => String::new(),
                HashKey::Cookie | HashKey::QueryParam => h.name.clone().unwrap_or_default(),
            },
            bounded_load: h.bounded_load,
        })
        .unwrap_or_default();
    let health_check = match &spec.health_check {
        Some(h) => Some(HealthCheckConfig {
            method: h.method,
            path: h.path.clone(),
            interval: h.interval.into(),
            timeout: h.timeout.into(),
            passes: h.passes.max(1),
            fails: h.fails.max(1),
            expect_status: status_ranges(&h.expect_status).ok_or_else(|| MemberError {
                field: "spec.healthCheck.expectStatus".to_owned(),
                message: format!(
                    "{:?}: a range must go from the lower code to the higher, like 200-399",
                    h.expect_status
                ),
            })?,
            body_contains: h.body_contains.clone(),
            grpc_service: h.grpc_service.clone().unwrap_or_default(),
        }),
        None => None,
    };
    let outlier = spec.outlier_detection.as_ref().map(|o| OutlierConfig {
        consecutive_failures: o.consecutive_failures,
        failure_percent: o.failure_percent,
        min_requests: o.min_requests.max(1),
        interval: o.interval.into(),
        base_ejection: o.base_ejection_time.into(),
        max_ejection: o.max_ejection_time.into(),
        max_ejection_percent: o.max_ejection_percent,
    });
    Ok(Policy {
        sticky,
        hash,
        health_check,
        outlier,
        slow_start: spec.slow_start.map_or(Duration::ZERO, Into::into),
        force_recovery: spec.failover.force_recovery,
        max_concurrent_streams: spec
            .http2
            .as_ref()
            .map_or_else(default_max_concurrent_streams, |h| h.max_concurrent_streams)
            .max(1),
        safe_grpc_methods: spec
            .failover
            .safe_grpc_methods
            .iter()
            .map(|m| m.strip_suffix('*').unwrap_or(m).to_owned())
            .collect(),
    })
}

/// `200-399,404` as inclusive ranges; `None` when a range runs backwards or a code is not one.
fn status_ranges(text: &str) -> Option<Vec<(u16, u16)>> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            let (low, high) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
            (low <= high).then_some((low, high))
        })
        .collect()
}

/// The route a member gets when none is set: a stable id derived from its pod's name (so a
/// StatefulSet pod keeps its route when it is replaced), or from its URL for a static member.
/// Twelve hex digits of a 64-bit FNV-1a hash: short, cookie-safe, and the same in every
/// replica and every version.
pub fn default_route(member: &MemberConfig) -> String {
    let source = match &member.pod {
        Some(pod) => format!("pod/{pod}"),
        None => format!("url/{}", member.url),
    };
    format!("{:012x}", fnv1a(source.as_bytes()) >> 16)
}

/// 64-bit FNV-1a: stable across processes and versions, unlike std's `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn static_members(spec: &BalancerClusterSpec) -> Result<Vec<MemberConfig>, MemberError> {
    spec.members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let authority = authority_of(&m.url).ok_or_else(|| MemberError {
                field: format!("spec.members[{i}].url"),
                message: format!("{:?} is not of the form http://HOST:PORT", m.url),
            })?;
            let protocol = m.protocol.or(spec.protocol).unwrap_or_default();
            if protocol == Protocol::H2 {
                return Err(MemberError {
                    field: format!("spec.members[{i}].protocol"),
                    message: "h2 is HTTP/2 over TLS, which needs an https:// member (upstream \
                              TLS); h2c is HTTP/2 without TLS"
                        .to_owned(),
                });
            }
            Ok(MemberConfig {
                url: format!("http://{authority}"),
                authority,
                pod: None,
                load_factor: m.load_factor,
                lbset: m.lbset,
                route: m.route.clone(),
                state: m.state,
                protocol,
            })
        })
        .collect()
}

/// `HOST:PORT` of an `http://` URL, with port 80 when none is given.
pub fn authority_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let has_port = match rest.rfind(']') {
        Some(end) => rest[end..].contains(':'),
        None => rest.contains(':'),
    };
    if has_port {
        let (_, port) = rest.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        Some(rest.to_owned())
    } else {
        Some(format!("{rest}:80"))
    }
}

fn apply_overrides(members: &mut [MemberConfig], overrides: &[MemberOverride]) {
    for o in overrides {
        for m in members.iter_mut() {
            let hit = match (&o.pod, &o.address) {
                (Some(pod), _) => m.pod.as_deref() == Some(pod.as_str()),
                (None, Some(address)) => m.authority == *address || m.url == *address,
                (None, None) => false,
            };
            if hit {
                if let Some(state) = o.state {
                    m.state = state;
                }
                if let Some(f) = o.load_factor {
                    m.load_factor = f;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemberSpec;

    fn cluster(members: &[&str]) -> BalancerCluster {
        let spec: BalancerClusterSpec = serde_json::from_value(serde_json::json!({
            "members": members.iter().map(|u| serde_json::json!({"url": u})).collect::<Vec<_>>(),
        }))
        .expect("valid spec");
        let mut bc = BalancerCluster::new("mycluster", spec);
        bc.metadata.namespace = Some("shop".into());
        bc
    }

    #[test]
    fn static_members_keep_their_order_and_defaults() {
        let c = cluster_config(
            &cluster(&["http://127.0.0.1:8080", "http://localhost/"]),
            vec![],
        )
        .expect("ok");
        assert_eq!(c.key(), "shop/mycluster");
        let urls: Vec<_> = c
            .members
            .iter()
            .map(|m| (m.url.as_str(), m.authority.as_str(), m.load_factor))
            .collect();
        assert_eq!(
            urls,
            vec![
                ("http://127.0.0.1:8080", "127.0.0.1:8080", 1),
                ("http://localhost:80", "localhost:80", 1)
            ]
        );
        assert_eq!(c.retry_after_error, Duration::from_secs(60));
        assert_eq!(c.max_attempts, 1);
    }

    #[test]
    fn overrides_by_address_change_state_and_factor() {
        let mut bc = cluster(&["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
        bc.spec.member_overrides = vec![MemberOverride {
            pod: None,
            address: Some("127.0.0.1:8081".into()),
            state: Some(MemberState::Drain),
            load_factor: Some(5),
        }];
        let c = cluster_config(&bc, vec![]).expect("ok");
        assert_eq!(c.members[0].state, MemberState::Enabled);
        assert_eq!(
            (c.members[1].state, c.members[1].load_factor),
            (MemberState::Drain, 5)
        );
    }

    #[test]
    fn members_without_a_route_get_a_stable_one_from_pod_or_url() {
        let mut bc = cluster(&["http://127.0.0.1:8080"]);
        bc.spec.members.push(MemberSpec {
            url: "http://127.0.0.1:8081".into(),
            load_factor: 1,
            lbset: 0,
            route: Some("web1".into()),
            state: MemberState::Enabled,
            protocol: None,
        });
        let pod = MemberConfig {
            url: "http://10.0.0.7:8080".into(),
            authority: "10.0.0.7:8080".into(),
            pod: Some("web-0".into()),
            load_factor: 1,
            lbset: 0,
            route: None,
            state: MemberState::Enabled,
            protocol: Protocol::Http1,
        };
        let c = cluster_config(&bc, vec![pod.clone()]).expect("ok");
        let routes: Vec<_> = c.members.iter().map(|m| m.route.clone()).collect();
        assert_eq!(routes[1].as_deref(), Some("web1"));
        // Derived from the URL for a static member, from the pod name for a pod: the same pod
        // name at another address keeps its route.
        let mut moved = pod;
        moved.url = "http://10.0.0.9:8080".into();
        assert_eq!(routes[2], Some(default_route(&moved)));
        assert_ne!(routes[0], routes[2]);
        let r = routes[0].clone().expect("route");
        assert_eq!(r.len(), 12);
        assert!(r.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            cluster_config(&bc, vec![]).expect("ok").members[0].route,
            Some(r)
        );
    }

    #[test]
    fn policy_comes_from_the_spec() {
        let mut bc = cluster(&["http://127.0.0.1:8080"]);
        let spec: BalancerClusterSpec = serde_json::from_value(serde_json::json!({
            "members": [{"url": "http://127.0.0.1:8080"}],
            "lbMethod": "hash",
            "hash": {"key": "Header", "name": "X-User", "boundedLoad": 125},
            "stickySession": {"cookie": "JSESSIONID", "param": "jsessionid"},
            "healthCheck": {"method": "HEAD", "path": "/up", "interval": "2s", "expectStatus": "200-299, 404"},
            "outlierDetection": {"consecutiveFailures": 3},
            "slowStart": "30s",
        }))
        .expect("spec");
        bc.spec = spec;
        let p = cluster_config(&bc, vec![]).expect("ok").policy;
        assert_eq!(p.hash.name, "x-user");
        assert_eq!(p.hash.bounded_load, Some(125));
        assert_eq!(
            p.sticky.as_ref().map(StickyConfig::describe).as_deref(),
            Some("JSESSIONID|jsessionid")
        );
        let hc = p.health_check.expect("health check");
        assert_eq!(hc.expect_status, vec![(200, 299), (404, 404)]);
        assert!(hc.expects(204) && hc.expects(404) && !hc.expects(301));
        assert_eq!(
            (hc.interval, hc.passes, hc.fails),
            (Duration::from_secs(2), 1, 1)
        );
        let o = p.outlier.expect("outlier");
        assert_eq!((o.consecutive_failures, o.max_ejection_percent), (3, 10));
        assert_eq!(o.base_ejection, Duration::from_secs(30));
        assert_eq!(p.slow_start, Duration::from_secs(30));
        assert!(p.force_recovery);
        assert_eq!(status_ranges("399-200"), None);
    }

    #[test]
    fn authority_parsing() {
        assert_eq!(
            authority_of("http://[::1]:9000/").as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(authority_of("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(authority_of("http://a:99999"), None);
        assert_eq!(authority_of("https://a:1"), None);
        assert_eq!(authority_of("http://a/path"), None);
    }

    #[test]
    fn bad_url_names_the_member() {
        let mut bc = cluster(&["http://127.0.0.1:8080"]);
        bc.spec.members.push(MemberSpec {
            url: "ftp://x".into(),
            load_factor: 1,
            lbset: 0,
            route: None,
            state: MemberState::Enabled,
            protocol: None,
        });
        let e = cluster_config(&bc, vec![]).expect_err("refused");
        assert_eq!(e.field, "spec.members[1].url");
    }
}
