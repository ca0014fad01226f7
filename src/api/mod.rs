//! The `BalancerCluster` resource: one schema for the CRD and for standalone YAML files.
//!
//! Every rule a person can break is written as a CEL rule (`x-kubernetes-validations`), so the
//! API server and standalone mode refuse a bad resource with the same message. This module owns
//! the types and their validation; it does no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::Duration;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

pub mod route;
pub mod text;

pub use route::*;

/// Group of the API.
pub const GROUP: &str = "kubebalancer.io";
/// Version of the API.
pub const VERSION: &str = "v1alpha1";

/// Pod annotations that set a member's fields (`kubebalancer.io/...`).
pub mod annotations {
    /// What every one of them starts with.
    pub const PREFIX: &str = "kubebalancer.io/";
    pub const LOAD_FACTOR: &str = "kubebalancer.io/load-factor";
    pub const LBSET: &str = "kubebalancer.io/lbset";
    pub const ROUTE: &str = "kubebalancer.io/route";
    pub const STATE: &str = "kubebalancer.io/state";
}

pub(crate) const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";
pub(crate) const DURATION_MESSAGE: &str = "must be a duration such as 500ms, 5s or 1m30s";

/// A member listed twice would take two shares of the requests under one identity (one row of
/// counters, one health verdict): refused, naming the URL. The rule compares every pair, so its
/// cost grows with the square of the list: `MAX_STATIC_MEMBERS` keeps it within the API
/// server's budget for one rule (checked against the real API server, with members of the
/// longest URL). The message maps to URLs before it filters, so that the API server's cost
/// estimate knows the length of what it quotes.
const UNIQUE_URLS_RULE: &str = "self.all(m, self.exists_one(n, n.url == m.url))";
const UNIQUE_URLS_MESSAGE: &str = "'member ' + self.map(m, m.url).filter(u, !self.exists_one(n, n.url == u))[0] + ' is listed more than once: list each member once, and give it a loadFactor for a larger share'";

/// The most static members a cluster may list (a Service may bring any number).
pub const MAX_STATIC_MEMBERS: usize = 128;

/// A balancer: Apache's `<Proxy balancer://NAME>` block.
// Repeated printcolumn attributes are how kube-derive takes several columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubebalancer.io",
    version = "v1alpha1",
    kind = "BalancerCluster",
    plural = "balancerclusters",
    namespaced,
    status = "BalancerClusterStatus",
    shortname = "bc",
    shortname = "balancer",
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.lbMethod"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(name = "Routes", type_ = "string", json_path = ".status.routes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[x_kube(validation = Rule::new("has(self.service) || (has(self.members) && size(self.members) > 0)")
    .message("a balancer needs members: give spec.service, spec.members, or both"))]
#[x_kube(validation = Rule::new("!has(self.hash) || self.lbMethod == 'hash'")
    .message("spec.hash only applies to lbMethod: hash"))]
#[x_kube(validation = Rule::new("!has(self.upstreamTLS) || !has(self.members) || self.members.all(m, m.url.startsWith('https://'))")
    .message("with spec.upstreamTLS every member is reached over TLS: member urls must start with https://"))]
#[x_kube(validation = Rule::new("!has(self.tls) || self.tls.filter(t, has(t.default) && t.default).size() <= 1")
    .message("at most one spec.tls entry is the default certificate"))]
#[serde(rename_all = "camelCase")]
pub struct BalancerClusterSpec {
    /// Which installation serves this cluster (like IngressClass). Empty: the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub class_name: Option<String>,

    /// Which requests reach this balancer (Apache's ProxyPass). Default: every host, path `/`.
    #[serde(default = "default_routes")]
    #[schemars(length(max = 64))]
    pub routes: Vec<RouteSpec>,

    /// Members from this Service's EndpointSlices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,

    /// Static members: Apache's `BalancerMember` lines, each URL once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STATIC_MEMBERS))]
    #[x_kube(validation = Rule::new(UNIQUE_URLS_RULE).message(Message::Expression(UNIQUE_URLS_MESSAGE.into())))]
    pub members: Vec<MemberSpec>,

    /// How a member is chosen for each request.
    #[serde(default)]
    pub lb_method: LbMethod,

    /// The key `lbMethod: hash` hashes on. Without it: the client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashSpec>,

    /// Sticky sessions (Apache's stickysession): requests carrying a member's route go to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_session: Option<StickySession>,

