//! TLS: the certificates the HTTPS listener serves, and how `https://` members are reached.
//!
//! It owns loading and checking certificates ([`cert`]), choosing one by SNI ([`sni`]), the
//! rustls configurations of the listener ([`server`]) and of the members ([`upstream`]), what the
//! sources resolved ([`material`]) and the TLS side of a snapshot ([`state`]). It reads no file
//! and no Secret (the sources hand it bytes) and accepts no connection (the proxy does).
//!
//! rustls runs on the `ring` provider: the Kubernetes client already brings it, so TLS adds no
//! second cryptographic library to the binary or the build (docs/tls.md).
//!
//! # How certificates reach the proxy
//!
//! A source (standalone file, controller) keeps a [`material::Loader`], offers it the bytes of
//! each certificate its clusters name, and publishes with [`crate::plane::DataPlane::publish_with`]
//! whenever the loader's version moved. The snapshot then carries a [`TlsState`]: the served
//! certificates by name, and each cluster's member client configuration. A refused certificate
//! never replaces a good one.
//!
//! # What the proxy calls
//!
//! - **HTTPS listener**: once per listener, `tls::acceptor(plane.clone())` (a
//!   [`tokio_rustls::TlsAcceptor`]; `DataPlane` is the [`CurrentCertificates`]), then for each
//!   accepted TCP connection `acceptor.accept(tcp).await` and
//!   [`server::negotiated`]`(conn.get_ref().1)` to choose HTTP/2 or HTTP/1.1. Every handshake
//!   reads the snapshot served at that moment, so rotation needs nothing from the proxy. A
//!   failed handshake (no certificate for the name, a client error) is the client's problem:
//!   close the connection, log at debug.
//! - **Requests on the plain listener**: when `cluster.config.tls.https_redirect` is set,
//!   answer [`redirect_status`] with a `Location` from [`redirect_location`], and forward
//!   nothing.
//! - **Responses on the HTTPS listener**: add `Strict-Transport-Security: `[`hsts_value`] when
//!   `cluster.config.tls.hsts` is set (never on plain HTTP, as RFC 6797 asks).
//! - **`https://` members** ([`crate::discovery::MemberConfig::is_tls`]): the cluster's
//!   `upstream_tls` ([`crate::plane::Cluster::upstream_tls`]) connects with
//!   [`Upstream::connect`]`(tcp, &member.authority)`. `None` for a cluster with `https://`
//!   members means what it names (a CA, a client certificate) could not be loaded: answer 502
//!   rather than fall back to plain HTTP or to other roots. Pooled connections to a member must
//!   be keyed by its URL (scheme included), not only its authority.

pub mod cert;
pub mod client_auth;
pub mod listeners;
pub mod material;
pub mod server;
pub mod sni;
pub mod state;
pub mod upstream;

use std::sync::{Arc, OnceLock};

use http::{HeaderValue, Method, StatusCode};
use rustls::crypto::CryptoProvider;

pub use cert::{CertError, CertInfo, Certificate};
pub use listeners::ListenerCertificates;
pub use server::{CurrentCertificates, acceptor, server_config};
pub use state::{CertificateView, ClusterTls, Role, TlsState};
pub use upstream::{CaBundle, Upstream};

use crate::discovery::HstsConfig;

/// Errors building a TLS configuration (certificates' own problems are [`CertError`]s).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("{0:?} is not a DNS name or IP address to verify a member's certificate against")]
    ServerName(String),
}

/// Why part of a cluster's TLS is not served as asked: the reason is a condition reason
/// (`TLSReady=False`), the message says what and why in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// Reasons of the `TLSReady` condition, in one place.
pub mod reasons {
    /// The newest content of a certificate was refused (bad PEM, key not matching, expired).
    pub const CERTIFICATE_REFUSED: &str = "CertificateRefused";
    /// A Secret or file named cannot be read (missing, or not loaded yet).
    pub const SOURCE_MISSING: &str = "CertificateNotFound";
    /// A name in `spec.tls[].hosts` that the certificate does not name.
    pub const HOST_NOT_COVERED: &str = "HostNotCovered";
    /// A name an older cluster already serves a certificate for.
    pub const HOST_TAKEN: &str = "HostConflict";
    /// The member client configuration could not be built.
    pub const UPSTREAM_TLS_INVALID: &str = "UpstreamTLSInvalid";
    /// Everything named is loaded and served.
    pub const LOADED: &str = "CertificatesLoaded";
}

/// The rustls provider used everywhere: ring, the one kube's client already brings.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Seconds since the Unix epoch, for the validity checks of certificates.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The status of a redirect to HTTPS: 301 for GET and HEAD, 308 for every other method, which
/// (unlike 301) tells the client to repeat the method and body.
pub fn redirect_status(method: &Method) -> StatusCode {
    if method == Method::GET || method == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    }
}

/// `https://HOST[:PORT]PATH?QUERY` for a plain request to `host` (the Host header, whose port is
/// dropped) and `path_and_query`; the port is left out when it is 443. `None` when the host is
/// not one a URL can carry.
pub fn redirect_location(host: &str, path_and_query: &str, https_port: u16) -> Option<HeaderValue> {
    let name = match host.strip_prefix('[') {
        Some(rest) => &host[..rest.find(']')? + 2],
        None => host.split(':').next().unwrap_or(host),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
    {
        return None;
    }
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    let location = if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    };
    HeaderValue::from_str(&location).ok()
}

/// The `Strict-Transport-Security` value for `hsts`.
pub fn hsts_value(hsts: &HstsConfig) -> HeaderValue {
    let mut value = format!("max-age={}", hsts.max_age_seconds);
    if hsts.include_sub_domains {
        value.push_str("; includeSubDomains");
    }
    if hsts.preload {
        value.push_str("; preload");
    }
    // Digits and fixed ASCII words only.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("max-age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_plain_port() {
        let at = |host, path, port| {
            redirect_location(host, path, port).map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(
            at("shop.example.com:8000", "/cart?id=3", 443).as_deref(),
            Some("https://shop.example.com/cart?id=3")
        );
        assert_eq!(
            at("shop.example.com", "/", 8443).as_deref(),
            Some("https://shop.example.com:8443/")
        );
        assert_eq!(
            at("[::1]:8000", "/x", 443).as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(at("", "/", 443), None);
        assert_eq!(at("evil.com/x", "/", 443), None);
        assert_eq!(at("a b", "/", 443), None);
        assert_eq!(redirect_status(&Method::GET), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            redirect_status(&Method::HEAD),
            StatusCode::MOVED_PERMANENTLY
        );
        assert_eq!(
            redirect_status(&Method::POST),
            StatusCode::PERMANENT_REDIRECT
        );
        assert_eq!(
            redirect_status(&Method::PUT),
            StatusCode::PERMANENT_REDIRECT
        );
    }

    #[test]
    fn hsts_header() {
        let mut hsts = HstsConfig {
            max_age_seconds: 31_536_000,
            include_sub_domains: false,
            preload: false,
        };
        assert_eq!(hsts_value(&hsts), "max-age=31536000");
        hsts.include_sub_domains = true;
        hsts.preload = true;
        assert_eq!(
            hsts_value(&hsts),
            "max-age=31536000; includeSubDomains; preload"
        );
    }
}
