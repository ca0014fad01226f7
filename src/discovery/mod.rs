//! From a `BalancerCluster` (and, in a cluster, its endpoints) to the member list the data plane
//! serves. Pure: no I/O, no clock. Controller and standalone mode both feed their resources
//! through here, so a member looks the same whichever front door it came from.

pub mod endpoints;
pub mod routes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::text::quote;
use crate::api::{
    BalancerCluster, BalancerClusterSpec, DEFAULT_MAX_PENDING_REQUESTS, HashKey, HealthCheckMethod,
    LbMethod, MemberOverride, MemberState, Protocol, RouteSpec, default_max_concurrent_streams,
};
use routes::{RouteConfig, RouteProblem};

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

impl MemberConfig {
    /// Whether the member is reached over TLS (an `https://` URL).
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }
}

/// A cluster as the data plane serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub namespace: String,
    pub name: String,
    /// `spec.routes` as written, for the balancer-manager.
    pub routes: Vec<RouteSpec>,
    /// The routes as served: compiled, in `spec.routes`' order, without those that cannot be.
    pub route_configs: Vec<RouteConfig>,
    /// The routes that cannot be served, and why.
    pub route_problems: Vec<RouteProblem>,
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
    /// Certificates served for the cluster's names, redirect and HSTS, and how `https://`
    /// members are reached.
    pub tls: TlsConfig,
}

/// A cluster's TLS, as named in its spec: where certificates come from, not the certificates
/// (the sources read them; see `tls::material`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateRef>,
    pub https_redirect: bool,
    pub hsts: Option<HstsConfig>,
    /// Set when some member is `https://`: `spec.upstreamTLS`, or its defaults.
    pub upstream: Option<UpstreamTlsConfig>,
}

impl TlsConfig {
    /// Every source named, with whether it holds a CA bundle (`ca.crt`) rather than a key pair.
    pub fn sources(&self) -> impl Iterator<Item = (&TlsSource, bool)> {
        let upstream = self.upstream.iter().flat_map(|u| {
            u.ca.iter()
                .map(|s| (s, true))
                .chain(u.client_cert.iter().map(|s| (s, false)))
        });
        self.certificates
            .iter()
            .map(|c| (&c.source, false))
            .chain(upstream)
    }
}

/// One `spec.tls` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRef {
    /// Lower-case; empty: the certificate's own names.
    pub hosts: Vec<String>,
    pub source: TlsSource,
    pub default: bool,
}

/// Where a certificate (or a CA bundle) is read from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsSource {
    /// A Secret: `tls.crt` and `tls.key` for a key pair, `ca.crt` for a CA bundle.
    Secret { namespace: String, name: String },
    /// A ConfigMap's `ca.crt`: a CA bundle only (a BackendTLSPolicy's `caCertificateRefs`).
    ConfigMap { namespace: String, name: String },
    /// Files (standalone mode): a PEM chain and its key; a CA bundle has no key.
    Files { cert: PathBuf, key: Option<PathBuf> },
}

impl std::fmt::Display for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSource::Secret { namespace, name } => write!(f, "secret {namespace}/{name}"),
            TlsSource::ConfigMap { namespace, name } => write!(f, "configmap {namespace}/{name}"),
            TlsSource::Files { cert, .. } => write!(f, "file {}", cert.display()),
        }
    }
}

/// `Strict-Transport-Security`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HstsConfig {
    pub max_age_seconds: u64,
    pub include_sub_domains: bool,
    pub preload: bool,
}

/// How `https://` members are reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// `None`: the system's CA certificates.
    pub ca: Option<TlsSource>,
    /// `None`: each member's host.
    pub server_name: Option<String>,
    pub client_cert: Option<TlsSource>,
    pub insecure_skip_verify: bool,
    /// When not empty, the member's certificate must carry one of these names, and the server
    /// name is sent (SNI) but not verified (a BackendTLSPolicy's `subjectAltNames`).
    pub subject_alt_names: Vec<SubjectAltName>,
}

/// A name a member's certificate must carry in its subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectAltName {
    /// A DNS name (`*.` allowed, as in certificates).
    Dns(String),
    /// A URI, compared exactly (a SPIFFE ID, for one).
    Uri(String),
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
    /// Each member's connection limits (`spec.memberLimits`).
    pub limits: Limits,
    /// A static member's own limits, by its index in the cluster's members (static members
    /// come first); empty when none has its own.
    pub member_limits: Vec<Option<Limits>>,
}