    /// Active health checks (Apache's mod_proxy_hcheck).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Passive health checks: members whose requests keep failing are ejected for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    /// A member that joins or recovers ramps its share of requests up over this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub slow_start: Option<Duration>,

    /// What happens when a member fails.
    #[serde(default)]
    pub failover: Failover,

    /// Timeouts towards members and clients.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// How members are spoken to: `http1`, `h2c` (HTTP/2 without TLS, as gRPC servers speak it)
    /// or `h2` (HTTP/2 over TLS, negotiated with ALPN). A member's own `protocol` wins. Without
    /// either: the Service port's `appProtocol` (`kubernetes.io/h2c`, `grpc`, `http2` mean
    /// h2c), else http1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    /// HTTP/2 connections to members (`protocol: h2c` or `h2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2Spec>,

    /// Limits on each member's connections and on the requests waiting for one (HAProxy's
    /// `maxconn`, `maxqueue` and `timeout queue`; Envoy's circuit breakers). None: no limit, as
    /// with Apache. A static member's own `maxConnections` and `maxPendingRequests` win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_limits: Option<MemberLimits>,

    /// The balancer-manager's edits, kept declaratively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub member_overrides: Vec<MemberOverride>,

    /// Certificates the HTTPS listener serves for this cluster's names (TLS termination).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tls: Vec<TlsSpec>,

    /// Plain HTTP requests get a redirect to HTTPS (301 for GET and HEAD, 308 for the other
    /// methods) instead of being forwarded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,

    /// `Strict-Transport-Security` on the responses sent over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HstsSpec>,

    /// How `https://` members are reached. With it, every member is: static member URLs must
    /// be `https://`, and members from `spec.service` are too.
    #[serde(
        default,
        rename = "upstreamTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_tls: Option<UpstreamTlsSpec>,
}

const HOSTS_RULE: &str = "self.all(h, h.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))";
const SECRET_NAME_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
const SECRET_NAME_MESSAGE: &str =
    "must be the name of a Secret in the cluster's namespace: lower-case letters, digits, - and .";

/// A certificate and the names it is served for, from a `kubernetes.io/tls` Secret (`tls.crt`
/// with the chain, `tls.key`) in a cluster, or from files in standalone mode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretName) != has(self.certFile)")
    .message("a tls entry names secretName (in a cluster) or certFile and keyFile (standalone): exactly one of them"))]
#[x_kube(validation = Rule::new("has(self.certFile) == has(self.keyFile)")
    .message("certFile and keyFile go together"))]
pub struct TlsSpec {
    /// Names the certificate is served for: exact (`shop.example.com`) or wildcard
    /// (`*.example.com`). Empty: the names the certificate carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new(HOSTS_RULE)
        .message("tls hosts must be lower-case DNS names like shop.example.com, or wildcards like *.example.com"))]
    pub hosts: Vec<String>,
    /// A `kubernetes.io/tls` Secret in the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(SECRET_NAME_RULE).message(SECRET_NAME_MESSAGE))]
    pub secret_name: Option<String>,
    /// Standalone mode: the PEM chain, leaf first (relative paths are from the configuration
    /// file's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub cert_file: Option<String>,
    /// Standalone mode: the PEM private key (PKCS#1, PKCS#8 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub key_file: Option<String>,
    /// Served to clients that ask for a name no certificate is served for, or for none.
    /// Without a default certificate their handshake fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// `Strict-Transport-Security` (RFC 6797).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HstsSpec {
    /// How long browsers remember to use HTTPS only, in seconds (default one year).
    #[serde(default = "default_hsts_max_age")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 63072000")
        .message("hsts.maxAgeSeconds must be between 0 and 63072000 (two years)"))]
    pub max_age_seconds: u64,
    /// The rule covers every subdomain too.
    #[serde(default)]
    pub include_sub_domains: bool,
    /// Ask to be in the browsers' preload lists.
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_max_age() -> u64 {
    31_536_000
}

/// How `https://` members are reached. Their certificates are verified unless
/// `insecureSkipVerify` says otherwise: against `caSecret`/`caFile`, or the system's CAs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caSecret) && has(self.caFile))")
    .message("upstreamTLS names caSecret (in a cluster) or caFile (standalone), not both"))]
