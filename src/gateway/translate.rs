//! From the Gateway API resources the API server holds to what the data plane serves and to the
//! status each resource should have. Pure: the controller hands in the stores' contents, the TLS
//! material it loaded and the time, and publishes and writes what comes out.
//!
//! - Each Gateway of a class kube-balancer serves gets an address (see [`assign_addresses`]); its
//!   valid listeners become fronts, one per address and port, whose listeners keep their
//!   hostnames (a request goes to the most specific listener its host selects, and to no other).
//! - An HTTPRoute attaches to the listeners its parentRefs name that allow it (namespaces, kinds)
//!   and share a hostname with it. Its rules go to those listeners with the hostnames both
//!   allow, oldest route first, then by namespace and name, then in rule order.
//! - Each Service port a route sends to is a cluster whose members are the Service's endpoints,
//!   chosen byrequests; a BalancerCluster named as a backend is that cluster itself, with its
//!   own method, sticky sessions and health checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use super::api::{
    self, BackendTLSPolicy, GROUP, Gateway, GatewayAddress, GatewayClass, GatewayClassStatus,
    GatewayStatus, HTTPRoute, HTTPRouteFilter, HTTPRouteMatch, HTTPRouteRule, HTTPRouteStatus,
    Listener, ListenerStatus, ParentReference, PolicyAncestorStatus, PolicyStatus, ReferenceGrant,
    RouteGroupKind, RouteParentStatus, SupportedFeature,
};
use super::backend_tls::{self, Policies};
use super::{SUPPORTED_FEATURES, reasons};
use crate::api::{BalancerCluster, ServiceRef};
use crate::discovery::endpoints::{SERVICE_NAME_LABEL, members_from_slices};
use crate::discovery::{ClusterConfig, TlsSource, UpstreamTlsConfig, cluster_config};
use crate::plane::filters::{
    Cors, Filters, HeaderModifier, Mirror, PathModifier, Redirect, Rewrite,
};
use crate::plane::fronts::{
    BackendConfig, ClientValidationConfig, FrontConfig, ListenerConfig, RouteConfig,
};
use crate::plane::matching::{
    HeaderMatch, PathMatch, Pattern, QueryMatch, RequestMatch, ValueMatch,
};
use crate::plane::routes::Retry;
use crate::tls::material::Material;

/// Why something is refused: a condition reason, and a message in words.
type Problem = (&'static str, String);

/// Where a route attaches: a Gateway (by index), one of its listeners, and the hostnames the
/// route serves there.
type Attachment = (usize, usize, Vec<String>);

/// Pod annotations (`kubebalancer.io/*`) by namespace, then by pod name.
pub type PodAnnotations = HashMap<String, HashMap<String, BTreeMap<String, String>>>;

/// Everything the watches hold at one moment.
#[derive(Clone, Copy)]
pub struct World<'a> {
    pub classes: &'a [Arc<GatewayClass>],
    pub gateways: &'a [Arc<Gateway>],
    pub routes: &'a [Arc<HTTPRoute>],
    pub grants: &'a [Arc<ReferenceGrant>],
    pub namespaces: &'a [Arc<PartialObjectMeta<Namespace>>],
    pub services: &'a [Arc<Service>],
    pub slices: &'a [Arc<EndpointSlice>],
    pub pods: &'a PodAnnotations,
    /// The keys (`namespace/name`) of the BalancerClusters this installation serves: a route
    /// may name one of them as a backend.
    pub balancer_clusters: &'a BTreeSet<String>,
    pub policies: &'a [Arc<BackendTLSPolicy>],
}

/// What translation needs besides the resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub controller_name: String,
    /// The addresses Gateways are served at; empty: every address, with `service_addresses`.
    pub addresses: Vec<IpAddr>,
    /// The addresses of the Service in front of the data plane, written to every Gateway's
    /// status when `addresses` is empty.
    pub service_addresses: Vec<GatewayAddress>,
}

/// What the data plane serves for the Gateways, and the status of every resource involved.
#[derive(Debug, Default, PartialEq)]
pub struct Translation {
    pub fronts: Vec<FrontConfig>,
    /// One per Service port that a served route sends to, named `SERVICE:PORT` in the
    /// Service's namespace (a name no BalancerCluster can have).
    pub clusters: Vec<ClusterConfig>,
    pub status: Statuses,
}

/// The status each resource should have.
#[derive(Debug, Default, PartialEq)]
pub struct Statuses {
    pub classes: Vec<Desired<GatewayClassStatus>>,
    pub gateways: Vec<Desired<GatewayStatus>>,
    pub routes: Vec<Desired<HTTPRouteStatus>>,
    pub policies: Vec<Desired<PolicyStatus>>,
}

/// One resource's status: what it should be, and what it was when translated.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired<S> {
    pub namespace: Option<String>,
    pub name: String,
    pub resource_version: Option<String>,
    pub current: Option<S>,
    pub status: S,
}

impl<S: PartialEq> Desired<S> {
    /// Whether the status must be written.
    pub fn changed(&self) -> bool {
        self.current.as_ref() != Some(&self.status)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http,
    Https,
}

/// A listener of a served Gateway, as evaluated.
#[derive(Debug)]
struct ListenerState {
    name: String,
    port: u16,
    hostname: Option<String>,
    protocol: Option<Protocol>,
    /// The route kinds it takes (of those it lists, the ones kube-balancer serves).
    kinds: Vec<RouteGroupKind>,
    invalid_kinds: bool,
    /// HTTPS: its certificates, or why they cannot be served (reason, message).
    certificates: Result<Vec<TlsSource>, Problem>,
    conflict: Option<&'static str>,
    attached: i32,
    /// HTTPS with `tls.frontend` validation for its port: how its clients' certificates are
    /// validated.
    validation: Option<ClientValidation>,
}

/// A listener's validation of clients' certificates, as evaluated.
#[derive(Debug)]
struct ClientValidation {
    /// The usable CA bundles; none: the listener is not accepted (`NoValidCACertificate`).
    cas: Vec<TlsSource>,
    /// Each caCertificateRef that cannot be used, and why.
    problems: Vec<Problem>,
    insecure_fallback: bool,
}

impl ListenerState {
    fn accepted(&self) -> bool {
        self.protocol.is_some() && self.conflict.is_none() && !self.no_valid_ca()
    }

    /// It validates clients' certificates and no CA certificate it names is usable.
    fn no_valid_ca(&self) -> bool {
        self.validation.as_ref().is_some_and(|v| v.cas.is_empty())
    }

    fn resolved(&self) -> bool {
        !self.invalid_kinds
            && self.certificates.is_ok()
            && self
                .validation
                .as_ref()
                .is_none_or(|v| v.problems.is_empty())
    }

    fn takes_http_routes(&self) -> bool {
        self.accepted() && self.kinds.iter().any(is_http_route)
    }

    fn serves(&self) -> bool {
        self.takes_http_routes() && self.certificates.is_ok()
    }
}

fn is_http_route(kind: &RouteGroupKind) -> bool {
    kind.group.as_deref().is_none_or(|g| g == GROUP) && kind.kind == "HTTPRoute"
}

fn http_route_kind() -> RouteGroupKind {
    RouteGroupKind {
        group: Some(GROUP.to_owned()),
        kind: "HTTPRoute".to_owned(),
    }
}

/// A served Gateway.
struct GatewayState<'a> {
    gateway: &'a Gateway,
    namespace: String,
    address: Option<IpAddr>,
    /// Its `spec.addresses` cannot be served: then nothing of it is.
    address_problem: Option<AddressProblem>,
    listeners: Vec<ListenerState>,
    /// `tls.backend.clientCertificateRef`: the Secret presented to TLS backends, or why not.
    client_cert: Option<Result<TlsSource, Problem>>,
}

/// Resources are taken oldest first, then by namespace and name.
fn age_order<K: kube::Resource>(objects: &mut [&Arc<K>]) {
    objects.sort_by(|a, b| {
        let key = |o: &K| {
            (
                o.meta().creation_timestamp.clone().map(|t| t.0),
                o.meta().namespace.clone(),
                o.meta().name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// The classes kube-balancer serves.
fn our_classes<'a>(world: &World<'a>, settings: &Settings) -> Vec<&'a Arc<GatewayClass>> {
    world
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == settings.controller_name)
        .collect()
}

/// The Gateways of those classes, oldest first.
fn our_gateways<'a>(world: &World<'a>, settings: &Settings) -> Vec<&'a Arc<Gateway>> {
    let classes: BTreeSet<String> = our_classes(world, settings)
        .iter()
        .map(|c| c.name_any())
        .collect();
    let mut gateways: Vec<&Arc<Gateway>> = world
        .gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .collect();
    age_order(&mut gateways);
    gateways
}

/// Whether a ReferenceGrant in `to_namespace` lets a `from_kind` of the Gateway API in
/// `from_namespace` refer to the object `to_name` of `to_group`/`to_kind` there.
pub fn permitted(
    grants: &[Arc<ReferenceGrant>],
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    grants
        .iter()
        .filter(|g| g.namespace().as_deref() == Some(to_namespace))
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}

/// The Secrets the served Gateways' HTTPS listeners name and may read: the ones the controller
/// watches and loads.
pub fn certificate_sources(world: &World<'_>, settings: &Settings) -> BTreeSet<TlsSource> {
    let mut sources = BTreeSet::new();
    for gateway in our_gateways(world, settings) {
        let namespace = gateway.namespace().unwrap_or_default();
        for listener in &gateway.spec.listeners {
            if listener.protocol != "HTTPS" {
                continue;
            }
            for reference in listener.tls.iter().flat_map(|t| &t.certificate_refs) {
                if let Ok(source) = secret_source(world, &namespace, reference) {
                    sources.insert(source);
                }
            }
        }
        if let Some(Ok(source)) = client_certificate_source(world, &namespace, gateway) {
            sources.insert(source);
        }
    }
    sources
}

/// The Secret a Gateway's `tls.backend.clientCertificateRef` names, if it names one it may read.
fn client_certificate_source(
    world: &World<'_>,
    gateway_namespace: &str,
    gateway: &Gateway,
) -> Option<Result<TlsSource, Problem>> {
    let reference = gateway
        .spec
        .tls
        .as_ref()?
        .backend
        .as_ref()?
        .client_certificate_ref
        .as_ref()?;
    Some(
        secret_source(world, gateway_namespace, reference).map_err(|(reason, message)| {
            let reason = match reason {
                reasons::REF_NOT_PERMITTED => reasons::REF_NOT_PERMITTED,
                _ => reasons::INVALID_CLIENT_CERTIFICATE_REF,
            };
            (
                reason,
                format!("tls.backend.clientCertificateRef: {message}"),
            )
        }),
    )
}

/// [`client_certificate_source`], and whether its Secret is loaded.
fn client_certificate(
    world: &World<'_>,
    gateway_namespace: &str,
    gateway: &Gateway,
    material: &Material,
) -> Option<Result<TlsSource, Problem>> {
    let source = match client_certificate_source(world, gateway_namespace, gateway)? {
        Ok(source) => source,
        Err(problem) => return Some(Err(problem)),
    };
    let why = match material.keypairs.get(&source) {
        // As a listener's: a renewal refused leaves the certificate loaded before in use.
        Some(loaded) if loaded.current.is_some() => {
            return Some(Ok(source));
        }
        Some(loaded) => loaded
            .problem
            .as_ref()
            .map_or_else(|| format!("{source}: not loaded"), |p| p.message.clone()),
        None => format!("{source}: not read yet"),
    };
    Some(Err((
        reasons::INVALID_CLIENT_CERTIFICATE_REF,
        format!("tls.backend.clientCertificateRef: {why}"),
    )))
}

/// The Secret a certificateRef names, if it is one the Gateway may read.
fn secret_source(
    world: &World<'_>,
    gateway_namespace: &str,
    reference: &api::SecretObjectReference,
) -> Result<TlsSource, Problem> {
    let group = reference.group.as_deref().unwrap_or("");
    let kind = reference.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err((
            reasons::INVALID_CERTIFICATE_REF,
            format!(
                "certificateRef {}: only Secrets (group \"\", kind Secret) are supported, not group {group:?} kind {kind:?}",
                reference.name
            ),
        ));
    }
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| gateway_namespace.to_owned());
    if namespace != gateway_namespace
        && !permitted(
            world.grants,
            "Gateway",
            gateway_namespace,
            "",
            "Secret",
            &namespace,
            &reference.name,
        )
    {
        return Err((
            reasons::REF_NOT_PERMITTED,
            format!(
                "Secret {namespace}/{}: no ReferenceGrant in {namespace} allows Gateways of {gateway_namespace} to use it",
                reference.name
            ),
        ));
    }
    Ok(TlsSource::Secret {
        namespace,
        name: reference.name.clone(),
    })
}

/// Why a Gateway's `spec.addresses` cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressProblem {
    /// An address of another type than `IPAddress`, or not an IP (`Accepted=False`,
    /// `UnsupportedAddress`).
    Unsupported(String),
    /// An IP address this installation does not serve, or that an older Gateway asked for
    /// (`Programmed=False`, `AddressNotUsable`).
    NotUsable(String),
}

/// The IP addresses a Gateway's `spec.addresses` asks for (none: any one), or why not. An
/// `IPAddress` without a value asks for nothing in particular.
fn requested_addresses(gateway: &Gateway) -> Result<Vec<IpAddr>, AddressProblem> {
    let mut ips = Vec::new();
    for address in &gateway.spec.addresses {
        if let Some(other) = address.type_.as_deref().filter(|t| *t != "IPAddress") {
            return Err(AddressProblem::Unsupported(format!(
                "address type {other:?} is not supported: only IPAddress"
            )));
        }
        if address.value.is_empty() {
            continue;
        }
        match address.value.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => {
                return Err(AddressProblem::Unsupported(format!(
                    "{:?} is not an IP address",
                    address.value
                )));
            }
        }
    }
    Ok(ips)
}

