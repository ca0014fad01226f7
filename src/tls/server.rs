//! The HTTPS listener's side: one rustls configuration per listener, whose certificate resolver
//! asks for the certificates served *now* on every handshake. A renewed certificate therefore
//! reaches the next handshake as soon as a snapshot carrying it is published, with no new
//! listener and nothing done to the connections already open.

use std::fmt;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerConfig, StoresServerSessions,
};
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

    /// How clients' certificates are verified now; `None` (the default): none is asked for.
    fn client_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        None
    }
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
/// session resumption by tickets (TLS 1.3) and by session id (TLS 1.2), and certificates (and
/// the verification of clients' certificates, when there is one) from `certificates` on every
/// handshake.
pub fn server_config(
    certificates: Arc<dyn CurrentCertificates>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(super::client_auth::Current(certificates.clone())))
        .with_cert_resolver(Arc::new(Resolver(certificates.clone())));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => {
            config.ticketer = Arc::new(NotWhileValidating {
                inner: ticketer,
                certificates: certificates.clone(),
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "TLS session tickets are off; clients resume by session id only")
        }
    }
    config.session_storage = Arc::new(NotWhileValidating {
        inner: config.session_storage.clone(),
        certificates,
    });
    Ok(Arc::new(config))
}

/// No session is resumed while clients' certificates are validated: a resumed session skips the
/// validation, so a CA taken away, or validation turned on, would not reach the clients that
/// hold a ticket or session id. Sessions are still stored and tickets issued, for the time
/// validation is off.
struct NotWhileValidating<T: ?Sized> {
    inner: Arc<T>,
    certificates: Arc<dyn CurrentCertificates>,
}

impl<T: ?Sized> NotWhileValidating<T> {
    fn validating(&self) -> bool {
        self.certificates.client_verifier().is_some()
    }
}

impl<T: ?Sized> fmt::Debug for NotWhileValidating<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotWhileValidating").finish_non_exhaustive()
    }
}

impl ProducesTickets for NotWhileValidating<dyn ProducesTickets> {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if self.validating() {
            return None;
        }
        self.inner.decrypt(cipher)
    }
}

impl StoresServerSessions for NotWhileValidating<dyn StoresServerSessions> {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.validating() {
            return None;
        }
        self.inner.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.validating() {
            return None;
        }
        self.inner.take(key)
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
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

#[cfg(test)]
mod tests {
    use super::super::cert::{describe, testing::*};
    use super::super::material::Loader;
    use super::*;
    use crate::discovery::{ClusterConfig, TlsSource};
    use crate::plane::DataPlane;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn cluster(name: &str, tls: &str) -> ClusterConfig {
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  routes: [{{pathPrefix: /{name}}}]\n  members: [{{url: 'http://127.0.0.1:1'}}]\n  tls: {tls}\n"
        );
        let bc: crate::api::BalancerCluster = serde_norway::from_str(&yaml).expect("a cluster");
        crate::discovery::cluster_config(&bc, Vec::new()).expect("valid")
    }

    fn file(name: &str) -> TlsSource {
        TlsSource::Files {
            cert: format!("/certs/{name}.crt").into(),
            key: Some(format!("/certs/{name}.key").into()),
        }
    }