#[x_kube(validation = Rule::new("!has(self.clientCertSecret) || !(has(self.clientCertFile) || has(self.clientKeyFile))")
    .message("upstreamTLS names clientCertSecret (in a cluster) or clientCertFile and clientKeyFile (standalone), not both"))]
#[x_kube(validation = Rule::new("has(self.clientCertFile) == has(self.clientKeyFile)")
    .message("upstreamTLS.clientCertFile and clientKeyFile go together"))]
#[x_kube(validation = Rule::new("!self.insecureSkipVerify || !(has(self.caSecret) || has(self.caFile))")
    .message("upstreamTLS.insecureSkipVerify verifies nothing, so a CA has no use with it: leave one of them out"))]
pub struct UpstreamTlsSpec {
    /// A Secret in the cluster's namespace whose `ca.crt` holds the CA certificates (PEM) that
    /// members' certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(SECRET_NAME_RULE).message(SECRET_NAME_MESSAGE))]
    pub ca_secret: Option<String>,
    /// Standalone mode: a PEM file of CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub ca_file: Option<String>,
    /// The name sent in SNI and checked in the members' certificates. Default: each member's
    /// host (for members from a Service, that is the pod's IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\\\\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$') || self.matches('^[0-9a-fA-F:.]+$')")
        .message("upstreamTLS.serverName must be a DNS name or an IP address"))]
    pub server_name: Option<String>,
    /// A `kubernetes.io/tls` Secret presented to members that ask for a client certificate
    /// (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(SECRET_NAME_RULE).message(SECRET_NAME_MESSAGE))]
    pub client_cert_secret: Option<String>,
    /// Standalone mode: the client certificate chain (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub client_cert_file: Option<String>,
    /// Standalone mode: the client certificate's key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub client_key_file: Option<String>,
    /// Accept any certificate from members. For tests only: anyone on the path can then read
    /// and change the traffic.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Every host, path `/`: written out as `pathPrefix: /`, as before routes had matches.
pub fn default_routes() -> Vec<RouteSpec> {
    vec![RouteSpec {
        path_prefix: Some(default_path_prefix()),
        ..RouteSpec::default()
    }]
}

fn default_path_prefix() -> String {
    "/".to_owned()
}

/// A Service whose ready endpoints become members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Name of the Service, in the cluster's namespace.
    #[x_kube(validation = Rule::new("self.size() > 0").message("service.name must not be empty"))]
    #[schemars(length(max = 253))]
    pub name: String,
    /// The Service port: its name (`http`) or its number (`8080`).
    pub port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
}

/// One static member: Apache's `BalancerMember URL loadfactor=N lbset=N route=ID status=...`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.protocol) || self.protocol == 'http1' || (self.protocol == 'h2') == self.url.startsWith('https://')")
    .message("protocol h2 is HTTP/2 over TLS, for https:// members; h2c is HTTP/2 without TLS, for http:// members"))]
pub struct MemberSpec {
    /// `http://HOST:PORT` or `https://HOST:PORT` of the member.
    #[x_kube(validation = Rule::new("self.matches('^https?://([A-Za-z0-9.-]+|\\\\[[0-9A-Fa-f:.]+\\\\])(:[0-9]{1,5})?/?$')")
        .message("url must look like http://HOST:PORT or https://HOST:PORT (paths are not supported)"))]
    #[schemars(length(max = 300))]
    pub url: String,
    /// Relative weight, 1..100 (Apache's loadfactor).
    #[serde(default = "default_load_factor")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("loadFactor must be between 1 and 100"))]
    pub load_factor: u32,
    /// Tier, 0..99: lower sets are tried first (Apache's lbset).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 99").message("lbset must be between 0 and 99"))]
    pub lbset: u32,
    /// Sticky-session route id (Apache's route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub route: Option<String>,
    /// Administrative state.
    #[serde(default)]
    pub state: MemberState,
    /// How this member is spoken to; default: the cluster's `protocol`, else http1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Connections open to this member at most; default: `memberLimits.maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(MAX_CONNECTIONS_RULE).message("maxConnections must be between 1 and 1000000"))]
    pub max_connections: Option<u32>,
    /// Requests that may wait for a connection to this member; default:
    /// `memberLimits.maxPendingRequests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(MAX_PENDING_RULE).message("maxPendingRequests must be between 0 and 1000000"))]
    pub max_pending_requests: Option<u32>,
}

