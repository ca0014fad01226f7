//! The HTTPS listener's side: one rustls configuration per listener, whose certificate resolver
//! asks for the certificates served *now* on every handshake. A renewed certificate therefore
//! reaches the next handshake as soon as a snapshot carrying it is published, with no new
//! listener and nothing done to the connections already open.

use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

use super::{TlsError, provider};

/// ALPN protocols offered to clients, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the resolver finds the certificates served now: the data plane, which answers from its
/// current snapshot (see `plane::DataPlane`). Called on every handshake, so it must not block.
pub trait CurrentCertificates: Send + Sync + fmt::Debug {
    /// The chain and key for a client that asked for `server_name` (or for none): the exact
    /// name's certificate, else a wildcard's, else the default one, else `None` (the handshake
    /// fails).
    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>>;
}

#[derive(Debug)]
struct Resolver(Arc<dyn CurrentCertificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        let key = self.0.resolve(name);
        if key.is_none() {
            tracing::debug!(server_name = ?name, "TLS handshake refused: no certificate for this name and no default certificate");
        }
        key
    }
}

/// The server configuration of an HTTPS listener: TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`,
/// session resumption by tickets (TLS 1.3) and by session id (TLS 1.2), and certificates from
/// `certificates` on every handshake.
pub fn server_config(
    certificates: Arc<dyn CurrentCertificates>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certificates)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => {
            tracing::warn!(error = %e, "TLS session tickets are off; clients resume by session id only")
        }
    }
    Ok(Arc::new(config))
}

/// A tokio acceptor over [`server_config`]: `acceptor.accept(tcp).await` does the handshake.
pub fn acceptor(
    certificates: Arc<dyn CurrentCertificates>,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    Ok(tokio_rustls::TlsAcceptor::from(server_config(
        certificates,
    )?))
}

/// The application protocol a handshake agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H2,
    /// `http/1.1`, or no ALPN at all (a client that does not offer it speaks HTTP/1.1).
    Http1,
}

/// What the client and the listener agreed on in `conn`'s handshake.
pub fn negotiated(conn: &rustls::ServerConnection) -> Alpn {
    match conn.alpn_protocol() {
        Some(b"h2") => Alpn::H2,
        _ => Alpn::Http1,
    }
}