/// Gives each Gateway (oldest first) an address of `pool`. A Gateway that asks for addresses
/// (`spec.addresses`) gets the one it asks for, when it is in the pool (without a pool: among
/// `service`, the Gateway Service's) and no older Gateway asked for it; kube-balancer serves a
/// Gateway at one address, so it may ask for one only. The others keep the one their status
/// already shows when it is in the pool and not taken, else get the first one free; when none is
/// left, the pool's last one not asked for, which the Gateways left over share. Every replica
/// computes the same from the same resources. An empty pool gives no address: every address of
/// the host.
pub fn assign_addresses(
    gateways: &[&Arc<Gateway>],
    pool: &[IpAddr],
    service: &[IpAddr],
) -> Vec<Result<Option<IpAddr>, AddressProblem>> {
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    let mut asked: BTreeSet<IpAddr> = BTreeSet::new();
    let mut assigned: Vec<Option<Result<Option<IpAddr>, AddressProblem>>> = gateways
        .iter()
        .map(|g| {
            let requested = match requested_addresses(g) {
                Ok(requested) if requested.is_empty() => return None,
                Ok(requested) => requested,
                Err(problem) => return Some(Err(problem)),
            };
            let served = if pool.is_empty() { service } else { pool };
            let not_usable = |why: String| Some(Err(AddressProblem::NotUsable(why)));
            if let [_, extra, ..] = requested.as_slice() {
                return not_usable(format!("{extra}: a Gateway is served at one address only"));
            }
            let ip = requested[0];
            if !served.contains(&ip) {
                return not_usable(format!("{ip} is not an address this installation serves"));
            }
            if !asked.insert(ip) {
                return not_usable(format!("{ip} is asked for by an older Gateway"));
            }
            if pool.is_empty() {
                return Some(Ok(None));
            }
            taken.insert(ip);
            Some(Ok(Some(ip)))
        })
        .collect();
    if pool.is_empty() {
        return assigned
            .into_iter()
            .map(|a| a.unwrap_or(Ok(None)))
            .collect();
    }
    for (slot, g) in assigned.iter_mut().zip(gateways) {
        if slot.is_some() {
            continue;
        }
        let kept = g
            .status
            .iter()
            .flat_map(|s| &s.addresses)
            .filter_map(|a| a.value.parse::<IpAddr>().ok())
            .find(|ip| pool.contains(ip) && !taken.contains(ip));
        if let Some(ip) = kept {
            taken.insert(ip);
            *slot = Some(Ok(Some(ip)));
        }
    }
    let shared = pool
        .iter()
        .rev()
        .find(|ip| !asked.contains(ip))
        .or(pool.last())
        .copied();
    assigned
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| {
                let free = pool.iter().find(|ip| !taken.contains(ip)).copied();
                if let Some(ip) = free {
                    taken.insert(ip);
                }
                Ok(free.or(shared))
            })
        })
        .collect()
}

/// Conditions of one object, each keeping the time it last changed status.
struct Conditions<'a> {
    generation: Option<i64>,
    current: &'a [Condition],
    now: Timestamp,
    out: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    fn new(generation: Option<i64>, current: &'a [Condition], now: Timestamp) -> Self {
        Conditions {
            generation,
            current,
            now,
            out: Vec::new(),
        }
    }

    fn push(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        let status = if ok { "True" } else { "False" };
        let since = self
            .current
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(self.now), |c| c.last_transition_time.clone());
        self.out.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: since,
        });
    }
}

/// Translates the Gateway API resources of `world`; `material` holds the certificates the
/// controller loaded (from [`certificate_sources`]), `now` stamps conditions that change.
pub fn translate(
    world: &World<'_>,
    settings: &Settings,
    material: &Material,
    now: Timestamp,
) -> Translation {
    let mut out = Translation::default();

    for class in our_classes(world, settings) {
        let current = class.status.clone();
        let mut conditions = Conditions::new(
            class.metadata.generation,
            current.as_ref().map_or(&[], |s| s.conditions.as_slice()),
            now,
        );
        conditions.push(
            reasons::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "kube-balancer serves the Gateways of this class",
        );
        let conditions = conditions.out;
        out.status.classes.push(Desired {
            namespace: None,
            name: class.name_any(),
            resource_version: class.resource_version(),
            current,
            status: GatewayClassStatus {
                conditions,
                supported_features: SUPPORTED_FEATURES
                    .iter()
                    .map(|f| SupportedFeature {
                        name: (*f).to_owned(),
                    })
                    .collect(),
            },
        });
    }

    let gateways = our_gateways(world, settings);
    let service_ips: Vec<IpAddr> = settings
        .service_addresses
        .iter()
        .filter_map(|a| a.value.parse().ok())
        .collect();
    let addresses = assign_addresses(&gateways, &settings.addresses, &service_ips);
    let mut states: Vec<GatewayState<'_>> = Vec::with_capacity(gateways.len());
    // The protocol each address and port is taken with, by the first listener to claim it.
    let mut claimed: HashMap<(Option<IpAddr>, u16), Protocol> = HashMap::new();
    for (gateway, assigned) in gateways.iter().zip(addresses) {
        let namespace = gateway.namespace().unwrap_or_default();
        let (address, address_problem) = match assigned {
            Ok(address) => (address, None),
            Err(problem) => (None, Some(problem)),
        };
        let mut listeners: Vec<ListenerState> = Vec::new();
        for listener in &gateway.spec.listeners {
            let mut state = listener_state(world, &namespace, listener, material);
            if state.protocol == Some(Protocol::Https) {
                state.validation = frontend_validation(gateway, listener.port)
                    .map(|v| client_validation(world, &namespace, v, material));
            }
            if state.protocol.is_some() {
                state.conflict = listeners
                    .iter()
                    .filter(|l| l.port == state.port && l.accepted())
                    .find_map(|l| {
                        if l.protocol != state.protocol {
                            Some(reasons::PROTOCOL_CONFLICT)
                        } else if l.hostname == state.hostname {
                            Some(reasons::HOSTNAME_CONFLICT)
                        } else {
                            None
                        }
                    });
            }
            // A Gateway without a usable address is not served: it claims no port.
            if let (Some(protocol), None, None) = (state.protocol, state.conflict, &address_problem)
            {
                match claimed.get(&(address, state.port)) {
                    Some(p) if *p != protocol => state.conflict = Some(reasons::PROTOCOL_CONFLICT),
                    Some(_) => {}
                    None => {
                        claimed.insert((address, state.port), protocol);
                    }
                }
            }
            listeners.push(state);
        }
        let client_cert = client_certificate(world, &namespace, gateway, material);
        states.push(GatewayState {
            gateway,
            namespace,
            address,
            address_problem,
            listeners,
            client_cert,
        });
    }

    let policies = backend_tls::evaluate(world.policies, material);
    let mut routes: Vec<&Arc<HTTPRoute>> = world.routes.iter().collect();
    age_order(&mut routes);
    // Where each route attaches: (gateway, listener, hostnames), in route order.
    let mut attachments: Vec<(usize, Vec<Attachment>)> = Vec::new();
    // Service ports, each with the client certificate of the Gateways that reach it over TLS.
    let mut clusters: BTreeSet<(String, String, i32, Option<TlsSource>)> = BTreeSet::new();
    // A Gateway's own cluster keys: (gateway, the Service port's key) -> the key with its client
    // certificate, or none when that certificate cannot be loaded.
    let mut with_client: HashMap<(usize, String), Option<String>> = HashMap::new();
    // The Gateways (by index) each Service (namespace, name) is reached from.
    let mut reached_from: BTreeMap<(String, String), BTreeSet<usize>> = BTreeMap::new();
    let mut route_configs: Vec<Option<Vec<RouteConfig>>> = Vec::new();
    for (index, route) in routes.iter().enumerate() {
        let namespace = route.namespace().unwrap_or_default();
        let (resolved, backends) = resolve_backends(world, route, &namespace);
        let rules = rule_configs(route, &namespace, &backends);
        let mut ours = Vec::new();
        let mut attached_here: Vec<Attachment> = Vec::new();
        for parent in &route.spec.parent_refs {
            let group = parent.group.as_deref().unwrap_or(GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if group != GROUP || kind != "Gateway" {
                continue;
            }
            let parent_namespace = parent
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.clone());
            let Some(g) = states.iter().position(|s| {
                s.namespace == parent_namespace && s.gateway.name_any() == parent.name
            }) else {
                continue;
            };
            let accepted = match &rules {
                Err(message) => Err((reasons::UNSUPPORTED_VALUE, message.clone())),
                Ok(_) => attach(world, &states[g], route, &namespace, parent),
            };
            if let Ok(found) = &accepted {
                for (l, hostnames) in found {
                    if !attached_here.iter().any(|(ag, al, _)| *ag == g && al == l) {
                        attached_here.push((g, *l, hostnames.clone()));
                    }
                }
            }
            ours.push((parent, parent_namespace, accepted));
        }
        for (g, l, _) in &attached_here {
            states[*g].listeners[*l].attached += 1;
        }
        if ours.is_empty() && !has_our_status(route, settings) {
            route_configs.push(None);
            attachments.push((index, Vec::new()));
            continue;
        }
        let current = route.status.clone();
        let mut parents: Vec<RouteParentStatus> = current
            .iter()
            .flat_map(|s| &s.parents)
            .filter(|p| p.controller_name != settings.controller_name)
            .cloned()
            .collect();
        let previous = |parent: &ParentReference| -> &[Condition] {
            current
                .iter()
                .flat_map(|s| &s.parents)
                .find(|p| p.controller_name == settings.controller_name && p.parent_ref == *parent)
                .map_or(&[], |p| p.conditions.as_slice())
        };
        for (parent, parent_namespace, accepted) in &ours {
            let parent_ref = ParentReference {
                group: Some(GROUP.to_owned()),
                kind: Some("Gateway".to_owned()),
                namespace: Some(parent_namespace.clone()),
                name: parent.name.clone(),
                section_name: parent.section_name.clone(),
                port: parent.port,
            };
            let mut conditions =
                Conditions::new(route.metadata.generation, previous(&parent_ref), now);
            match accepted {
                Ok(_) => conditions.push(
                    reasons::ACCEPTED,
                    true,
                    reasons::ACCEPTED,
                    "attached to the Gateway",
                ),
                Err((reason, message)) => {
                    conditions.push(reasons::ACCEPTED, false, reason, message.clone())
                }
            }
            match &resolved {
                Ok(()) => conditions.push(
                    reasons::RESOLVED_REFS,
                    true,
                    reasons::RESOLVED_REFS,
                    "every backend is found and allowed",
                ),
                Err((reason, message)) => {
                    conditions.push(reasons::RESOLVED_REFS, false, reason, message.clone())
                }
            }
            parents.push(RouteParentStatus {
                parent_ref,
                controller_name: settings.controller_name.clone(),
                conditions: conditions.out,
            });
        }
        parents.truncate(32);
        out.status.routes.push(Desired {
            namespace: route.namespace(),
            name: route.name_any(),
            resource_version: route.resource_version(),
            current,
            status: HTTPRouteStatus { parents },
        });
        if !attached_here.is_empty() {
            let gateways: BTreeSet<usize> = attached_here.iter().map(|(g, _, _)| *g).collect();
            let mut reached = |namespace: &String, name: &String, port: i32| {
                let tls = world
                    .services
                    .iter()
                    .find(|s| {
                        s.namespace().as_deref() == Some(namespace.as_str())
                            && s.name_any() == *name
                    })
                    .is_some_and(|s| policies.for_port(s, port).is_some());
                for &g in &gateways {
                    let plain = format!("{namespace}/{}", service_cluster_name(name, port));
                    match (&states[g].client_cert, tls) {
                        (Some(Ok(source)), true) => {
                            let key =
                                format!("{namespace}/{}", client_cluster_name(name, port, source));
                            with_client.insert((g, plain), Some(key));
                            clusters.insert((
                                namespace.clone(),
                                name.clone(),
                                port,
                                Some(source.clone()),
                            ));
                        }
                        // Refused rather than reached without the certificate asked for.
                        (Some(Err(_)), true) => {
                            with_client.insert((g, plain), None);
                        }
                        _ => {
                            clusters.insert((namespace.clone(), name.clone(), port, None));
                        }
                    }
                }
                reached_from
                    .entry((namespace.clone(), name.clone()))
                    .or_default()
                    .extend(gateways.iter().copied());
            };
            for backend in backends.iter().flatten().flatten() {
                if let Backend::Service {
                    namespace,
                    name,
                    port,
                } = backend
                {
                    reached(namespace, name, *port);
                }
            }
            for mirror in mirrors(route, &namespace, world) {
                if let Ok(Backend::Service {
                    namespace,
                    name,
                    port,
                }) = mirror
                {
                    reached(&namespace, &name, port);
                }
            }
        }
        route_configs.push(rules.ok());
        attachments.push((index, attached_here));
    }

    // Fronts: the serving listeners, merged by address and port, then by hostname.
    let mut fronts: Vec<FrontConfig> = Vec::new();
    // (gateway, listener) -> (front, listener config)
    let mut slots: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
    for (g, state) in states.iter().enumerate() {
        if state.address_problem.is_some() {
            continue;
        }
        for (l, listener) in state.listeners.iter().enumerate() {
            if !listener.serves() {
                continue;
            }
            let tls = listener.protocol == Some(Protocol::Https);
            let f = match fronts
                .iter()
                .position(|f| f.address == state.address && f.port == listener.port)
            {
                Some(f) => f,
                None => {
                    // Shared by the Gateways on this address and port: the first one's.
                    let client_validation =
                        listener
                            .validation
                            .as_ref()
                            .map(|v| ClientValidationConfig {
                                cas: v.cas.clone(),
                                insecure_fallback: v.insecure_fallback,
                            });
                    fronts.push(FrontConfig {
                        address: state.address,
                        port: listener.port,
                        tls,
                        listeners: Vec::new(),
                        client_validation,
                    });
                    fronts.len() - 1
                }
            };
            let front = &mut fronts[f];
            let c = match front
                .listeners
                .iter()
                .position(|c| c.hostname == listener.hostname)
            {
                Some(c) => c,
                None => {
                    front.listeners.push(ListenerConfig {
                        hostname: listener.hostname.clone(),
                        routes: Vec::new(),
                        certificates: listener.certificates.clone().unwrap_or_default(),
                    });
                    front.listeners.len() - 1
                }
            };
            slots.insert((g, l), (f, c));
        }
    }
    for (index, attached) in &attachments {
        let Some(Some(rules)) = route_configs.get(*index) else {
            continue;
        };
        let mut filled: BTreeSet<(usize, usize)> = BTreeSet::new();
        for (g, l, hostnames) in attached {
            let Some(&(f, c)) = slots.get(&(*g, *l)) else {
                continue;
            };
            if !filled.insert((f, c)) {
                continue;
            }
            for rule in rules {
                let mut rule = RouteConfig {
                    hostnames: hostnames.clone(),
                    ..rule.clone()
                };
                use_client_clusters(&mut rule, *g, &with_client);
                fronts[f].listeners[c].routes.push(rule);
            }
        }
    }
    fronts.sort_by_key(|f| (f.address, f.port));
    out.fronts = fronts;

    for (namespace, name, port, client) in clusters {
        let service = world
            .services
            .iter()
            .find(|s| s.namespace().as_deref() == Some(namespace.as_str()) && s.name_any() == name);
        let tls = match service.and_then(|s| policies.for_port(s, port)) {
            None => None,
            Some((_, evaluated)) => match &evaluated.upstream {
                Some(upstream) => Some(upstream),
                // A policy applies but cannot be served: no cluster, so requests get 500 (its
                // status says why), never a connection verified otherwise.
                None => continue,
            },
        };
        let tls = tls.map(|t| UpstreamTlsConfig {
            client_cert: client.clone(),
            ..t.clone()
        });
        if let Some(cluster) = service_cluster(world, &namespace, &name, port, tls.as_ref()) {
            out.clusters.push(cluster);
        }
    }
    out.status.policies = policy_statuses(world, settings, &states, &reached_from, &policies, now);

    for state in &states {
        out.status
            .gateways
            .push(gateway_status(state, settings, now));
    }
    out
}