const MAX_CONNECTIONS_RULE: &str = "self >= 1 && self <= 1000000";
const MAX_PENDING_RULE: &str = "self >= 0 && self <= 1000000";

/// Limits on each member of a cluster, counted over all of a replica's workers: connections
/// open to it (pooled and in use), and the requests that wait for one once that many are open.
/// A request that finds the queue full, or waits longer than `queueTimeout`, gets 503 with
/// `Retry-After` (or goes to another member while `failover.maxAttempts` allow), and counts
/// against no member's health.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberLimits {
    /// Connections open to one member at most, pooled and in use (HAProxy's `maxconn`, Envoy's
    /// `max_connections`, Apache's `max`). None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(MAX_CONNECTIONS_RULE).message("memberLimits.maxConnections must be between 1 and 1000000"))]
    pub max_connections: Option<u32>,
    /// Requests that may wait for a connection to one member once `maxConnections` are open
    /// (HAProxy's `maxqueue`, Envoy's `max_pending_requests`); beyond them, 503 at once. 0: no
    /// waiting. Default 1024, as Envoy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(MAX_PENDING_RULE).message("memberLimits.maxPendingRequests must be between 0 and 1000000"))]
    pub max_pending_requests: Option<u32>,
    /// How long a request waits for a connection (HAProxy's `timeout queue`, Apache's
    /// `acquire`). Default: `timeouts.connect`, as HAProxy does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub queue_timeout: Option<Duration>,
}

/// Requests that may wait for a member's connection unless `maxPendingRequests` says otherwise
/// (Envoy's default).
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;

fn default_load_factor() -> u32 {
    1
}

/// A member's administrative state, with Apache's meaning.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum MemberState {
    /// Takes requests.
    #[default]
    Enabled,
    /// Takes no requests; still watched, so it can come back by itself.
    Disabled,
    /// Takes no requests and is never retried until an operator enables it.
    Stopped,
    /// Takes only requests already sticky to it.
    Drain,
    /// Used only when nothing else in its lbset is usable.
    HotStandby,
    /// Replaces an unusable member of its lbset.
    HotSpare,
}

/// The protocol a member is spoken to in.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum Protocol {
    /// HTTP/1.1, a connection per request in flight.
    #[default]
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2 without TLS ("prior knowledge"), many requests in flight on one connection.
    #[serde(rename = "h2c")]
    H2c,
    /// HTTP/2 over TLS, chosen with ALPN: needs an `https://` member.
    #[serde(rename = "h2")]
    H2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
        }
    }

    /// Whether requests go to the member as HTTP/2 streams.
    pub fn is_http2(self) -> bool {
        self != Protocol::Http1
    }

    /// What a Service port's `appProtocol` says about the protocol: HTTP/2 for
    /// `kubernetes.io/h2c` (the standard name), `grpc` and `http2` (names in common use);
    /// nothing for any other value.
    pub fn from_app_protocol(app_protocol: &str) -> Option<Protocol> {
        match app_protocol {
            "kubernetes.io/h2c" | "grpc" | "http2" => Some(Protocol::H2c),
            _ => None,
        }
    }
}

/// HTTP/2 connections to members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Http2Spec {
    /// Requests in flight at once on one connection to a member (each worker thread); beyond
    /// it, another connection is opened. A member's own lower limit
    /// (SETTINGS_MAX_CONCURRENT_STREAMS) wins.
    #[serde(default = "default_max_concurrent_streams")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("http2.maxConcurrentStreams must be between 1 and 10000"))]
    pub max_concurrent_streams: u32,
}

impl Default for Http2Spec {
    fn default() -> Self {
        Http2Spec {
            max_concurrent_streams: default_max_concurrent_streams(),
        }
    }
}

/// Streams per connection to a member unless `http2.maxConcurrentStreams` says otherwise: the
/// least that RFC 9113 asks a peer to allow.
pub fn default_max_concurrent_streams() -> u32 {
    100
}

/// How a member is chosen.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum LbMethod {
    /// Apache's byrequests: weighted request counting.
    #[default]
    #[serde(rename = "byrequests")]
    ByRequests,
    /// Apache's bytraffic: the least bytes sent and received, divided by the load factor.
    #[serde(rename = "bytraffic")]
    ByTraffic,
    /// Apache's bybusyness: the fewest requests in flight.
    #[serde(rename = "bybusyness")]
    ByBusyness,
    /// The better of two random members by peak-EWMA latency times requests in flight.
    #[serde(rename = "ewma")]
    Ewma,
    /// Consistent hashing (Maglev) on a key of the request.
    #[serde(rename = "hash")]
    Hash,
}