/// Limits on one member's connections, counted over all of a replica's workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open to the member at most, pooled and in use; `None`: no limit.
    pub max_connections: Option<u32>,
    /// Requests that may wait for a connection once `max_connections` are open.
    pub max_pending_requests: u32,
    /// How long a request may wait for one.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            queue_timeout: Duration::from_secs(5),
        }
    }
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
            limits: Limits::default(),
            member_limits: Vec::new(),
        }
    }
}

impl Policy {
    /// The connection limits of member `index`: its own, else the cluster's.
    pub fn limits_of(&self, index: usize) -> &Limits {
        match self.member_limits.get(index) {
            Some(Some(own)) => own,
            _ => &self.limits,
        }
    }

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

    /// Serves the cluster for every host and path, with no filter (sidecar mode).
    pub fn serve_everything(&mut self) {
        self.routes = crate::api::default_routes();
        self.route_configs = vec![RouteConfig::everything()];
        self.route_problems.clear();
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
    let namespace = bc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let mut members = static_members(spec)?;
    let tls_members = spec.upstream_tls.is_some();
    members.extend(discovered.into_iter().map(|mut m| {
        // With upstreamTLS, a Service's endpoints are reached over TLS too, and an appProtocol
        // that says HTTP/2 means HTTP/2 over TLS.
        if tls_members && let Some(rest) = m.url.strip_prefix("http://") {
            m.url = format!("https://{rest}");
            if m.protocol == Protocol::H2c {
                m.protocol = Protocol::H2;
            }
        }
        // The cluster's protocol, when given, wins over what the Service port says.
        if let Some(protocol) = spec.protocol {
            m.protocol = protocol;
        }
        m
    }));
    if let Some(m) = members
        .iter()
        .skip(spec.members.len())
        .find(|m| m.protocol.is_http2() && (m.protocol == Protocol::H2) != m.is_tls())
    {
        return Err(MemberError {
            field: "spec.protocol".to_owned(),
            message: protocol_mismatch(m.protocol),
        });
    }
    apply_overrides(&mut members, &spec.member_overrides);
    for m in &mut members {
        if m.route.is_none() {
            m.route = Some(default_route(m));
        }
    }
    let policy = policy(spec)?;
    let tls = tls_config(spec, &namespace, members.iter().any(MemberConfig::is_tls));
    let authorities: Vec<&str> = members.iter().map(|m| m.authority.as_str()).collect();
    let (route_configs, route_problems) =
        routes::route_configs(&spec.routes, &namespace, &authorities);
    Ok(ClusterConfig {
        routes: spec.routes.clone(),
        route_configs,
        route_problems,
        namespace,
        name: bc.metadata.name.clone().unwrap_or_default(),
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
        tls,
    })
}

fn tls_config(spec: &BalancerClusterSpec, namespace: &str, tls_members: bool) -> TlsConfig {
    let secret = |name: &String| TlsSource::Secret {
        namespace: namespace.to_owned(),
        name: name.clone(),
    };
    let files = |cert: &String, key: Option<&String>| TlsSource::Files {
        cert: PathBuf::from(cert),
        key: key.map(PathBuf::from),
    };
    let certificates = spec
        .tls
        .iter()
        .filter_map(|t| {
            let source = match (&t.secret_name, &t.cert_file) {
                (Some(name), _) => secret(name),
                (None, Some(cert)) => files(cert, t.key_file.as_ref()),
                // The CEL rules refuse an entry with neither.
                (None, None) => return None,
            };
            Some(CertificateRef {
                hosts: t.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                source,
                default: t.default,
            })
        })
        .collect();
    let upstream = match &spec.upstream_tls {
        Some(u) => Some(UpstreamTlsConfig {
            ca: u
                .ca_secret
                .as_ref()
                .map(secret)
                .or_else(|| u.ca_file.as_ref().map(|f| files(f, None))),
            server_name: u.server_name.clone().filter(|n| !n.is_empty()),
            client_cert: u.client_cert_secret.as_ref().map(secret).or_else(|| {
                u.client_cert_file
                    .as_ref()
                    .map(|c| files(c, u.client_key_file.as_ref()))
            }),
            insecure_skip_verify: u.insecure_skip_verify,
            subject_alt_names: Vec::new(),
        }),
        None => tls_members.then(UpstreamTlsConfig::default),
    };
    TlsConfig {
        certificates,
        https_redirect: spec.https_redirect,
        hsts: spec.hsts.as_ref().map(|h| HstsConfig {
            max_age_seconds: h.max_age_seconds,
            include_sub_domains: h.include_sub_domains,
            preload: h.preload,
        }),
        upstream,
    }
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
                    "{}: a range must go from the lower code to the higher, like 200-399",
                    quote(&h.expect_status)
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
    let (limits, member_limits) = limits(spec);
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
        limits,
        member_limits,
    })
}