/// Whether the route's status has an entry kube-balancer wrote (to take away when it no longer
/// names a served Gateway).
fn has_our_status(route: &HTTPRoute, settings: &Settings) -> bool {
    route
        .status
        .iter()
        .flat_map(|s| &s.parents)
        .any(|p| p.controller_name == settings.controller_name)
}

fn listener_state(
    world: &World<'_>,
    gateway_namespace: &str,
    listener: &Listener,
    material: &Material,
) -> ListenerState {
    let protocol = match listener.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        _ => None,
    };
    let (kinds, invalid_kinds) = match (
        protocol,
        listener
            .allowed_routes
            .as_ref()
            .and_then(|a| a.kinds.as_ref()),
    ) {
        (None, _) => (Vec::new(), false),
        (Some(_), None) => (vec![http_route_kind()], false),
        (Some(_), Some(kinds)) if kinds.is_empty() => (vec![http_route_kind()], false),
        (Some(_), Some(kinds)) => {
            let supported: Vec<RouteGroupKind> = kinds
                .iter()
                .filter(|k| is_http_route(k))
                .map(|_| http_route_kind())
                .collect();
            let invalid = supported.len() < kinds.len();
            (supported, invalid)
        }
    };
    let certificates = match protocol {
        Some(Protocol::Https) => {
            listener_certificates(world, gateway_namespace, listener, material)
        }
        _ => Ok(Vec::new()),
    };
    ListenerState {
        name: listener.name.clone(),
        port: u16::try_from(listener.port).unwrap_or(0),
        hostname: listener
            .hostname
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.to_ascii_lowercase()),
        protocol,
        kinds,
        invalid_kinds,
        certificates,
        conflict: None,
        attached: 0,
        validation: None,
    }
}

/// The `tls.frontend` validation that applies to a Gateway's HTTPS listeners on `port`: its
/// `perPort` entry (which may have none), else the default.
fn frontend_validation(gateway: &Gateway, port: i32) -> Option<&api::FrontendValidation> {
    let frontend = gateway.spec.tls.as_ref()?.frontend.as_ref()?;
    match frontend.per_port.iter().find(|p| p.port == port) {
        Some(per_port) => per_port.tls.validation.as_ref(),
        None => frontend.default.as_ref()?.validation.as_ref(),
    }
}

/// The ConfigMap a frontend caCertificateRef names, if the Gateway may read it.
fn frontend_ca_source(
    world: &World<'_>,
    gateway_namespace: &str,
    reference: &api::ObjectReference,
) -> Result<TlsSource, Problem> {
    if !reference.group.is_empty() || reference.kind != "ConfigMap" {
        return Err((
            reasons::INVALID_CA_CERTIFICATE_KIND,
            format!(
                "caCertificateRef {}: kind {:?} of group {:?} is not supported (ConfigMap of the core group is)",
                reference.name, reference.kind, reference.group
            ),
        ));
    }
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| gateway_namespace.to_owned());
    if namespace != gateway_namespace
        && !permitted(
            world.grants,
            "Gateway",
            gateway_namespace,
            "",
            "ConfigMap",
            &namespace,
            &reference.name,
        )
    {
        return Err((
            reasons::REF_NOT_PERMITTED,
            format!(
                "caCertificateRef ConfigMap {namespace}/{}: no ReferenceGrant in {namespace} allows Gateways of {gateway_namespace} to use it",
                reference.name
            ),
        ));
    }
    Ok(TlsSource::ConfigMap {
        namespace,
        name: reference.name.clone(),
    })
}

/// A listener's validation: which CA bundles are usable, and why the others are not.
fn client_validation(
    world: &World<'_>,
    gateway_namespace: &str,
    validation: &api::FrontendValidation,
    material: &Material,
) -> ClientValidation {
    let mut cas = Vec::new();
    let mut problems = Vec::new();
    for reference in &validation.ca_certificate_refs {
        let source = match frontend_ca_source(world, gateway_namespace, reference) {
            Ok(source) => source,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let why = backend_tls::ca_unusable(material, &source);
        match why {
            Some(why) => problems.push((
                reasons::INVALID_CA_CERTIFICATE_REF,
                format!("caCertificateRef {}: {why}", reference.name),
            )),
            None => cas.push(source),
        }
    }
    ClientValidation {
        cas,
        problems,
        insecure_fallback: validation.mode.as_deref() == Some("AllowInsecureFallback"),
    }
}

/// The ConfigMaps the served Gateways' `tls.frontend` validation names and may read: the CA
/// bundles the controller watches and loads.
pub fn frontend_ca_sources(world: &World<'_>, settings: &Settings) -> BTreeSet<TlsSource> {
    let mut sources = BTreeSet::new();
    for gateway in our_gateways(world, settings) {
        let namespace = gateway.namespace().unwrap_or_default();
        let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
            continue;
        };
        let validations = frontend
            .default
            .iter()
            .chain(frontend.per_port.iter().map(|p| &p.tls))
            .filter_map(|t| t.validation.as_ref());
        for validation in validations {
            for reference in &validation.ca_certificate_refs {
                if let Ok(source) = frontend_ca_source(world, &namespace, reference) {
                    sources.insert(source);
                }
            }
        }
    }
    sources
}

fn listener_certificates(
    world: &World<'_>,
    gateway_namespace: &str,
    listener: &Listener,
    material: &Material,
) -> Result<Vec<TlsSource>, Problem> {
    let tls = listener.tls.as_ref();
    if tls
        .and_then(|t| t.mode.as_deref())
        .is_some_and(|m| m != "Terminate")
    {
        return Err((
            reasons::INVALID_CERTIFICATE_REF,
            "an HTTPS listener terminates TLS: tls.mode must be Terminate".to_owned(),
        ));
    }
    let references = tls
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or_default();
    if references.is_empty() {
        return Err((
            reasons::INVALID_CERTIFICATE_REF,
            "an HTTPS listener needs tls.certificateRefs".to_owned(),
        ));
    }
    let mut sources = Vec::with_capacity(references.len());
    for reference in references {
        let source = secret_source(world, gateway_namespace, reference)?;
        match material.keypairs.get(&source) {
            Some(loaded) if loaded.current.is_some() => sources.push(source),
            Some(loaded) => {
                return Err((
                    reasons::INVALID_CERTIFICATE_REF,
                    loaded
                        .problem
                        .as_ref()
                        .map_or_else(|| format!("{source}: not loaded"), |p| p.message.clone()),
                ));
            }
            None => {
                return Err((
                    reasons::INVALID_CERTIFICATE_REF,
                    format!("{source}: not read yet"),
                ));
            }
        }
    }
    Ok(sources)
}

/// Whether a listener lets routes of `route_namespace` attach.
fn allows_namespace(
    world: &World<'_>,
    listener: &Listener,
    gateway_namespace: &str,
    route_namespace: &str,
) -> bool {
    let namespaces = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Same" => gateway_namespace == route_namespace,
        "Selector" => {
            let Some(selector) = namespaces.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            let labels = world
                .namespaces
                .iter()
                .find(|n| n.name_any() == route_namespace)
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            api::selects(selector, &labels)
        }
        _ => false,
    }
}

/// The listeners of a Gateway a route's parentRef attaches it to, with the hostnames it serves
/// on each; or why it attaches to none.
fn attach(
    world: &World<'_>,
    gateway: &GatewayState<'_>,
    route: &HTTPRoute,
    route_namespace: &str,
    parent: &ParentReference,
) -> Result<Vec<(usize, Vec<String>)>, Problem> {
    let candidates: Vec<usize> = gateway
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| i32::from(l.port) == p))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return Err((
            reasons::NO_MATCHING_PARENT,
            match (&parent.section_name, parent.port) {
                (Some(s), _) => format!("the Gateway has no listener named {s:?}"),
                (None, Some(p)) => format!("the Gateway has no listener on port {p}"),
                (None, None) => "the Gateway has no listener".to_owned(),
            },
        ));
    }
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| {
            gateway.listeners[i].takes_http_routes()
                && allows_namespace(
                    world,
                    &gateway.gateway.spec.listeners[i],
                    &gateway.namespace,
                    route_namespace,
                )
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            reasons::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "no listener the parentRef names takes HTTPRoutes from namespace {route_namespace}"
            ),
        ));
    }
    let found: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|i| {
            intersect(
                gateway.listeners[i].hostname.as_deref(),
                &route.spec.hostnames,
            )
            .map(|h| (i, h))
        })
        .collect();
    if found.is_empty() {
        return Err((
            reasons::NO_MATCHING_LISTENER_HOSTNAME,
            "no hostname of the route is one its listeners take".to_owned(),
        ));
    }
    Ok(found)
}

/// The hostnames a route serves on a listener: those of the route the listener's hostname
/// takes (a route wildcard narrowed to the listener's name when that is more specific). `None`
/// when they share none. An empty list: every host the listener takes.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    let Some(listener) = listener else {
        return Some(route);
    };
    if route.is_empty() {
        return Some(Vec::new());
    }
    let listener = listener.to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    for host in route {
        let taken = match (listener.strip_prefix('*'), host.strip_prefix('*')) {
            (None, None) => (host == listener).then_some(host),
            (Some(suffix), None) => host.ends_with(suffix).then_some(host),
            (None, Some(suffix)) => listener.ends_with(suffix).then(|| listener.clone()),
            (Some(l), Some(r)) => {
                if r.ends_with(l) {
                    Some(host)
                } else if l.ends_with(r) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
        };
        if let Some(h) = taken
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A backend a route names, once resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Backend {
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// A BalancerCluster's key.
    Cluster(String),
}

impl Backend {
    fn key(&self) -> String {
        match self {
            Backend::Service {
                namespace,
                name,
                port,
            } => format!("{namespace}/{}", service_cluster_name(name, *port)),
            Backend::Cluster(key) => key.clone(),
        }
    }
}

/// The name of the cluster of a Service port: `web:8080`, which no BalancerCluster can have.
pub fn service_cluster_name(service: &str, port: i32) -> String {
    format!("{service}:{port}")
}

/// The name of the cluster of a Service port reached over TLS by Gateways that present the
/// client certificate of `source`: `web:443+infra/client-cert`. Gateways presenting the same
/// certificate share it; a connection never carries one Gateway's certificate for another.
pub fn client_cluster_name(service: &str, port: i32, source: &TlsSource) -> String {
    let secret = match source {
        TlsSource::Secret { namespace, name } => format!("{namespace}/{name}"),
        other => other.to_string(),
    };
    format!("{}+{secret}", service_cluster_name(service, port))
}

/// Points a rule of Gateway `g` (its backends and mirrors) at that Gateway's own clusters where it
/// has them (`with_client`: those that present its client certificate).
fn use_client_clusters(
    rule: &mut RouteConfig,
    g: usize,
    with_client: &HashMap<(usize, String), Option<String>>,
) {
    if with_client.is_empty() {
        return;
    }
    // `None`: its certificate cannot be loaded: a backend that cannot be served (500), a mirror
    // not made.
    let own = |key: &String| with_client.get(&(g, key.clone())).cloned();
    let mirrors = |mirrors: &mut Vec<crate::plane::filters::Mirror>| {
        mirrors.retain_mut(|m| match own(&m.cluster) {
            None => true,
            Some(Some(key)) => {
                m.cluster = key;
                true
            }
            Some(None) => false,
        });
    };
    mirrors(&mut rule.filters.mirrors);
    for backend in &mut rule.backends {
        if let Some(Some(key)) = backend.cluster.as_ref().map(own) {
            backend.cluster = key;
        }
        mirrors(&mut backend.filters.mirrors);
    }
}

type Resolved = Result<Backend, Problem>;

fn resolve(
    world: &World<'_>,
    route_namespace: &str,
    reference: &api::BackendObjectReference,
) -> Resolved {
    let group = reference.group.as_deref().unwrap_or("");
    let kind = reference.kind.as_deref().unwrap_or("Service");
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| route_namespace.to_owned());
    let name = &reference.name;
    let allowed = |group: &str, kind: &str| {
        namespace == route_namespace
            || permitted(
                world.grants,
                "HTTPRoute",
                route_namespace,
                group,
                kind,
                &namespace,
                name,
            )
    };
    let not_permitted = |kind: &str| {
        Err((
            reasons::REF_NOT_PERMITTED,
            format!(
                "{kind} {namespace}/{name}: no ReferenceGrant in {namespace} allows HTTPRoutes of {route_namespace} to use it"
            ),
        ))
    };
    match (group, kind) {
        ("", "Service") => {
            if !allowed("", "Service") {
                return not_permitted("Service");
            }
            let service = world.services.iter().find(|s| {
                s.namespace().as_deref() == Some(namespace.as_str()) && s.name_any() == *name
            });
            let Some(service) = service else {
                return Err((
                    reasons::BACKEND_NOT_FOUND,
                    format!("Service {namespace}/{name} not found"),
                ));
            };
            let Some(port) = reference.port else {
                return Err((
                    reasons::BACKEND_NOT_FOUND,
                    format!("Service {namespace}/{name}: backendRef gives no port"),
                ));
            };
            let has_port = service
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|ports| ports.iter().any(|p| p.port == port));
            if !has_port {
                return Err((
                    reasons::BACKEND_NOT_FOUND,
                    format!("Service {namespace}/{name} has no port {port}"),
                ));
            }
            Ok(Backend::Service {
                namespace,
                name: name.clone(),
                port,
            })
        }
        (crate::api::GROUP, "BalancerCluster") => {
            if !allowed(crate::api::GROUP, "BalancerCluster") {
                return not_permitted("BalancerCluster");
            }
            let key = format!("{namespace}/{name}");
            if world.balancer_clusters.contains(&key) {
                Ok(Backend::Cluster(key))
            } else {
                Err((
                    reasons::BACKEND_NOT_FOUND,
                    format!(
                        "BalancerCluster {key} is not served by this installation (not found, or of another className)"
                    ),
                ))
            }
        }
        _ => Err((
            reasons::INVALID_KIND,
            format!(
                "backendRef {name}: kind {kind:?} of group {group:?} is not supported (Service, or BalancerCluster of kubebalancer.io)"
            ),
        )),
    }
}