impl LbMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::ByRequests => "byrequests",
            LbMethod::ByTraffic => "bytraffic",
            LbMethod::ByBusyness => "bybusyness",
            LbMethod::Ewma => "ewma",
            LbMethod::Hash => "hash",
        }
    }
}

/// What `lbMethod: hash` hashes on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.key == 'ClientIP' || has(self.name)")
    .message("hash.name names the header, cookie or query parameter to hash on"))]
#[x_kube(validation = Rule::new("self.key != 'ClientIP' || !has(self.name)")
    .message("hash.name is not used with key: ClientIP; leave it out"))]
pub struct HashSpec {
    /// Where the key comes from.
    pub key: HashKey,
    /// The header, cookie or query parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')")
        .message("hash.name must be a header, cookie or parameter name: letters, digits and !#$%&*+.^_|~-"))]
    #[schemars(length(max = 128))]
    pub name: Option<String>,
    /// Bounded load: no member takes more than this percentage of the average number of
    /// requests in flight; a key whose member is full goes to the next one on the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 101 && self <= 1000")
        .message("hash.boundedLoad is a percentage of the average load between 101 and 1000, such as 125"))]
    pub bounded_load: Option<u32>,
}

/// The part of a request `lbMethod: hash` hashes.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum HashKey {
    /// The value of the header `name` (all of its lines).
    Header,
    /// The value of the cookie `name`.
    Cookie,
    /// The value of the query parameter `name`.
    QueryParam,
    /// The client's IP address, as the balancer sees the connection.
    #[default]
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// Apache's stickysession: a cookie and/or URL parameter that carries a member's route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.cookie) || has(self.param)")
    .message("stickySession needs a cookie, a param, or both"))]
#[x_kube(validation = Rule::new("!self.insert || has(self.cookie)")
    .message("stickySession.insert sets a cookie: name it in stickySession.cookie"))]
pub struct StickySession {
    /// Cookie whose value is `ANYTHING.ROUTE` (JSESSIONID=abc.web1) or the route itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')")
        .message("stickySession.cookie must be a cookie name: letters, digits and !#$%&*+.^_|~-"))]
    #[schemars(length(max = 128))]
    pub cookie: Option<String>,
    /// URL parameter, in the query (`?jsessionid=abc.web1`) or the path (`;jsessionid=abc.web1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')")
        .message("stickySession.param must be a parameter name: letters, digits and !#$%&*+.^_|~-"))]
    #[schemars(length(max = 128))]
    pub param: Option<String>,
    /// The balancer sets the cookie to the member's route when it is missing or names another
    /// member (HAProxy's `cookie insert`), so applications need not know their route.
    #[serde(default)]
    pub insert: bool,
}

/// How an active health check probes a member.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum HealthCheckMethod {
    /// A TCP connection that opens passes.
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HEAD")]
    Head,
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "OPTIONS")]
    Options,
    /// `grpc.health.v1.Health/Check` (for `grpcService`, or the server as a whole): passes when
    /// the answer is SERVING.
    #[serde(rename = "GRPC")]
    Grpc,
}

impl HealthCheckMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckMethod::Tcp => "TCP",
            HealthCheckMethod::Head => "HEAD",
            HealthCheckMethod::Get => "GET",
            HealthCheckMethod::Options => "OPTIONS",
            HealthCheckMethod::Grpc => "GRPC",
        }
    }
}

/// Active health checks, like Apache's mod_proxy_hcheck: a member that fails `fails` checks in a
/// row is HealthCheckFailed (takes no requests) until it passes `passes` in a row.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.bodyContains) || self.method == 'GET'")
    .message("healthCheck.bodyContains needs method: GET (only GET answers have a body to match)"))]
#[x_kube(validation = Rule::new("!has(self.grpcService) || self.method == 'GRPC'")
    .message("healthCheck.grpcService needs method: GRPC"))]
