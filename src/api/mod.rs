//! The `BalancerCluster` resource: one schema for the CRD and for standalone YAML files.
//!
//! Every rule a person can break is written as a CEL rule (`x-kubernetes-validations`), so the
//! API server and standalone mode refuse a bad resource with the same message. This module owns
//! the types and their validation; it does no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::Duration;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Group of the API.
pub const GROUP: &str = "kubebalancer.io";
/// Version of the API.
pub const VERSION: &str = "v1alpha1";

/// Pod annotations that set a member's fields (`kubebalancer.io/...`).
pub mod annotations {
    pub const LOAD_FACTOR: &str = "kubebalancer.io/load-factor";
    pub const LBSET: &str = "kubebalancer.io/lbset";
    pub const ROUTE: &str = "kubebalancer.io/route";
    pub const STATE: &str = "kubebalancer.io/state";
}

const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";
const DURATION_MESSAGE: &str = "must be a duration such as 500ms, 5s or 1m30s";

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
#[serde(rename_all = "camelCase")]
pub struct BalancerClusterSpec {
    /// Which installation serves this cluster (like IngressClass). Empty: the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,

    /// Which requests reach this balancer (Apache's ProxyPass). Default: every host, path `/`.
    #[serde(default = "default_routes")]
    #[schemars(length(max = 64))]
    pub routes: Vec<RouteSpec>,

    /// Members from this Service's EndpointSlices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,

    /// Static members: Apache's `BalancerMember` lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub members: Vec<MemberSpec>,

    /// How a member is chosen for each request.
    #[serde(default)]
    pub lb_method: LbMethod,

    /// What happens when a member fails.
    #[serde(default)]
    pub failover: Failover,

    /// Timeouts towards members and clients.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// The balancer-manager's edits, kept declaratively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub member_overrides: Vec<MemberOverride>,
}

fn default_routes() -> Vec<RouteSpec> {
    vec![RouteSpec::default()]
}

/// Which requests reach a balancer: a host (exact or `*.wildcard`) and a path prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Exact host (`shop.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("host must be a lower-case DNS name like shop.example.com, or a wildcard like *.example.com"))]
    #[schemars(length(max = 253))]
    pub host: Option<String>,

    /// Path prefix, matched on whole segments (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[serde(default = "default_path_prefix")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('//') && !self.contains(' ')")
        .message("pathPrefix must start with / and contain neither // nor spaces"))]
    #[schemars(length(max = 1024))]
    pub path_prefix: String,
}

impl Default for RouteSpec {
    fn default() -> Self {
        RouteSpec {
            host: None,
            path_prefix: default_path_prefix(),
        }
    }
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
pub struct MemberSpec {
    /// `http://HOST:PORT` of the member.
    #[x_kube(validation = Rule::new("self.matches('^http://([A-Za-z0-9.-]+|\\\\[[0-9A-Fa-f:.]+\\\\])(:[0-9]{1,5})?/?$')")
        .message("url must look like http://HOST:PORT (https members and paths are not supported yet)"))]
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
    pub route: Option<String>,
    /// Administrative state.
    #[serde(default)]
    pub state: MemberState,
}

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

/// How a member is chosen.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum LbMethod {
    /// Apache's byrequests: weighted request counting.
    #[default]
    #[serde(rename = "byrequests")]
    ByRequests,
}

impl LbMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::ByRequests => "byrequests",
        }
    }
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
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            max_attempts: default_max_attempts(),
            no_failover: false,
            fail_on_status: Vec::new(),
            retry_after_error: default_retry_after_error(),
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
    pub pod: Option<String>,
    /// The member's `HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