/// Every rule's backends, resolved, and the route's ResolvedRefs: the first problem (reason and
/// every problem's message) or none.
fn resolve_backends(
    world: &World<'_>,
    route: &HTTPRoute,
    namespace: &str,
) -> (Result<(), Problem>, Vec<Vec<Option<Backend>>>) {
    let mut problems: Vec<Problem> = Vec::new();
    let backends = route
        .spec
        .rules
        .iter()
        .map(|rule| {
            rule.backend_refs
                .iter()
                .map(|b| match resolve(world, namespace, &b.reference) {
                    Ok(backend) => Some(backend),
                    Err(problem) => {
                        problems.push(problem);
                        None
                    }
                })
                .collect()
        })
        .collect();
    for mirror in mirrors(route, namespace, world) {
        if let Err(problem) = mirror {
            problems.push(problem);
        }
    }
    let resolved = match problems.first() {
        None => Ok(()),
        Some((reason, _)) => Err((
            *reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    };
    (resolved, backends)
}

/// The backends the route's RequestMirror filters name, resolved.
fn mirrors(route: &HTTPRoute, namespace: &str, world: &World<'_>) -> Vec<Resolved> {
    let rule_filters = route.spec.rules.iter().flat_map(|r| {
        r.filters
            .iter()
            .chain(r.backend_refs.iter().flat_map(|b| &b.filters))
    });
    rule_filters
        .filter_map(|f| f.request_mirror.as_ref())
        .map(|m| resolve(world, namespace, &m.backend_ref))
        .collect()
}

/// The route's rules as the data plane takes them (without hostnames, which depend on the
/// listener); `Err` with why when one cannot be served as written.
fn rule_configs(
    route: &HTTPRoute,
    namespace: &str,
    backends: &[Vec<Option<Backend>>],
) -> Result<Vec<RouteConfig>, String> {
    let name = route.name_any();
    route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            rule_config(
                rule,
                namespace,
                backends.get(i).map_or(&[], |b| b.as_slice()),
            )
            .map(|mut config| {
                config.name = format!("httproute {namespace}/{name} rule {i}");
                config
            })
            .map_err(|e| format!("rule {i}: {e}"))
        })
        .collect()
}

fn rule_config(
    rule: &HTTPRouteRule,
    namespace: &str,
    backends: &[Option<Backend>],
) -> Result<RouteConfig, String> {
    let matches = rule
        .matches
        .iter()
        .map(request_match)
        .collect::<Result<Vec<_>, _>>()?;
    let filters = filters_of(&rule.filters, namespace)?;
    let backends = rule
        .backend_refs
        .iter()
        .zip(backends)
        .map(|(reference, backend)| {
            Ok(BackendConfig {
                cluster: backend.as_ref().map(Backend::key),
                weight: u32::try_from(reference.weight.unwrap_or(1)).unwrap_or(0),
                filters: filters_of(&reference.filters, namespace)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let timeouts = rule.timeouts.as_ref();
    Ok(RouteConfig {
        name: String::new(),
        hostnames: Vec::new(),
        matches,
        filters,
        backends,
        request_timeout: timeouts
            .and_then(|t| t.request.as_deref())
            .map(duration)
            .transpose()?
            .flatten(),
        backend_timeout: timeouts
            .and_then(|t| t.backend_request.as_deref())
            .map(duration)
            .transpose()?
            .flatten(),
        retry: rule.retry.as_ref().map(retry).transpose()?,
    })
}

/// A rule's `retry` as the failover loop takes it; codes or attempts out of the CRD's bounds
/// refuse the rule.
fn retry(spec: &api::HTTPRouteRetry) -> Result<Retry, String> {
    let codes = spec
        .codes
        .iter()
        .map(|&c| {
            u16::try_from(c)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| format!("retry code {c} is not an error status (400 to 599)"))
        })
        .collect::<Result<Vec<u16>, String>>()?;
    let attempts = spec
        .attempts
        .map(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("retry attempts {n} is not at least 1"))
        })
        .transpose()?;
    let backoff = spec.backoff.as_deref().map(duration).transpose()?.flatten();
    Ok(Retry::new(codes, attempts, backoff))
}

/// A Gateway API duration (`10s`, `1m30s`, `500ms`); zero means none.
fn duration(text: &str) -> Result<Option<Duration>, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("duration {text:?}: {e}"))?;
    Ok((!d.is_zero()).then_some(d))
}

fn request_match(m: &HTTPRouteMatch) -> Result<RequestMatch, String> {
    let path = match &m.path {
        None => PathMatch::prefix("/"),
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            match p.type_.as_deref().unwrap_or("PathPrefix") {
                "PathPrefix" => PathMatch::prefix(value),
                "Exact" => PathMatch::Exact(value.to_owned()),
                "RegularExpression" => PathMatch::Regex(
                    Pattern::new(value).map_err(|e| format!("path {value:?}: {e}"))?,
                ),
                other => return Err(format!("path match type {other:?} is not supported")),
            }
        }
    };
    let method = m
        .method
        .as_deref()
        .map(|v| Method::from_bytes(v.as_bytes()).map_err(|_| format!("method {v:?}")))
        .transpose()?;
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for h in &m.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("header name {:?}", h.name))?;
        // Of several matches of one name, the first counts.
        if headers.iter().any(|e| e.name == name) {
            continue;
        }
        headers.push(HeaderMatch {
            name,
            value: value_match(h.type_.as_deref(), &h.value)?,
        });
    }
    let mut query: Vec<QueryMatch> = Vec::new();
    for q in &m.query_params {
        if query.iter().any(|e| e.name == q.name) {
            continue;
        }
        query.push(QueryMatch {
            name: q.name.clone(),
            value: value_match(q.type_.as_deref(), &q.value)?,
        });
    }
    Ok(RequestMatch {
        path,
        method,
        headers,
        query,
    })
}

fn value_match(type_: Option<&str>, value: &str) -> Result<ValueMatch, String> {
    match type_.unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(value.to_owned())),
        "RegularExpression" => Pattern::new(value)
            .map(ValueMatch::Regex)
            .map_err(|e| format!("expression {value:?}: {e}")),
        other => Err(format!("match type {other:?} is not supported")),
    }
}

fn header_modifier(spec: &api::HeaderModifierSpec) -> Result<HeaderModifier, String> {
    let pair = |h: &api::HeaderValueSpec| {
        Ok((
            HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?}", h.name))?,
            HeaderValue::from_str(&h.value).map_err(|_| format!("header value {:?}", h.value))?,
        ))
    };
    Ok(HeaderModifier {
        set: spec.set.iter().map(pair).collect::<Result<_, String>>()?,
        add: spec.add.iter().map(pair).collect::<Result<_, String>>()?,
        remove: spec
            .remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("header name {n:?}")))
            .collect::<Result<_, String>>()?,
    })
}

fn path_modifier(spec: &api::PathModifierSpec) -> Result<PathModifier, String> {
    match (
        spec.type_.as_str(),
        &spec.replace_full_path,
        &spec.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(p), _) => Ok(PathModifier::ReplaceFullPath(p.clone())),
        ("ReplacePrefixMatch", _, Some(p)) => Ok(PathModifier::ReplacePrefixMatch(p.clone())),
        (t, _, _) => Err(format!("path modifier {t:?} without its value")),
    }
}

fn filters_of(specs: &[HTTPRouteFilter], namespace: &str) -> Result<Filters, String> {
    let mut filters = Filters::default();
    for f in specs {
        let missing = || format!("filter {} without its settings", f.type_);
        match f.type_.as_str() {
            "RequestHeaderModifier" => {
                let spec = f.request_header_modifier.as_ref().ok_or_else(missing)?;
                filters.request_headers = Some(header_modifier(spec)?);
            }
            "ResponseHeaderModifier" => {
                let spec = f.response_header_modifier.as_ref().ok_or_else(missing)?;
                filters.response_headers = Some(header_modifier(spec)?);
            }
            "RequestRedirect" => {
                let spec = f.request_redirect.as_ref().ok_or_else(missing)?;
                filters.redirect = Some(Redirect {
                    scheme: spec.scheme.clone(),
                    hostname: spec.hostname.clone(),
                    port: spec
                        .port
                        .map(|p| u16::try_from(p).map_err(|_| format!("redirect port {p}")))
                        .transpose()?,
                    path: spec.path.as_ref().map(path_modifier).transpose()?,
                    status: u16::try_from(spec.status_code.unwrap_or(302))
                        .map_err(|_| "redirect status".to_owned())?,
                });
            }
            "URLRewrite" => {
                let spec = f.url_rewrite.as_ref().ok_or_else(missing)?;
                filters.rewrite = Some(Rewrite {
                    hostname: spec
                        .hostname
                        .as_deref()
                        .map(|h| HeaderValue::from_str(h).map_err(|_| format!("hostname {h:?}")))
                        .transpose()?,
                    path: spec.path.as_ref().map(path_modifier).transpose()?,
                });
            }
            "RequestMirror" => {
                let spec = f.request_mirror.as_ref().ok_or_else(missing)?;
                let reference = &spec.backend_ref;
                let backend_namespace = reference.namespace.as_deref().unwrap_or(namespace);
                let (numerator, denominator) = match (&spec.fraction, spec.percent) {
                    (Some(f), _) => (f.numerator, f.denominator.unwrap_or(100)),
                    (None, Some(p)) => (p, 100),
                    (None, None) => (100, 100),
                };
                // Resolved (and refused when it cannot be) with the other backends; a mirror to
                // a Service always names its cluster by Service port.
                let key = match (
                    reference.kind.as_deref().unwrap_or("Service"),
                    reference.port,
                ) {
                    ("Service", Some(port)) => format!(
                        "{backend_namespace}/{}",
                        service_cluster_name(&reference.name, port)
                    ),
                    _ => format!("{backend_namespace}/{}", reference.name),
                };
                filters.mirrors.push(Mirror {
                    cluster: key,
                    numerator: u32::try_from(numerator).unwrap_or(0),
                    denominator: u32::try_from(denominator).unwrap_or(100).max(1),
                });
            }
            "CORS" => {
                let spec = f.cors.as_ref().ok_or_else(missing)?;
                filters.cors = Some(Cors {
                    allow_origins: spec.allow_origins.clone(),
                    allow_credentials: spec.allow_credentials.unwrap_or(false),
                    allow_methods: spec.allow_methods.clone(),
                    allow_headers: spec.allow_headers.clone(),
                    expose_headers: spec.expose_headers.clone(),
                    max_age: spec.max_age.and_then(|m| u32::try_from(m).ok()),
                });
            }
            other => return Err(format!("filter type {other:?} is not supported")),
        }
    }
    Ok(filters)
}

/// The cluster of a Service port: the Service's ready endpoints, byrequests, with the defaults
/// of a BalancerCluster (its pods' `kubebalancer.io/*` annotations apply too).
fn service_cluster(
    world: &World<'_>,
    namespace: &str,
    name: &str,
    port: i32,
    tls: Option<&UpstreamTlsConfig>,
) -> Option<ClusterConfig> {
    let mut spec = serde_json::json!({
        "routes": [],
        "service": {"name": name, "port": port},
    });
    if tls.is_some() {
        // The endpoints become https:// members; the settings themselves are set below.
        spec["upstreamTLS"] = serde_json::json!({});
    }
    let spec = match serde_json::from_value(spec) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "cannot build the cluster of a Service port");
            return None;
        }
    };
    let cluster_name = match tls.and_then(|t| t.client_cert.as_ref()) {
        Some(source) => client_cluster_name(name, port, source),
        None => service_cluster_name(name, port),
    };
    let mut bc = BalancerCluster::new(&cluster_name, spec);
    bc.metadata.namespace = Some(namespace.to_owned());
    let service_ref = ServiceRef {
        name: name.to_owned(),
        port: IntOrString::Int(port),
    };
    let service = world
        .services
        .iter()
        .find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name)
        .map(|s| s.as_ref());
    let slices = world.slices.iter().map(|s| s.as_ref()).filter(|s| {
        s.namespace().as_deref() == Some(namespace)
            && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
    });
    let no_annotations = HashMap::new();
    let pods = world.pods.get(namespace).unwrap_or(&no_annotations);
    let mut problems = Vec::new();
    let members = members_from_slices(&service_ref, service, slices, pods, &mut problems);
    for p in problems {
        tracing::warn!(pod = %p.pod, annotation = p.annotation, value = %p.value, "pod annotation ignored: not a valid value");
    }
    match cluster_config(&bc, members) {
        Ok(mut config) => {
            if let Some(tls) = tls {
                config.tls.upstream = Some(tls.clone());
            }
            Some(config)
        }
        Err(e) => {
            tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "cannot build the cluster of a Service port");
            None
        }
    }
}