pub struct HealthCheck {
    /// TCP, HEAD, GET, OPTIONS (Apache's hcmethod) or GRPC (the standard gRPC health check,
    /// over HTTP/2 without TLS).
    #[serde(default)]
    pub method: HealthCheckMethod,
    /// The path checked (Apache's hcuri).
    #[serde(default = "default_path_prefix")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains(' ')")
        .message("healthCheck.path must start with / and contain no spaces"))]
    #[schemars(length(max = 1024))]
    pub path: String,
    /// Time between two checks of a member (Apache's hcinterval).
    #[serde(default = "default_hc_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self) >= duration('100ms')")
        .message("healthCheck.interval must be at least 100ms"))]
    #[schemars(length(max = 32))]
    pub interval: Duration,
    /// How long a check may take before it counts as failed.
    #[serde(default = "default_hc_timeout")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub timeout: Duration,
    /// Checks in a row a failed member must pass to take requests again (Apache's hcpasses).
    #[serde(default = "default_one")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("healthCheck.passes must be between 1 and 100"))]
    pub passes: u32,
    /// Checks in a row a member must fail to be taken out (Apache's hcfails).
    #[serde(default = "default_one")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("healthCheck.fails must be between 1 and 100"))]
    pub fails: u32,
    /// Statuses that pass: codes and ranges, comma-separated (`200-399`, `200,204`).
    #[serde(default = "default_expect_status")]
    #[x_kube(validation = Rule::new("self.matches('^[1-5][0-9][0-9](-[1-5][0-9][0-9])?( *, *[1-5][0-9][0-9](-[1-5][0-9][0-9])?)*$')")
        .message("healthCheck.expectStatus is a list of codes and ranges such as 200-399 or 200,204"))]
    #[schemars(length(max = 128))]
    pub expect_status: String,
    /// Text the answer's body must contain to pass (GET only; the first 64 KiB are searched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("healthCheck.bodyContains must not be empty"))]
    #[schemars(length(max = 256))]
    pub body_contains: Option<String>,
    /// `method: GRPC`: the service whose health is asked (`HealthCheckRequest.service`).
    /// Empty: the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_.]*$')")
        .message("healthCheck.grpcService must be a gRPC service name such as grpc.health.v1.Health or mypackage.MyService"))]
    #[schemars(length(max = 256))]
    pub grpc_service: Option<String>,
}

fn default_hc_interval() -> Duration {
    std::time::Duration::from_secs(30).into()
}
fn default_hc_timeout() -> Duration {
    std::time::Duration::from_secs(5).into()
}
fn default_one() -> u32 {
    1
}
fn default_expect_status() -> String {
    "200-399".to_owned()
}

/// Passive health checks (Envoy's outlier detection): a member whose requests fail is ejected
/// for `baseEjectionTime` times the number of times in a row it has been ejected, at most
/// `maxEjectionTime`. Failures are refused or broken connections, response timeouts and 5xx
/// answers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.consecutiveFailures > 0 || has(self.failurePercent)")
    .message("outlierDetection needs consecutiveFailures above 0 or a failurePercent"))]
#[x_kube(validation = Rule::new("!self.baseEjectionTime.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') || !self.maxEjectionTime.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self.baseEjectionTime) <= duration(self.maxEjectionTime)")
    .message("outlierDetection.baseEjectionTime must not be longer than maxEjectionTime"))]
