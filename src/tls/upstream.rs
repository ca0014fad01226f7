//! The members' side: the rustls client configuration a cluster's `https://` members are reached
//! with, from its `spec.upstreamTLS`.
//!
//! Certificates are verified by default: against the CA bundle given (`caSecret`, `caFile`), or
//! else against the system's trust store (the platform's CA certificates, read once), and for
//! the name `serverName`, or else the member's host. `insecureSkipVerify: true` turns the
//! verification of the member's certificate off (the handshake's signatures are still checked);
//! it is logged as a warning whenever such a configuration is built.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

use super::cert::{self, CertError, CertInfo};
use super::{Certificate, TlsError, provider};
use crate::discovery::UpstreamTlsConfig;

/// Trusted CA certificates, from a `caSecret`'s `ca.crt` or a `caFile`.
pub struct CaBundle {
    pub roots: Arc<RootCertStore>,
    pub infos: Vec<CertInfo>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("infos", &self.infos)
            .finish_non_exhaustive()
    }
}

/// Reads every certificate of a PEM bundle as a trust anchor; at least one must be usable.
pub fn load_ca(pem: &[u8]) -> Result<CaBundle, CertError> {
    let chain = cert::read_chain(pem)?;
    let mut roots = RootCertStore::empty();
    let mut infos = Vec::with_capacity(chain.len());
    for der in chain {
        infos.push(cert::describe(&der)?);
        roots
            .add(der)
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    }
    Ok(CaBundle {
        roots: Arc::new(roots),
        infos,
    })
}

/// The system's CA certificates, read once (they change with the image, not at run time).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "cannot read a system CA certificate");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found: https members of clusters without upstreamTLS.caSecret or caFile cannot be verified"
                );
            }
            tracing::debug!(added, ignored, "system CA certificates read");
            Arc::new(roots)
        })
        .clone()
}

/// How a cluster's `https://` members are reached.
pub struct Upstream {
    pub config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// What it was built from, so that an unchanged one is kept across snapshots (keeping its
    /// session cache, so reconnections resume their TLS sessions).
    settings: UpstreamTlsConfig,
    ca: Option<Arc<CaBundle>>,
    client: Option<Arc<Certificate>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the configuration for `settings`, with the CA bundle and client certificate its
    /// sources resolved to (`None` where the settings name none: then the system roots, and no
    /// client certificate).
    pub fn build(
        settings: &UpstreamTlsConfig,
        ca: Option<Arc<CaBundle>>,
        client: Option<Arc<Certificate>>,
    ) -> Result<Upstream, TlsError> {
        let server_name = settings
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))
            })
            .transpose()?;
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = if settings.insecure_skip_verify {
            Arc::new(NoVerification(provider.clone()))
        } else {
            let roots = ca
                .as_ref()
                .map(|c| c.roots.clone())
                .unwrap_or_else(system_roots);
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &client {
            Some(c) => builder.with_client_cert_resolver(Arc::new(ClientCert(c.key.clone()))),
            None => builder.with_no_client_auth(),
        };
        // Members are spoken to in HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Upstream {
            config: Arc::new(config),
            server_name,
            settings: settings.clone(),
            ca,
            client,
        })
    }

    /// Whether this configuration was built from exactly these inputs.
    pub fn is_built_from(
        &self,
        settings: &UpstreamTlsConfig,
        ca: Option<&Arc<CaBundle>>,
        client: Option<&Arc<Certificate>>,
    ) -> bool {
        fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        self.settings == *settings
            && same(self.ca.as_ref(), ca)
            && same(self.client.as_ref(), client)
    }

    /// The client certificate presented to members (mTLS), if any.
    pub fn client_certificate(&self) -> Option<&Arc<Certificate>> {
        self.client.as_ref()
    }

    /// The name sent (SNI) and verified for a member at `authority` (`HOST:PORT`):
    /// `serverName` when set, else the member's host (a DNS name or an IP address).
    pub fn server_name(&self, authority: &str) -> Result<ServerName<'static>, TlsError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
    }

    /// Does the TLS handshake with the member at `authority` over `tcp`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        authority: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .server_name(authority)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// Presents one client certificate to every member that asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .key
            .choose_scheme(sigschemes)
            .is_some()
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `insecureSkipVerify`: any certificate is accepted; the handshake's signatures are still
/// checked, so the member must hold the key of the certificate it shows.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