/// Each BackendTLSPolicy's status: one entry per served Gateway that a route reaches one of its
/// Services from (at most 16, as the API allows), the entries of other controllers kept.
fn policy_statuses(
    world: &World<'_>,
    settings: &Settings,
    states: &[GatewayState<'_>],
    reached_from: &BTreeMap<(String, String), BTreeSet<usize>>,
    policies: &Policies,
    now: Timestamp,
) -> Vec<Desired<PolicyStatus>> {
    let mut out = Vec::new();
    for policy in world.policies {
        let namespace = policy.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", policy.name_any());
        let Some(evaluated) = policies.evaluated.get(&key) else {
            continue;
        };
        let gateways: BTreeSet<usize> = reached_from
            .iter()
            .filter(|((ns, name), _)| Policies::targets(policy, ns, name))
            .flat_map(|(_, g)| g.iter().copied())
            .collect();
        let current = policy.status.clone();
        let ours = |a: &PolicyAncestorStatus| a.controller_name == settings.controller_name;
        if gateways.is_empty() && !current.iter().flat_map(|s| &s.ancestors).any(ours) {
            continue;
        }
        let mut ancestors: Vec<PolicyAncestorStatus> = current
            .iter()
            .flat_map(|s| &s.ancestors)
            .filter(|a| !ours(a))
            .cloned()
            .collect();
        for g in gateways {
            let gateway = states[g].gateway;
            let ancestor_ref = ParentReference {
                group: Some(GROUP.to_owned()),
                kind: Some("Gateway".to_owned()),
                namespace: gateway.namespace(),
                name: gateway.name_any(),
                section_name: None,
                port: None,
            };
            let previous = current
                .iter()
                .flat_map(|s| &s.ancestors)
                .find(|a| ours(a) && a.ancestor_ref == ancestor_ref)
                .map_or(&[][..], |a| a.conditions.as_slice());
            let mut conditions = Conditions::new(policy.metadata.generation, previous, now);
            match &evaluated.accepted {
                Ok(message) => {
                    conditions.push(reasons::ACCEPTED, true, reasons::ACCEPTED, message.clone())
                }
                Err((reason, message)) => {
                    conditions.push(reasons::ACCEPTED, false, reason, message.clone())
                }
            }
            match &evaluated.resolved {
                Ok(message) => conditions.push(
                    reasons::RESOLVED_REFS,
                    true,
                    reasons::RESOLVED_REFS,
                    message.clone(),
                ),
                Err((reason, message)) => {
                    conditions.push(reasons::RESOLVED_REFS, false, reason, message.clone())
                }
            }
            ancestors.push(PolicyAncestorStatus {
                ancestor_ref,
                controller_name: settings.controller_name.clone(),
                conditions: conditions.out,
            });
        }
        ancestors.truncate(16);
        out.push(Desired {
            namespace: policy.namespace(),
            name: policy.name_any(),
            resource_version: policy.resource_version(),
            current,
            status: PolicyStatus { ancestors },
        });
    }
    out
}

fn gateway_status(
    state: &GatewayState<'_>,
    settings: &Settings,
    now: Timestamp,
) -> Desired<GatewayStatus> {
    let gateway = state.gateway;
    let current = gateway.status.clone();
    let generation = gateway.metadata.generation;
    let addresses: Vec<GatewayAddress> = match (state.address, &state.address_problem) {
        (_, Some(_)) => Vec::new(),
        (Some(ip), None) => vec![GatewayAddress {
            type_: Some("IPAddress".to_owned()),
            value: ip.to_string(),
        }],
        (None, None) => settings.service_addresses.clone(),
    };
    let accepted = state.listeners.iter().filter(|l| l.accepted()).count();
    let all = state.listeners.len();
    let mut conditions = Conditions::new(
        generation,
        current.as_ref().map_or(&[], |s| s.conditions.as_slice()),
        now,
    );
    match (accepted, all) {
        _ if let Some(AddressProblem::Unsupported(why)) = &state.address_problem => conditions
            .push(
                reasons::ACCEPTED,
                false,
                reasons::UNSUPPORTED_ADDRESS,
                why.clone(),
            ),
        (0, _) => conditions.push(
            reasons::ACCEPTED,
            false,
            reasons::LISTENERS_NOT_VALID,
            "no listener is valid",
        ),
        (a, n) if a < n => conditions.push(
            reasons::ACCEPTED,
            true,
            reasons::LISTENERS_NOT_VALID,
            format!("{} of {n} listeners are not valid", n - a),
        ),
        _ => conditions.push(
            reasons::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "every listener is valid",
        ),
    }
    match (accepted > 0, addresses.first()) {
        _ if let Some(problem) = &state.address_problem => match problem {
            AddressProblem::Unsupported(why) => {
                conditions.push(reasons::PROGRAMMED, false, reasons::INVALID, why.clone())
            }
            AddressProblem::NotUsable(why) => conditions.push(
                reasons::PROGRAMMED,
                false,
                reasons::ADDRESS_NOT_USABLE,
                why.clone(),
            ),
        },
        (false, _) => conditions.push(
            reasons::PROGRAMMED,
            false,
            reasons::INVALID,
            "no listener is valid",
        ),
        (true, None) => conditions.push(
            reasons::PROGRAMMED,
            false,
            reasons::ADDRESS_NOT_ASSIGNED,
            "no address yet: the data plane's Service has none (see --gateway-service and --gateway-address)",
        ),
        (true, Some(a)) => conditions.push(
            reasons::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            format!("served at {}", a.value),
        ),
    }
    // Any port whose clients are let through without a valid certificate.
    let insecure = gateway
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.frontend.as_ref())
        .is_some_and(|f| {
            f.default
                .iter()
                .chain(f.per_port.iter().map(|p| &p.tls))
                .filter_map(|t| t.validation.as_ref())
                .any(|v| v.mode.as_deref() == Some("AllowInsecureFallback"))
        });
    if insecure {
        conditions.push(
            reasons::INSECURE_FRONTEND_VALIDATION_MODE,
            true,
            reasons::CONFIGURATION_CHANGED,
            "tls.frontend lets clients without a valid certificate through (AllowInsecureFallback)",
        );
    }
    // The references of the Gateway itself, then a summary of its listeners'.
    let unresolved = state.listeners.iter().filter(|l| !l.resolved()).count();
    match (&state.client_cert, unresolved) {
        (Some(Err((reason, message))), _) => {
            conditions.push(reasons::RESOLVED_REFS, false, reason, message.clone())
        }
        (_, 0) => conditions.push(
            reasons::RESOLVED_REFS,
            true,
            reasons::RESOLVED_REFS,
            "every reference is resolved",
        ),
        (_, n) => conditions.push(
            reasons::RESOLVED_REFS,
            false,
            reasons::LISTENERS_NOT_RESOLVED,
            format!("{n} listeners have references that are not resolved"),
        ),
    }
    let listeners = state
        .listeners
        .iter()
        .map(|l| {
            let previous = current
                .as_ref()
                .and_then(|s| s.listeners.iter().find(|p| p.name == l.name))
                .map_or(&[][..], |p| p.conditions.as_slice());
            let mut c = Conditions::new(generation, previous, now);
            match (l.protocol, l.conflict) {
                (None, _) => c.push(
                    reasons::ACCEPTED,
                    false,
                    reasons::UNSUPPORTED_PROTOCOL,
                    "kube-balancer serves HTTP and HTTPS listeners",
                ),
                (Some(_), Some(conflict)) => c.push(
                    reasons::ACCEPTED,
                    false,
                    conflict,
                    "an earlier listener takes this port",
                ),
                (Some(_), None) if l.no_valid_ca() => c.push(
                    reasons::ACCEPTED,
                    false,
                    reasons::NO_VALID_CA_CERTIFICATE,
                    "no caCertificateRef of tls.frontend for its port gives a usable CA certificate: not served",
                ),
                (Some(_), None) => c.push(reasons::ACCEPTED, true, reasons::ACCEPTED, "valid"),
            }
            let ca_problem = l
                .validation
                .as_ref()
                .and_then(|v| v.problems.first().map(|(reason, _)| (*reason, &v.problems)));
            match (&l.certificates, l.invalid_kinds) {
                (Err((reason, message)), _) => {
                    c.push(reasons::RESOLVED_REFS, false, reason, message.clone())
                }
                _ if let Some((reason, problems)) = ca_problem => c.push(
                    reasons::RESOLVED_REFS,
                    false,
                    reason,
                    problems
                        .iter()
                        .map(|(_, m)| m.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                (Ok(_), true) => c.push(
                    reasons::RESOLVED_REFS,
                    false,
                    reasons::INVALID_ROUTE_KINDS,
                    "kube-balancer serves HTTPRoutes only",
                ),
                (Ok(_), false) => c.push(
                    reasons::RESOLVED_REFS,
                    true,
                    reasons::RESOLVED_REFS,
                    "every reference is resolved",
                ),
            }
            match l.conflict {
                Some(reason) => c.push(
                    reasons::CONFLICTED,
                    true,
                    reason,
                    "another listener takes this port with another protocol or hostname",
                ),
                None => c.push(
                    reasons::CONFLICTED,
                    false,
                    reasons::NO_CONFLICTS,
                    "no conflict",
                ),
            }
            let programmed = l.accepted() && l.resolved() && !addresses.is_empty();
            c.push(
                reasons::PROGRAMMED,
                programmed,
                if programmed {
                    reasons::PROGRAMMED
                } else {
                    reasons::INVALID
                },
                if programmed {
                    "served".to_owned()
                } else {
                    "not served: see the other conditions".to_owned()
                },
            );
            ListenerStatus {
                name: l.name.clone(),
                supported_kinds: l.kinds.clone(),
                attached_routes: l.attached,
                conditions: c.out,
            }
        })
        .collect();
    let conditions = conditions.out;
    Desired {
        namespace: gateway.namespace(),
        name: gateway.name_any(),
        resource_version: gateway.resource_version(),
        current,
        status: GatewayStatus {
            addresses,
            conditions,
            listeners,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::plane::DataPlane;
    use crate::plane::matching::RequestView;
    use crate::tls::cert::testing::{NOW, ca, leaf};
    use crate::tls::material::Loader;

    const CONTROLLER: &str = "kubebalancer.io/gateway-controller";

    fn at(age_secs: i64) -> serde_json::Value {
        let t = Timestamp::from_second(1_700_000_000 - age_secs).expect("time");
        json!(t.to_string())
    }

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(value).expect("an object"))
    }

    fn class(name: &str, controller: &str) -> Arc<GatewayClass> {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": name, "generation": 1},
            "spec": {"controllerName": controller},
        }))
    }

    fn gateway(ns: &str, name: &str, age: i64, listeners: serde_json::Value) -> Arc<Gateway> {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "generation": 2, "creationTimestamp": at(age)},
            "spec": {"gatewayClassName": "kb", "listeners": listeners},
        }))
    }

    fn route(ns: &str, name: &str, age: i64, spec: serde_json::Value) -> Arc<HTTPRoute> {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "generation": 3, "creationTimestamp": at(age),
                         "resourceVersion": "7"},
            "spec": spec,
        }))
    }

    fn service(ns: &str, name: &str) -> Arc<Service> {
        object(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 3000}]},
        }))
    }

    fn slice(ns: &str, service: &str, ips: &[&str]) -> Arc<EndpointSlice> {
        object(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": ns,
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 3000}],
            "endpoints": ips.iter().map(|ip| json!({
                "addresses": [ip], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": format!("{service}-{ip}"), "namespace": ns},
            })).collect::<Vec<_>>(),
        }))
    }

    fn namespace(name: &str, labels: serde_json::Value) -> Arc<PartialObjectMeta<Namespace>> {
        object(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }))
    }

    fn grant(ns: &str, from_kind: &str, from_ns: &str, to_kind: &str) -> Arc<ReferenceGrant> {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": ns},
            "spec": {"from": [{"group": GROUP, "kind": from_kind, "namespace": from_ns}],
                     "to": [{"group": "", "kind": to_kind}]},
        }))
    }

    /// The resources of one test, and translation over them.
    #[derive(Default)]
    struct Fixture {
        classes: Vec<Arc<GatewayClass>>,
        gateways: Vec<Arc<Gateway>>,
        routes: Vec<Arc<HTTPRoute>>,
        grants: Vec<Arc<ReferenceGrant>>,
        namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
        balancer_clusters: BTreeSet<String>,
        policies: Vec<Arc<BackendTLSPolicy>>,
        addresses: Vec<IpAddr>,
        material: Material,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                classes: vec![class("kb", CONTROLLER), class("theirs", "example.com/x")],
                services: vec![service("infra", "web"), service("infra", "api")],
                slices: vec![
                    slice("infra", "web", &["10.244.1.2", "10.244.1.3"]),
                    slice("infra", "api", &["10.244.1.4"]),
                ],
                addresses: vec![
                    "10.244.0.10".parse().expect("ip"),
                    "10.244.0.11".parse().expect("ip"),
                ],
                ..Fixture::default()
            }
        }

        fn translate(&self) -> Translation {
            self.with_world(|world, settings| {
                translate(
                    world,
                    settings,
                    &self.material,
                    Timestamp::from_second(1_800_000_000).expect("now"),
                )
            })
        }

        /// `f` of the fixture's world, as the controller's settings see it.
        fn with_world<R>(&self, f: impl FnOnce(&World<'_>, &Settings) -> R) -> R {
            let pods = PodAnnotations::new();
            let world = World {
                classes: &self.classes,
                gateways: &self.gateways,
                routes: &self.routes,
                grants: &self.grants,
                namespaces: &self.namespaces,
                services: &self.services,
                slices: &self.slices,
                pods: &pods,
                balancer_clusters: &self.balancer_clusters,
                policies: &self.policies,
            };
            let settings = Settings {
                controller_name: CONTROLLER.to_owned(),
                addresses: self.addresses.clone(),
                service_addresses: Vec::new(),
            };
            f(&world, &settings)
        }
    }

    fn http(name: &str, port: u16, hostname: Option<&str>) -> serde_json::Value {
        let mut l = json!({"name": name, "port": port, "protocol": "HTTP"});
        if let Some(h) = hostname {
            l["hostname"] = json!(h);
        }
        l
    }

    /// (type, status, reason) of each condition.
    fn conditions(c: &[Condition]) -> Vec<(&str, &str, &str)> {
        c.iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    fn route_status<'a>(t: &'a Translation, name: &str) -> &'a HTTPRouteStatus {
        &t.status
            .routes
            .iter()
            .find(|r| r.name == name)
            .expect("route status")
            .status
    }

    fn listener<'a>(t: &'a Translation, gateway: &str, listener: &str) -> &'a ListenerStatus {
        t.status
            .gateways
            .iter()
            .find(|g| g.name == gateway)
            .and_then(|g| g.status.listeners.iter().find(|l| l.name == listener))
            .expect("listener status")
    }

    struct Get<'a> {
        path: &'a str,
        headers: Vec<(&'a str, &'a str)>,
    }

    impl RequestView for Get<'_> {
        fn method(&self) -> &Method {
            &Method::GET
        }
        fn path(&self) -> &str {
            self.path
        }
        fn query(&self) -> Option<&str> {
            None
        }
        fn any_header(&self, name: &HeaderName, test: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            self.headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name.as_str()) && test(v.as_bytes()))
        }
    }

    /// Publishes the translation and says which cluster a request reaches on a front (`None`:
    /// no route; `Some(None)`: a route whose backend cannot be served).
    fn routed(
        t: &Translation,
        address: &str,
        port: u16,
        host: &str,
        path: &str,
        headers: Vec<(&str, &str)>,
    ) -> Option<Option<String>> {
        let plane = DataPlane::new();
        let snapshot = plane.publish_all(t.clusters.clone(), &t.fronts, &Material::default());
        let front = snapshot.front_at(Some(address.parse().expect("ip")), port)?;
        let matched = front
            .routes
            .lookup(host.as_bytes(), &Get { path, headers })?;
        Some(
            matched
                .rule
                .pick()
                .and_then(|b| snapshot.backend(b))
                .map(|c| c.key.clone()),
        )
    }

    #[test]
    fn a_backend_tls_policy_makes_its_service_tls_or_unservable_and_is_reported_per_gateway() {
        let mut f = Fixture::new();
        f.gateways
            .push(gateway("infra", "gw", 100, json!([http("http", 80, None)])));
        f.routes.push(route(
            "infra",
            "r",
            10,
            json!({
                "parentRefs": [{"name": "gw"}],
                "rules": [
                    {"matches": [{"path": {"type": "Exact", "value": "/web"}}],
                     "backendRefs": [{"name": "web", "port": 8080}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/api"}}],
                     "backendRefs": [{"name": "api", "port": 8080}]},
                ],
            }),
        ));
        let policy = |name: &str, service: &str, config_map: &str| -> Arc<BackendTLSPolicy> {
            object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                "metadata": {"name": name, "namespace": "infra", "generation": 2, "creationTimestamp": at(5)},
                "spec": {
                    "targetRefs": [{"group": "", "kind": "Service", "name": service, "sectionName": "http"}],
                    "validation": {
                        "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": config_map}],
                        "hostname": "abc.example.com",
                    },
                },
            }))
        };
        f.policies = vec![policy("web", "web", "ca"), policy("api", "api", "missing")];
        let source = |name: &str| TlsSource::ConfigMap {
            namespace: "infra".into(),
            name: name.into(),
        };
        let mut loader = crate::tls::material::Loader::default();
        loader.offer_ca(
            &source("ca"),
            Ok(crate::tls::cert::testing::ca("Backend CA").pem.as_bytes()),
            0,
        );
        loader.offer_ca(&source("missing"), Err("no such ConfigMap".into()), 0);
        f.material = loader.material();
        let t = f.translate();

        // web: its endpoints over TLS, verified for the policy's hostname against its CA.
        let web = t
            .clusters
            .iter()
            .find(|c| c.name == "web:8080")
            .expect("web's cluster");
        assert!(web.members.iter().all(|m| m.url.starts_with("https://")));
        let upstream = web.tls.upstream.as_ref().expect("upstream TLS");
        assert_eq!(upstream.ca, Some(source("ca")));
        assert_eq!(upstream.server_name.as_deref(), Some("abc.example.com"));
        // api: no usable CA, so no cluster (its share answers 500), the route still resolved.
        assert!(t.clusters.iter().all(|c| c.name != "api:8080"));
        assert!(
            conditions(&route_status(&t, "r").parents[0].conditions).contains(&(
                "ResolvedRefs",
                "True",
                "ResolvedRefs"
            ))
        );
        let reported = |name: &str| {
            let d = t
                .status
                .policies
                .iter()
                .find(|d| d.name == name)
                .expect("a status");
            let [ancestor] = d.status.ancestors.as_slice() else {
                panic!("one ancestor: {:?}", d.status.ancestors)
            };
            assert_eq!(
                (
                    ancestor.ancestor_ref.name.as_str(),
                    ancestor.ancestor_ref.namespace.as_deref()
                ),
                ("gw", Some("infra"))
            );
            assert!(
                ancestor
                    .conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(2))
            );
            conditions(&ancestor.conditions)
                .into_iter()
                .map(|(t, s, r)| (t.to_owned(), s.to_owned(), r.to_owned()))
                .collect::<Vec<_>>()
        };
        let owned = |c: [(&str, &str, &str); 2]| {
            c.map(|(t, s, r)| (t.to_owned(), s.to_owned(), r.to_owned()))
                .to_vec()
        };
        assert_eq!(
            reported("web"),
            owned([
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs")
            ])
        );
        assert_eq!(
            reported("api"),
            owned([
                ("Accepted", "False", "NoValidCACertificate"),
                ("ResolvedRefs", "False", "InvalidCACertificateRef")
            ])
        );
    }

    #[test]
    fn a_gateways_client_certificate_goes_to_its_own_tls_clusters_or_says_why_not() {
        let mut f = Fixture::new();
        let with_client = |name: &str, age: i64, secret: serde_json::Value| -> Arc<Gateway> {
            let mut g = (*gateway("infra", name, age, json!([http("http", 80, None)]))).clone();
            g.spec.tls = Some(
                serde_json::from_value(json!({"backend": {"clientCertificateRef": secret}}))
                    .expect("tls"),
            );
            Arc::new(g)
        };
        f.addresses.push("10.244.0.12".parse().expect("ip"));
        f.gateways = vec![
            with_client(
                "mtls",
                300,
                json!({"group": "", "kind": "Secret", "name": "client"}),
            ),
            gateway("infra", "plain", 200, json!([http("http", 80, None)])),
            with_client(
                "elsewhere",
                100,
                json!({"name": "client", "namespace": "other"}),
            ),
        ];
        for gw in ["mtls", "plain"] {
            f.routes.push(route(
                "infra",
                gw,
                10,
                json!({
                    "parentRefs": [{"name": gw}],
                    "rules": [
                        {"matches": [{"path": {"type": "Exact", "value": "/web"}}],
                         "backendRefs": [{"name": "web", "port": 8080}]},
                        {"matches": [{"path": {"type": "Exact", "value": "/api"}}],
                         "backendRefs": [{"name": "api", "port": 8080}]},
                    ],
                }),
            ));
        }
        f.policies = vec![object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "web", "namespace": "infra", "creationTimestamp": at(5)},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                "validation": {
                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}],
                    "hostname": "abc.example.com",
                },
            },
        }))];
        let ca = crate::tls::cert::testing::ca("Backend CA");
        let leaf = leaf(&ca, &["gateway.example.com"], 5);
        let mut loader = crate::tls::material::Loader::default();
        let client = TlsSource::Secret {
            namespace: "infra".into(),
            name: "client".into(),
        };
        loader.offer_ca(
            &TlsSource::ConfigMap {
                namespace: "infra".into(),
                name: "ca".into(),
            },
            Ok(ca.pem.as_bytes()),
            0,
        );
        loader.offer_keypair(
            &client,
            Ok((leaf.chain.as_bytes(), leaf.key.as_bytes())),
            NOW,
        );
        f.material = loader.material();
        let t = f.translate();

        // The TLS Service port has a cluster per client certificate; the plain one is shared.
        let mut names: Vec<&str> = t.clusters.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["api:8080", "web:8080", "web:8080+infra/client"]);
        let upstream = |name: &str| {
            t.clusters
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.tls.upstream.clone())
        };
        assert_eq!(
            upstream("web:8080+infra/client").and_then(|u| u.client_cert),
            Some(client.clone())
        );
        assert_eq!(upstream("web:8080").map(|u| u.client_cert), Some(None));
        let reach = |address: &str, path: &str| {
            routed(&t, address, 80, "example.com", path, Vec::new()).flatten()
        };
        // mtls is the oldest (10.244.0.10), then plain.
        assert_eq!(
            reach("10.244.0.10", "/web").as_deref(),
            Some("infra/web:8080+infra/client")
        );
        assert_eq!(
            reach("10.244.0.10", "/api").as_deref(),
            Some("infra/api:8080")
        );
        assert_eq!(
            reach("10.244.0.11", "/web").as_deref(),
            Some("infra/web:8080")
        );

        let resolved = |name: &str| {
            let d = t
                .status
                .gateways
                .iter()
                .find(|d| d.name == name)
                .expect("a status");
            conditions(&d.status.conditions)
                .into_iter()
                .find(|(t, _, _)| *t == "ResolvedRefs")
                .map(|(_, s, r)| (s.to_owned(), r.to_owned()))
        };
        let is = |s: &str, r: &str| Some((s.to_owned(), r.to_owned()));
        assert_eq!(resolved("mtls"), is("True", "ResolvedRefs"));
        assert_eq!(resolved("elsewhere"), is("False", "RefNotPermitted"));

        // A Secret that was never loaded (missing, or without tls.crt and tls.key): the Gateway
        // says so, and none of its clusters is made without the certificate.
        let mut loader = crate::tls::material::Loader::default();
        loader.offer_ca(
            &TlsSource::ConfigMap {
                namespace: "infra".into(),
                name: "ca".into(),
            },
            Ok(ca.pem.as_bytes()),
            0,
        );
        loader.offer_keypair(&client, Err("the Secret has no tls.crt".into()), NOW);
        f.material = loader.material();
        let t = f.translate();
        let d = t
            .status
            .gateways
            .iter()
            .find(|d| d.name == "mtls")
            .expect("mtls");
        assert!(
            conditions(&d.status.conditions).contains(&(
                "ResolvedRefs",
                "False",
                "InvalidClientCertificateRef"
            )),
            "{:?}",
            d.status.conditions
        );
        assert!(t.clusters.iter().all(|c| c.name != "web:8080+infra/client"));
        assert_eq!(
            routed(&t, "10.244.0.10", 80, "example.com", "/web", Vec::new()),
            Some(None),
            "500 rather than a connection without the client certificate"
        );
    }

    #[test]
    fn frontend_validation_applies_per_port_to_https_listeners_and_says_which_refs_fail() {
        let mut f = Fixture::new();
        let https = |name: &str, port: u16| {
            json!({"name": name, "port": port, "protocol": "HTTPS", "hostname": format!("{name}.example.org"),
                   "tls": {"certificateRefs": [{"name": "cert"}]}})
        };
        let cm = |name: &str| json!({"group": "", "kind": "ConfigMap", "name": name});
        let mut g = (*gateway(
            "infra",
            "gw",
            100,
            json!([
                https("default", 443),
                https("partial", 7443),
                https("none", 8443),
                https("off", 9443),
                http("http", 80, None),
            ]),
        ))
        .clone();
        g.spec.tls = Some(
            serde_json::from_value(json!({"frontend": {
                "default": {"validation": {"caCertificateRefs": [cm("ca")]}},
                "perPort": [
                    {"port": 7443, "tls": {"validation": {"mode": "AllowInsecureFallback",
                        "caCertificateRefs": [cm("ca"), cm("missing")]}}},
                    {"port": 8443, "tls": {"validation": {"caCertificateRefs": [
                        {"group": "", "kind": "Service", "name": "web"},
                        {"group": "", "kind": "ConfigMap", "name": "ca", "namespace": "other"},
                    ]}}},
                    {"port": 9443, "tls": {}},
                    {"port": 80, "tls": {"validation": {"caCertificateRefs": [cm("missing")]}}},
                ],
            }}))
            .expect("tls"),
        );
        f.gateways.push(Arc::new(g));
        let ca = crate::tls::cert::testing::ca("Clients CA");
        let served = leaf(&ca, &["*.example.org"], 1);
        let mut loader = crate::tls::material::Loader::default();
        let source = |name: &str| TlsSource::ConfigMap {
            namespace: "infra".into(),
            name: name.into(),
        };
        loader.offer_ca(&source("ca"), Ok(ca.pem.as_bytes()), 0);
        loader.offer_ca(&source("missing"), Err("no such ConfigMap".into()), 0);
        loader.offer_keypair(
            &TlsSource::Secret {
                namespace: "infra".into(),
                name: "cert".into(),
            },
            Ok((served.chain.as_bytes(), served.key.as_bytes())),
            NOW,
        );
        f.material = loader.material();
        let t = f.translate();

        let c = |name: &str| {
            conditions(&listener(&t, "gw", name).conditions)
                .into_iter()
                .filter(|(t, _, _)| *t != "Conflicted")
                .map(|(t, s, r)| format!("{t}={s}/{r}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let fine =
            "Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs Programmed=True/Programmed";
        assert_eq!(c("default"), fine);
        assert_eq!(c("off"), fine);
        assert_eq!(c("http"), fine, "HTTP listeners are not validated");
        assert_eq!(
            c("partial"),
            "Accepted=True/Accepted ResolvedRefs=False/InvalidCACertificateRef Programmed=False/Invalid"
        );
        assert_eq!(
            c("none"),
            "Accepted=False/NoValidCACertificate ResolvedRefs=False/InvalidCACertificateKind Programmed=False/Invalid"
        );
        // Served: each port with its validation (or none); not served: the one without a CA.
        let validation = |port: u16| {
            t.fronts
                .iter()
                .find(|f| f.port == port)
                .map(|f| f.client_validation.clone())
        };
        let with = |insecure_fallback: bool| {
            Some(Some(ClientValidationConfig {
                cas: vec![source("ca")],
                insecure_fallback,
            }))
        };
        assert_eq!(validation(443), with(false));
        assert_eq!(validation(7443), with(true));
        assert_eq!(validation(8443), None);
        assert_eq!(validation(9443), Some(None));
        assert_eq!(validation(80), Some(None));
        let gw = &t.status.gateways[0].status.conditions;
        assert!(
            conditions(gw).contains(&(
                "InsecureFrontendValidationMode",
                "True",
                "ConfigurationChanged"
            )),
            "{gw:?}"
        );
        assert!(conditions(gw).contains(&("ResolvedRefs", "False", "ListenersNotResolved")));
        let world_sources = f.with_world(frontend_ca_sources);
        // Only what it may read: not the other namespace's, which no ReferenceGrant allows.
        assert_eq!(
            world_sources,
            [source("ca"), source("missing")].into_iter().collect()
        );
    }

    #[test]
    fn a_route_on_a_gateway_is_served_at_the_gateways_address_and_reported() {
        let mut f = Fixture::new();
        f.gateways
            .push(gateway("infra", "gw", 100, json!([http("http", 80, None)])));
        f.gateways.push(gateway(
            "infra",
            "other-class",
            100,
            json!([http("http", 80, None)]),
        ));
        f.gateways[1] = {
            let mut g = (*f.gateways[1]).clone();
            g.spec.gateway_class_name = "theirs".into();
            Arc::new(g)
        };
        f.routes.push(route(
            "infra",
            "r",
            10,
            json!({
                "parentRefs": [{"name": "gw"}],
                "rules": [
                    {"matches": [{"path": {"type": "Exact", "value": "/one"}}],
                     "backendRefs": [{"name": "web", "port": 8080}]},
                    {"matches": [{"headers": [{"name": "version", "value": "two"}]}],
                     "backendRefs": [{"name": "api", "port": 8080}]},
                ],
            }),
        ));
        let t = f.translate();

        // The class and the Gateway of ours are reported; the other class's Gateway is not.
        assert_eq!(t.status.classes.len(), 1);
        assert_eq!(
            conditions(&t.status.classes[0].status.conditions),
            [("Accepted", "True", "Accepted")]
        );
        assert_eq!(
            t.status.classes[0].status.conditions[0].observed_generation,
            Some(1)
        );
        let names: Vec<&str> = t.status.gateways.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["gw"]);
        let gw = &t.status.gateways[0].status;
        assert_eq!(
            gw.addresses,
            [GatewayAddress {
                type_: Some("IPAddress".into()),
                value: "10.244.0.10".into()
            }]
        );
        assert_eq!(
            conditions(&gw.conditions),
            [
                ("Accepted", "True", "Accepted"),
                ("Programmed", "True", "Programmed"),
                ("ResolvedRefs", "True", "ResolvedRefs")
            ]
        );
        assert!(
            gw.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
        let l = listener(&t, "gw", "http");
        assert_eq!(l.attached_routes, 1);
        assert_eq!(l.supported_kinds, [http_route_kind()]);
        assert_eq!(
            conditions(&l.conditions),
            [
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs"),
                ("Conflicted", "False", "NoConflicts"),
                ("Programmed", "True", "Programmed"),
            ]
        );
        let parents = &route_status(&t, "r").parents;
        assert_eq!(parents.len(), 1);
        assert_eq!(parents[0].controller_name, CONTROLLER);
        assert_eq!(
            parents[0].parent_ref,
            ParentReference {
                group: Some(GROUP.into()),
                kind: Some("Gateway".into()),
                namespace: Some("infra".into()),
                name: "gw".into(),
                section_name: None,
                port: None,
            }
        );
        assert_eq!(
            conditions(&parents[0].conditions),
            [
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs")
            ]
        );
        assert!(
            parents[0]
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );

        // One cluster per Service port, with the Service's endpoints.
        let clusters: Vec<(String, usize)> = t
            .clusters
            .iter()
            .map(|c| (c.key(), c.members.len()))
            .collect();
        assert_eq!(
            clusters,
            [
                ("infra/api:8080".to_owned(), 1),
                ("infra/web:8080".to_owned(), 2)
            ]
        );
        assert_eq!(t.clusters[1].members[0].url, "http://10.244.1.2:3000");
        assert!(t.clusters.iter().all(|c| c.routes.is_empty()));

        // Served at the Gateway's address, by path and header.
        let at = |path, headers| routed(&t, "10.244.0.10", 80, "any.example", path, headers);
        assert_eq!(at("/one", vec![]), Some(Some("infra/web:8080".into())));
        assert_eq!(at("/one/x", vec![]), None);
        assert_eq!(
            at("/x", vec![("Version", "two")]),
            Some(Some("infra/api:8080".into()))
        );
        assert_eq!(routed(&t, "10.244.0.11", 80, "h", "/one", vec![]), None);
    }

    #[test]
    fn each_gateway_has_an_address_of_its_own_and_keeps_it() {
        let mut f = Fixture::new();
        f.addresses.push("10.244.0.12".parse().expect("ip"));
        let mut old = (*gateway("infra", "old", 100, json!([http("http", 80, None)]))).clone();
        old.status = Some(GatewayStatus {
            addresses: vec![GatewayAddress {
                type_: Some("IPAddress".into()),
                value: "10.244.0.12".into(),
            }],
            ..GatewayStatus::default()
        });
        f.gateways.push(Arc::new(old));
        f.gateways.push(gateway(
            "infra",
            "young",
            10,
            json!([http("http", 80, None)]),
        ));
        f.gateways.push(gateway(
            "infra",
            "middle",
            50,
            json!([http("http", 80, None)]),
        ));
        let t = f.translate();
        let addresses: Vec<(&str, &str)> = t
            .status
            .gateways
            .iter()
            .map(|g| (g.name.as_str(), g.status.addresses[0].value.as_str()))
            .collect();
        assert_eq!(
            addresses,
            [
                ("old", "10.244.0.12"),
                ("middle", "10.244.0.10"),
                ("young", "10.244.0.11")
            ]
        );
        // Two routes on two Gateways, both for every host and path: each keeps its own.
        f.routes.push(route("infra", "to-old", 5, json!({"parentRefs": [{"name": "old"}], "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}]})));
        f.routes.push(route("infra", "to-young", 5, json!({"parentRefs": [{"name": "young"}], "rules": [{"backendRefs": [{"name": "api", "port": 8080}]}]})));
        let t = f.translate();
        assert_eq!(
            routed(&t, "10.244.0.12", 80, "h", "/", vec![]),
            Some(Some("infra/web:8080".into()))
        );
        assert_eq!(
            routed(&t, "10.244.0.11", 80, "h", "/", vec![]),
            Some(Some("infra/api:8080".into()))
        );
        assert_eq!(routed(&t, "10.244.0.10", 80, "h", "/", vec![]), None);
        // More Gateways than addresses: the last address is shared by those left over.
        f.addresses.truncate(1);
        let t = f.translate();
        let addresses: Vec<&str> = t
            .status
            .gateways
            .iter()
            .map(|g| g.status.addresses[0].value.as_str())
            .collect();
        assert_eq!(addresses, ["10.244.0.10", "10.244.0.10", "10.244.0.10"]);
        // No pool: every address, and the data plane's Service's addresses in status.
        f.addresses.clear();
        let t = f.translate();
        assert_eq!(t.fronts.len(), 1);
        assert_eq!((t.fronts[0].address, t.fronts[0].port), (None, 80));
        assert_eq!(
            conditions(&t.status.gateways[0].status.conditions)[1],
            ("Programmed", "False", "AddressNotAssigned")
        );
    }

    #[test]
    fn a_gateway_that_asks_for_an_address_gets_it_or_says_why() {
        let mut f = Fixture::new();
        f.addresses.push("10.244.0.12".parse().expect("ip"));
        let asking = |name: &str, age: i64, addresses: serde_json::Value| {
            let mut g = (*gateway("infra", name, age, json!([http("http", 8080, None)]))).clone();
            g.spec.addresses = serde_json::from_value(addresses).expect("addresses");
            Arc::new(g)
        };
        let invalid = json!({"type": "test/fake-invalid-type", "value": "fake address"});
        let unusable = json!({"type": "IPAddress", "value": "10.244.0.99"});
        let usable = json!({"type": "IPAddress", "value": "10.244.0.10"});
        let plain = gateway("infra", "plain", 100, json!([http("http", 80, None)]));
        let of = |t: &Translation, name: &str| {
            let g = t
                .status
                .gateways
                .iter()
                .find(|g| g.name == name)
                .expect("status");
            let addresses: Vec<String> =
                g.status.addresses.iter().map(|a| a.value.clone()).collect();
            let conditions: Vec<(String, String, String)> = conditions(&g.status.conditions)
                .into_iter()
                .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
                .collect();
            (addresses, conditions[..2].to_vec())
        };
        let c = |t: &str, s: &str, r: &str| (t.to_owned(), s.to_owned(), r.to_owned());
        let served = |t: &Translation| -> Vec<(Option<IpAddr>, u16)> {
            t.fronts.iter().map(|f| (f.address, f.port)).collect()
        };
        let ip = |text: &str| Some(text.parse::<IpAddr>().expect("ip"));

        // An address of a type it does not know: not accepted, not served.
        f.gateways = vec![
            plain.clone(),
            asking("static", 50, json!([invalid, unusable, usable])),
        ];
        let t = f.translate();
        assert_eq!(
            of(&t, "static"),
            (
                vec![],
                vec![
                    c("Accepted", "False", "UnsupportedAddress"),
                    c("Programmed", "False", "Invalid")
                ]
            )
        );
        assert_eq!(served(&t), [(ip("10.244.0.10"), 80)]);
        // An IP outside the pool: accepted, not programmed, not served.
        f.gateways = vec![
            plain.clone(),
            asking("static", 50, json!([unusable, usable])),
        ];
        let t = f.translate();
        assert_eq!(
            of(&t, "static"),
            (
                vec![],
                vec![
                    c("Accepted", "True", "Accepted"),
                    c("Programmed", "False", "AddressNotUsable")
                ]
            )
        );
        assert_eq!(served(&t), [(ip("10.244.0.10"), 80)]);
        // The one it asks for, although an older Gateway would have had it first.
        f.gateways = vec![plain.clone(), asking("static", 50, json!([usable]))];
        let t = f.translate();
        assert_eq!(
            of(&t, "static"),
            (
                vec!["10.244.0.10".to_owned()],
                vec![
                    c("Accepted", "True", "Accepted"),
                    c("Programmed", "True", "Programmed")
                ]
            )
        );
        assert_eq!(of(&t, "plain").0, ["10.244.0.11"]);
        assert_eq!(
            served(&t),
            [(ip("10.244.0.10"), 8080), (ip("10.244.0.11"), 80)]
        );
        // A younger Gateway asking for the same address does not get it.
        f.gateways.push(asking("younger", 10, json!([usable])));
        let t = f.translate();
        assert_eq!(
            of(&t, "younger").1[1],
            c("Programmed", "False", "AddressNotUsable")
        );
        assert_eq!(of(&t, "static").0, ["10.244.0.10"]);
        // Gateways left over share the last address no Gateway asked for.
        f.addresses.truncate(2);
        f.gateways = vec![
            plain.clone(),
            asking(
                "static",
                50,
                json!([{"type": "IPAddress", "value": "10.244.0.11"}]),
            ),
            gateway("infra", "third", 20, json!([http("http", 81, None)])),
        ];
        let t = f.translate();
        assert_eq!(of(&t, "static").0, ["10.244.0.11"]);
        assert_eq!(of(&t, "plain").0, ["10.244.0.10"]);
        assert_eq!(of(&t, "third").0, ["10.244.0.10"]);
        // An IPAddress without a value asks for none in particular.
        f.gateways = vec![asking("any", 50, json!([{"type": "IPAddress"}]))];
        let t = f.translate();
        assert_eq!(of(&t, "any").0, ["10.244.0.10"]);
    }

    #[test]
    fn parent_refs_that_attach_nowhere_say_why() {
        let mut f = Fixture::new();
        f.namespaces.push(namespace("web", json!({"team": "web"})));
        f.namespaces
            .push(namespace("infra", json!({"team": "infra"})));
        f.gateways.push(gateway("infra", "gw", 100, json!([
            {"name": "same", "port": 80, "protocol": "HTTP", "hostname": "foo.example.com"},
            {"name": "selected", "port": 8080, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "web"}}}}},
        ])));
        let backend = json!([{"backendRefs": [{"name": "web", "port": 8080}]}]);
        f.routes.push(route(
            "infra",
            "no-section",
            10,
            json!({"parentRefs": [{"name": "gw", "sectionName": "nope"}], "rules": backend}),
        ));
        f.routes.push(route(
            "infra",
            "no-port",
            10,
            json!({"parentRefs": [{"name": "gw", "port": 81}], "rules": backend}),
        ));
        f.routes.push(route("other", "wrong-namespace", 10, json!({"parentRefs": [{"name": "gw", "namespace": "infra", "sectionName": "same"}], "rules": []})));
        f.routes.push(route("infra", "wrong-host", 10, json!({"parentRefs": [{"name": "gw", "sectionName": "same"}], "hostnames": ["bar.example.com"], "rules": backend})));
        f.routes.push(route(
            "web",
            "selected",
            10,
            json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": []}),
        ));
        f.routes.push(route("infra", "elsewhere", 10, json!({"parentRefs": [{"name": "missing"}, {"name": "gw", "kind": "Service", "group": ""}], "rules": backend})));
        let t = f.translate();
        let accepted = |name| conditions(&route_status(&t, name).parents[0].conditions)[0];
        assert_eq!(
            accepted("no-section"),
            ("Accepted", "False", "NoMatchingParent")
        );
        assert_eq!(
            accepted("no-port"),
            ("Accepted", "False", "NoMatchingParent")
        );
        assert_eq!(
            accepted("wrong-namespace"),
            ("Accepted", "False", "NotAllowedByListeners")
        );
        assert_eq!(
            accepted("wrong-host"),
            ("Accepted", "False", "NoMatchingListenerHostname")
        );
        assert_eq!(accepted("selected"), ("Accepted", "True", "Accepted"));
        // Not accepted, its references are still reported.
        assert_eq!(
            conditions(&route_status(&t, "wrong-namespace").parents[0].conditions)[1],
            ("ResolvedRefs", "True", "ResolvedRefs")
        );
        // Parents that are not Gateways of ours get no entry from kube-balancer.
        assert!(t.status.routes.iter().all(|r| r.name != "elsewhere"));
        assert_eq!(listener(&t, "gw", "same").attached_routes, 0);
        assert_eq!(listener(&t, "gw", "selected").attached_routes, 1);
    }

    #[test]
    fn backends_not_found_not_permitted_or_of_another_kind_get_500s_and_say_why() {
        let mut f = Fixture::new();
        f.services.push(service("backend", "remote"));
        f.slices.push(slice("backend", "remote", &["10.244.1.9"]));
        f.balancer_clusters.insert("infra/shop".to_owned());
        f.gateways
            .push(gateway("infra", "gw", 100, json!([http("http", 80, None)])));
        let rule = |path: &str, backend: serde_json::Value| {
            json!({
                "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                "backendRefs": [backend],
            })
        };
        f.routes.push(route(
            "infra",
            "missing",
            10,
            json!({"parentRefs": [{"name": "gw"}], "rules": [
                rule("/missing", json!({"name": "nope", "port": 8080})),
                rule("/ok", json!({"name": "web", "port": 8080})),
            ]}),
        ));
        f.routes.push(route(
            "infra",
            "kind",
            9,
            json!({"parentRefs": [{"name": "gw"}], "rules": [
                rule("/kind", json!({"group": "example.com", "kind": "Thing", "name": "web"})),
            ]}),
        ));
        f.routes.push(route(
            "infra",
            "remote",
            8,
            json!({"parentRefs": [{"name": "gw"}], "rules": [
                rule("/remote", json!({"name": "remote", "namespace": "backend", "port": 8080})),
            ]}),
        ));
        f.routes.push(route("infra", "balancer", 7, json!({"parentRefs": [{"name": "gw"}], "rules": [
            rule("/shop", json!({"group": "kubebalancer.io", "kind": "BalancerCluster", "name": "shop"})),
            rule("/gone", json!({"group": "kubebalancer.io", "kind": "BalancerCluster", "name": "gone"})),
        ]})));
        let t = f.translate();
        let resolved = |name| conditions(&route_status(&t, name).parents[0].conditions)[1];
        assert_eq!(
            resolved("missing"),
            ("ResolvedRefs", "False", "BackendNotFound")
        );
        assert_eq!(resolved("kind"), ("ResolvedRefs", "False", "InvalidKind"));
        assert_eq!(
            resolved("remote"),
            ("ResolvedRefs", "False", "RefNotPermitted")
        );
        assert_eq!(
            resolved("balancer"),
            ("ResolvedRefs", "False", "BackendNotFound")
        );
        // Still accepted: their good rules serve, the others answer 500.
        let at = |path| routed(&t, "10.244.0.10", 80, "h", path, vec![]);
        assert_eq!(at("/ok"), Some(Some("infra/web:8080".into())));
        assert_eq!(at("/missing"), Some(None));
        assert_eq!(at("/kind"), Some(None));
        assert_eq!(at("/remote"), Some(None));
        assert_eq!(at("/gone"), Some(None));
        assert_eq!(
            at("/shop"),
            Some(None),
            "a BalancerCluster is a cluster of its own, published by the controller"
        );
        assert!(
            t.fronts[0].listeners[0]
                .routes
                .iter()
                .any(|r| r.backends[0].cluster.as_deref() == Some("infra/shop"))
        );
        assert!(t.clusters.iter().all(|c| c.namespace != "backend"));
        // A ReferenceGrant from the routes' namespace lets it through.
        f.grants
            .push(grant("backend", "HTTPRoute", "infra", "Service"));
        let t = f.translate();
        assert_eq!(
            conditions(&route_status(&t, "remote").parents[0].conditions)[1],
            ("ResolvedRefs", "True", "ResolvedRefs")
        );
        assert_eq!(
            routed(&t, "10.244.0.10", 80, "h", "/remote", vec![]),
            Some(Some("backend/remote:8080".into()))
        );
        // A grant for Gateways, or for another namespace, does not.
        f.grants = vec![
            grant("backend", "Gateway", "infra", "Service"),
            grant("infra", "HTTPRoute", "infra", "Service"),
        ];
        let t = f.translate();
        assert_eq!(
            conditions(&route_status(&t, "remote").parents[0].conditions)[1],
            ("ResolvedRefs", "False", "RefNotPermitted")
        );
    }

    #[test]
    fn listeners_report_protocols_kinds_conflicts_and_certificates() {
        let authority = ca("Test CA");
        let cert = leaf(&authority, &["secure.example.com"], 1);
        let mut loader = Loader::default();
        let source = |ns: &str, name: &str| TlsSource::Secret {
            namespace: ns.into(),
            name: name.into(),
        };
        loader.offer_keypair(
            &source("infra", "good"),
            Ok((cert.chain.as_bytes(), cert.key.as_bytes())),
            NOW,
        );
        loader.offer_keypair(
            &source("infra", "bad"),
            Ok((b"Hello".as_slice(), b"Hello".as_slice())),
            NOW,
        );
        loader.offer_keypair(&source("infra", "gone"), Err("no such Secret".into()), NOW);
        let mut f = Fixture::new();
        f.material = loader.material();
        let https = |name: &str, secret: serde_json::Value| {
            json!({
                "name": name, "port": 443, "protocol": "HTTPS", "hostname": format!("{name}.example.com"),
                "tls": {"certificateRefs": [secret]},
            })
        };
        f.gateways.push(gateway("infra", "gw", 100, json!([
            http("http", 80, None),
            {"name": "udp", "port": 53, "protocol": "UDP"},
            {"name": "kinds", "port": 8080, "protocol": "HTTP",
             "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}, {"kind": "HTTPRoute"}]}},
            {"name": "tls-on-80", "port": 80, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "good"}]}},
            http("http-again", 80, None),
            https("secure", json!({"name": "good"})),
            https("bad", json!({"name": "bad"})),
            https("gone", json!({"name": "gone"})),
            https("kind", json!({"kind": "ConfigMap", "name": "good"})),
            https("elsewhere", json!({"name": "good", "namespace": "certs"})),
        ])));
        let t = f.translate();
        let of = |name| {
            let l = listener(&t, "gw", name);
            let c = conditions(&l.conditions);
            let find = |type_: &str| {
                c.iter()
                    .find(|(t, _, _)| *t == type_)
                    .map(|(_, s, r)| (*s, *r))
                    .expect("condition")
            };
            (
                find("Accepted"),
                find("ResolvedRefs"),
                find("Programmed"),
                l.supported_kinds.len(),
            )
        };
        assert_eq!(
            of("http"),
            (
                ("True", "Accepted"),
                ("True", "ResolvedRefs"),
                ("True", "Programmed"),
                1
            )
        );
        assert_eq!(
            of("udp"),
            (
                ("False", "UnsupportedProtocol"),
                ("True", "ResolvedRefs"),
                ("False", "Invalid"),
                0
            )
        );
        assert_eq!(
            of("kinds"),
            (
                ("True", "Accepted"),
                ("False", "InvalidRouteKinds"),
                ("False", "Invalid"),
                1
            )
        );
        assert_eq!(
            of("tls-on-80"),
            (
                ("False", "ProtocolConflict"),
                ("True", "ResolvedRefs"),
                ("False", "Invalid"),
                1
            )
        );
        assert_eq!(
            of("http-again"),
            (
                ("False", "HostnameConflict"),
                ("True", "ResolvedRefs"),
                ("False", "Invalid"),
                1
            )
        );
        assert_eq!(
            of("secure"),
            (
                ("True", "Accepted"),
                ("True", "ResolvedRefs"),
                ("True", "Programmed"),
                1
            )
        );
        assert_eq!(of("bad").1, ("False", "InvalidCertificateRef"));
        assert_eq!(of("gone").1, ("False", "InvalidCertificateRef"));
        assert_eq!(of("kind").1, ("False", "InvalidCertificateRef"));
        assert_eq!(of("elsewhere").1, ("False", "RefNotPermitted"));
        let gw = &t.status.gateways[0].status;
        assert_eq!(
            conditions(&gw.conditions)[0],
            ("Accepted", "True", "ListenersNotValid")
        );
        // The HTTPS front serves the listener whose certificate loaded, with it.
        let front = t
            .fronts
            .iter()
            .find(|f| f.port == 443)
            .expect("the HTTPS front");
        assert!(front.tls);
        let hosts: Vec<Option<&str>> = front
            .listeners
            .iter()
            .map(|l| l.hostname.as_deref())
            .collect();
        assert_eq!(hosts, [Some("secure.example.com")]);
        assert_eq!(front.listeners[0].certificates, [source("infra", "good")]);
        let plane = DataPlane::new();
        let snapshot = plane.publish_all(Vec::new(), &t.fronts, &f.material);
        let served = snapshot
            .front_at(Some("10.244.0.10".parse().expect("ip")), 443)
            .expect("front");
        assert!(
            served
                .certificates
                .resolve_key(Some("secure.example.com"))
                .is_some()
        );
        assert!(
            served
                .certificates
                .resolve_key(Some("other.example.com"))
                .is_none()
        );
        // The Secrets to watch: those of HTTPS listeners that may read them.
        let sources: Vec<String> = f
            .with_world(certificate_sources)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            sources,
            ["secret infra/bad", "secret infra/gone", "secret infra/good"]
        );
        // A ReferenceGrant lets the Gateway read the Secret of another namespace.
        f.grants.push(grant("certs", "Gateway", "infra", "Secret"));
        let t = f.translate();
        assert_eq!(
            conditions(&listener(&t, "gw", "elsewhere").conditions)[1],
            ("ResolvedRefs", "False", "InvalidCertificateRef")
        );
    }

    #[test]
    fn older_routes_come_first_and_hostnames_narrow_to_the_listeners() {
        let mut f = Fixture::new();
        f.gateways.push(gateway(
            "infra",
            "gw",
            100,
            json!([
                http("wild", 80, Some("*.example.com")),
                http("exact", 80, Some("very.specific.com")),
            ]),
        ));
        let to = |svc: &str| json!([{"backendRefs": [{"name": svc, "port": 8080}]}]);
        f.routes.push(route("infra", "young", 1, json!({"parentRefs": [{"name": "gw"}], "hostnames": ["a.example.com"], "rules": to("api")})));
        f.routes.push(route("infra", "old", 50, json!({"parentRefs": [{"name": "gw"}], "hostnames": ["a.example.com", "b.other.com"], "rules": to("web")})));
        f.routes.push(route("infra", "narrowed", 20, json!({"parentRefs": [{"name": "gw"}], "hostnames": ["*.specific.com"], "rules": to("api")})));
        let t = f.translate();
        assert_eq!(
            routed(&t, "10.244.0.10", 80, "a.example.com", "/", vec![]),
            Some(Some("infra/web:8080".into()))
        );
        assert_eq!(
            routed(&t, "10.244.0.10", 80, "very.specific.com", "/", vec![]),
            Some(Some("infra/api:8080".into()))
        );
        assert_eq!(
            routed(&t, "10.244.0.10", 80, "b.other.com", "/", vec![]),
            None
        );
        assert_eq!(
            routed(&t, "10.244.0.10", 80, "x.specific.com", "/", vec![]),
            None
        );
        assert_eq!(listener(&t, "gw", "wild").attached_routes, 2);
        assert_eq!(listener(&t, "gw", "exact").attached_routes, 1);
    }

    #[test]
    fn hostnames_intersect_as_the_gateway_api_says() {
        let r = |hosts: &[&str]| hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        assert_eq!(intersect(None, &r(&["a.com"])), Some(r(&["a.com"])));
        assert_eq!(intersect(Some("a.com"), &[]), Some(Vec::new()));
        assert_eq!(
            intersect(Some("a.com"), &r(&["b.com", "a.com"])),
            Some(r(&["a.com"]))
        );
        assert_eq!(
            intersect(
                Some("*.wildcard.io"),
                &r(&["wildcard.io", "foo.wildcard.io", "foo.bar.wildcard.io"])
            ),
            Some(r(&["foo.wildcard.io", "foo.bar.wildcard.io"]))
        );
        assert_eq!(
            intersect(Some("very.specific.com"), &r(&["*.specific.com"])),
            Some(r(&["very.specific.com"]))
        );
        assert_eq!(
            intersect(Some("*.example.com"), &r(&["*.a.example.com"])),
            Some(r(&["*.a.example.com"]))
        );
        assert_eq!(
            intersect(Some("*.a.example.com"), &r(&["*.example.com"])),
            Some(r(&["*.a.example.com"]))
        );
        assert_eq!(
            intersect(Some("*.example.com"), &r(&["example.com", "*.other.com"])),
            None
        );
        assert_eq!(intersect(Some("a.com"), &r(&["*.a.com"])), None);
    }

    #[test]
    fn other_controllers_entries_stay_and_unchanged_conditions_keep_their_time() {
        let mut f = Fixture::new();
        f.gateways
            .push(gateway("infra", "gw", 100, json!([http("http", 80, None)])));
        let mut r = (*route(
            "infra",
            "r",
            10,
            json!({"parentRefs": [{"name": "gw"}, {"name": "mesh", "kind": "Service", "group": ""}],
            "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}]}),
        ))
        .clone();
        let earlier = Time(Timestamp::from_second(1_600_000_000).expect("time"));
        let theirs = RouteParentStatus {
            parent_ref: ParentReference {
                group: Some("".into()),
                kind: Some("Service".into()),
                name: "mesh".into(),
                ..ParentReference::default()
            },
            controller_name: "example.com/mesh".into(),
            conditions: Vec::new(),
        };
        f.routes.push(Arc::new(r.clone()));
        let first = f.translate();
        let mut ours = route_status(&first, "r").parents[0].clone();
        for c in &mut ours.conditions {
            c.last_transition_time = earlier.clone();
        }
        r.status = Some(HTTPRouteStatus {
            parents: vec![theirs.clone(), ours.clone()],
        });
        f.routes = vec![Arc::new(r)];
        let t = f.translate();
        let desired = &t.status.routes[0];
        assert_eq!(desired.status.parents, [theirs, ours]);
        assert!(!desired.changed(), "nothing to write");
    }

    #[test]
    fn rule_filters_and_matches_become_the_planes() {
        let mut f = Fixture::new();
        f.gateways
            .push(gateway("infra", "gw", 100, json!([http("http", 80, None)])));
        f.routes.push(route("infra", "r", 10, json!({"parentRefs": [{"name": "gw"}], "rules": [{
            "matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9]+"}, "method": "POST",
                         "queryParams": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}],
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Set", "value": "s"}], "add": [{"name": "X-Add", "value": "a"}], "remove": ["X-Gone"]}},
                {"type": "RequestRedirect", "requestRedirect": {"hostname": "example.org", "statusCode": 301}},
            ],
            "timeouts": {"request": "10s", "backendRequest": "0s"},
        }]})));
        f.routes.push(route(
            "infra",
            "bad",
            9,
            json!({"parentRefs": [{"name": "gw"}], "rules": [{
                "matches": [{"path": {"type": "RegularExpression", "value": "(unclosed"}}],
            }]}),
        ));
        let t = f.translate();
        let rule = &t.fronts[0].listeners[0].routes[0];
        assert_eq!(rule.name, "httproute infra/r rule 0");
        assert_eq!(rule.matches[0].method, Some(Method::POST));
        assert_eq!(
            rule.matches[0].query.len(),
            1,
            "the first of a repeated name counts"
        );
        assert_eq!(rule.request_timeout, Some(Duration::from_secs(10)));
        assert_eq!(rule.backend_timeout, None);
        assert!(rule.backends.is_empty());
        let headers = rule
            .filters
            .request_headers
            .as_ref()
            .expect("a header modifier");
        assert_eq!(
            (headers.set.len(), headers.add.len(), headers.remove.len()),
            (1, 1, 1)
        );
        let redirect = rule.filters.redirect.as_ref().expect("a redirect");
        assert_eq!(
            (redirect.hostname.as_deref(), redirect.status),
            (Some("example.org"), 301)
        );
        assert_eq!(
            t.fronts[0].listeners[0].routes.len(),
            1,
            "the bad route is not served"
        );
        assert_eq!(
            conditions(&route_status(&t, "bad").parents[0].conditions)[0],
            ("Accepted", "False", "UnsupportedValue")
        );
    }

    /// A rule's `retry` (the experimental channel's) becomes the rule's retries as the failover
    /// loop takes them: its codes sorted and once each, its attempts, its backoff; without
    /// `attempts`, one; a `0s` backoff is none.
    #[test]
    fn a_rules_retry_becomes_the_planes() {
        let mut f = Fixture::new();
        f.gateways
            .push(gateway("infra", "gw", 100, json!([http("http", 80, None)])));
        f.routes.push(route(
            "infra",
            "r",
            10,
            json!({"parentRefs": [{"name": "gw"}], "rules": [
                {"matches": [{"path": {"value": "/a"}}],
                 "retry": {"codes": [504, 500, 502, 500], "attempts": 3, "backoff": "100ms"}},
                {"matches": [{"path": {"value": "/b"}}], "retry": {"backoff": "0s"}},
                {"matches": [{"path": {"value": "/c"}}]},
            ]}),
        ));
        let t = f.translate();
        let routes = &t.fronts[0].listeners[0].routes;
        let retries: Vec<Option<Retry>> = routes.iter().map(|r| r.retry.clone()).collect();
        assert_eq!(
            retries,
            [
                Some(Retry {
                    codes: vec![500, 502, 504],
                    attempts: 3,
                    backoff: Some(Duration::from_millis(100)),
                }),
                Some(Retry {
                    codes: Vec::new(),
                    attempts: 1,
                    backoff: None,
                }),
                None,
            ]
        );
    }

    /// What the CRD refuses, should a route carry it anyway (an older CRD, a rule written past
    /// validation), is not served: the route is refused with why.
    #[test]
    fn a_retry_the_plane_cannot_take_refuses_the_route() {
        for (retry, why) in [
            (
                json!({"codes": [200]}),
                "retry code 200 is not an error status",
            ),
            (json!({"attempts": 0}), "retry attempts 0 is not at least 1"),
            (json!({"backoff": "soon"}), "duration \"soon\""),
        ] {
            let mut f = Fixture::new();
            f.gateways
                .push(gateway("infra", "gw", 100, json!([http("http", 80, None)])));
            f.routes.push(route(
                "infra",
                "r",
                10,
                json!({"parentRefs": [{"name": "gw"}], "rules": [{"retry": retry}]}),
            ));
            let t = f.translate();
            assert!(t.fronts[0].listeners[0].routes.is_empty(), "{retry}");
            let parent = &route_status(&t, "r").parents[0];
            assert_eq!(
                conditions(&parent.conditions)[0],
                ("Accepted", "False", "UnsupportedValue"),
                "{retry}"
            );
            let accepted = &parent.conditions[0];
            assert!(
                accepted.message.contains(why),
                "{retry}: {}",
                accepted.message
            );
        }
    }
}
