//! The Gateway API front door: GatewayClasses whose `controllerName` is
//! [`CONTROLLER_NAME`], their Gateways, the HTTPRoutes attached to them and the ReferenceGrants
//! that allow references across namespaces, served by the same data plane as BalancerClusters.
//!
//! - [`api`]: the resources' types (the fields kube-balancer reads and the status it writes).
//! - [`backend_tls`]: which Service ports BackendTLSPolicies make TLS, and their status.
//! - [`translate`]: from what the API server holds to the fronts (a Gateway's listeners, one per
//!   address and port) and clusters (one per Service port a route sends to) the data plane
//!   serves, and to the status each resource should have. Pure: no I/O, no clock.
//! - [`watch`]: the reflectors over those kinds (the controller reads their stores).
//! - [`status`]: writes the status translation computed, only while this replica leads.
//!
//! The controller (`crate::controller`) watches, translates and publishes the BalancerClusters'
//! clusters and the Gateways' fronts together, in one snapshot.

pub mod api;
pub mod backend_tls;
pub mod status;
pub mod translate;
pub mod watch;

use std::net::IpAddr;

/// The `spec.controllerName` of the GatewayClasses kube-balancer serves.
pub const CONTROLLER_NAME: &str = "kubebalancer.io/gateway-controller";

/// The features kube-balancer claims, written to each GatewayClass's `status.supportedFeatures`
/// (sorted, as the API asks) and claimed in the conformance suite (tests/gateway/conformance.rs):
/// the core of the GATEWAY-HTTP conformance profile and the extended features that pass
/// (docs/gateway.md, "Conformance", names those left out and why).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// How the Gateway front door runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The addresses the data plane serves Gateways at (`--gateway-address`): each Gateway gets
    /// one of its own while there are enough; empty: every address of the host, and the
    /// Gateways' addresses come from `service`.
    pub addresses: Vec<IpAddr>,
    /// The Service in front of the data plane (`--gateway-service`, `namespace/name`): its
    /// load-balancer addresses (else its cluster IP) are the Gateways' addresses when
    /// `addresses` is empty.
    pub service: Option<(String, String)>,
}

/// Condition types and reasons of the Gateway API, in one place.
pub mod reasons {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";

    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const INVALID: &str = "Invalid";
    pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";

    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const NO_CONFLICTS: &str = "NoConflicts";

    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";

    /// BackendTLSPolicy.
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";

    /// A Gateway's `tls.backend` and `tls.frontend`.
    pub const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";
    pub const LISTENERS_NOT_RESOLVED: &str = "ListenersNotResolved";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";
}