/// `spec.memberLimits`, and each static member's own `maxConnections` and
/// `maxPendingRequests` over it.
fn limits(spec: &BalancerClusterSpec) -> (Limits, Vec<Option<Limits>>) {
    let given = spec.member_limits.clone().unwrap_or_default();
    let limits = Limits {
        max_connections: given.max_connections,
        max_pending_requests: given
            .max_pending_requests
            .unwrap_or(DEFAULT_MAX_PENDING_REQUESTS),
        queue_timeout: given
            .queue_timeout
            .map_or_else(|| spec.timeouts.connect.into(), Into::into),
    };
    let own = |m: &crate::api::MemberSpec| {
        (m.max_connections.is_some() || m.max_pending_requests.is_some()).then(|| Limits {
            max_connections: m.max_connections.or(limits.max_connections),
            max_pending_requests: m
                .max_pending_requests
                .unwrap_or(limits.max_pending_requests),
            ..limits
        })
    };
    let mut members: Vec<Option<Limits>> = spec.members.iter().map(own).collect();
    if members.iter().all(Option::is_none) {
        members.clear();
    }
    (limits, members)
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
    let members = spec
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (scheme, authority) = scheme_and_authority(&m.url).ok_or_else(|| MemberError {
                field: format!("spec.members[{i}].url"),
                message: format!(
                    "{} is not of the form http://HOST:PORT or https://HOST:PORT",
                    quote(&m.url)
                ),
            })?;
            let protocol = m.protocol.or(spec.protocol).unwrap_or_default();
            if protocol.is_http2() && (protocol == Protocol::H2) != (scheme == "https") {
                let field = match m.protocol {
                    Some(_) => format!("spec.members[{i}].protocol"),
                    None => "spec.protocol".to_owned(),
                };
                return Err(MemberError {
                    field,
                    message: protocol_mismatch(protocol),
                });
            }
            Ok(MemberConfig {
                url: format!("{scheme}://{authority}"),
                authority,
                pod: None,
                load_factor: m.load_factor,
                lbset: m.lbset,
                route: m.route.clone(),
                state: m.state,
                protocol,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The CEL rule refuses a URL written twice the same way; this catches two spellings of one
    // member (`http://a`, `http://a:80/`), which the rule cannot afford to compare.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        if let Some(&earlier) = first.get(m.url.as_str()) {
            return Err(MemberError {
                field: format!("spec.members[{i}].url"),
                message: format!(
                    "{} is the same member as spec.members[{earlier}].url ({}): list each member once, and give it a loadFactor for a larger share",
                    quote(&spec.members[i].url),
                    quote(&spec.members[earlier].url)
                ),
            });
        }
        first.insert(m.url.as_str(), i);
    }
    Ok(members)
}

/// Why a member's protocol does not go with its URL's scheme.
fn protocol_mismatch(protocol: Protocol) -> String {
    match protocol {
        Protocol::H2 => "h2 is HTTP/2 over TLS: it needs https:// members (upstream TLS); h2c is \
                         HTTP/2 without TLS"
            .to_owned(),
        _ => "h2c is HTTP/2 without TLS: https:// members (upstream TLS) speak h2".to_owned(),
    }
}

/// `HOST:PORT` of an `http://` or `https://` URL, with port 80 or 443 when none is given.
pub fn authority_of(url: &str) -> Option<String> {
    scheme_and_authority(url).map(|(_, authority)| authority)
}

