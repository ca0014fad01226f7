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
use crate::discovery::{SubjectAltName, UpstreamTlsConfig};

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
    /// For members spoken to in HTTP/1.1: ALPN `http/1.1`.
    pub config: Arc<ClientConfig>,
    /// For members spoken to in HTTP/2 (`protocol: h2`): ALPN `h2`. The same verification,
    /// client certificate and session cache as `config`.
    pub h2: Arc<ClientConfig>,
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
            let webpki: Arc<dyn ServerCertVerifier> =
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            if settings.subject_alt_names.is_empty() {
                webpki
            } else {
                Arc::new(AltNames {
                    chain: webpki,
                    names: settings.subject_alt_names.clone(),
                })
            }
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
        // One protocol offered each: the member's `protocol` says which it speaks, and a member
        // that cannot speak it should fail the handshake rather than be spoken to in another.
        let mut h2 = config.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Upstream {
            config: Arc::new(config),
            h2: Arc::new(h2),
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

    /// Does the TLS handshake with the member at `authority` over `tcp`, offering ALPN `h2`
    /// when `h2`, else `http/1.1`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        authority: &str,
        h2: bool,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .server_name(authority)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let config = if h2 { &self.h2 } else { &self.config };
        tokio_rustls::TlsConnector::from(config.clone())
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

/// `subjectAltNames`: the chain is verified as usual, and the certificate must carry one of the
/// names given, whatever name was sent (the SNI is then not verified).
#[derive(Debug)]
struct AltNames {
    chain: Arc<dyn ServerCertVerifier>,
    names: Vec<SubjectAltName>,
}

impl ServerCertVerifier for AltNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError;
        // webpki verifies the chain (and validity, and OCSP) before the name: a name error
        // means everything but the name passed.
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let carried = carries_one_of(&cert, &self.names);
        if carried {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Whether the certificate's subject alternative names include one of `names`: a DNS name
/// equal (without regard to case) or matched by the certificate's wildcard (one label), a
/// URI equal.
fn carries_one_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    names: &[SubjectAltName],
) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let dns_matches = |carried: &str, wanted: &str| {
        let (carried, wanted) = (carried.to_ascii_lowercase(), wanted.to_ascii_lowercase());
        if carried == wanted {
            return true;
        }
        match (carried.strip_prefix("*."), wanted.split_once('.')) {
            (Some(domain), Some((label, rest))) => {
                !label.is_empty() && label != "*" && rest == domain
            }
            _ => false,
        }
    };
    san.value.general_names.iter().any(|carried| {
        names.iter().any(|wanted| match (carried, wanted) {
            (GeneralName::DNSName(c), SubjectAltName::Dns(w)) => dns_matches(c, w),
            (GeneralName::URI(c), SubjectAltName::Uri(w)) => c == w,
            _ => false,
        })
    })
}

/// `insecureSkipVerify`: any certificate is accepted; the handshake's signatures are still
/// checked, so the member must hold the key of the certificate it shows.
#[derive(Debug)]
pub(crate) struct NoVerification(pub(crate) Arc<CryptoProvider>);

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

