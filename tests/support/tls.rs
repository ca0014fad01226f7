//! TLS members for the tests: certificates made with rcgen (a CA, leaves it signs) and a real
//! HTTPS server (rustls, hyper's HTTP/1.1 and HTTP/2 server) on 127.0.0.1 that counts its
//! handshakes and requests and says what each request came with.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use super::client::{Answer, full};

// ---- certificates --------------------------------------------------------------------------

pub struct Ca {
    pub pem: String,
    pub issuer: Issuer<'static, KeyPair>,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate for `names` (DNS names or IP addresses) with `serial`, signed by `ca`.
pub struct Leaf {
    pub chain: String,
    pub key: String,
}

pub fn leaf(ca: &Ca, names: &[&str], serial: u8) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.serial_number = Some(SerialNumber::from(vec![serial]));
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    Leaf {
        chain: format!("{}{}", cert.pem(), ca.pem),
        key: key.serialize_pem(),
    }
}

pub fn certified(leaf: &Leaf) -> Arc<CertifiedKey> {
    let now = kube_balancer::tls::unix_now();
    kube_balancer::tls::cert::load(leaf.chain.as_bytes(), leaf.key.as_bytes(), now)
        .expect("a usable certificate")
        .key
}

/// Writes a file at once (a new file renamed over the old one), as tools renewing
/// certificates do.
pub fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

// ---- a TLS member ---------------------------------------------------------------------------

/// What a [`TlsMember`] counts.
#[derive(Default)]
struct Counts {
    /// TLS handshakes that completed.
    pub handshakes: AtomicUsize,
    /// Connections whose handshake failed (a client that refused our certificate, or came
    /// without the certificate we ask for, or spoke plain HTTP).
    pub refused: AtomicUsize,
    /// Requests read.
    pub requests: AtomicUsize,
}

/// The certificate a [`TlsMember`] serves, swapped while it runs.
#[derive(Debug)]
struct Serving(Mutex<Arc<CertifiedKey>>);

impl ResolvesServerCert for Serving {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lock().expect("lock").clone())
    }
}

/// A real HTTPS server (rustls, hyper's HTTP/1.1 and HTTP/2 server) on 127.0.0.1. It answers
/// `NAME` (or `NAME got N bytes` for a request with a body) with fields saying what the
/// request came with: `x-proto` (HTTP/1.1, HTTP/2.0), `x-alpn`, `x-sni`, `x-client-serial`
/// (`none` without a client certificate), `x-conn` (the connection's number, from 1) and
/// `x-resumed` (`yes` when the connection's handshake resumed a TLS session). On `/close` it
/// closes the connection after its answer.
pub struct TlsMember {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    serving: Arc<Serving>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsMember {
    /// Serves `leaf`; with `client_ca`, only to clients with a certificate it signed.
    pub async fn start(name: &str, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsMember {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        TlsMember::serve_on(listener, name, leaf, client_ca)
    }

    /// As [`start`](Self::start), on `listener` (a pod IP's, say).
    pub fn serve_on(
        listener: TcpListener,
        name: &str,
        leaf: &Leaf,
        client_ca: Option<&Ca>,
    ) -> TlsMember {
        let provider = kube_balancer::tls::provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let bundle = kube_balancer::tls::upstream::load_ca(ca.pem.as_bytes()).expect("CA");
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(bundle.roots, provider)
                        .build()
                        .expect("verifier"),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let serving = Arc::new(Serving(Mutex::new(certified(leaf))));
        let mut config = builder.with_cert_resolver(serving.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr = listener.local_addr().expect("address");
        let counts = Arc::new(Counts::default());
        let (name, shared) = (name.to_owned(), counts.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, name, counts) = (acceptor.clone(), name.clone(), shared.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        counts.refused.fetch_add(1, SeqCst);
                        return;
                    };
                    let number = counts.handshakes.fetch_add(1, SeqCst) + 1;
                    let session = tls.get_ref().1;
                    let seen = Arc::new(Seen {
                        alpn: session
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .unwrap_or_else(|| "none".into()),
                        sni: session.server_name().unwrap_or("none").to_owned(),
                        client_serial: session
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| kube_balancer::tls::cert::describe(c).ok())
                            .map(|i| i.serial)
                            .unwrap_or_else(|| "none".into()),
                        number,
                        resumed: session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                    });
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (name, counts, seen) = (name.clone(), counts.clone(), seen.clone());
                        async move {
                            counts.requests.fetch_add(1, SeqCst);
                            Ok::<_, hyper::Error>(answer(&name, &seen, req).await)
                        }
                    });
                    // The client's certificate is checked after the handshake in TLS 1.3:
                    // a refusal shows as a connection that ends before its first request.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsMember {
            addr,
            counts,
            serving,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn serve(&self, leaf: &Leaf) {
        *self.serving.0.lock().expect("lock") = certified(leaf);
    }

    pub fn handshakes(&self) -> usize {
        self.counts.handshakes.load(SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.counts.refused.load(SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counts.requests.load(SeqCst)
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a member's connection came with.
struct Seen {
    pub alpn: String,
    pub sni: String,
    pub client_serial: String,
    pub number: usize,
    pub resumed: bool,
}

async fn answer(name: &str, seen: &Seen, req: Request<Incoming>) -> Response<super::client::Body> {
    let version = format!("{:?}", req.version());
    let close = req.uri().path() == "/close";
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let text = match body {
        Ok(bytes) if !bytes.is_empty() => format!("{name} got {} bytes", bytes.len()),
        _ => name.to_owned(),
    };
    let builder = if close {
        Response::builder().header("connection", "close")
    } else {
        Response::builder()
    };
    builder
        .header("x-backend", name)
        .header("x-proto", version)
        .header("x-alpn", &seen.alpn)
        .header("x-sni", &seen.sni)
        .header("x-client-serial", &seen.client_serial)
        .header("x-conn", seen.number.to_string())
        .header("x-resumed", if seen.resumed { "yes" } else { "no" })
        .body(full(Bytes::from(text)))
        .expect("an answer")
}

pub fn field(answer: &Answer, name: &str) -> String {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