pub struct OutlierDetection {
    /// Failures in a row that eject a member; 0 turns this rule off.
    #[serde(default = "default_consecutive_failures")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("outlierDetection.consecutiveFailures must be between 0 and 1000"))]
    pub consecutive_failures: u32,
    /// Share of a member's requests, in percent, that ejects it when it fails within one
    /// `interval`. None: this rule is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("outlierDetection.failurePercent must be between 1 and 100"))]
    pub failure_percent: Option<u32>,
    /// Requests a member must have had within one `interval` for failurePercent to count.
    #[serde(default = "default_min_requests")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("outlierDetection.minRequests must be between 1 and 100000"))]
    pub min_requests: u32,
    /// The window failurePercent is measured over.
    #[serde(default = "default_outlier_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub interval: Duration,
    /// How long a first ejection lasts; each further one in a row lasts this much longer.
    #[serde(default = "default_base_ejection")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts.
    #[serde(default = "default_max_ejection")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub max_ejection_time: Duration,
    /// At most this share of the members, in percent, is ejected at once (always at least one).
    #[serde(default = "default_max_ejection_percent")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("outlierDetection.maxEjectionPercent must be between 1 and 100"))]
    pub max_ejection_percent: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_min_requests() -> u32 {
    10
}
fn default_outlier_interval() -> Duration {
    std::time::Duration::from_secs(10).into()
}
fn default_base_ejection() -> Duration {
    std::time::Duration::from_secs(30).into()
}
fn default_max_ejection() -> Duration {
    std::time::Duration::from_secs(300).into()
}
fn default_max_ejection_percent() -> u32 {
    10
}

/// What happens when a member fails.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// How many other members a failed request is tried on (Apache's maxattempts).
    #[serde(default = "default_max_attempts")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 20").message("maxAttempts must be between 0 and 20"))]
    pub max_attempts: u32,
    /// Never retry a failed request on another member (Apache's nofailover).
    #[serde(default)]
    pub no_failover: bool,
    /// Response statuses that put the member in error (Apache's failonstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(s, s >= 100 && s <= 599)").message("failOnStatus codes must be between 100 and 599"))]
    pub fail_on_status: Vec<u16>,
    /// How long a member in error is left alone before it is tried again (Apache's retry).
    #[serde(default = "default_retry_after_error")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub retry_after_error: Duration,
    /// When every member is down (in error, failing health checks or ejected), try them anyway
    /// rather than answer 503 (Apache's forcerecovery).
    #[serde(default = "default_true")]
    pub force_recovery: bool,
    /// gRPC methods that may run twice (`/package.Service/Method`, or `/package.Service/*` for
    /// all of a service's): a call to one is tried on another member when its stream broke
    /// before the answer began, even though the first member may have seen it. Other gRPC
    /// calls go to another member only when nothing of them reached the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(m, m.matches('^/[A-Za-z0-9_.]+/([A-Za-z0-9_]+|[*])$'))")
        .message("safeGrpcMethods entries look like /package.Service/Method or /package.Service/*"))]
    pub safe_grpc_methods: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            max_attempts: default_max_attempts(),
            no_failover: false,
            fail_on_status: Vec::new(),
            retry_after_error: default_retry_after_error(),
            force_recovery: true,
            safe_grpc_methods: Vec::new(),
        }
    }
}

fn default_max_attempts() -> u32 {
    1
}

fn default_retry_after_error() -> Duration {
    std::time::Duration::from_secs(60).into()
}

/// Timeouts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Opening a connection to a member.
    #[serde(default = "default_connect")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub connect: Duration,
    /// From sending a request to receiving the response head.
    #[serde(default = "default_response")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub response: Duration,
    /// How long an idle keep-alive connection to a member is kept.
    #[serde(default = "default_idle")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            response: default_response(),
            idle: default_idle(),
        }
    }
}

fn default_connect() -> Duration {
    std::time::Duration::from_secs(5).into()
}
fn default_response() -> Duration {
    std::time::Duration::from_secs(60).into()
}
fn default_idle() -> Duration {
    std::time::Duration::from_secs(90).into()
}

/// An operator's edit of one member, by pod name or by address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pod) != has(self.address)")
    .message("a member override names exactly one of pod or address"))]
pub struct MemberOverride {
    /// The pod whose endpoint this edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub pod: Option<String>,
    /// The member's `HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 300))]
    pub address: Option<String>,
    /// New administrative state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MemberState>,
    /// New load factor, 1..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("loadFactor must be between 1 and 100"))]
    pub load_factor: Option<u32>,
}

/// What the balancer-manager page shows, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BalancerClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_method: Option<String>,
    /// `READY/TOTAL`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// The first route as `host/path`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<String>,
    #[serde(default)]
    pub ready_members: u32,
    #[serde(default)]
    pub total_members: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The certificates the cluster uses: served on the HTTPS listener, and for its members
    /// (their CA, the client certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
}

/// A certificate in use, as the balancer-manager shows it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `server` (served to clients), `client` (presented to members) or `ca`.
    pub role: String,
    /// Where it was read from: `secret NAMESPACE/NAME` or `file PATH`.
    pub source: String,
    /// The names it is served for (server certificates), or that it carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub issuer: String,
    pub serial: String,
    pub not_after: Time,
    /// Whole days until it expires; negative once it has.
    pub days_left: i64,
}

/// A status condition.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One row of the balancer-manager table.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub load_factor: u32,
    pub lbset: u32,
    pub state: String,
    pub elected: u64,
    pub busy: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The CRD as YAML, as `kube-balancer crd` prints it and crds/ keeps it.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&BalancerCluster::crd())
}