/// The scheme (`http` or `https`) and `HOST:PORT` of a member URL.
fn scheme_and_authority(url: &str) -> Option<(&'static str, String)> {
    let (scheme, default_port, rest) = match url.strip_prefix("https://") {
        Some(rest) => ("https", 443, rest),
        None => ("http", 80, url.strip_prefix("http://")?),
    };
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
        Some((scheme, rest.to_owned()))
    } else {
        Some((scheme, format!("{rest}:{default_port}")))
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
            max_connections: None,
            max_pending_requests: None,
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
    fn member_limits_are_the_clusters_unless_a_static_member_has_its_own() {
        let bc = BalancerCluster::new(
            "web",
            serde_json::from_value(serde_json::json!({
                "members": [
                    {"url": "http://a:1"},
                    {"url": "http://b:1", "maxConnections": 7},
                    {"url": "http://c:1", "maxPendingRequests": 0},
                ],
                "timeouts": {"connect": "2s"},
                "memberLimits": {"maxConnections": 2, "maxPendingRequests": 3},
            }))
            .expect("a spec"),
        );
        let c = cluster_config(&bc, vec![]).expect("valid");
        let limits = |i| *c.policy.limits_of(i);
        let wide = Limits {
            max_connections: Some(2),
            max_pending_requests: 3,
            // HAProxy's `timeout queue` defaults to `timeout connect`.
            queue_timeout: Duration::from_secs(2),
        };
        assert_eq!(limits(0), wide);
        assert_eq!(
            limits(1),
            Limits {
                max_connections: Some(7),
                ..wide
            }
        );
        assert_eq!(
            limits(2),
            Limits {
                max_pending_requests: 0,
                ..wide
            }
        );
        // A member from a Service (after the static ones) takes the cluster's.
        assert_eq!(limits(3), wide);

        // Without memberLimits: no limit on connections, Envoy's default queue.
        let c = cluster_config(&cluster(&["http://a:1"]), vec![]).expect("valid");
        assert_eq!(*c.policy.limits_of(0), Limits::default());
        assert!(c.policy.member_limits.is_empty());
    }

    #[test]
    fn authority_parsing() {
        assert_eq!(
            authority_of("http://[::1]:9000/").as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(authority_of("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(authority_of("http://a:99999"), None);
        assert_eq!(authority_of("https://a:1").as_deref(), Some("a:1"));
        assert_eq!(authority_of("https://a").as_deref(), Some("a:443"));
        assert_eq!(authority_of("ftp://a:1"), None);
        assert_eq!(authority_of("http://a/path"), None);
    }

    #[test]
    fn two_spellings_of_one_member_are_refused() {
        let bc = cluster(&[
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://localhost:80/",
        ]);
        assert_eq!(
            cluster_config(&bc, vec![]).expect_err("refused"),
            MemberError {
                field: "spec.members[2].url".into(),
                message: "\"http://localhost:80/\" is the same member as spec.members[1].url (\"http://localhost\"): list each member once, and give it a loadFactor for a larger share".into(),
            }
        );
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
            max_connections: None,
            max_pending_requests: None,
        });
        let e = cluster_config(&bc, vec![]).expect_err("refused");
        assert_eq!(e.field, "spec.members[1].url");
    }

    #[test]
    fn tls_names_secrets_in_the_cluster_namespace_and_service_members_use_tls() {
        let spec: BalancerClusterSpec = serde_json::from_value(serde_json::json!({
            "service": {"name": "web", "port": "https"},
            "tls": [{"hosts": ["Shop.example.com"], "secretName": "shop-tls"}],
            "upstreamTLS": {"caSecret": "member-ca", "clientCertSecret": "client"},
        }))
        .expect("spec");
        let mut bc = BalancerCluster::new("web", spec);
        bc.metadata.namespace = Some("shop".into());
        let pod = MemberConfig {
            url: "http://10.0.0.7:8443".into(),
            authority: "10.0.0.7:8443".into(),
            pod: Some("web-0".into()),
            load_factor: 1,
            lbset: 0,
            route: None,
            state: MemberState::Enabled,
            protocol: Protocol::Http1,
        };
        let c = cluster_config(&bc, vec![pod]).expect("ok");
        assert_eq!(c.members[0].url, "https://10.0.0.7:8443");
        assert_eq!(c.members[0].authority, "10.0.0.7:8443");
        let secret = |name: &str| TlsSource::Secret {
            namespace: "shop".into(),
            name: name.into(),
        };
        assert_eq!(c.tls.certificates[0].source, secret("shop-tls"));
        assert_eq!(c.tls.certificates[0].hosts, ["shop.example.com"]);
        let sources: Vec<(String, bool)> =
            c.tls.sources().map(|(s, ca)| (s.to_string(), ca)).collect();
        assert_eq!(
            sources,
            [
                ("secret shop/shop-tls".to_owned(), false),
                ("secret shop/member-ca".to_owned(), true),
                ("secret shop/client".to_owned(), false),
            ]
        );
    }

    fn discovered(protocol: Protocol) -> MemberConfig {
        MemberConfig {
            url: "http://10.0.0.7:50051".into(),
            authority: "10.0.0.7:50051".into(),
            pod: Some("api-0".into()),
            load_factor: 1,
            lbset: 0,
            route: None,
            state: MemberState::Enabled,
            protocol,
        }
    }

    #[test]
    fn a_members_protocol_is_its_own_else_the_clusters_else_its_service_ports() {
        let spec = |json: serde_json::Value| -> BalancerCluster {
            BalancerCluster::new("api", serde_json::from_value(json).expect("a spec"))
        };
        let protocols = |bc: &BalancerCluster, found: Protocol| -> Vec<Protocol> {
            cluster_config(bc, vec![discovered(found)])
                .expect("ok")
                .members
                .iter()
                .map(|m| m.protocol)
                .collect()
        };
        let mixed = spec(serde_json::json!({
            "service": {"name": "api", "port": "grpc"},
            "members": [{"url": "http://10.0.0.1:1"}, {"url": "http://10.0.0.2:1", "protocol": "h2c"}],
        }));
        // appProtocol says h2c for the Service's endpoint; static members default to http1.
        assert_eq!(
            protocols(&mixed, Protocol::H2c),
            [Protocol::Http1, Protocol::H2c, Protocol::H2c]
        );
        let mut cluster_wide = mixed.clone();
        cluster_wide.spec.protocol = Some(Protocol::H2c);
        assert_eq!(
            protocols(&cluster_wide, Protocol::Http1),
            [Protocol::H2c, Protocol::H2c, Protocol::H2c],
            "spec.protocol wins over appProtocol"
        );
        let mut own = cluster_wide.clone();
        own.spec.members[0].protocol = Some(Protocol::Http1);
        assert_eq!(protocols(&own, Protocol::Http1)[0], Protocol::Http1);
        // With upstreamTLS an appProtocol that says HTTP/2 means h2.
        let tls = spec(serde_json::json!({
            "service": {"name": "api", "port": "grpc"},
            "upstreamTLS": {"insecureSkipVerify": true},
        }));
        assert_eq!(protocols(&tls, Protocol::H2c), [Protocol::H2]);
        assert_eq!(protocols(&tls, Protocol::Http1), [Protocol::Http1]);
    }

    #[test]
    fn h2_needs_https_members_and_h2c_http_ones() {
        let refused = |json: serde_json::Value, found: Vec<MemberConfig>| -> MemberError {
            let bc = BalancerCluster::new("api", serde_json::from_value(json).expect("a spec"));
            cluster_config(&bc, found).expect_err("refused")
        };
        let e = refused(
            serde_json::json!({"members": [{"url": "http://a:1", "protocol": "h2"}]}),
            vec![],
        );
        assert_eq!(e.field, "spec.members[0].protocol");
        assert!(e.message.contains("https://"), "{e}");
        let e = refused(
            serde_json::json!({"protocol": "h2", "members": [{"url": "http://a:1"}]}),
            vec![],
        );
        assert_eq!(e.field, "spec.protocol");
        let e = refused(
            serde_json::json!({"members": [{"url": "https://a:1", "protocol": "h2c"}]}),
            vec![],
        );
        assert!(e.message.contains("h2c is HTTP/2 without TLS"), "{e}");
        let e = refused(
            serde_json::json!({"protocol": "h2", "service": {"name": "api", "port": 50051}}),
            vec![discovered(Protocol::Http1)],
        );
        assert_eq!(e.field, "spec.protocol");
        let bc = BalancerCluster::new(
            "api",
            serde_json::from_value(serde_json::json!({
                "members": [{"url": "https://a:1", "protocol": "h2"}],
            }))
            .expect("a spec"),
        );
        assert_eq!(
            cluster_config(&bc, vec![]).expect("ok").members[0].protocol,
            Protocol::H2
        );
    }

    #[test]
    fn safe_grpc_methods_match_a_method_or_a_whole_service() {
        let policy = Policy {
            safe_grpc_methods: vec!["/shop.Cart/Get".into(), "/grpc.health.v1.Health/".into()],
            ..Policy::default()
        };
        assert!(policy.is_safe_grpc_method("/shop.Cart/Get"));
        assert!(!policy.is_safe_grpc_method("/shop.Cart/GetAll"));
        assert!(!policy.is_safe_grpc_method("/shop.Cart/Put"));
        assert!(policy.is_safe_grpc_method("/grpc.health.v1.Health/Check"));
        assert!(!policy.is_safe_grpc_method("/grpc.health.v1.Health/Check/x"));
        assert!(!policy.is_safe_grpc_method("/grpc.health.v1.HealthX/Check"));
    }
}