    /// A listener that answers each handshake with the ALPN protocol agreed, then echoes.
    async fn listener(plane: Arc<DataPlane>) -> std::net::SocketAddr {
        let acceptor = acceptor(plane).expect("acceptor");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let alpn = negotiated(tls.get_ref().1);
                    let _ = tls.write_all(format!("{alpn:?}\n").as_bytes()).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    struct Client {
        stream: tokio_rustls::client::TlsStream<TcpStream>,
    }

    impl Client {
        fn serial(&self) -> String {
            let certs = self
                .stream
                .get_ref()
                .1
                .peer_certificates()
                .expect("certificates");
            describe(&certs[0]).expect("readable").serial
        }

        async fn line(&mut self) -> String {
            let mut buf = [0u8; 64];
            let n = self.stream.read(&mut buf).await.expect("read");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    }

    async fn connect(
        addr: std::net::SocketAddr,
        ca: &str,
        name: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for der in super::super::cert::read_chain(ca.as_bytes()).expect("ca") {
            roots.add(der).expect("root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(name.to_owned()).expect("name"), tcp)
            .await?;
        Ok(Client { stream })
    }

    /// A client that accepts any certificate, to see which one is served; `None`: no SNI (the
    /// client connects by address).
    async fn unverified(addr: std::net::SocketAddr, name: Option<&str>) -> Client {
        let verifier = Arc::new(super::super::upstream::NoVerification(provider()));
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let name = match name {
            Some(n) => ServerName::try_from(n.to_owned()).expect("name"),
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("handshake");
        Client { stream }
    }

    #[tokio::test]
    async fn sni_picks_the_certificate_and_a_renewal_reaches_the_next_handshake() {
        let ca = ca("Test CA");
        let now = crate::tls::unix_now();
        let shop = leaf_now(&ca, &["shop.example.com"], 1);
        let wild = leaf_now(&ca, &["*.example.com"], 2);
        let mut loader = Loader::default();
        loader.offer_keypair(
            &file("shop"),
            Ok((shop.chain.as_bytes(), shop.key.as_bytes())),
            now,
        );
        loader.offer_keypair(
            &file("wild"),
            Ok((wild.chain.as_bytes(), wild.key.as_bytes())),
            now,
        );
        let clusters = vec![
            cluster(
                "shop",
                "[{hosts: [shop.example.com], certFile: /certs/shop.crt, keyFile: /certs/shop.key}]",
            ),
            // No hosts: the certificate's own names.
            cluster(
                "wild",
                "[{certFile: /certs/wild.crt, keyFile: /certs/wild.key}]",
            ),
        ];
        let plane = DataPlane::new();
        plane.publish_with(clusters.clone(), &loader.material());
        let addr = listener(plane.clone()).await;

        let mut first = connect(addr, &ca.pem, "shop.example.com", &[b"h2", b"http/1.1"])
            .await
            .expect("handshake");
        assert_eq!(first.serial(), "01");
        assert_eq!(first.line().await, "H2\n");
        let mut blog = connect(addr, &ca.pem, "blog.example.com", &[b"http/1.1"])
            .await
            .expect("handshake");
        assert_eq!(blog.serial(), "02");
        assert_eq!(blog.line().await, "Http1\n");
        let e = connect(addr, &ca.pem, "shop.example.org", &[]).await;
        assert!(
            e.is_err(),
            "no certificate and no default: the handshake fails"
        );

        // Renewed: new handshakes get serial 3, the connection open before goes on.
        let renewed = leaf_now(&ca, &["shop.example.com"], 3);
        assert!(loader.offer_keypair(
            &file("shop"),
            Ok((renewed.chain.as_bytes(), renewed.key.as_bytes())),
            now
        ));
        let before = plane.snapshot_full();
        plane.publish_with(clusters, &loader.material());
        let after = plane.snapshot_full();
        assert!(
            Arc::ptr_eq(&before.clusters[0], &after.clusters[0]),
            "a certificate renewal leaves the cluster and its balancer as they were"
        );
        let second = connect(addr, &ca.pem, "shop.example.com", &[b"http/1.1"])
            .await
            .expect("handshake");
        assert_eq!(second.serial(), "03");
        first.stream.write_all(b"still here").await.expect("write");
        assert_eq!(first.line().await, "still here");
    }

    #[tokio::test]
    async fn the_default_certificate_answers_unknown_names_and_no_sni() {
        let ca = ca("Test CA");
        let now = crate::tls::unix_now();
        let fallback = leaf_now(&ca, &["fallback.example.com"], 7);
        let mut loader = Loader::default();
        loader.offer_keypair(
            &file("fallback"),
            Ok((fallback.chain.as_bytes(), fallback.key.as_bytes())),
            now,
        );
        let plane = DataPlane::new();
        plane.publish_with(
            vec![cluster(
                "fallback",
                "[{certFile: /certs/fallback.crt, keyFile: /certs/fallback.key, default: true}]",
            )],
            &loader.material(),
        );
        let addr = listener(plane).await;
        // Another name: the default certificate is served (a verifying client would refuse it,
        // since it does not name what the client asked for).
        let e = connect(addr, &ca.pem, "other.example.org", &[]).await;
        assert!(e.is_err(), "a verifying client refuses it");
        let other = unverified(addr, Some("other.example.org")).await;
        assert_eq!(other.serial(), "07");
        // An address carries no SNI: the default certificate too.
        let bare = unverified(addr, None).await;
        assert_eq!(bare.serial(), "07");
    }

    /// Fixed certificates, and a verifier of clients that can be switched on.
    #[derive(Debug)]
    struct Validating {
        key: Arc<CertifiedKey>,
        verifier: std::sync::Mutex<Option<Arc<dyn ClientCertVerifier>>>,
    }

    impl CurrentCertificates for Validating {
        fn resolve(&self, _: Option<&str>) -> Option<Arc<CertifiedKey>> {
            Some(self.key.clone())
        }

        fn client_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
            self.verifier.lock().expect("lock").clone()
        }
    }

    #[tokio::test]
    async fn sessions_are_not_resumed_while_clients_are_validated() {
        use rustls::HandshakeKind;
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;

        let server_ca = ca("Server CA");
        let clients = ca("Clients CA");
        let served = leaf_now(&server_ca, &["secure.example.com"], 1);
        let client = leaf_now(&clients, &["client.example.com"], 2);
        let key = super::super::cert::load(
            served.chain.as_bytes(),
            served.key.as_bytes(),
            crate::tls::unix_now(),
        )
        .expect("served")
        .key;
        let current = Arc::new(Validating {
            key,
            verifier: std::sync::Mutex::new(None),
        });
        let acceptor = acceptor(current.clone()).expect("acceptor");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let _ = tls.write_all(b"hello\n").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        for der in super::super::cert::read_chain(server_ca.pem.as_bytes()).expect("ca") {
            roots.add(der).expect("root");
        }
        // One client configuration: its session cache lets it resume.
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    super::super::cert::read_chain(client.chain.as_bytes()).expect("chain"),
                    PrivateKeyDer::from_pem_slice(client.key.as_bytes()).expect("key"),
                )
                .expect("client certificate"),
        );
        let connect = || async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(
                    ServerName::try_from("secure.example.com").expect("name"),
                    tcp,
                )
                .await
                .expect("handshake");
            // Reading takes the tickets sent after the handshake.
            let mut text = String::new();
            let _ = tls.read_to_string(&mut text).await;
            assert_eq!(text, "hello\n");
            tls.get_ref().1.handshake_kind()
        };
        assert_eq!(connect().await, Some(HandshakeKind::Full));
        assert_eq!(connect().await, Some(HandshakeKind::Resumed));
        let mut verifier_roots = rustls::RootCertStore::empty();
        for der in super::super::cert::read_chain(clients.pem.as_bytes()).expect("ca") {
            verifier_roots.add(der).expect("root");
        }
        *current.verifier.lock().expect("lock") = Some(
            super::super::client_auth::client_verifier(verifier_roots, false).expect("verifier"),
        );
        // Validating: every handshake is a full one, its certificate checked.
        assert_eq!(connect().await, Some(HandshakeKind::Full));
        assert_eq!(connect().await, Some(HandshakeKind::Full));
    }
}