#[cfg(test)]
mod tests {
    use super::super::cert::{load, testing::*};
    use super::*;
    use rustls::server::{ServerConfig, WebPkiClientVerifier};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A TLS member: a rustls server with `leaf`, asking for a client certificate signed by
    /// `client_ca` when one is given. It answers `ok` and the client's certificate serial.
    async fn member(leaf: &Leaf, client_ca: Option<&Ca>) -> String {
        let now = crate::tls::unix_now();
        let cert = load(leaf.chain.as_bytes(), leaf.key.as_bytes(), now).expect("server cert");
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let bundle = load_ca(ca.pem.as_bytes()).expect("ca");
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(bundle.roots, provider())
                        .build()
                        .expect("verifier"),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_cert_resolver(Arc::new(Fixed(cert.key.clone())));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let client = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| cert::describe(c).ok())
                            .map(|i| i.serial)
                            .unwrap_or_else(|| "none".into());
                        let _ = tls.write_all(format!("ok {client}").as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr.to_string()
    }

    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    async fn ask(upstream: &Upstream, authority: &str) -> std::io::Result<String> {
        let tcp = TcpStream::connect(authority).await?;
        let mut tls = upstream.connect(tcp, authority, false).await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    fn settings(server_name: Option<&str>, insecure: bool) -> UpstreamTlsConfig {
        UpstreamTlsConfig {
            ca: None,
            server_name: server_name.map(str::to_owned),
            client_cert: None,
            insecure_skip_verify: insecure,
            subject_alt_names: Vec::new(),
        }
    }

    #[tokio::test]
    async fn members_are_verified_against_the_ca_and_a_wrong_ca_is_refused() {
        let ca = ca("Member CA");
        let addr = member(&leaf_now(&ca, &["backend.internal", "127.0.0.1"], 1), None).await;
        let good = Arc::new(load_ca(ca.pem.as_bytes()).expect("ca"));
        let upstream =
            Upstream::build(&settings(None, false), Some(good.clone()), None).expect("config");
        assert_eq!(
            ask(&upstream, &addr).await.expect("verified by IP"),
            "ok none"
        );
        let by_name = Upstream::build(&settings(Some("backend.internal"), false), Some(good), None)
            .expect("config");
        assert_eq!(
            ask(&by_name, &addr).await.expect("verified by name"),
            "ok none"
        );

        let wrong = Arc::new(load_ca(self::ca("Other CA").pem.as_bytes()).expect("ca"));
        let upstream = Upstream::build(&settings(None, false), Some(wrong), None).expect("config");
        let e = ask(&upstream, &addr)
            .await
            .expect_err("a wrong CA is refused");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        // The system's roots do not know a private CA either.
        let upstream = Upstream::build(&settings(None, false), None, None).expect("config");
        assert!(ask(&upstream, &addr).await.is_err());
        // Unless verification is off, which is an explicit choice.
        let upstream = Upstream::build(&settings(None, true), None, None).expect("config");
        assert_eq!(ask(&upstream, &addr).await.expect("unverified"), "ok none");
    }

    #[tokio::test]
    async fn a_name_the_certificate_does_not_carry_is_refused() {
        let ca = ca("Member CA");
        let addr = member(&leaf_now(&ca, &["backend.internal"], 1), None).await;
        let bundle = Arc::new(load_ca(ca.pem.as_bytes()).expect("ca"));
        let by_ip =
            Upstream::build(&settings(None, false), Some(bundle.clone()), None).expect("config");
        let e = ask(&by_ip, &addr)
            .await
            .expect_err("127.0.0.1 is not in the certificate");
        assert!(e.to_string().contains("not valid for name"), "{e}");
        let wrong = Upstream::build(&settings(Some("other.internal"), false), Some(bundle), None)
            .expect("config");
        assert!(ask(&wrong, &addr).await.is_err());
    }

    #[tokio::test]
    async fn mutual_tls_presents_the_client_certificate() {
        let server_ca = ca("Member CA");
        let client_ca = ca("Client CA");
        let addr = member(&leaf_now(&server_ca, &["127.0.0.1"], 1), Some(&client_ca)).await;
        let bundle = Arc::new(load_ca(server_ca.pem.as_bytes()).expect("ca"));
        let without =
            Upstream::build(&settings(None, false), Some(bundle.clone()), None).expect("config");
        assert!(
            ask(&without, &addr).await.is_err(),
            "the member refuses a client without a certificate"
        );
        let client = leaf_now(&client_ca, &["balancer.internal"], 0x42);
        let client = Arc::new(
            load(
                client.chain.as_bytes(),
                client.key.as_bytes(),
                crate::tls::unix_now(),
            )
            .expect("client"),
        );
        let with = Upstream::build(
            &settings(None, false),
            Some(bundle.clone()),
            Some(client.clone()),
        )
        .expect("config");
        assert_eq!(ask(&with, &addr).await.expect("mTLS"), "ok 42");
        assert!(with.is_built_from(&settings(None, false), Some(&bundle), Some(&client)));
        assert!(!with.is_built_from(&settings(None, false), Some(&bundle), None));
    }

    #[tokio::test]
    async fn subject_alt_names_replace_the_server_name_in_verification() {
        let ca = ca("Member CA");
        let addr = member(
            &leaf_now(
                &ca,
                &["abc.example.com", "spiffe://abc.example.com/test-identity"],
                1,
            ),
            None,
        )
        .await;
        let bundle = Arc::new(load_ca(ca.pem.as_bytes()).expect("ca"));
        let with = |names: Vec<SubjectAltName>| {
            let mut settings = settings(Some("sni.example.com"), false);
            settings.subject_alt_names = names;
            Upstream::build(&settings, Some(bundle.clone()), None).expect("config")
        };
        let dns = |n: &str| SubjectAltName::Dns(n.to_owned());
        let uri = |n: &str| SubjectAltName::Uri(n.to_owned());
        // The SNI (not in the certificate) is not verified; one of the names is.
        for names in [
            vec![dns("abc.example.com")],
            vec![uri("spiffe://abc.example.com/test-identity")],
            vec![uri("spiffe://def.example.com/x"), dns("ABC.example.com")],
        ] {
            assert_eq!(
                ask(&with(names.clone()), &addr).await.expect("verified"),
                "ok none",
                "{names:?}"
            );
        }
        for names in [
            vec![dns("dce.example.com")],
            vec![uri("spiffe://def.example.com/test-identity")],
            vec![uri("spiffe://def.example.com/x"), dns("def.example.com")],
        ] {
            let e = ask(&with(names.clone()), &addr)
                .await
                .expect_err("no name matches");
            assert!(e.to_string().contains("NotValidForName"), "{names:?}: {e}");
        }
        // The chain is still verified.
        let other = Arc::new(load_ca(self::ca("Other CA").pem.as_bytes()).expect("ca"));
        let mut settings = settings(Some("abc.example.com"), false);
        settings.subject_alt_names = vec![dns("abc.example.com")];
        let wrong = Upstream::build(&settings, Some(other), None).expect("config");
        let e = ask(&wrong, &addr).await.expect_err("a wrong CA");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn server_names_from_authorities() {
        let upstream = Upstream::build(&settings(None, true), None, None).expect("config");
        let name = |a: &str| {
            upstream
                .server_name(a)
                .map(|n| n.to_str().into_owned())
                .ok()
        };
        assert_eq!(
            name("backend.internal:8443").as_deref(),
            Some("backend.internal")
        );
        assert_eq!(name("10.0.0.1:443").as_deref(), Some("10.0.0.1"));
        assert_eq!(name("[::1]:443").as_deref(), Some("::1"));
        let fixed =
            Upstream::build(&settings(Some("api.internal"), true), None, None).expect("config");
        assert_eq!(
            fixed
                .server_name("10.0.0.1:443")
                .map(|n| n.to_str().into_owned())
                .ok()
                .as_deref(),
            Some("api.internal")
        );
        assert!(Upstream::build(&settings(Some("not a name"), false), None, None).is_err());
    }
}
