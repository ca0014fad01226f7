//! Fronts: the ports the data plane serves besides its own `--listen` and `--listen-tls`, each
//! with its routes: a Gateway's listeners (one front per address and listener port). A source
//! gives them with cluster keys ([`FrontConfig`]); publishing resolves the keys and builds each
//! front's route table and, for HTTPS, its listeners' certificates ([`Front`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::filters::Filters;
use super::matching::RequestMatch;
use super::routes::{Backend, ListenerRoutes, Retry, RouteEntry, RouteTable, Rule, Shadowed};
use crate::discovery::TlsSource;
use crate::tls::ListenerCertificates;
use crate::tls::material::Material;
use rustls::server::danger::ClientCertVerifier;

/// A port's routes, as a source gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontConfig {
    /// The address it listens on (a Gateway's); `None`: every address of the host.
    pub address: Option<IpAddr>,
    pub port: u16,
    /// HTTPS: the front terminates TLS (certificates from the snapshot's TLS state).
    pub tls: bool,
    pub listeners: Vec<ListenerConfig>,
    /// HTTPS: how clients' certificates are validated (none: no certificate is asked for).
    pub client_validation: Option<ClientValidationConfig>,
}

/// A front's validation of clients' certificates (a Gateway's `tls.frontend`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientValidationConfig {
    /// CA bundles (`ca.crt`) a client's certificate must chain to (any of them).
    pub cas: Vec<TlsSource>,
    /// `AllowInsecureFallback`: clients without a valid certificate are let through.
    pub insecure_fallback: bool,
}

/// One listener of a port: its hostname (none: any) and the routes attached to it, in the order
/// of precedence among equals (oldest route first, then namespace/name, then rule order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerConfig {
    pub hostname: Option<String>,
    pub routes: Vec<RouteConfig>,
    /// HTTPS: where its certificates come from, in the order its Gateway names them (the first
    /// one loaded is served to the handshakes whose name selects this listener).
    pub certificates: Vec<TlsSource>,
}

/// One route rule: which requests (any of `matches` on any of `hostnames`), what is done to
/// them, and where they go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteConfig {
    /// For logs, metrics and status: `httproute shop/web rule 0`.
    pub name: String,
    /// None: every host the listener takes.
    pub hostnames: Vec<String>,
    /// None: everything.
    pub matches: Vec<RequestMatch>,
    pub filters: Filters,
    pub backends: Vec<BackendConfig>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

/// A weighted backend of a route rule: a cluster by key, or `None` for one that cannot be served
/// (its share of requests gets 500).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendConfig {
    pub cluster: Option<String>,
    pub weight: u32,
    pub filters: Filters,
}

/// A built front, served from a snapshot.
#[derive(Debug)]
pub struct Front {
    pub address: Option<IpAddr>,
    pub port: u16,
    pub tls: bool,
    pub routes: RouteTable,
    /// HTTPS: the certificate each handshake gets, by the listener its name selects.
    pub certificates: ListenerCertificates,
    /// HTTPS: how clients' certificates are verified (none: no certificate is asked for).
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl Front {
    /// Builds a front, the cluster keys resolved by `index` (a key it does not know is a backend
    /// that cannot be served). Also gives the routes wholly shadowed by earlier ones.
    pub fn build(config: &FrontConfig, index: &HashMap<&str, usize>) -> (Front, Vec<Shadowed>) {
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerRoutes {
                hostname: l.hostname.clone(),
                routes: l.routes.iter().map(|r| entry(r, index)).collect(),
            })
            .collect();
        let (routes, shadowed) = RouteTable::build(listeners);
        let front = Front {
            address: config.address,
            port: config.port,
            tls: config.tls,
            routes,
            certificates: ListenerCertificates::default(),
            client_verifier: None,
        };
        (front, shadowed)
    }

    /// [`Front::build`], with the certificates of its HTTPS listeners from `material`.
    pub fn build_with(
        config: &FrontConfig,
        index: &HashMap<&str, usize>,
        material: &Material,
    ) -> (Front, Vec<Shadowed>) {
        let (mut front, shadowed) = Front::build(config, index);
        if config.tls {
            front.certificates = ListenerCertificates::build(
                config
                    .listeners
                    .iter()
                    .map(|l| (l.hostname.as_deref(), l.certificates.as_slice())),
                material,
            );
            front.client_verifier = config
                .client_validation
                .as_ref()
                .map(|v| client_verifier(v, material));
        }
        (front, shadowed)
    }
}

/// The verifier of a front's clients: the CA bundles of `validation` loaded in `material`. One
/// that cannot be built (no CA loaded) refuses every client rather than asking none.
fn client_verifier(
    validation: &ClientValidationConfig,
    material: &Material,
) -> Arc<dyn ClientCertVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    for source in &validation.cas {
        if let Some(bundle) = material.cas.get(source).and_then(|l| l.current.as_ref()) {
            roots.roots.extend(bundle.roots.roots.iter().cloned());
        }
    }
    match crate::tls::client_auth::client_verifier(roots, validation.insecure_fallback) {
        Ok(verifier) => verifier,
        Err(e) => {
            tracing::warn!(error = %e, "no CA certificate to validate clients with: every client is refused");
            Arc::new(crate::tls::client_auth::Refuse)
        }
    }
}

fn entry(route: &RouteConfig, index: &HashMap<&str, usize>) -> RouteEntry {
    let backends = route
        .backends
        .iter()
        .map(|b| Backend {
            cluster: b.cluster.as_deref().and_then(|key| index.get(key).copied()),
            weight: b.weight,
            filters: b.filters.clone(),
        })
        .collect();
    let mut rule = Rule::new(route.name.clone(), route.filters.clone(), backends);
    rule.request_timeout = route.request_timeout;
    rule.backend_timeout = route.backend_timeout;
    rule.retry = route.retry.clone();
    RouteEntry {
        hostnames: route.hostnames.clone(),
        matches: route.matches.clone(),
        rule: Arc::new(rule),
    }
}
